"""Fixtures of the benchmark tests: a tiny generated Folder dataset and benchmark configs on it."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from anomalib_skipts.benchmark.config import BenchmarkConfig, parse_config

SIZE = 64


def _write_dataset(root: Path, seed: int = 0) -> Path:
    """8 normal training images, 4 normal and 4 abnormal test images (bright square + mask), 64x64."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    base = 90 + 40 * np.exp(-((yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2) / (2 * 14.0**2))
    for folder, count, abnormal in (("train/good", 8, False), ("test/good", 4, False), ("test/bad", 4, True)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image = base + rng.normal(0, 6, size=(SIZE, SIZE))
            if abnormal:
                top, left = rng.integers(8, SIZE - 24, size=2)
                mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
                mask[top : top + 14, left : left + 14] = 255
                image[mask > 0] = 240
                (root / "mask/bad").mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask).save(root / "mask/bad" / f"{index:03d}.png")
            rgb = np.repeat(np.clip(image, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
            Image.fromarray(rgb).save(root / folder / f"{index:03d}.png")
    return root


@pytest.fixture(scope="session")
def folder_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of the tiny generated dataset (anomalib ``Folder`` layout)."""
    return _write_dataset(tmp_path_factory.mktemp("bench_folder"))


@pytest.fixture
def make_config(folder_root: Path, tmp_path: Path) -> Callable[..., BenchmarkConfig]:
    """Build a smoke-protocol benchmark config on the tiny dataset; keyword arguments override keys."""

    def factory(**overrides: Any) -> BenchmarkConfig:
        data = {
            "name": "test",
            "output_dir": str(tmp_path / "results"),
            "protocol": {"name": "smoke", "overlay_images": 2, "throughput_images": 4},
            "models": ["Padim"],
            "datasets": [
                {
                    "name": "Tiny",
                    "class_path": "anomalib.data.Folder",
                    "init_args": {
                        "name": "tiny",
                        "root": str(folder_root),
                        "normal_dir": "train/good",
                        "abnormal_dir": "test/bad",
                        "normal_test_dir": "test/good",
                        "mask_dir": "mask/bad",
                    },
                },
            ],
            "seeds": [0],
        }
        data.update(overrides)
        return parse_config(data)

    return factory
