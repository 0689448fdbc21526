"""Tiny generated copies of the BMAD and MedIAnomaly layouts: 64x64 PNG scans, abnormal ones with a mask.

Every scan is a smooth bright disc with noise; an abnormal scan also has a bright 14x14 square at
:func:`box` of its index, which is where its mask is set (0/255).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 64
LESION = 14


def box(index: int) -> tuple[int, int]:
    """Top-left corner (row, column) of the lesion of abnormal scan ``index``."""
    return 8 + (index * 7) % 30, 6 + (index * 11) % 30


def write_scan(path: Path, rng: np.random.Generator, lesion: int | None = None, mask_path: Path | None = None) -> Path:
    """Write one scan; with ``lesion`` (an index) add the square, and write its mask to ``mask_path``."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    image = 90 + 40 * np.exp(-((yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2) / (2 * 14.0**2))
    image = image + rng.normal(0, 6, size=(SIZE, SIZE))
    if lesion is not None:
        top, left = box(lesion)
        mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
        mask[top : top + LESION, left : left + LESION] = 255
        image[mask > 0] = 240
        if mask_path is not None:
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(mask_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path)
    return path


def make_bmad_category(
    root: Path,
    category: str = "Brain",
    masks: bool = True,
    img_folder: bool = True,
    counts: tuple[int, int, int] = (8, 3, 4),
) -> Path:
    """BMAD category ``root/<category>``: ``counts`` = (train, valid per class, test per class) scans.

    ``img_folder`` puts images in ``<class>/img/`` (pixel-level layout, anomalib's copy) instead of
    directly in ``<class>/`` (BMAD's image-level layout); with ``masks`` the masks of the abnormal
    scans are in ``<class>/label/`` under the image's name. Returns ``root``.
    """
    rng = np.random.default_rng(0)
    n_train, n_valid, n_test = counts
    folders = [("train", "good", n_train), ("valid", "good", n_valid), ("valid", "Ungood", n_valid)]
    folders += [("test", "good", n_test), ("test", "Ungood", n_test)]
    for split, label, count in folders:
        class_dir = root / category / split / label
        image_dir = class_dir / "img" if img_folder else class_dir
        for index in range(count):
            name = f"{split}_{label}_{index:03d}.png"
            abnormal = label == "Ungood"
            mask = class_dir / "label" / name if abnormal and masks else None
            write_scan(image_dir / name, rng, lesion=index if abnormal else None, mask_path=mask)
    return root


def make_medianomaly_json(root: Path, category: str = "RSNA", counts: tuple[int, int, int] = (8, 4, 4)) -> Path:
    """``root/<category>/images/`` + ``data.json`` with (train normal, test normal, test abnormal) scans.

    One extra image in ``images/`` is not listed in ``data.json``. Returns the category folder.
    """
    rng = np.random.default_rng(1)
    base = root / category
    n_train, n_normal, n_abnormal = counts
    lists = {
        "train": {"0": [f"n{index:03d}.png" for index in range(n_train)]},
        "test": {
            "0": [f"n{index:03d}.png" for index in range(n_train, n_train + n_normal)],
            "1": [f"a{index:03d}.png" for index in range(n_abnormal)],
        },
    }
    for name in [*lists["train"]["0"], *lists["test"]["0"], "unlisted.png"]:
        write_scan(base / "images" / name, rng)
    for index, name in enumerate(lists["test"]["1"]):
        write_scan(base / "images" / name, rng, lesion=index)
    (base / "data.json").write_text(json.dumps(lists), encoding="utf-8")
    return base


def make_medianomaly_brats(root: Path, counts: tuple[int, int, int] = (8, 4, 4)) -> Path:
    """``root/BraTS2021/``: ``train/``, ``test/normal/``, ``test/tumor/`` (``*_flair_*``), ``test/annotation/``."""
    rng = np.random.default_rng(2)
    base = root / "BraTS2021"
    n_train, n_normal, n_tumor = counts
    for index in range(n_train):
        write_scan(base / "train" / f"BraTS2021_{index:05d}_flair_60.png", rng)
    for index in range(n_normal):
        write_scan(base / "test" / "normal" / f"BraTS2021_{100 + index:05d}_flair_20.png", rng)
    for index in range(n_tumor):
        name = f"BraTS2021_{200 + index:05d}_flair_{index}.png"
        mask = base / "test" / "annotation" / name.replace("flair", "seg")
        write_scan(base / "test" / "tumor" / name, rng, lesion=index, mask_path=mask)
    return base


def make_medianomaly_folders(root: Path, counts: tuple[int, int, int] = (8, 4, 4)) -> Path:
    """``root/Camelyon16/``: ``train/good/``, ``test/good/``, ``test/Ungood/``."""
    rng = np.random.default_rng(3)
    base = root / "Camelyon16"
    n_train, n_normal, n_abnormal = counts
    for folder, count in (("train/good", n_train), ("test/good", n_normal)):
        for index in range(count):
            write_scan(base / folder / f"{index}.png", rng)
    for index in range(n_abnormal):
        write_scan(base / "test" / "Ungood" / f"{index}.png", rng, lesion=index)
    return base
