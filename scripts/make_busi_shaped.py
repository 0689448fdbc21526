"""Write a generated dataset in BUSI's raw layout and size (for the benchmark's memory check).

BUSI (Al-Dhabyani et al., 2020; Skip-TS Table I, ID 4): ``normal/`` (133), ``benign/`` (437) and
``malignant/`` (210) ultrasound-like PNGs with ``<name>_mask.png`` beside each lesion image, so that
``anomalib_skipts.data.BUSI`` splits it 99 train / 34 normal + 647 abnormal test like the real one.
The images are noise with a dark elliptic lesion (not real data): they reproduce the shape of the
workload, not its AUROC.

Example:
    .. code-block:: bash

        python scripts/make_busi_shaped.py /tmp/busi_shaped --height 480 --width 560
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

COUNTS = {"normal": 133, "benign": 437, "malignant": 210}


def write_busi_shaped(root: Path, height: int = 480, width: int = 560, seed: int = 0) -> Path:
    """Write the tree (skips files already there).

    Args:
        root: Output folder (``root/{normal,benign,malignant}/``).
        height: Image height in pixels.
        width: Image width in pixels.
        seed: Seed of the generator.

    Returns:
        Path: ``root``.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    for folder, count in COUNTS.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for index in range(1, count + 1):
            path = root / folder / f"{folder} ({index}).png"
            image = rng.normal(110, 25, size=(height, width))
            mask = np.zeros((height, width), dtype=np.uint8)
            if folder != "normal":
                cy, cx = rng.integers(height // 4, 3 * height // 4), rng.integers(width // 4, 3 * width // 4)
                ry, rx = rng.integers(height // 16, height // 6), rng.integers(width // 16, width // 6)
                inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
                image[inside] -= 70
                mask[inside] = 255
            if not path.is_file():
                Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path)
                Image.fromarray(mask).save(path.with_name(f"{path.stem}_mask.png"))
    return root


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=560)
    args = parser.parse_args()
    print(write_busi_shaped(args.root, args.height, args.width))


if __name__ == "__main__":
    main()
