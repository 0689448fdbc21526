"""Shared helpers of the predict and deploy tests: CT-like DICOM and 16-bit PNG folders, and the entry point.

The DICOM slices store a wide window of their own (``FILE_WINDOW``); the models are trained with the
narrow ``TRAIN_WINDOW``, so a reader that ignores the training settings gives other pixels.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import tomllib
from anomalib.engine import Engine

from .conftest import Files

SIZE = 48
FILE_WINDOW = (300.0, 1500.0)
TRAIN_WINDOW = (40.0, 80.0)
ENTRY_POINT_GROUP = "lightning.pytorch.callbacks_factory"
ROOT = Path(__file__).resolve().parents[2]


def ct_slice(index: int, lesion: bool) -> np.ndarray:
    """A head-like CT slice in Hounsfield units: air, a soft-tissue disc, optionally a bright lesion."""
    rng = np.random.default_rng(index)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    inside = (yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < (SIZE * 0.4) ** 2
    hu = np.where(inside, 35.0, -1000.0) + rng.normal(0, 6, size=(SIZE, SIZE))
    if lesion:
        top, left = 12 + index % 10, 14 + (index * 3) % 10
        hu[top : top + 8, left : left + 8] = 75.0
    return hu


def write_ct_tree(root: Path, normal: int = 10, abnormal: int = 4) -> Path:
    """``root/dicom/{normal,abnormal}/*.dcm`` and ``root/png16/{normal,abnormal}/*.png`` of the same slices.

    The DICOM pixels are stored as HU + 1024 with intercept -1024; the 16-bit PNGs hold HU + 1024
    (values around 1,000 of 65,535, as CT exports often are).
    """
    files = Files(root)
    for label, count in (("normal", normal), ("abnormal", abnormal)):
        for index in range(count):
            hu = ct_slice(index + (100 if label == "abnormal" else 0), lesion=label == "abnormal")
            stored = np.clip(np.round(hu + 1024), 0, 4095)
            files.dicom(f"dicom/{label}/{label[0]}{index:02d}.dcm", stored, intercept=-1024.0, window=FILE_WINDOW)
            files.png(f"png16/{label}/{label[0]}{index:02d}.png", stored.astype(np.uint16))
    return root


def ensure_entry_point(folder: Path) -> dict[str, str]:
    """Make the package's Lightning entry point visible, as an installed package has it.

    A source checkout on ``PYTHONPATH`` has no installed metadata; then a minimal ``.dist-info`` with
    the entry point declared in ``pyproject.toml`` is written to ``folder`` and put on ``sys.path``.

    Returns:
        Environment for sub-processes (``PYTHONPATH`` with the checkout and ``folder``).
    """
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][ENTRY_POINT_GROUP]
    env = dict(os.environ)
    installed = {entry.name for entry in entry_points(group=ENTRY_POINT_GROUP)}
    paths = [str(ROOT)]
    if not set(declared) <= installed:
        info = folder / "anomalib_skipts_entry_points-0.0.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: anomalib-skipts-entry-points\nVersion: 0.0\n")
        lines = [f"[{ENTRY_POINT_GROUP}]", *(f"{name} = {target}" for name, target in declared.items())]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        if str(folder) not in sys.path:
            sys.path.append(str(folder))
        paths.append(str(folder))
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")])
    return env


def make_engine(root: Path, **kwargs: object) -> Engine:
    """A quiet CPU engine writing under ``root``."""
    return Engine(
        default_root_dir=root, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, **kwargs
    )
