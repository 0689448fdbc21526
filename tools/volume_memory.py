"""Peak resident memory of reading a folder of volumes slice by slice vs a 2-D folder of the same slices.

Writes ``--count`` phantom volumes (NIfTI) and the same slices as 8-bit PNGs (brain window), then in a
fresh process each sets up the datamodule (``VolumeFolder`` or ``MedicalFolder``) and reads every
training slice once through its dataloader; prints each process's peak resident memory.

    python tools/volume_memory.py --root /tmp/volume_memory --count 200 --size 128 --slices 32
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def _write(root: Path, count: int, size: int, slices: int) -> None:
    from anomalib_skipts.data.volume_phantom import generate_volume_phantom

    generate_volume_phantom(root / "volumes", num_normal=count, num_abnormal=2, image_size=size, num_slices=slices)
    import nibabel

    for label in ("normal", "abnormal"):
        folder = root / "slices" / label
        folder.mkdir(parents=True, exist_ok=True)
        for path in sorted((root / "volumes" / label).glob("*.nii.gz")):
            volume = np.asanyarray(nibabel.load(path).dataobj).astype(np.float32)
            for index in range(volume.shape[2]):
                plane = np.clip(volume[:, :, index].T / 80.0, 0, 1) * 255
                Image.fromarray(plane.astype(np.uint8)).save(folder / f"{path.name[:-7]}_{index:03d}.png")


def _read(kind: str, root: Path) -> None:
    from anomalib_skipts.data import MedicalFolder, VolumeFolder

    common = {"name": kind, "normal_dir": "normal", "abnormal_dir": "abnormal", "num_workers": 0}
    if kind == "volumes":
        datamodule = VolumeFolder(root=root / "volumes", window="brain", num_test_normal=2, **common)
    else:
        datamodule = MedicalFolder(root=root / "slices", normal_split_ratio=0.01, **common)
    datamodule.setup()
    count = sum(len(batch.image) for batch in datamodule.train_dataloader())
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{kind}: read {count} training slices, peak resident memory {peak_mb:.0f} MB")


def main() -> None:
    """Write the data once, then measure each reader in its own process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/volume_memory"))
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--read", choices=["volumes", "slices"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.read:
        _read(args.read, args.root)
        return
    if not (args.root / "slices").is_dir():
        _write(args.root, args.count, args.size, args.slices)
    for kind in ("volumes", "slices"):
        subprocess.run([sys.executable, __file__, "--root", str(args.root), "--read", kind], check=True)


if __name__ == "__main__":
    main()
