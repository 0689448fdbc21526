"""BMAD as its authors ship it: the six archives' own layouts, BMAD's validation split, masks required.

The trees are generated after the authors' README, configs and scripts (github.com/DorisBao/BMAD):
Brain with masks in ``Ungood/anomaly_mask/``, Liver with ``img/`` and ``label/`` above the class
folders under ``Liver/Train/hist_DIY``, RESC's ``Train/train``, ``Val/val`` + ``Val/val_label``,
``Test/test`` + ``Test/test_label``, and ``val/`` instead of ``valid/`` for RESC, OCT2017 and Chest.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from anomalib_skipts.data import BMAD, InvalidDatasetError

from .generated_layouts import LESION, SIZE, box, write_scan

FAST = {"num_workers": 0, "train_batch_size": 4, "eval_batch_size": 4}
COUNTS = {"train": 4, "valid": 2, "test": 3}  # train: normal; valid and test: per class

#: category: (category folder under the root, its split folders, where images and masks are)
SHIPPED = {
    "Brain": ("Brain_AD/BraTS2021_slice", {"train": "train", "valid": "valid", "test": "test"}, "anomaly_mask"),
    "Liver": ("Liver/Train/hist_DIY", {"train": "train", "valid": "valid", "test": "test"}, "img_label_above"),
    "Retina_RESC": ("Retina_RESC_AD/RESC", {"train": "Train/train", "valid": "Val/val", "test": "Test/test"}, "resc"),
    "Retina_OCT2017": ("Retina_OCT2017_AD/OCT2017", {"train": "train", "valid": "val", "test": "test"}, "flat"),
    "Chest": ("Chest_AD/Chest-RSNA", {"train": "train", "valid": "val", "test": "test"}, "flat"),
    "Histopathology": (
        "Histopathology_AD/camelyon16_256",
        {"train": "train", "valid": "valid", "test": "test"},
        "flat",
    ),
}
WITH_MASKS = ("Brain", "Liver", "Retina_RESC")


def _files(category_dir: Path, split_dir: str, label: str, name: str, style: str) -> tuple[Path, Path | None]:
    """Where the archive puts an image and (abnormal images of the pixel-level categories) its mask."""
    split = category_dir / split_dir
    if style == "anomaly_mask":  # BMAD's README for Brain
        return split / label / "img" / name, split / label / "anomaly_mask" / name
    if style == "img_label_above":  # Liver: train/good/*.png, <split>/img/<class>/, <split>/label/<class>/
        if split_dir == "train":
            return split / label / name, None
        return split / "img" / label / name, split / "label" / label / name
    if style == "resc":  # Val/val/<class>/, Val/val_label/<class>/
        return split / label / name, split.parent / f"{split.name}_label" / label / name
    return split / label / name, None  # image-level categories


def make_shipped(root: Path, category: str) -> Path:
    """Write ``category`` under ``root`` as BMAD's archive lays it out; return the category folder."""
    rng = np.random.default_rng(0)
    folder, split_dirs, style = SHIPPED[category]
    category_dir = root / folder
    for split, count in COUNTS.items():
        for label in ("good",) if split == "train" else ("good", "Ungood"):
            for index in range(count):
                name = f"{split}_{label}_{index:03d}.png"
                image, mask = _files(category_dir, split_dirs[split], label, name, style)
                abnormal = label == "Ungood"
                write_scan(image, rng, lesion=index if abnormal else None, mask_path=mask if abnormal else None)
    return category_dir


@pytest.fixture
def bmad_root(tmp_path: Path) -> Path:
    """The six archives unpacked side by side into one folder."""
    root = tmp_path / "BMAD"
    for category in SHIPPED:
        make_shipped(root, category)
    return root


@pytest.mark.parametrize("category", list(SHIPPED))
def test_each_category_as_shipped(bmad_root: Path, category: str) -> None:
    folder, split_dirs, style = SHIPPED[category]
    category_dir = bmad_root / folder
    datamodule = BMAD(root=bmad_root, category=category, **FAST)
    assert datamodule.category_dir == category_dir  # found inside the archive's folders, not another category's
    datamodule.setup()

    assert datamodule.task == ("segmentation" if category in WITH_MASKS else "classification")
    subsets = {"train": datamodule.train_data, "valid": datamodule.val_data, "test": datamodule.test_data}
    assert {split: len(data) for split, data in subsets.items()} == {"train": 4, "valid": 4, "test": 6}
    for split, dataset in subsets.items():  # BMAD's split, from BMAD's folders (val/ is the validation split)
        for image_path, label in zip(dataset.samples.image_path, dataset.samples.label_index, strict=True):
            name = Path(image_path).name
            assert name.startswith(f"{split}_{'Ungood' if label else 'good'}_")
            expected_image, expected_mask = _files(category_dir, split_dirs[split], name.split("_")[1], name, style)
            assert Path(image_path) == expected_image
            mask_paths = dataset.samples.set_index("image_path").loc[image_path, "mask_paths"]
            assert mask_paths == ((str(expected_mask),) if label and expected_mask else ())

    for dataset in (datamodule.val_data, datamodule.test_data):
        labels = []
        for index in range(len(dataset)):
            item = dataset[index]
            labels.append(int(item.gt_label))
            assert item.image.shape == (3, SIZE, SIZE)
            if category not in WITH_MASKS:
                assert item.gt_mask is None
            elif item.gt_label:  # the mask read is this image's own: its lesion, nowhere else
                top, left = box(int(Path(item.image_path).stem[-3:]))
                assert item.gt_mask.sum() == LESION * LESION
                assert item.gt_mask[top : top + LESION, left : left + LESION].all()
            else:
                assert not item.gt_mask.any()
        assert sorted(labels) == [0] * (len(dataset) // 2) + [1] * (len(dataset) // 2)


@pytest.mark.parametrize(
    ("category", "root_folder"),
    [
        ("BraTS2021_slice", "Brain_AD"),
        ("hist_DIY", "Liver/Train/hist_DIY"),
        ("RESC", "Retina_RESC_AD/RESC"),
        ("OCT2017", "Retina_OCT2017_AD"),
        ("Chest-RSNA", "Chest_AD/Chest-RSNA"),
        ("camelyon16_256", "Histopathology_AD"),
    ],
)
def test_archive_folder_names_and_roots(bmad_root: Path, category: str, root_folder: str) -> None:
    datamodule = BMAD(root=bmad_root / root_folder, category=category, val_split_mode="same_as_test", **FAST)
    expected = next(name for name, (folder, _, _) in SHIPPED.items() if folder.startswith(root_folder.split("/")[0]))
    assert datamodule.category == expected
    assert datamodule.category_dir == bmad_root / SHIPPED[expected][0]
    datamodule.setup()
    assert len(datamodule.train_data) == 4


@pytest.mark.parametrize(
    ("category", "mask_folder", "looked_for"),
    [
        ("Brain", "test/Ungood/anomaly_mask", "test/Ungood/label, test/Ungood/anomaly_mask, test/label/Ungood"),
        ("Liver", "test/label", "test/img/Ungood/label, test/img/Ungood/anomaly_mask, test/label/Ungood"),
        ("Retina_RESC", "Test/test_label", "Test/test/label/Ungood, Test/test_label/Ungood"),
    ],
)
def test_missing_masks_are_an_error(bmad_root: Path, category: str, mask_folder: str, looked_for: str) -> None:
    category_dir = bmad_root / SHIPPED[category][0]
    shutil.rmtree(category_dir / mask_folder)
    for skip_invalid in (False, True):  # not a file to leave out: the pixel metrics would be lost
        with pytest.raises(InvalidDatasetError) as error:
            BMAD(root=bmad_root, category=category, skip_invalid=skip_invalid, **FAST).setup()
        message = str(error.value)
        assert f"BMAD {category}: 1 problem found" in message
        assert "no masks for its 3 abnormal images: this category has pixel masks" in message
        assert looked_for in message
        assert "valid" not in message.split("How to fix")[0].replace(str(category_dir), "")  # valid's masks are there


def test_one_missing_mask_names_where_it_was_expected(bmad_root: Path) -> None:
    category_dir = bmad_root / SHIPPED["Retina_RESC"][0]
    (category_dir / "Val" / "val_label" / "Ungood" / "valid_Ungood_001.png").unlink()
    with pytest.raises(InvalidDatasetError) as error:
        BMAD(root=bmad_root, category="Retina_RESC", **FAST).setup()
    expected = category_dir / "Val" / "val_label" / "Ungood" / "valid_Ungood_001.png"
    assert f"valid_Ungood_001.png: abnormal image has no mask (expected {expected})" in str(error.value)

    datamodule = BMAD(root=bmad_root, category="Retina_RESC", skip_invalid=True, **FAST)
    datamodule.setup()
    assert len(datamodule.val_data) == 3
    assert (datamodule.val_data.samples.label_index == 1).sum() == 1


def test_anomalib_copy_of_a_pixel_level_category_without_masks_is_an_error(tmp_path: Path) -> None:
    from .generated_layouts import make_bmad_category

    root = make_bmad_category(tmp_path, "Liver", masks=False, counts=(2, 1, 1))
    with pytest.raises(InvalidDatasetError, match=r"test/Ungood: no masks for its 1 abnormal images"):
        BMAD(root=root, category="Liver", **FAST).setup()
