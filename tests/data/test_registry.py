"""Tests of the benchmark registry, the raw-layout loaders, the datamodules and their YAML configs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml
from anomalib import TaskType
from anomalib.data import AnomalibDataModule

from anomalib_skipts.data import (
    BUSI,
    DATAMODULES,
    DATASETS,
    IQOTHNCCD,
    BenchmarkDataModule,
    BrainMRI,
    CPChildA,
    CPChildB,
    HeadCT,
    InvalidDatasetError,
    MalariaCell,
    MedicalFolder,
    RetinalOCT,
    SplitCounts,
    get_datamodule,
    get_dataset,
)

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "datamodules"
FAST = {"num_workers": 0, "train_batch_size": 4, "eval_batch_size": 4}

# Table I of the journal paper, as SPEC.md gives it: ID -> (name, train, test normal, test abnormal).
TABLE_I = {
    1: ("HeadCT", 60, 40, 100),
    2: ("BrainMRI", 58, 40, 154),
    3: ("LungCT", 432, 145, 811),
    4: ("BUSI", 99, 34, 647),
    5: ("BreastMRI", 525, 175, 700),
    6: ("Retinal OCT", 542, 50, 735),
    7: ("CP-CHILD-A", 800, 800, 800),
    8: ("CP-CHILD-B", 800, 300, 300),
    9: ("NAFLD", 525, 1645, 2150),
    10: ("IQ-OTH/NCCD", 277, 139, 681),
    11: ("Covid-Xray", 70, 20, 132),
    12: ("Malaria-Cell", 344, 345, 330),
}


def _counts(datamodule: BenchmarkDataModule) -> tuple[int, int, int]:
    datamodule.setup()
    test = datamodule.test_data.samples
    return len(datamodule.train_data), int((test.label_index == 0).sum()), int((test.label_index == 1).sum())


# --------------------------------------------------------------------------------------------------
# Generated raw layouts (tiny images, the public downloads' folder and file names)
# --------------------------------------------------------------------------------------------------
def make_headct(files, root: str = "headct", nested: bool = False) -> Path:
    folder = f"{root}/head_ct/head_ct" if nested else f"{root}/head_ct"
    for index in range(200):
        files.image(f"{folder}/{index:03d}.png", mode="RGBA" if index % 17 == 0 else "RGB", size=(8, 6), seed=index)
    rows = "".join(f"{index},{1 if index < 100 else 0}\n" for index in range(200))
    files.text(f"{root}/labels.csv", "id, hemorrhage\n" + rows)
    return files.root / root


def make_brainmri(files, root: str = "brainmri", wrapper: str = "") -> Path:
    base = f"{root}/{wrapper}" if wrapper else root
    names_no = [f"{i} no.jpg" if i % 3 else f"N{i}.JPG" for i in range(90)] + [f"no {i}.png" for i in range(8)]
    names_yes = [f"Y{i}.jpg" if i % 4 else f"Y{i}.JPG" for i in range(150)] + [f"y{i}.Png" for i in range(5)]
    for index, name in enumerate(names_no):
        fmt = "PNG" if name.lower().endswith("png") else "JPEG"
        files.image(f"{base}/no/{name}", mode="L" if index % 2 else "RGB", size=(8, 7), seed=index, fmt=fmt)
    for index, name in enumerate(names_yes):
        fmt = "PNG" if name.lower().endswith("png") else "JPEG"
        files.image(f"{base}/yes/{name}", mode="RGB", size=(9, 7), seed=500 + index, fmt=fmt)
    return files.root / root


def make_busi(files, root: str = "busi", masks: bool = True) -> Path:
    base = f"{root}/Dataset_BUSI_with_GT"
    size = (12, 10)
    for cls, count in (("normal", 6), ("benign", 4), ("malignant", 3)):
        for index in range(1, count + 1):
            files.image(f"{base}/{cls}/{cls} ({index}).png", mode="L", size=size, seed=index)
            if masks:
                box = (0, 0, 0, 0) if cls == "normal" else (0, 0, 2, 2)
                files.mask(f"{base}/{cls}/{cls} ({index})_mask.png", size=size, box=box)
    if masks:
        files.mask(f"{base}/benign/benign (2)_mask_1.png", size=size, box=(8, 6, 10, 8))
    return files.root / root


def make_class_folders(files, folders: dict[str, int], root: str) -> Path:
    seed = 0
    for folder, count in folders.items():
        for index in range(count):
            seed += 1
            files.image(f"{root}/{folder}/img_{index}.jpg", mode="RGB", size=(8, 8), seed=seed, fmt="JPEG")
    return files.root / root


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------
def test_registry_has_table_i():
    assert [info.id for info in DATASETS.values()] == list(range(1, 13))
    for info in DATASETS.values():
        name, train, test_normal, test_abnormal = TABLE_I[info.id]
        assert info.name == name
        assert info.journal == SplitCounts(train, test_normal, test_abnormal)
        assert info.url.startswith("https://")
        assert info.modality
        assert info.disease
        assert info.layout
        assert info.reference
        if info.loader is None:
            assert "No loader" in info.notes  # says why, and how to use MedicalFolder instead
            assert info.key not in DATAMODULES
        else:
            assert issubclass(DATAMODULES[info.key], BenchmarkDataModule)


def test_loaders_exist_for_unambiguous_layouts():
    assert set(DATAMODULES) == {
        "headct",
        "brainmri",
        "busi",
        "retinal_oct",
        "cp_child_a",
        "cp_child_b",
        "iq_oth_nccd",
        "malaria_cell",
    }
    assert {key for key, info in DATASETS.items() if info.loader is None} == {
        "lungct",
        "breastmri",
        "nafld",
        "covid_xray",
    }


def test_conference_splits():
    assert DATASETS["headct"].split_counts("conference") == SplitCounts(90, 10, 100)
    assert DATASETS["brainmri"].split_counts("conference") == SplitCounts(88, 10, 154)
    assert DATASETS["headct"].split_counts() == SplitCounts(60, 40, 100)
    with pytest.raises(ValueError, match="CP-CHILD-A has no conference split"):
        DATASETS["cp_child_a"].split_counts("conference")
    with pytest.raises(ValueError, match="Unknown split"):
        DATASETS["headct"].split_counts("workshop")
    with pytest.raises(ValueError, match="no conference split"):
        MalariaCell(split="conference")


def test_lookup_by_key_name_or_id(tmp_path):
    assert get_dataset("headct") is get_dataset("HeadCT") is get_dataset(1) is get_dataset("1")
    assert get_dataset("cp-child-a").key == "cp_child_a"
    assert get_dataset("IQ-OTH/NCCD").id == 10
    with pytest.raises(KeyError, match="Unknown benchmark dataset"):
        get_dataset("mvtec")
    assert isinstance(get_datamodule("BUSI", root=tmp_path), BUSI)
    with pytest.raises(KeyError, match="LungCT has no loader"):
        get_datamodule("lungct")


# --------------------------------------------------------------------------------------------------
# HeadCT
# --------------------------------------------------------------------------------------------------
def test_headct_table_i_and_conference_splits(files):
    root = make_headct(files)
    assert _counts(HeadCT(root=root, **FAST)) == (60, 40, 100)
    assert _counts(HeadCT(root=root, split="conference", **FAST)) == (90, 10, 100)
    datamodule = HeadCT(root=root, **FAST)
    datamodule.setup()
    assert datamodule.name == "HeadCT"
    assert datamodule.task == TaskType.CLASSIFICATION
    assert len(datamodule.val_data) == 140  # same_as_test: Table I's test counts are kept
    labels = dict(zip(datamodule.test_data.samples["key"], datamodule.test_data.samples["label_index"], strict=True))
    assert labels["head_ct/000.png"] == 1  # labels.csv: id 0 has hemorrhage
    assert all(labels[key] == 0 for key in labels if int(Path(key).stem) >= 100)


def test_headct_accepts_the_kaggle_nesting_and_overrides(files):
    root = make_headct(files, nested=True)
    assert _counts(HeadCT(root=root, num_train=50, num_test_normal=20, num_test_abnormal=30, **FAST)) == (50, 20, 30)


def test_headct_label_problems_are_listed_together(files, caplog):
    root = make_headct(files)
    (root / "head_ct" / "150.png").unlink()  # labels.csv names an image that is missing
    files.image("headct/head_ct/250.png", size=(8, 6))  # an image without a label
    files.image("headct/head_ct/copy of 003.png", size=(8, 6))  # a name that is not an id
    with (root / "labels.csv").open("a") as labels:
        labels.write("7,1\n")  # id 7 labelled twice
        labels.write("x,2\n")  # malformed
    with pytest.raises(InvalidDatasetError) as error:
        HeadCT(root=root, **FAST).setup()
    message = str(error.value)
    assert "5 problems" in message
    assert "labels id 150, but there is no image 150.png" in message
    assert "250.png: image has no label" in message
    assert "copy of 003.png: file name is not a numeric id" in message
    assert "id 7 is labelled twice" in message
    assert "malformed row" in message
    assert "skip_invalid=True" in message
    # Left out explicitly, one warning each; 99 normal images remain for 60 + 39.
    with caplog.at_level(logging.WARNING):
        assert _counts(HeadCT(root=root, skip_invalid=True, num_test_normal=39, **FAST)) == (60, 39, 100)
    assert caplog.text.count("leaving out") == 5


def test_headct_missing_labels_file_or_root(files, tmp_path):
    root = make_headct(files)
    (root / "labels.csv").unlink()
    with pytest.raises(InvalidDatasetError, match=r"labels\.csv: labels file does not exist"):
        HeadCT(root=root, skip_invalid=True, **FAST).setup()
    with pytest.raises(InvalidDatasetError) as error:
        HeadCT(root=tmp_path / "not_downloaded", **FAST).setup()
    message = str(error.value)
    assert "HeadCT image folder does not exist" in message
    assert "kaggle.com/datasets/felipekitamura/head-ct-hemorrhage" in message  # where to download
    assert "labels.csv: header 'id, hemorrhage'" in message  # and the expected layout


def test_default_root_is_under_datasets():
    assert HeadCT().root == Path("datasets/headct")
    assert DATASETS["busi"].default_root == Path("datasets/busi")


# --------------------------------------------------------------------------------------------------
# BrainMRI
# --------------------------------------------------------------------------------------------------
def test_brainmri_table_i_takes_154_of_155_by_seed(files):
    root = make_brainmri(files)
    assert _counts(BrainMRI(root=root, **FAST)) == (58, 40, 154)
    assert _counts(BrainMRI(root=root, split="conference", **FAST)) == (88, 10, 154)

    def left_out(seed: int) -> set[str]:
        samples = BrainMRI(root=root, split_seed=seed, **FAST).prepare_samples()
        return {f"yes/{path.name}" for path in (root / "yes").iterdir()} - set(samples["key"])

    assert len(left_out(0)) == 1
    assert left_out(0) == left_out(0)
    assert any(left_out(seed) != left_out(0) for seed in range(1, 6))


def test_brainmri_inside_brain_tumor_dataset_folder(files):
    root = make_brainmri(files, wrapper="brain_tumor_dataset")
    assert _counts(BrainMRI(root=root, **FAST)) == (58, 40, 154)


def test_brainmri_split_is_the_same_as_medical_folder(files):
    root = make_brainmri(files)
    benchmark = BrainMRI(root=root, **FAST).prepare_samples()
    folder = MedicalFolder(
        name="BrainMRI",
        root=root,
        normal_dir="no",
        abnormal_dir="yes",
        num_train=58,
        num_test_normal=40,
        num_test_abnormal=154,
        **FAST,
    ).prepare_samples()
    assert benchmark[["key", "split"]].equals(folder[["key", "split"]])  # one mechanism


# --------------------------------------------------------------------------------------------------
# BUSI
# --------------------------------------------------------------------------------------------------
def test_busi_masks_beside_images(files):
    root = make_busi(files)
    datamodule = BUSI(root=root, num_train=4, num_test_normal=2, num_test_abnormal=7, **FAST)
    assert _counts(datamodule) == (4, 2, 7)
    assert datamodule.task == TaskType.SEGMENTATION
    used = [*datamodule.train_data.samples["image_path"], *datamodule.test_data.samples["image_path"]]
    assert not any("_mask" in Path(path).name for path in used)  # masks are never taken as images
    masks = {Path(item.image_path).name: int(item.gt_mask.sum()) for item in datamodule.test_data}
    assert masks["benign (1).png"] == 4
    assert masks["benign (2).png"] == 8  # '_mask' OR '_mask_1'
    assert all(masks[name] == 0 for name in masks if name.startswith("normal"))
    with pytest.raises(Exception, match="needs 99 normal training"):
        BUSI(root=root, **FAST).setup()  # Table I needs the full download


def test_busi_without_masks_is_classification(files):
    root = make_busi(files, masks=False)
    datamodule = BUSI(root=root, num_train=4, num_test_normal=2, num_test_abnormal=7, **FAST)
    assert _counts(datamodule) == (4, 2, 7)
    assert datamodule.task == TaskType.CLASSIFICATION


# --------------------------------------------------------------------------------------------------
# Class-folder datasets
# --------------------------------------------------------------------------------------------------
def test_retinal_oct_pools_normal_and_dme(files):
    root = make_class_folders(
        files,
        {
            "OCT2017/train/NORMAL": 6,
            "OCT2017/train/DME": 4,
            "OCT2017/train/CNV": 5,
            "OCT2017/test/NORMAL": 2,
            "OCT2017/test/DME": 2,
        },
        "oct",
    )
    assert _counts(RetinalOCT(root=root, num_train=5, num_test_normal=3, num_test_abnormal=6, **FAST)) == (5, 3, 6)
    samples = RetinalOCT(root=root, num_train=5, num_test_normal=3, num_test_abnormal=6, **FAST).prepare_samples()
    assert not samples["key"].str.contains("CNV").any()


def make_kermany_oct(files, root: str = "oct") -> Path:
    """Kermany's names: 3 images per patient; 12 DME patients also have NORMAL images, some in test/."""
    seed = 0
    for cls, patients in (("NORMAL", range(1000, 1060)), ("DME", range(1048, 1088)), ("CNV", range(1000, 1010))):
        for patient in patients:
            for index in range(1, 4):
                seed += 1
                folder = "test" if patient % 7 == 0 and index == 3 else "train"
                path = f"{root}/OCT2017/{folder}/{cls}/{cls}-{patient}-{index}.jpeg"
                files.image(path, mode="L", size=(8, 8), seed=seed, fmt="JPEG")
    return files.root / root


def _patients(samples, split: str) -> set[str]:
    names = samples.loc[samples["split"] == split, "image_path"]
    return {Path(name).name.split("-")[1] for name in names}


def test_retinal_oct_splits_by_patient(files):
    root = make_kermany_oct(files)
    for seed in range(3):
        samples = RetinalOCT(
            root=root, num_train=100, num_test_normal=30, num_test_abnormal=50, split_seed=seed, **FAST
        ).prepare_samples()
        counts = samples.groupby(["split", "label_index"]).size().to_dict()
        assert counts == {("train", 0): 100, ("test", 0): 30, ("test", 1): 50}
        assert not _patients(samples, "train") & _patients(samples, "test")  # DME patients included
        assert samples.groupby("split")["patient"].nunique()["train"] >= 100 // 3

    # The same tree split image by image (no patient pattern) puts patients on both sides.
    per_image = MedicalFolder(
        name="oct",
        root=root / "OCT2017",
        normal_dir=["train/NORMAL", "test/NORMAL"],
        abnormal_dir=["train/DME", "test/DME"],
        num_train=100,
        num_test_normal=30,
        num_test_abnormal=50,
        **FAST,
    ).prepare_samples()
    assert _patients(per_image, "train") & _patients(per_image, "test")


def test_patient_split_stays_close_to_the_requested_fractions(files):
    root = make_kermany_oct(files)
    arguments = {
        "name": "oct",
        "root": root / "OCT2017",
        "normal_dir": ["train/NORMAL", "test/NORMAL"],
        "abnormal_dir": ["train/DME", "test/DME"],
        "patient_pattern": DATASETS["retinal_oct"].patient_pattern,
        **FAST,
    }
    normal = 180
    for kwargs, expected_test in (
        ({"normal_split_ratio": 0.2}, round(0.2 * normal)),
        ({"normal_split_ratio": 0.5}, round(0.5 * normal)),
        ({"num_test_normal": 40}, 40),
        ({"num_train": 120}, None),
    ):
        for seed in range(3):
            samples = MedicalFolder(split_seed=seed, **arguments, **kwargs).prepare_samples()
            assert not _patients(samples, "train") & _patients(samples, "test")
            normal_samples = samples[samples["label_index"] == 0]
            n_test = int((normal_samples["split"] == "test").sum())
            n_train = int((normal_samples["split"] == "train").sum())
            if "num_train" in kwargs:
                assert n_train == 120
            if "num_test_normal" in kwargs:
                assert n_test == 40
            if expected_test is not None:
                assert abs(n_test - expected_test) <= 3  # within one patient's images
            # patients of abnormal test images may only be tested: at most their 12 * 3 images unused
            assert n_train + n_test >= normal - 3 * 12 - 3


def test_patient_pattern_errors_are_clear(files):
    root = make_kermany_oct(files)
    with pytest.raises(ValueError, match="needs a group named 'patient'"):
        MedicalFolder(name="oct", root=root, normal_dir="OCT2017/train/NORMAL", patient_pattern=r"-(\d+)-")
    with pytest.raises(ValueError, match="is not a regular expression"):
        MedicalFolder(name="oct", root=root, normal_dir="OCT2017/train/NORMAL", patient_pattern="(?P<patient>")


def test_cp_child_a_and_b_from_the_common_parent(files):
    root = make_class_folders(
        files,
        {
            "CP-CHILD-A/Train/Non-Polyp": 5,
            "CP-CHILD-A/Train/Polyp": 2,
            "CP-CHILD-A/Test/Non-Polyp": 3,
            "CP-CHILD-A/Test/Polyp": 1,
            "CP-CHILD-B/Train/Non-Polyp": 4,
            "CP-CHILD-B/Train/Polyp": 3,
        },
        "cp_child",
    )
    assert _counts(CPChildA(root=root, num_train=6, num_test_normal=2, num_test_abnormal=3, **FAST)) == (6, 2, 3)
    assert _counts(CPChildB(root=root, num_train=3, num_test_normal=1, num_test_abnormal=3, **FAST)) == (3, 1, 3)
    assert _counts(CPChildA(root=root / "CP-CHILD-A", num_train=6, num_test_normal=2, num_test_abnormal=3, **FAST)) == (
        6,
        2,
        3,
    )


def test_iq_oth_nccd_benign_and_malignant_are_abnormal(files):
    root = make_class_folders(
        files,
        {
            "The IQ-OTHNCCD lung cancer dataset/Normal cases": 6,
            "The IQ-OTHNCCD lung cancer dataset/Bengin cases": 2,
            "The IQ-OTHNCCD lung cancer dataset/Malignant cases": 3,
        },
        "iq",
    )
    assert _counts(IQOTHNCCD(root=root, num_train=4, num_test_normal=2, num_test_abnormal=5, **FAST)) == (4, 2, 5)


def test_malaria_ignores_the_nested_copy_and_thumbs_db(files, caplog):
    root = make_class_folders(
        files,
        {
            "cell_images/Parasitized": 4,
            "cell_images/Uninfected": 6,
            "cell_images/cell_images/Parasitized": 4,
            "cell_images/cell_images/Uninfected": 6,
        },
        "malaria",
    )
    files.text("malaria/cell_images/Parasitized/Thumbs.db")
    with caplog.at_level(logging.INFO):
        assert _counts(MalariaCell(root=root, num_train=4, num_test_normal=2, num_test_abnormal=4, **FAST)) == (4, 2, 4)
    assert "nested copy" in caplog.text
    assert "Thumbs.db" in caplog.text


def test_class_folder_layout_not_found(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidDatasetError, match=r"no normal-class folder \(Uninfected\) found") as error:
        MalariaCell(root=tmp_path / "empty", **FAST).setup()
    assert "cell_images/{Uninfected,Parasitized}" in str(error.value)


# --------------------------------------------------------------------------------------------------
# YAML configs and the CLI
# --------------------------------------------------------------------------------------------------
def test_one_yaml_per_datamodule():
    names = {path.stem for path in CONFIGS.glob("*.yaml")}
    assert set(DATAMODULES) <= names
    for key, cls in DATAMODULES.items():
        config = yaml.safe_load((CONFIGS / f"{key}.yaml").read_text())
        assert config["class_path"] == f"anomalib_skipts.data.{cls.__name__}"
        assert config["init_args"]["split"] == "journal"
        assert config["init_args"]["train_batch_size"] == 16  # the paper's batch size
        expected_root = f"../shared/data/{key}" if key in {"headct", "brainmri"} else f"./datasets/{key}"
        assert config["init_args"]["root"] == expected_root


@pytest.mark.parametrize("key", sorted(DATAMODULES))
def test_yaml_configs_instantiate_with_a_root_override(key, tmp_path):
    datamodule = AnomalibDataModule.from_config(CONFIGS / f"{key}.yaml", **{"data.root": str(tmp_path)})
    assert type(datamodule) is DATAMODULES[key]
    assert datamodule.root == tmp_path
    assert datamodule.train_batch_size == 16
    assert datamodule.val_split_mode.value == "same_as_test"


def test_cli_parses_a_datamodule_yaml_with_overrides(files):
    pytest.importorskip("anomalib_skipts.models")
    from anomalib.cli import AnomalibCLI

    root = make_headct(files)
    cli = AnomalibCLI(
        [
            "train",
            "--model",
            "SkipTS",
            "--model.backbone",
            "resnet18",
            "--model.pre_trained",
            "false",
            "--data",
            str(CONFIGS / "headct.yaml"),
            "--data.root",
            str(root),
            "--data.split",
            "conference",
            "--data.dicom_window",
            "[40, 80]",
            "--data.num_workers",
            "0",
        ],
        run=False,
    )
    assert isinstance(cli.datamodule, HeadCT)
    assert cli.datamodule.root == root
    assert cli.datamodule.dicom_window == (40.0, 80.0)
    assert _counts(cli.datamodule) == (90, 10, 100)
