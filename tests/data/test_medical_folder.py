"""Tests of the medical-folder dataset and datamodule (generated files, CPU, fast)."""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib import TaskType
from anomalib.data import AnomalibDataModule, AnomalibDataset
from anomalib.data.dataclasses import ImageBatch
from torchvision.transforms.v2 import Resize
from torchvision.tv_tensors import Image as ImageTensor

from anomalib_skipts.data import (
    InvalidDatasetError,
    MedicalFolder,
    MedicalFolderDataset,
    SplitError,
)
from anomalib_skipts.data.medical_folder import assign_split, make_medical_folder_samples, validate_samples


def _datamodule(root: Path, **kwargs) -> MedicalFolder:
    arguments = {
        "name": "test",
        "root": root,
        "normal_dir": "normal",
        "abnormal_dir": "abnormal",
        "num_workers": 0,
        "train_batch_size": 4,
        "eval_batch_size": 4,
        "val_split_mode": "same_as_test",
    }
    arguments.update(kwargs)
    return MedicalFolder(**arguments)


def _split_of(datamodule: MedicalFolder) -> dict[str, str]:
    samples = datamodule.prepare_samples()
    return dict(zip(samples["key"], samples["split"], strict=True))


# --------------------------------------------------------------------------------------------------
# Finding files
# --------------------------------------------------------------------------------------------------
def test_is_an_anomalib_datamodule_and_dataset(medical_tree):
    datamodule = _datamodule(medical_tree, num_train=6)
    datamodule.setup()
    assert isinstance(datamodule, AnomalibDataModule)
    assert isinstance(datamodule.train_data, MedicalFolderDataset)
    assert isinstance(datamodule.train_data, AnomalibDataset)
    assert datamodule.name == "test"
    assert datamodule.task == TaskType.CLASSIFICATION


def test_messy_names_spaces_and_mixed_case_extensions_are_found(medical_tree, files, caplog):
    files.text("data/normal/Thumbs.db")
    files.text("data/normal/.DS_Store")
    samples, problems = make_medical_folder_samples("normal", root=medical_tree, abnormal_dir="abnormal")
    assert problems == []
    names = {Path(path).name for path in samples["image_path"]}
    assert {"0 no.jpg", "N1.JPG", "no 2.png", "n3.Png", "Y0 tumour.PNG"} <= names
    assert (samples["label_index"] == 0).sum() == 10
    assert (samples["label_index"] == 1).sum() == 6
    assert all(Path(path).is_absolute() for path in samples["image_path"])
    assert "Thumbs.db" not in names
    assert ".DS_Store" not in names
    assert "Ignoring 2 hidden or system file(s)" in caplog.text  # ignored, but never silently


def test_extensions_are_case_insensitive_and_restrictable(medical_tree):
    samples, problems = make_medical_folder_samples("normal", root=medical_tree, extensions=[".PNG"])
    assert len(samples) == 4  # 'no 2.png', 'n3.Png', 'no 6.png', 'n7.Png'
    # The six JPEGs are then reported, not dropped silently.
    assert len(problems) == 6
    assert all("not an image file" in problem.reason for problem in problems)


def test_items_are_float_rgb_images_for_every_mode(medical_tree):
    datamodule = _datamodule(medical_tree, num_train=6)
    datamodule.setup()
    for dataset in (datamodule.train_data, datamodule.test_data):
        for index in range(len(dataset)):
            item = dataset[index]
            assert isinstance(item.image, ImageTensor)
            assert item.image.dtype == torch.float32
            assert item.image.shape[0] == 3
            assert 0.0 <= float(item.image.min()) <= float(item.image.max()) <= 1.0
            assert item.gt_mask is None


def test_dataset_reads_16bit_and_dicom_files(files):
    values = np.full((8, 8), 1000, dtype=np.uint16)
    files.png("d/normal/a16.png", values)
    files.png("d/normal/b16.png", values * 2)
    files.dicom("d/normal/c.dcm", np.full((8, 8), 40, dtype=np.int16), intercept=0.0, window=(40.0, 81.0))
    files.dicom("d/abnormal/IM0001", np.full((8, 8), 80, dtype=np.int16), window=(40.0, 81.0))
    datamodule = _datamodule(files.root / "d", num_train=2, num_test_normal=1)
    datamodule.setup()
    every = {Path(item.image_path).name: item.image for item in [*datamodule.train_data, *datamodule.test_data]}
    assert set(every) == {"a16.png", "b16.png", "c.dcm", "IM0001"}
    assert float(every["a16.png"][0, 0, 0]) == pytest.approx(1000 / 65535)
    assert float(every["c.dcm"][0, 0, 0]) == pytest.approx(0.5, abs=0.01)  # window centre
    assert float(every["IM0001"][0, 0, 0]) == 1.0  # extension-less DICOM, above the window
    brain = _datamodule(files.root / "d", num_train=2, num_test_normal=1, dicom_window=(80.0, 41.0))
    brain.setup()
    item = next(item for item in brain.test_data if item.image_path.endswith("IM0001"))
    assert float(item.image[0, 0, 0]) == pytest.approx(0.5, abs=0.02)  # the overriding window applies


# --------------------------------------------------------------------------------------------------
# Split
# --------------------------------------------------------------------------------------------------
def test_split_by_count(medical_tree):
    datamodule = _datamodule(medical_tree, num_train=6, num_test_normal=3, num_test_abnormal=4)
    datamodule.setup()
    train, test = datamodule.train_data.samples, datamodule.test_data.samples
    assert len(train) == 6
    assert (train["label_index"] == 0).all()
    assert (train["split"] == "train").all()
    assert (test["label_index"] == 0).sum() == 3
    assert (test["label_index"] == 1).sum() == 4
    assert (test["split"] == "test").all()
    assert not set(train["image_path"]) & set(test["image_path"])


def test_split_by_ratio(medical_tree):
    split = _split_of(_datamodule(medical_tree, normal_split_ratio=0.3))
    normal = [key for key in split if key.startswith("normal/")]
    assert sum(split[key] == "test" for key in normal) == 3
    assert sum(split[key] == "train" for key in normal) == 7
    assert sum(value == "test" for key, value in split.items() if key.startswith("abnormal/")) == 6


def test_split_is_reproducible_and_seeded(medical_tree, tmp_path):
    first = _split_of(_datamodule(medical_tree, num_train=5, num_test_normal=5, num_test_abnormal=3))
    again = _split_of(_datamodule(medical_tree, num_train=5, num_test_normal=5, num_test_abnormal=3))
    assert first == again
    # Bit for bit the same wherever the dataset lives.
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(medical_tree, moved)
    assert _split_of(_datamodule(moved, num_train=5, num_test_normal=5, num_test_abnormal=3)) == first
    # A different seed gives a different (but again reproducible) split.
    other = _split_of(_datamodule(medical_tree, num_train=5, num_test_normal=5, num_test_abnormal=3, split_seed=1))
    assert other != first
    assert other == _split_of(
        _datamodule(medical_tree, num_train=5, num_test_normal=5, num_test_abnormal=3, split_seed=1)
    )


def test_split_values_are_pinned(medical_tree):
    """The order is documented (SHA-256 of "<seed>:<key>"): recompute it here and pin the result."""
    split = _split_of(_datamodule(medical_tree, num_train=3, num_test_normal=2, num_test_abnormal=2))
    keys = [key for key in split if key.startswith("normal/")]
    order = sorted(keys, key=lambda key: (hashlib.sha256(f"0:{key}".encode()).hexdigest(), key))
    assert order[:2] == ["normal/N1.JPG", "normal/N9.JPG"]
    assert sorted(key for key, value in split.items() if value == "test" and key in keys) == order[:2]
    assert sorted(key for key, value in split.items() if value == "train") == sorted(order[2:5])
    assert sorted(order[2:5]) == ["normal/0 no.jpg", "normal/4 no.jpg", "normal/n7.Png"]


def test_counts_that_cannot_be_satisfied_give_the_numbers(medical_tree):
    with pytest.raises(SplitError, match=r"12 normal training \+ 3 normal test = 15 images, but only 10 valid normal"):
        _datamodule(medical_tree, num_train=12, num_test_normal=3).setup()
    with pytest.raises(SplitError, match=r"60 normal training images, but only 10"):
        _datamodule(medical_tree, num_train=60).setup()
    with pytest.raises(SplitError, match=r"cannot take 7 abnormal test images from the 6 available"):
        _datamodule(medical_tree, num_train=5, num_test_abnormal=7).setup()
    with pytest.raises(SplitError, match="no normal images are left for training"):
        _datamodule(medical_tree, num_train=0).setup()
    with pytest.raises(ValueError, match="num_train must be a non-negative integer"):
        _datamodule(medical_tree, num_train=-1)
    with pytest.raises(ValueError, match="normal_split_ratio"):
        _datamodule(medical_tree, normal_split_ratio=1.5)


def test_normal_test_dir_keeps_a_predefined_split(medical_tree, files):
    for index in range(4):
        files.image(f"data/normal_test/t{index}.png", seed=50 + index)
    datamodule = _datamodule(medical_tree, normal_test_dir="normal_test", num_train=8)
    datamodule.setup()
    assert len(datamodule.train_data) == 8
    test_normal = datamodule.test_data.samples.query("label_index == 0")
    assert sorted(Path(path).name for path in test_normal["image_path"]) == [f"t{index}.png" for index in range(4)]


def test_anomalib_val_split_modes_keep_working(medical_tree):
    same = _datamodule(medical_tree, num_train=4, num_test_normal=6, val_split_mode="same_as_test")
    same.setup()
    assert len(same.val_data) == len(same.test_data) == 12
    from_test = _datamodule(
        medical_tree, num_train=4, num_test_normal=6, val_split_mode="from_test", val_split_ratio=0.5
    )
    from_test.setup()
    assert len(from_test.val_data) + len(from_test.test_data) == 12
    assert from_test.val_data.has_normal
    assert from_test.val_data.has_anomalous
    again = _datamodule(medical_tree, num_train=4, num_test_normal=6, val_split_mode="from_test", val_split_ratio=0.5)
    again.setup()
    assert list(again.val_data.samples["image_path"]) == list(from_test.val_data.samples["image_path"])
    from_train = _datamodule(medical_tree, num_train=8, val_split_mode="from_train", val_split_ratio=0.25)
    from_train.setup()
    assert len(from_train.train_data) == 6
    assert len(from_train.val_data) == 2
    default = MedicalFolder(name="d", root=medical_tree, normal_dir="normal", abnormal_dir="abnormal", num_workers=0)
    assert default.val_split_mode.value == "from_test"  # anomalib Folder's default


def test_dataloaders_collate_resized_batches(medical_tree):
    datamodule = _datamodule(medical_tree, num_train=6, augmentations=Resize((16, 16)))
    datamodule.setup()
    batch = next(iter(datamodule.train_dataloader()))
    assert isinstance(batch, ImageBatch)
    assert tuple(batch.image.shape) == (4, 3, 16, 16)
    batch = next(iter(datamodule.test_dataloader()))
    assert batch.gt_label is not None


# --------------------------------------------------------------------------------------------------
# Invalid files: fail at set-up with one message, or skip them one warning each
# --------------------------------------------------------------------------------------------------
@pytest.fixture
def broken_tree(medical_tree, files) -> tuple[Path, list[Path]]:
    broken = [
        files.empty("data/normal/zero bytes.png"),
        files.truncated("data/normal/cut.PNG"),
        files.text("data/normal/fake.jpg"),
        files.text("data/abnormal/notes.txt"),
        files.text("data/abnormal/scan.dcm", "garbage"),
    ]
    return medical_tree, broken


def test_invalid_files_fail_at_setup_with_every_path_listed(broken_tree):
    root, broken = broken_tree
    datamodule = _datamodule(root, num_train=6)
    with pytest.raises(InvalidDatasetError) as error:
        datamodule.setup()
    message = str(error.value)
    for path in broken:
        assert str(path) in message
    assert "5 problems" in message
    assert "empty file" in message
    assert "truncated" in message
    assert "not an image file" in message
    assert "skip_invalid=True" in message
    assert isinstance(error.value, ValueError)
    assert len(error.value.problems) == 5


def test_skip_invalid_leaves_them_out_and_logs_each(broken_tree, caplog):
    root, broken = broken_tree
    datamodule = _datamodule(root, num_train=6, skip_invalid=True)
    with caplog.at_level(logging.WARNING):
        datamodule.setup()
    for path in broken:
        assert str(path) in caplog.text
    used = set(datamodule.train_data.samples["image_path"]) | set(datamodule.test_data.samples["image_path"])
    assert not {str(path) for path in broken} & used
    assert len(used) == 16


@pytest.mark.parametrize("skip_invalid", [False, True])
def test_missing_or_empty_folders_always_fail(medical_tree, tmp_path, skip_invalid):
    with pytest.raises(InvalidDatasetError, match="abnormal folder does not exist") as error:
        _datamodule(medical_tree, abnormal_dir="no_such_dir", skip_invalid=skip_invalid).setup()
    assert "check that `root`" in str(error.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidDatasetError, match="folder contains no normal files"):
        _datamodule(tmp_path, normal_dir="empty", abnormal_dir=None, skip_invalid=skip_invalid).setup()


def test_validation_runs_before_training_starts(broken_tree):
    """Lightning calls ``datamodule.setup`` before the first batch: nothing is trained on bad data."""
    root, _ = broken_tree
    datamodule = _datamodule(root, num_train=6)
    with pytest.raises(InvalidDatasetError):
        datamodule.setup("fit")
    assert not hasattr(datamodule, "train_data")


def _seeds_choosing(root: Path, path: Path, **counts) -> tuple[int, int]:
    """A split seed whose split leaves ``path`` out, and one whose split uses it (from the listing)."""
    samples, _ = make_medical_folder_samples("normal", root=root, abnormal_dir="abnormal")
    used = {seed: str(path) in set(assign_split(samples, split_seed=seed, **counts).image_path) for seed in range(50)}
    return next(seed for seed in used if not used[seed]), next(seed for seed in used if used[seed])


def _count_decodes(monkeypatch) -> list[str]:
    from anomalib_skipts.data import validation

    decoded: list[str] = []
    original = validation.verify_image

    def counting(path, *args, **kwargs):
        decoded.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(validation, "verify_image", counting)
    return decoded


def test_only_the_files_the_split_uses_are_decoded(medical_tree, files, monkeypatch):
    corrupt = files.truncated("data/normal/corrupt.png")
    counts = {"num_train": 3, "num_test_normal": 2, "num_test_abnormal": 4}
    unused_seed, used_seed = _seeds_choosing(medical_tree, corrupt, **counts)
    decoded = _count_decodes(monkeypatch)

    samples = _datamodule(medical_tree, split_seed=unused_seed, **counts).prepare_samples()
    assert len(samples) == 3 + 2 + 4
    assert sorted(decoded) == sorted(samples["image_path"])  # 9 of the 17 listed images, each once
    assert str(corrupt) not in decoded

    decoded.clear()
    with pytest.raises(InvalidDatasetError) as error:
        _datamodule(medical_tree, split_seed=used_seed, **counts).prepare_samples()
    assert "1 problem found" in str(error.value)
    assert str(corrupt) in str(error.value)
    assert "truncated" in str(error.value)
    assert len(decoded) == 9


def test_skip_invalid_replaces_a_chosen_invalid_file_as_if_all_were_validated(medical_tree, files, caplog):
    corrupt = files.truncated("data/normal/corrupt.png")
    counts = {"num_train": 3, "num_test_normal": 2, "num_test_abnormal": 4}
    _, used_seed = _seeds_choosing(medical_tree, corrupt, **counts)
    with caplog.at_level(logging.WARNING):
        samples = _datamodule(medical_tree, split_seed=used_seed, skip_invalid=True, **counts).prepare_samples()
    assert f"leaving out {corrupt}" in caplog.text
    listed, problems = make_medical_folder_samples("normal", root=medical_tree, abnormal_dir="abnormal")
    valid = validate_samples(listed, "test", problems, skip_invalid=True)
    expected = assign_split(valid, split_seed=used_seed, **counts)
    assert list(samples["image_path"]) == list(expected["image_path"])
    assert list(samples["split"]) == list(expected["split"])


# --------------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------------
def _mask_tree(files, mask_layout: str) -> Path:
    for index in range(4):
        files.image(f"m/normal/n{index}.png", size=(12, 10), seed=index)
        files.mask(f"m/normal/n{index}_mask.png", size=(12, 10), box=(0, 0, 0, 0))  # BUSI: empty masks of normals
    for index in range(3):
        files.image(f"m/abnormal/a {index}.png", size=(12, 10), seed=10 + index)
        if mask_layout == "beside":
            files.mask(f"m/abnormal/a {index}_mask.png", size=(12, 10), box=(0, 0, 2, 2))
        else:
            files.mask(f"m/ground_truth/a {index}.png", size=(12, 10), box=(0, 0, 2, 2))
    return files.root / "m"


@pytest.mark.parametrize("mask_layout", ["beside", "mask_dir"])
def test_masks_give_segmentation_and_are_never_images(files, mask_layout):
    root = _mask_tree(files, mask_layout)
    mask_dir = "abnormal" if mask_layout == "beside" else "ground_truth"
    datamodule = _datamodule(root, mask_dir=mask_dir, num_train=2)
    datamodule.setup()
    assert datamodule.task == TaskType.SEGMENTATION
    every = [*datamodule.train_data.samples["image_path"], *datamodule.test_data.samples["image_path"]]
    assert len(every) == 7
    assert not any("_mask" in Path(path).name for path in every)
    for item in datamodule.test_data:
        assert item.gt_mask is not None
        assert tuple(item.gt_mask.shape) == (10, 12)
        assert int(item.gt_mask.sum()) == (4 if item.gt_label else 0)


def test_masks_beside_images_are_found_without_mask_dir_and_or_ed(files):
    root = _mask_tree(files, "beside")
    files.mask("m/abnormal/a 0_mask_1.png", size=(12, 10), box=(8, 6, 12, 10))
    datamodule = _datamodule(root, num_train=2)
    datamodule.setup()
    item = next(item for item in datamodule.test_data if item.image_path.endswith("a 0.png"))
    assert int(item.gt_mask.sum()) == 4 + 16


def test_mask_problems_are_reported(files):
    root = _mask_tree(files, "beside")
    (root / "abnormal" / "a 1_mask.png").unlink()  # abnormal image without its mask
    files.mask("m/abnormal/ghost_mask.png", size=(12, 10))  # mask without an image
    files.mask("m/abnormal/a 2_mask_1.png", size=(8, 8))  # mask of the wrong size
    with pytest.raises(InvalidDatasetError) as error:
        _datamodule(root, num_train=2).setup()
    message = str(error.value)
    assert "a 1.png: abnormal image has no mask" in message
    assert "ghost_mask.png: mask has no image" in message
    assert "a 2_mask_1.png: mask is 8x8 pixels but its image a 2.png is 12x10" in message
    skipped = _datamodule(root, num_train=2, skip_invalid=True)
    skipped.setup()
    assert len(skipped.test_data.samples.query("label_index == 1")) == 1  # only 'a 0.png' is left


def test_no_masks_means_classification(files):
    root = _mask_tree(files, "beside")
    for mask in root.rglob("*_mask.png"):
        mask.unlink()
    datamodule = _datamodule(root, num_train=2)
    datamodule.setup()
    assert datamodule.task == TaskType.CLASSIFICATION


# --------------------------------------------------------------------------------------------------
# Lower-level functions
# --------------------------------------------------------------------------------------------------
def test_functions_compose_like_the_datamodule(medical_tree):
    samples, problems = make_medical_folder_samples("normal", root=medical_tree, abnormal_dir="abnormal")
    samples = validate_samples(samples, "test", problems)
    samples = assign_split(samples, "test", num_train=7)
    dataset = MedicalFolderDataset(samples, name="test", split="train")
    assert len(dataset) == 7
    assert dataset.name == "test"
    assert dataset[0].image.shape[0] == 3


def test_engine_fit_and_test_on_a_medical_folder(medical_tree, tmp_path):
    """End to end from Python: anomalib's Engine trains and tests Skip-TS on a MedicalFolder."""
    models = pytest.importorskip("anomalib_skipts.models")
    from anomalib.engine import Engine

    model = models.SkipTS(backbone="resnet18", pre_trained=False, image_size=(64, 64), visualizer=False)
    datamodule = _datamodule(medical_tree, num_train=6, num_test_normal=4)
    engine = Engine(max_epochs=1, accelerator="cpu", default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    engine.fit(model=model, datamodule=datamodule)
    results = engine.test(model=model, datamodule=datamodule)
    assert "image_AUROC" in results[0]
