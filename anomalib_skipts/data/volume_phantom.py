"""Synthetic CT-like head volumes with 3-D lesions, written as NIfTI: the offline volume demo.

The 3-D counterpart of :mod:`~anomalib_skipts.data.phantom`, drawn with its ellipse, rotation and
noise helpers: a head whose cross-section narrows towards the top and bottom slices (scalp, skull,
cerebrospinal fluid rim, brain with a smooth 3-D texture, lateral ventricles in the middle slices), in
Hounsfield units (air -1000, brain about 30, bone about 1000). An abnormal volume holds one
hyperdense, hemorrhage-like blob (about 60-80 HU) spanning several slices, with its mask volume.
Everything is deterministic for a seed and offline.

.. warning::
    Not a real medical dataset: drawn from ellipses and smoothed noise, with no clinical meaning.

Layout written by :func:`generate_volume_phantom` (read by
:class:`~anomalib_skipts.data.volumes.VolumeFolder`, see ``datamodules/volume_phantom.yaml``)::

    root/phantom3d.json          generation parameters (makes generation idempotent)
    root/normal/nNNN.nii.gz      normal volumes (int16 HU), one patient each
    root/abnormal/aNNN.nii.gz    volumes with a lesion
    root/masks/aNNN.nii.gz       their lesion masks (uint8, same grid and affine)

Example:
    >>> from anomalib_skipts.data.volume_phantom import generate_volume_phantom
    >>> root = generate_volume_phantom("./datasets/head_volumes", num_normal=24, num_abnormal=8)

    or ``python -m anomalib_skipts.data.volume_phantom --root ./datasets/head_volumes``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anomalib_skipts.data.phantom import _blur, _rotate, _soft_ellipse

__all__ = ["PhantomVolume", "generate_volume_phantom", "main", "phantom_affine", "render_head_volume"]

METADATA_FILE = "phantom3d.json"
NORMAL_DIR = "normal"
ABNORMAL_DIR = "abnormal"
MASK_DIR = "masks"
FORMAT_VERSION = 1
_AIR_HU = -1000.0
_HEAD_EXTENT_Z = 0.8  # slices cover z in [-0.8, 0.8] of the unit head


@dataclass(frozen=True)
class PhantomVolume:
    """One rendered head volume, voxel axes ``(I, J, K)`` = (columns, rows, slices).

    Attributes:
        hu: ``int16`` values in Hounsfield units.
        mask: ``uint8`` lesion mask (all zero for a normal volume).
        brain: Boolean brain mask; the lesion always lies inside it.
    """

    hu: np.ndarray
    mask: np.ndarray
    brain: np.ndarray


def phantom_affine(image_size: int, num_slices: int) -> np.ndarray:
    """Voxel-to-world affine of the phantom: a 200 mm field of view, 120 mm of slices, RAS, off-centre.

    Args:
        image_size: In-plane voxels.
        num_slices: Slices.

    Returns:
        4x4 affine (the first axis is flipped, as many scanners write it, to exercise orientation).
    """
    pixel = 200.0 / image_size
    thickness = 120.0 / num_slices
    return np.array(
        [
            [-pixel, 0.0, 0.0, 100.0],
            [0.0, pixel, 0.0, -110.0],
            [0.0, 0.0, thickness, -40.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )


def render_head_volume(
    seed: int | Sequence[int],
    image_size: int = 64,
    num_slices: int = 12,
    lesion: bool = False,
) -> PhantomVolume:
    """Render one CT-like head volume, optionally with a 3-D hyperdense lesion.

    Args:
        seed: Seed of :func:`numpy.random.default_rng`; the same seed and arguments give the same volume.
        image_size: In-plane size in voxels (at least 32).
        num_slices: Number of axial slices (at least 4).
        lesion: Whether to add a lesion (and a non-empty mask).

    Returns:
        The :class:`PhantomVolume`.

    Raises:
        ValueError: If ``image_size < 32`` or ``num_slices < 4``.
    """
    if image_size < 32 or num_slices < 4:
        msg = f"image_size must be >= 32 and num_slices >= 4, got {image_size} and {num_slices}."
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    size = image_size
    pixel = 2.0 / size
    coords = (np.arange(size) + 0.5) * pixel - 1.0
    x, y = np.meshgrid(coords, coords)
    zs = np.linspace(-_HEAD_EXTENT_Z, _HEAD_EXTENT_Z, num_slices)
    z_step = float(zs[1] - zs[0])

    cx, cy = rng.uniform(-0.05, 0.05, size=2)
    angle = math.radians(rng.uniform(-12.0, 12.0))
    head_a = rng.uniform(0.66, 0.76)
    head_b = min(head_a * rng.uniform(1.12, 1.22), 0.92)
    scalp, skull, rim = rng.uniform(0.025, 0.035), rng.uniform(0.05, 0.07), rng.uniform(0.015, 0.025)
    scalp_hu, bone_hu = rng.uniform(20.0, 45.0), rng.uniform(800.0, 1200.0)
    csf_hu, brain_hu = rng.uniform(2.0, 10.0), rng.uniform(28.0, 36.0)
    texture = _blur(rng.standard_normal((num_slices, size, size)), 1.0)
    texture = rng.uniform(2.0, 4.0) * (texture - texture.mean()) / max(float(texture.std()), 1e-6)
    noise = _blur(rng.standard_normal((num_slices, size, size)), 0.7)
    noise *= rng.uniform(2.0, 4.0) / max(float(noise.std()), 1e-6)
    vent_a, vent_b = rng.uniform(0.05, 0.07), rng.uniform(0.16, 0.24)
    vent_dx, vent_tilt = rng.uniform(0.1, 0.13), math.radians(rng.uniform(8.0, 20.0))
    u, v = _rotate(x, y, cx, cy, angle)

    planes = []
    brains = []
    for k, z in enumerate(zs):
        scale = math.sqrt(max(1.0 - z**2, 0.1))
        a, b = head_a * scale, head_b * scale
        head = _soft_ellipse(u, v, a, b, pixel)
        skull_outer = _soft_ellipse(u, v, a - scalp, b - scalp, pixel)
        skull_inner = _soft_ellipse(u, v, a - scalp - skull, b - scalp - skull, pixel)
        brain_cov = _soft_ellipse(u, v, a - scalp - skull - rim, b - scalp - skull - rim, pixel)
        parenchyma = brain_hu + texture[k]
        vent_scale = 1.0 - (z / 0.35) ** 2
        if vent_scale > 0:
            ventricles = np.zeros_like(u)
            for side in (-1.0, 1.0):
                vu, vv = _rotate(u, v, side * vent_dx, 0.0, side * vent_tilt)
                ventricles = np.maximum(
                    ventricles, _soft_ellipse(vu, vv, vent_a, vent_b * math.sqrt(vent_scale), pixel)
                )
            ventricles *= brain_cov
            parenchyma = parenchyma * (1.0 - ventricles) + csf_hu * ventricles
        plane = np.full((size, size), _AIR_HU)
        plane = plane * (1.0 - head) + scalp_hu * head
        plane = plane * (1.0 - skull_outer) + bone_hu * skull_outer
        plane = plane * (1.0 - skull_inner) + csf_hu * skull_inner
        planes.append(plane * (1.0 - brain_cov) + parenchyma * brain_cov)
        brains.append(brain_cov >= 0.5)
    volume = np.stack(planes)  # (K, rows, columns)
    brain = np.stack(brains)

    mask = np.zeros(volume.shape, dtype=bool)
    if lesion:
        coverage = _draw_lesion_3d(rng, u, v, zs, z_step, pixel, brain)
        mask = coverage >= 0.5
        lesion_hu = brain_hu + rng.uniform(30.0, 45.0)
        volume = volume * (1.0 - coverage) + lesion_hu * coverage
    volume = volume + noise * (volume > _AIR_HU + 100.0)
    hu = np.clip(np.rint(volume), -1024, 3071).astype(np.int16)
    to_voxels = (2, 1, 0)  # (K, rows, columns) -> (columns, rows, slices)
    return PhantomVolume(
        hu=np.ascontiguousarray(hu.transpose(to_voxels)),
        mask=np.ascontiguousarray(mask.transpose(to_voxels).astype(np.uint8)),
        brain=np.ascontiguousarray(brain.transpose(to_voxels)),
    )


def _draw_lesion_3d(
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    zs: np.ndarray,
    z_step: float,
    pixel: float,
    brain: np.ndarray,
) -> np.ndarray:
    """Coverage ``(K, rows, columns)`` of an irregular ellipsoidal blob inside the brain (redrawn until it fits)."""
    for _ in range(500):
        radius = rng.uniform(0.12, 0.2)
        half_height = max(rng.uniform(0.2, 0.35), 1.6 * z_step)
        centre_z = rng.uniform(-0.35, 0.35)
        lx, ly = rng.uniform(-0.35, 0.35), rng.uniform(-0.4, 0.4)
        harmonics, phases = rng.uniform(0.0, 0.12, size=3), rng.uniform(0.0, 2.0 * math.pi, size=3)
        lu, lv = u - lx, v - ly
        dist, phi = np.sqrt(lu**2 + lv**2), np.arctan2(lv, lu)
        wobble = sum(h * np.cos(k * phi + p) for k, h, p in zip((2, 3, 4), harmonics, phases, strict=True))
        coverage = np.zeros(brain.shape)
        for index, z in enumerate(zs):
            height = 1.0 - ((z - centre_z) / half_height) ** 2
            if height > 0:
                outline = radius * math.sqrt(height) * (1.0 + wobble)
                coverage[index] = np.clip(0.5 + (outline - dist) / pixel, 0.0, 1.0)
        core = coverage >= 0.5
        slices_hit = int(core.any(axis=(1, 2)).sum())
        if core.sum() >= 12 and slices_hit >= 2 and not ((coverage > 0) & ~brain).any():
            return coverage
    msg = "could not place a lesion inside the brain; use image_size >= 32 and num_slices >= 4"
    raise RuntimeError(msg)


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel

    image = nibabel.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    nibabel.save(image, path)


def generate_volume_phantom(
    root: str | Path,
    num_normal: int = 24,
    num_abnormal: int = 8,
    image_size: int = 64,
    num_slices: int = 12,
    seed: int = 0,
) -> Path:
    """Write the head-volume phantom under ``root`` (idempotent: a complete, identical set is kept).

    Args:
        root: Output folder (created; must be empty or hold a volume phantom).
        num_normal: Normal volumes (``normal/nNNN.nii.gz``); the datamodule splits them by patient.
        num_abnormal: Volumes with a lesion (``abnormal/aNNN.nii.gz``) and their masks (``masks/``).
        image_size: In-plane voxels (>= 32).
        num_slices: Slices per volume (>= 4).
        seed: Dataset seed; volume ``i`` of a folder uses the seed ``(seed, folder, i)``.

    Returns:
        ``root`` as a path.

    Raises:
        FileExistsError: If ``root`` is a non-empty folder without a volume phantom in it.
        ValueError: If a count is below 1 or a size too small.
    """
    if num_normal < 1 or num_abnormal < 1:
        msg = f"num_normal and num_abnormal must be >= 1, got {num_normal} and {num_abnormal}."
        raise ValueError(msg)
    root = Path(root)
    params = {
        "format_version": FORMAT_VERSION,
        "num_normal": num_normal,
        "num_abnormal": num_abnormal,
        "image_size": image_size,
        "num_slices": num_slices,
        "seed": seed,
    }
    metadata = root / METADATA_FILE
    if metadata.is_file():
        try:
            existing = json.loads(metadata.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            existing = {}
        if existing == {"params": params, "complete": True}:
            return root
    elif root.is_dir() and any(root.iterdir()):
        msg = f"{str(root)!r} is not empty and holds no {METADATA_FILE}: choose a new or empty folder."
        raise FileExistsError(msg)
    for folder in (NORMAL_DIR, ABNORMAL_DIR, MASK_DIR):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for old in (root / folder).glob("*.nii.gz"):
            old.unlink()
    metadata.write_text(json.dumps({"params": params, "complete": False}), encoding="utf-8")
    affine = phantom_affine(image_size, num_slices)
    for index in range(num_normal):
        volume = render_head_volume((seed, 0, index), image_size, num_slices, lesion=False)
        _save_nifti(volume.hu, affine, root / NORMAL_DIR / f"n{index:03d}.nii.gz")
    for index in range(num_abnormal):
        volume = render_head_volume((seed, 1, index), image_size, num_slices, lesion=True)
        _save_nifti(volume.hu, affine, root / ABNORMAL_DIR / f"a{index:03d}.nii.gz")
        _save_nifti(volume.mask, affine, root / MASK_DIR / f"a{index:03d}.nii.gz")
    metadata.write_text(json.dumps({"params": params, "complete": True}), encoding="utf-8")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write the head-volume phantom (``python -m anomalib_skipts.data.volume_phantom``)."""
    parser = argparse.ArgumentParser(description="Write synthetic CT-like head volumes (NIfTI) with 3-D lesions.")
    parser.add_argument("--root", type=Path, default=Path("./datasets/head_volumes"))
    parser.add_argument("--num-normal", type=int, default=24)
    parser.add_argument("--num-abnormal", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--num-slices", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        root = generate_volume_phantom(
            args.root, args.num_normal, args.num_abnormal, args.image_size, args.num_slices, args.seed
        )
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    print(f"{args.num_normal} normal and {args.num_abnormal} abnormal volumes (with masks) in {root.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
