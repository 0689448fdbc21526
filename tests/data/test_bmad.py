"""BMAD read in place: both distributed layouts, BMAD's valid split, masks by name, no download, benchmark."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from anomalib.data import AnomalibDataModule
from anomalib.data.datamodules.image import bmad as anomalib_bmad
from anomalib.data.datasets.image.bmad import CATEGORIES
from PIL import Image

from anomalib_skipts.data import BMAD, BMAD_CATEGORIES, InvalidDatasetError

from .generated_layouts import LESION, SIZE, box, make_bmad_category

REPO = Path(__file__).resolve().parents[2]
FAST = {"num_workers": 0, "train_batch_size": 4, "eval_batch_size": 4}


def _paths(dataset) -> list[str]:
    return [Path(path).relative_to(Path(path).parents[3]).as_posix() for path in dataset.samples.image_path]


# --------------------------------------------------------------------------------------------------
# Datamodule
# --------------------------------------------------------------------------------------------------
def test_pixel_level_category_uses_bmad_valid_split_and_masks_by_name(tmp_path: Path) -> None:
    root = make_bmad_category(tmp_path / "BMAD", "Brain")
    datamodule = BMAD(root=root, category="Brain", **FAST)
    datamodule.setup()

    assert datamodule.task == "segmentation"
    assert (len(datamodule.train_data), len(datamodule.val_data), len(datamodule.test_data)) == (8, 6, 8)
    assert all("/train/good/img/" in path for path in datamodule.train_data.samples.image_path)
    assert all("/valid/" in path for path in datamodule.val_data.samples.image_path)  # BMAD's own split
    assert all("/test/" in path for path in datamodule.test_data.samples.image_path)
    abnormal = datamodule.test_data.samples.query("label_index == 1")
    for image_path, mask_path in zip(abnormal.image_path, abnormal.mask_path, strict=True):
        assert mask_path == image_path.replace("/img/", "/label/")

    for dataset in (datamodule.val_data, datamodule.test_data):
        for index in range(len(dataset)):
            item = dataset[index]
            assert item.image.shape == (3, SIZE, SIZE)
            assert item.gt_mask.shape == (SIZE, SIZE)
            if item.gt_label:
                top, left = box(int(Path(item.image_path).stem[-3:]))
                assert item.gt_mask.sum() == LESION * LESION
                assert item.gt_mask[top : top + LESION, left : left + LESION].all()
            else:
                assert not item.gt_mask.any()


@pytest.mark.parametrize("img_folder", [False, True], ids=["bmad-archive", "anomalib-copy"])
def test_image_level_category_in_both_layouts(tmp_path: Path, img_folder: bool) -> None:
    # anomalib 2.7's own BMAD finds no test image in the first layout and fails on the second.
    root = make_bmad_category(tmp_path, "Chest", masks=False, img_folder=img_folder)
    datamodule = BMAD(root=root, category="Chest", **FAST)
    datamodule.setup()
    assert datamodule.task == "classification"
    assert (len(datamodule.train_data), len(datamodule.val_data), len(datamodule.test_data)) == (8, 6, 8)
    labels = [bool(datamodule.test_data[index].gt_label) for index in range(len(datamodule.test_data))]
    assert sorted(labels) == [False] * 4 + [True] * 4
    assert datamodule.test_data[0].gt_mask is None


def test_other_val_split_modes_do_not_read_valid(tmp_path: Path) -> None:
    root = make_bmad_category(tmp_path, "Liver")
    (root / "Liver" / "valid" / "good" / "img" / "valid_good_000.png").write_bytes(b"")  # broken, but unused
    datamodule = BMAD(root=root, category="Liver", val_split_mode="same_as_test", **FAST)
    datamodule.setup()
    assert _paths(datamodule.val_data) == _paths(datamodule.test_data)
    with pytest.raises(InvalidDatasetError, match=r"valid_good_000\.png: empty file"):
        BMAD(root=root, category="Liver", **FAST).setup()


def test_missing_valid_folder_with_from_dir(tmp_path: Path) -> None:
    root = make_bmad_category(tmp_path, "Retina_RESC")
    for path in sorted((root / "Retina_RESC" / "valid").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (root / "Retina_RESC" / "valid").rmdir()
    with pytest.raises(InvalidDatasetError, match=r"valid: folder does not exist \(BMAD's validation split"):
        BMAD(root=root, category="Retina_RESC", **FAST).setup()


def test_every_problem_in_one_error_or_left_out(tmp_path: Path) -> None:
    root = make_bmad_category(tmp_path, "Brain")
    test = root / "Brain" / "test"
    (test / "Ungood" / "label" / "test_Ungood_001.png").unlink()  # abnormal image without its mask
    Image.new("L", (SIZE, SIZE)).save(test / "Ungood" / "label" / "stray.png")  # mask without image
    (test / "good" / "img" / "test_good_002.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # truncated
    (test / "bad").mkdir()  # not a BMAD class folder

    with pytest.raises(InvalidDatasetError) as error:
        BMAD(root=root, category="Brain", **FAST).setup()
    message = str(error.value)
    assert "BMAD Brain: 4 problems found" in message
    assert "test_Ungood_001.png: abnormal image has no mask" in message
    assert "stray.png: mask has no image" in message
    assert "test_good_002.png" in message
    assert "test/bad: unexpected folder" in message
    assert "skip_invalid=True" in message

    datamodule = BMAD(root=root, category="Brain", skip_invalid=True, **FAST)
    datamodule.setup()
    names = {Path(path).name for path in datamodule.test_data.samples.image_path}
    assert len(names) == 6
    assert not names & {"test_Ungood_001.png", "test_good_002.png"}


# --------------------------------------------------------------------------------------------------
# Local root, no download
# --------------------------------------------------------------------------------------------------
def test_nothing_is_downloaded_when_the_data_is_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(anomalib_bmad, "download_and_extract", lambda root, info: calls.append(root))
    root = make_bmad_category(tmp_path / "BMAD", "Brain")
    for kwargs in ({}, {"download": True}):
        datamodule = BMAD(root=root, category="Brain", **kwargs, **FAST)
        datamodule.prepare_data()
        datamodule.setup()
    assert calls == []

    missing = BMAD(root=root, category="Liver", **FAST)
    missing.prepare_data()
    assert calls == []
    with pytest.raises(InvalidDatasetError) as error:
        missing.setup()
    assert "no Liver folder found (nothing is downloaded unless download=True)" in str(error.value)
    assert "valid/Ungood/label/*.png" in str(error.value)  # the expected layout

    BMAD(root=root, category="Liver", download=True, **FAST).prepare_data()
    assert calls == [root]  # anomalib's download, only when asked and missing


def test_category_names_aliases_and_root_as_category_folder(tmp_path: Path) -> None:
    assert set(BMAD_CATEGORIES) == set(CATEGORIES)  # anomalib's category names
    assert {name for name, info in BMAD_CATEGORIES.items() if info.masks} == {"Brain", "Liver", "Retina_RESC"}
    make_bmad_category(tmp_path, "Brain_AD", counts=(2, 1, 1))  # a folder name of BMAD's archive
    for root, category in ((tmp_path, "brats2021"), (tmp_path, "Brain"), (tmp_path / "Brain_AD", "Brain")):
        datamodule = BMAD(root=root, category=category, **FAST)
        assert datamodule.category == "Brain"
        datamodule.setup()
        assert len(datamodule.train_data) == 2
    with pytest.raises(ValueError, match=r"Unknown BMAD category 'Kidney'; BMAD's categories are Brain \(BraTS2021\)"):
        BMAD(root=tmp_path, category="Kidney")


# --------------------------------------------------------------------------------------------------
# YAML, CLI and benchmark
# --------------------------------------------------------------------------------------------------
def test_datamodule_yaml_and_cli(tmp_path: Path) -> None:
    root = make_bmad_category(tmp_path, "Liver", counts=(2, 1, 1))
    datamodule = AnomalibDataModule.from_config(
        REPO / "datamodules" / "bmad.yaml", **{"data.root": str(root), "data.category": "Liver"}
    )
    assert type(datamodule) is BMAD
    assert (datamodule.root, datamodule.category, datamodule.val_split_mode.value) == (root, "Liver", "from_dir")

    pytest.importorskip("anomalib_skipts.models")
    from anomalib.cli import AnomalibCLI

    args = ["--model", "SkipTS", "--model.pre_trained", "false", "--data", "anomalib_skipts.data.BMAD"]
    cli = AnomalibCLI(["train", *args, "--data.root", str(root), "--data.category", "Liver"], run=False)
    assert isinstance(cli.datamodule, BMAD)
    assert cli.datamodule.category_dir == root / "Liver"


def _benchmark_yaml(tmp_path: Path, root: Path, categories: list[str]) -> Path:
    """The shipped ``configs/benchmark/bmad.yaml`` narrowed to a tiny run on the generated tree."""
    config = yaml.safe_load((REPO / "configs" / "benchmark" / "bmad.yaml").read_text())
    datasets = [entry for entry in config["datasets"] if entry["init_args"]["category"] in categories]
    for entry in datasets:
        entry["init_args"]["root"] = str(root)
    config.update(
        output_dir=str(tmp_path / "results"),
        protocol={"name": "smoke", "run_validation": True, "overlay_images": 2, "throughput_images": 4},
        models=["SkipTS"],
        seeds=[0],
        datasets=datasets,
    )
    path = tmp_path / "bmad.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_benchmark_config_has_the_six_categories_and_validates_on_valid() -> None:
    from anomalib_skipts.benchmark.adapters import build_datamodule
    from anomalib_skipts.benchmark.config import load_config

    config = load_config(REPO / "configs" / "benchmark" / "bmad.yaml")
    assert sorted(dataset.init_args["category"] for dataset in config.datasets) == sorted(CATEGORIES)
    for run in config.runs()[: len(config.datasets)]:
        datamodule = build_datamodule(run)
        assert isinstance(datamodule, BMAD)
        assert datamodule.val_split_mode.value == "from_dir"  # not the benchmark's same_as_test default


def test_benchmark_end_to_end_with_localisation_metrics(tmp_path: Path) -> None:
    pytest.importorskip("anomalib_skipts.models")
    from anomalib_skipts.benchmark.__main__ import main

    root = make_bmad_category(tmp_path / "BMAD", "Brain")
    make_bmad_category(tmp_path / "BMAD", "Chest", masks=False, img_folder=False)
    assert main(["--config", str(_benchmark_yaml(tmp_path, tmp_path / "BMAD", ["Brain", "Chest"]))]) == 0

    runs = pd.read_csv(tmp_path / "results" / "runs.csv").set_index("dataset")
    assert set(runs.index) == {"BMAD-Brain", "BMAD-Chest"}
    assert (runs["status"] == "ok").all(), runs.get("error")
    assert (runs["n_train"] == 8).all()
    assert (runs["n_test_abnormal"] == 4).all()
    assert 0.0 <= runs.loc["BMAD-Brain", "pixel_auroc"] <= 1.0  # masks -> localisation metric
    for metric in ("pixel_aupro", "pixel_dice"):  # AUPRO and Dice at 0.8 wherever masks exist
        assert math.isfinite(runs.loc["BMAD-Brain", metric]), metric
        assert math.isnan(runs.loc["BMAD-Chest", metric]), metric
    assert math.isnan(runs.loc["BMAD-Chest", "pixel_auroc"])  # image labels only
    assert "Pixel AUROC" in (tmp_path / "results" / "summary.md").read_text()
    assert root.is_dir()
