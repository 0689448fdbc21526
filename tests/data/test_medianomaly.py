"""MedIAnomaly layouts read in place: data.json, BraTS2021 (flair -> seg masks), Camelyon16; errors; benchmark."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from anomalib.data import AnomalibDataModule

from anomalib_skipts.data import InvalidDatasetError, MedIAnomaly

from .generated_layouts import (
    LESION,
    SIZE,
    box,
    make_medianomaly_brats,
    make_medianomaly_folders,
    make_medianomaly_json,
)

REPO = Path(__file__).resolve().parents[2]
FAST = {"num_workers": 0, "train_batch_size": 4, "eval_batch_size": 4}


def _names(dataset, label: int | None = None) -> list[str]:
    samples = dataset.samples if label is None else dataset.samples.query(f"label_index == {label}")
    return sorted(Path(path).name for path in samples.image_path)


def _setup(**kwargs) -> MedIAnomaly:
    datamodule = MedIAnomaly(**kwargs, **FAST)
    datamodule.setup()
    return datamodule


# --------------------------------------------------------------------------------------------------
# images/ + data.json (RSNA, VinCXR, BrainTumor, LAG)
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("category", ["RSNA", "VinCXR", "BrainTumor", "LAG"])
def test_data_json_layout_gives_the_listed_split(tmp_path: Path, category: str) -> None:
    base = make_medianomaly_json(tmp_path, category)
    lists = json.loads((base / "data.json").read_text())
    datamodule = _setup(root=tmp_path, category=category.lower())  # category names: case ignored

    assert datamodule.category == category
    assert datamodule.task == "classification"
    assert _names(datamodule.train_data) == sorted(lists["train"]["0"])
    assert _names(datamodule.test_data, 0) == sorted(lists["test"]["0"])
    assert _names(datamodule.test_data, 1) == sorted(lists["test"]["1"])
    assert "unlisted.png" not in _names(datamodule.train_data) + _names(datamodule.test_data)
    item = datamodule.test_data[0]
    assert item.image.shape == (3, SIZE, SIZE)
    assert item.gt_mask is None


def test_root_may_be_the_category_folder_and_subsets_are_seeded(tmp_path: Path) -> None:
    base = make_medianomaly_json(tmp_path, "RSNA")
    first = _setup(root=base, category="RSNA", num_train=5, num_test_abnormal=2, split_seed=3)
    again = _setup(root=tmp_path, category="RSNA", num_train=5, num_test_abnormal=2, split_seed=3)
    assert (len(first.train_data), len(first.test_data)) == (5, 6)
    assert _names(first.train_data) == _names(again.train_data)
    assert _names(first.test_data) == _names(again.test_data)
    other = _setup(root=base, category="RSNA", num_train=5, split_seed=4)
    assert _names(other.train_data) != _names(first.train_data)


def test_missing_data_json_says_which_file_and_the_layout(tmp_path: Path) -> None:
    base = make_medianomaly_json(tmp_path, "VinCXR")
    (base / "data.json").unlink()
    with pytest.raises(InvalidDatasetError) as error:
        _setup(root=tmp_path, category="VinCXR")
    message = str(error.value)
    assert f"{base / 'data.json'}: data.json does not exist" in message
    assert '{"train": {"0": [file names]}, "test": {"0": [file names], "1": [file names]}}' in message
    assert "github.com/caiyu6666/MedIAnomaly" in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", r"data\.json cannot be read \(Expecting property name enclosed in double quotes: line 1"),
        ('{"train": {"0": ["n000.png"]}, "test": {"0": []}}', r'needs a list of file names at \["test"\]\["1"\]'),
        ('["n000.png"]', r'needs a list of file names at \["train"\]\["0"\]'),
    ],
)
def test_malformed_data_json(tmp_path: Path, content: str, expected: str) -> None:
    base = make_medianomaly_json(tmp_path, "LAG")
    (base / "data.json").write_text(content)
    with pytest.raises(InvalidDatasetError, match=expected):
        _setup(root=tmp_path, category="LAG")


def test_listed_file_missing_or_listed_twice(tmp_path: Path) -> None:
    base = make_medianomaly_json(tmp_path, "BrainTumor")
    lists = json.loads((base / "data.json").read_text())
    lists["test"]["0"].append(lists["train"]["0"][0])  # the same image in train and test: leakage
    (base / "data.json").write_text(json.dumps(lists))
    (base / "images" / "a002.png").unlink()

    with pytest.raises(InvalidDatasetError) as error:
        _setup(root=tmp_path, category="BrainTumor")
    message = str(error.value)
    assert "2 problems" in message
    assert f'{base / "images" / "a002.png"}: listed in data.json at ["test"]["1"], but there is no such file' in message
    assert "restore the file or remove its entry from data.json" in message
    assert 'n000.png: listed twice in data.json, at ["train"]["0"] and ["test"]["0"]' in message

    datamodule = _setup(root=tmp_path, category="BrainTumor", skip_invalid=True)
    assert "a002.png" not in _names(datamodule.test_data)
    assert "n000.png" not in _names(datamodule.train_data) + _names(datamodule.test_data)
    assert (len(datamodule.train_data), len(datamodule.test_data)) == (7, 7)


def test_missing_category_or_unknown_layout(tmp_path: Path) -> None:
    with pytest.raises(InvalidDatasetError, match=r"RSNA: category folder does not exist \(looked for RSNA/ in"):
        _setup(root=tmp_path, category="RSNA")
    (tmp_path / "Mine" / "stuff").mkdir(parents=True)
    with pytest.raises(InvalidDatasetError, match=r"no MedIAnomaly layout found here \(no data\.json, no test/tumor/"):
        _setup(root=tmp_path, category="Mine")


def test_unknown_category_with_a_known_layout(tmp_path: Path) -> None:
    make_medianomaly_json(tmp_path, "MyXray", counts=(3, 2, 2))
    datamodule = _setup(root=tmp_path, category="MyXray")
    assert datamodule.layout == "json"
    assert (len(datamodule.train_data), len(datamodule.test_data)) == (3, 4)


# --------------------------------------------------------------------------------------------------
# BraTS2021: train/, test/normal/, test/tumor/, test/annotation/ (flair -> seg)
# --------------------------------------------------------------------------------------------------
def test_brats_layout_with_flair_to_seg_masks(tmp_path: Path) -> None:
    make_medianomaly_brats(tmp_path)
    datamodule = _setup(root=tmp_path, category="BraTS2021")
    assert datamodule.task == "segmentation"
    assert (len(datamodule.train_data), len(datamodule.test_data)) == (8, 8)
    tumours = datamodule.test_data.samples.query("label_index == 1")
    for image_path, mask_path in zip(tumours.image_path, tumours.mask_path, strict=True):
        assert Path(mask_path).parent.name == "annotation"
        assert Path(mask_path).name == Path(image_path).name.replace("_flair_", "_seg_")
    for index in range(len(datamodule.test_data)):
        item = datamodule.test_data[index]
        if item.gt_label:
            top, left = box(int(Path(item.image_path).stem.rsplit("_", 1)[1]))
            assert item.gt_mask.sum() == LESION * LESION
            assert item.gt_mask[top : top + LESION, left : left + LESION].all()
        else:
            assert not item.gt_mask.any()


def test_brats_missing_and_stray_annotations(tmp_path: Path) -> None:
    base = make_medianomaly_brats(tmp_path)
    (base / "test" / "annotation" / "BraTS2021_00201_seg_1.png").rename(
        base / "test" / "annotation" / "BraTS2021_00999_seg_1.png"
    )
    with pytest.raises(InvalidDatasetError) as error:
        _setup(root=tmp_path, category="BraTS2021")
    message = str(error.value)
    expected = base / "test" / "annotation" / "BraTS2021_00201_seg_1.png"
    assert f"BraTS2021_00201_flair_1.png: tumour slice has no annotation (expected {expected})" in message
    assert "BraTS2021_00999_seg_1.png: annotation has no tumour slice (no BraTS2021_00999_flair_1.png" in message


def test_camelyon16_folders(tmp_path: Path) -> None:
    make_medianomaly_folders(tmp_path)
    datamodule = _setup(root=tmp_path, category="camelyon16")
    assert datamodule.task == "classification"
    assert (len(datamodule.train_data), len(datamodule.test_data)) == (8, 8)
    assert len(_names(datamodule.test_data, 1)) == 4


# --------------------------------------------------------------------------------------------------
# YAML, CLI and benchmark
# --------------------------------------------------------------------------------------------------
def test_datamodule_yaml_and_cli(tmp_path: Path) -> None:
    make_medianomaly_brats(tmp_path, counts=(2, 1, 1))
    datamodule = AnomalibDataModule.from_config(
        REPO / "datamodules" / "medianomaly.yaml", **{"data.root": str(tmp_path), "data.category": "BraTS2021"}
    )
    assert type(datamodule) is MedIAnomaly
    assert (datamodule.root, datamodule.category, datamodule.val_split_mode.value) == (
        tmp_path,
        "BraTS2021",
        "same_as_test",
    )

    pytest.importorskip("anomalib_skipts.models")
    from anomalib.cli import AnomalibCLI

    args = ["--model", "SkipTS", "--model.pre_trained", "false", "--data", "anomalib_skipts.data.MedIAnomaly"]
    cli = AnomalibCLI(["train", *args, "--data.root", str(tmp_path), "--data.category", "BraTS2021"], run=False)
    assert isinstance(cli.datamodule, MedIAnomaly)
    assert cli.datamodule.layout == "brats"


def test_benchmark_config_lists_the_benchmarks() -> None:
    from anomalib_skipts.benchmark.config import load_config

    config = load_config(REPO / "configs" / "benchmark" / "medianomaly.yaml")
    categories = [dataset.init_args["category"] for dataset in config.datasets]
    assert categories == ["RSNA", "VinCXR", "BrainTumor", "LAG", "BraTS2021"]
    assert {dataset.class_path for dataset in config.datasets} == {"anomalib_skipts.data.MedIAnomaly"}


def test_benchmark_end_to_end_with_localisation_metrics(tmp_path: Path) -> None:
    pytest.importorskip("anomalib_skipts.models")
    from anomalib_skipts.benchmark.__main__ import main

    data = tmp_path / "MedIAnomaly-Data"
    make_medianomaly_brats(data)
    make_medianomaly_json(data, "RSNA")
    config = yaml.safe_load((REPO / "configs" / "benchmark" / "medianomaly.yaml").read_text())
    datasets = [entry for entry in config["datasets"] if entry["init_args"]["category"] in {"BraTS2021", "RSNA"}]
    for entry in datasets:
        entry["init_args"]["root"] = str(data)
    config.update(
        output_dir=str(tmp_path / "results"),
        protocol={"name": "smoke", "overlay_images": 2, "throughput_images": 4},
        models=["SkipTS"],
        seeds=[0],
        datasets=datasets,
    )
    path = tmp_path / "medianomaly.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["--config", str(path)]) == 0

    runs = pd.read_csv(tmp_path / "results" / "runs.csv").set_index("dataset")
    assert (runs["status"] == "ok").all(), runs.get("error")
    assert runs.loc["MedIAnomaly-BraTS2021", ["n_train", "n_test_normal", "n_test_abnormal"]].tolist() == [8, 4, 4]
    assert 0.0 <= runs.loc["MedIAnomaly-BraTS2021", "pixel_auroc"] <= 1.0  # masks -> localisation metric
    for metric in ("pixel_aupro", "pixel_dice"):  # AUPRO and Dice at 0.8 wherever masks exist
        assert math.isfinite(runs.loc["MedIAnomaly-BraTS2021", metric]), metric
        assert math.isnan(runs.loc["MedIAnomaly-RSNA", metric]), metric
    assert math.isnan(runs.loc["MedIAnomaly-RSNA", "pixel_auroc"])
    assert "Pixel AUROC" in (tmp_path / "results" / "summary.md").read_text()
