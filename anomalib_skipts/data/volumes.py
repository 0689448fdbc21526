"""CT and MRI volumes as an anomalib datamodule: patients split whole, slices read one at a time.

:class:`VolumeFolder` is anomalib's :class:`~anomalib.data.Folder` for volumes: normal volumes (NIfTI
files or DICOM series folders) train, normal and abnormal volumes test, optional mask volumes give
the lesions. Each sample is a 2-D slice (Skip-TS, like every anomalib image model, works on slices)
that carries its ``patient_id``, ``volume_path`` and ``slice_index`` (see
:class:`~anomalib_skipts.data.items.MedicalImageItem`), so that slice scores can be aggregated per
patient and maps written back into the volume's grid.

What happens at :meth:`~VolumeFolder.setup`:

1. the folders are listed: ``.nii`` / ``.nii.gz`` files and folders of DICOM slices (one series per
   folder); masks are found in ``mask_dir`` (same name, or the name plus ``mask_suffix``) or beside
   the volumes (``<name><mask_suffix>.nii.gz``, BraTS's ``_seg``);
2. the split is chosen by patient (``patient_id``: the DICOM ``PatientID``, else the volume's name or
   the ``patient`` group of ``patient_pattern``), seeded by ``split_seed``; ``num_train``,
   ``num_test_normal`` and ``num_test_abnormal`` count volumes; no patient is on both sides;
3. the chosen volumes are checked one at a time (never the whole folder in memory): readable, 3-D,
   finite, mask of the same grid and affine, DICOM series complete and of one orientation; every
   problem of every file is listed in one :class:`~anomalib_skipts.data.problems.InvalidDatasetError`
   (or left out with a warning each when ``skip_invalid``); the intensity range (CT window or MRI
   percentiles), the slices kept (``slice_range``, ``min_body_fraction``) and the slices that hold
   lesion voxels are noted;
4. training and testing then read each slice lazily (nibabel's proxy array, one DICOM file).

A slice is normal when its mask slice is empty, abnormal when it holds lesion voxels; without masks,
every slice takes its volume's label. The patient's label (``patient_label``) is abnormal when any of
their volumes is.

Example:
    >>> from anomalib_skipts.data import VolumeFolder
    >>> datamodule = VolumeFolder(
    ...     name="head_volumes",
    ...     root="datasets/head_volumes",
    ...     normal_dir="normal",
    ...     abnormal_dir="abnormal",
    ...     mask_dir="masks",
    ...     window="brain",            # CT: 40 / 80 HU; MRI: leave None (percentile normalisation)
    ...     min_body_fraction=0.05,    # slices with at least 5 % body
    ...     num_test_normal=8,
    ... )
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from anomalib import TaskType
from anomalib.data import AnomalibDataset
from anomalib.data.utils import LabelName, Split, ValSplitMode
from pandas import DataFrame
from torch.nn import functional
from torchvision.transforms.v2 import Transform
from torchvision.tv_tensors import Image, Mask

from anomalib_skipts.data.base import MedicalDataModule, samples_of_split
from anomalib_skipts.data.items import MedicalImageBatch, MedicalImageItem
from anomalib_skipts.data.listing import ABNORMAL, NORMAL
from anomalib_skipts.data.problems import DatasetProblem, InvalidDatasetError, SplitError
from anomalib_skipts.data.readers import DicomWindow, ImageReadError
from anomalib_skipts.data.split import add_patients, assign_split
from anomalib_skipts.data.volume_readers import (
    VolumeInfo,
    inspect_volume,
    intensity_range,
    is_dicom_series,
    is_nifti_file,
    normalise_intensity,
    read_slice,
    read_volume,
    resampled_size,
    spacing_of_plane,
    volume_stem,
)

__all__ = [
    "VOLUME_SETTINGS_KEY",
    "VolumeFolder",
    "VolumeSettings",
    "VolumeSliceDataset",
    "check_volume",
    "list_volumes",
    "make_volume_samples",
    "slice_image_path",
]

logger = logging.getLogger(__name__)

#: Mask suffix of BraTS (``BraTS2021_00000_seg.nii.gz`` beside ``BraTS2021_00000_t1.nii.gz``'s folder).
DEFAULT_VOLUME_MASK_SUFFIX = "_seg"
_IGNORED = frozenset({"thumbs.db", "desktop.ini", ".ds_store", "dicomdir"})
_AFFINE_TOLERANCE = 1e-3  # millimetres
# A pixel is body (not air or background) at this normalised intensity or above.
_BODY_LEVEL = 0.05


def slice_image_path(volume_path: str | Path, slice_index: int) -> str:
    """Return the ``image_path`` of a slice: ``<volume>#slice_<NNNN>.png``.

    Not a file on disk: it names the volume and the slice, and gives anomalib's visualizer the
    ``.png`` name under which it saves the slice's picture.
    """
    return f"{volume_path}#slice_{slice_index:04d}.png"


# --------------------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------------------
def list_volumes(folder: Path, mask_suffix: str | None) -> tuple[list[Path], list[Path], list[DatasetProblem]]:
    """Find the volumes under a folder: NIfTI files and folders of DICOM slices, recursively.

    Args:
        folder: Folder to search.
        mask_suffix: Stem suffix of masks beside the volumes (``_seg``); ``None``: no masks beside them.

    Returns:
        ``(volumes, masks, problems)``: volumes and masks found, and a problem per file that is neither
        (a missing or empty folder is a fatal problem).
    """
    if not folder.is_dir():
        reason = "folder does not exist" if not folder.exists() else "not a folder"
        return [], [], [DatasetProblem(str(folder), reason, fatal=True)]
    volumes: list[Path] = []
    masks: list[Path] = []
    problems: list[DatasetProblem] = []
    for directory, subdirectories, files in os.walk(folder):
        subdirectories.sort()
        here = Path(directory)
        if is_dicom_series(here):
            is_mask = bool(mask_suffix) and here.name.lower().endswith(mask_suffix.lower())
            (masks if is_mask else volumes).append(here)
            continue  # the series' own files are its slices
        for name in sorted(files):
            path = here / name
            if name.startswith(".") or name.lower() in _IGNORED:
                continue
            if is_nifti_file(path):
                is_mask = bool(mask_suffix) and volume_stem(path).lower().endswith(mask_suffix.lower())
                (masks if is_mask else volumes).append(path)
            else:
                problems.append(
                    DatasetProblem(str(path), "not a volume: expected .nii / .nii.gz files or folders of DICOM slices")
                )
    if not volumes and not problems:
        problems.append(DatasetProblem(str(folder), "no volumes found (.nii, .nii.gz or DICOM series)", fatal=True))
    return volumes, masks, problems


def _resolve(folder: str | Path, root: str | Path | None) -> Path:
    folder = Path(folder).expanduser()
    return folder if folder.is_absolute() or root is None else Path(root).expanduser() / folder


def _as_list(value: str | Path | Sequence[str | Path] | None) -> list[str | Path]:
    if value is None:
        return []
    return [value] if isinstance(value, str | Path) else list(value)


def _dicom_patient(series: Path) -> str:
    """``PatientID`` of a DICOM series' first file ("" when unreadable: the check reports it later)."""
    import pydicom

    for file in sorted(series.iterdir()):
        if file.is_file() and not file.name.startswith("."):
            try:
                return str(pydicom.dcmread(file, stop_before_pixels=True).get("PatientID", "") or "")
            except Exception:  # reported by check_volume with the reason
                return ""
    return ""


def make_volume_samples(
    normal_dir: str | Path | Sequence[str | Path],
    root: str | Path | None = None,
    abnormal_dir: str | Path | Sequence[str | Path] | None = None,
    normal_test_dir: str | Path | Sequence[str | Path] | None = None,
    mask_dir: str | Path | Sequence[str | Path] | None = None,
    mask_suffix: str | None = DEFAULT_VOLUME_MASK_SUFFIX,
) -> tuple[DataFrame, list[DatasetProblem]]:
    """One row per volume, with its label, mask, predefined split, key and patient.

    Args:
        normal_dir: Folder(s) of normal volumes.
        root: Root the folders are relative to.
        abnormal_dir: Folder(s) of abnormal volumes.
        normal_test_dir: Folder(s) of normal test volumes.
        mask_dir: Folder(s) of mask volumes, named like their volume or with ``mask_suffix``.
        mask_suffix: Stem suffix of mask volumes (``p01_seg.nii.gz`` for ``p01.nii.gz``).

    Returns:
        ``(samples, problems)``: columns ``image_path`` (the volume), ``label``, ``label_index``,
        ``mask_path``, ``split``, ``key`` and ``patient``.
    """
    rows: list[dict] = []
    problems: list[DatasetProblem] = []
    masks: dict[str, Path] = {}
    for folder in _as_list(mask_dir):
        found, suffixed, listed = list_volumes(_resolve(folder, root), None)
        problems += listed
        for mask in found + suffixed:
            stem = volume_stem(mask)
            if mask_suffix and stem.lower().endswith(mask_suffix.lower()):
                stem = stem[: -len(mask_suffix)]
            masks[stem] = mask
    groups = ((normal_dir, NORMAL, ""), (normal_test_dir, NORMAL, "test"), (abnormal_dir, ABNORMAL, "test"))
    for folders, label, split in groups:
        for folder in _as_list(folders):
            base = _resolve(folder, root)
            volumes, beside, listed = list_volumes(base, mask_suffix)
            problems += listed
            for mask in beside:
                masks.setdefault(volume_stem(mask)[: -len(mask_suffix or "")], mask)
            for volume in volumes:
                patient = _dicom_patient(volume) if volume.is_dir() else ""
                rows.append(
                    {
                        "image_path": str(volume),
                        "label": label,
                        "label_index": int(LabelName.ABNORMAL if label == ABNORMAL else LabelName.NORMAL),
                        "split": split,
                        "key": f"{label}/{volume.relative_to(base).as_posix()}",
                        "patient": patient or volume_stem(volume),
                    }
                )
    samples = DataFrame(rows, columns=["image_path", "label", "label_index", "split", "key", "patient"])
    samples["mask_path"] = [
        str(masks[volume_stem(path)]) if volume_stem(path) in masks else "" for path in samples["image_path"]
    ]
    abnormal = samples["label"] == ABNORMAL
    has_mask = samples["mask_path"] != ""
    if (mask_dir is not None or (abnormal & has_mask).any()) and (abnormal & ~has_mask).any():
        where = f"in {mask_dir!r}" if mask_dir is not None else f"beside it (suffix {mask_suffix!r})"
        problems += [
            DatasetProblem(path, f"abnormal volume without a mask {where}, while masks are expected")
            for path in samples.loc[abnormal & ~has_mask, "image_path"]
        ]
    return samples, problems


# --------------------------------------------------------------------------------------------------
# Checking one volume
# --------------------------------------------------------------------------------------------------
#: Key of the volume settings inside a checkpoint's input settings.
VOLUME_SETTINGS_KEY = "volume"


@dataclass(frozen=True)
class VolumeSettings:
    """How slices are taken from a volume (see :class:`VolumeFolder`)."""

    slice_axis: int = 2
    slice_range: tuple[int, int] | None = None
    min_body_fraction: float | None = None
    window: DicomWindow | tuple[float, float] | None = None
    percentiles: tuple[float, float] = (0.5, 99.5)
    spacing: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.slice_axis not in {0, 1, 2}:
            msg = f"slice_axis must be 0, 1 or 2, got {self.slice_axis!r}."
            raise ValueError(msg)
        if self.slice_range is not None and (len(self.slice_range) != 2 or self.slice_range[0] >= self.slice_range[1]):
            msg = f"slice_range must be [start, stop) with start < stop, got {self.slice_range!r}."
            raise ValueError(msg)
        if self.min_body_fraction is not None and not 0.0 <= self.min_body_fraction <= 1.0:
            msg = f"min_body_fraction must be in [0, 1], got {self.min_body_fraction!r}."
            raise ValueError(msg)
        if self.spacing is not None and (len(self.spacing) != 2 or min(self.spacing) <= 0):
            msg = f"spacing must be two positive in-plane spacings (row, column) in mm, got {self.spacing!r}."
            raise ValueError(msg)
        intensity_range(np.zeros(2), self.window, self.percentiles)  # fail early on a bad window / percentiles

    def to_dict(self) -> dict[str, Any]:
        """Return a plain (YAML- and checkpoint-safe) copy of the settings: tuples become lists."""
        return {
            name: list(value) if isinstance(value, tuple) else value for name, value in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> VolumeSettings:
        """Build settings from the output of :meth:`to_dict` (as stored in checkpoints); ignore unknown keys."""
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(
            **{
                name: tuple(value) if isinstance(value, list) else value
                for name, value in values.items()
                if name in known
            }
        )


@dataclass(frozen=True)
class CheckedVolume:
    """What setting up learned about one volume: its grid, intensity range, slices and lesion slices."""

    info: VolumeInfo
    low: float
    high: float
    slices: tuple[int, ...]
    lesion_slices: frozenset[int]


def check_volume(
    path: str, mask_path: str, settings: VolumeSettings
) -> tuple[CheckedVolume | None, list[DatasetProblem]]:
    """Read a volume (and its mask) once, fully, and report everything wrong with them.

    Args:
        path: NIfTI file or DICOM series folder.
        mask_path: Its mask volume, or ``""``.
        settings: Slice and intensity settings.

    Returns:
        ``(checked, problems)``: ``checked`` is ``None`` when there are problems.
    """
    problems: list[DatasetProblem] = []
    try:
        info = inspect_volume(path)
        volume = read_volume(info)
    except ImageReadError as error:
        problems.append(DatasetProblem(error.path, error.reason))
        info, volume = None, None
    lesion_slices: frozenset[int] = frozenset()
    if mask_path:
        try:
            mask_info = inspect_volume(mask_path)
            mask = read_volume(mask_info) != 0
        except ImageReadError as error:
            problems.append(DatasetProblem(error.path, f"mask of {Path(path).name}: {error.reason}"))
        else:
            if info is not None:
                problems += _mask_problems(info, mask_info)
                if not problems:
                    axes = tuple(dim for dim in range(3) if dim != settings.slice_axis)
                    lesion_slices = frozenset(np.flatnonzero(mask.any(axis=axes)).tolist())
    if info is None or volume is None or problems:
        return None, problems
    count = info.shape[settings.slice_axis]
    start, stop = settings.slice_range or (0, count)
    if start < 0 or stop > count:
        reason = f"slice_range {settings.slice_range} lies outside the volume's {count} slices"
        reason += f" along axis {settings.slice_axis}"
        return None, [DatasetProblem(path, reason)]
    low, high = intensity_range(volume, settings.window, settings.percentiles)
    slices = range(start, stop)
    if settings.min_body_fraction is not None:
        body = normalise_intensity(volume, low, high) >= _BODY_LEVEL
        axes = tuple(dim for dim in range(3) if dim != settings.slice_axis)
        fraction = body.mean(axis=axes)
        slices = [index for index in slices if fraction[index] >= settings.min_body_fraction]
        if not slices:
            reason = f"no slice has at least {settings.min_body_fraction:.0%} body (min_body_fraction); lower it"
            return None, [DatasetProblem(path, reason)]
    return CheckedVolume(info, low, high, tuple(slices), lesion_slices), []


def _mask_problems(info: VolumeInfo, mask_info: VolumeInfo) -> list[DatasetProblem]:
    problems = []
    if mask_info.shape != info.shape:
        reason = f"mask grid is {mask_info.shape} but its volume {Path(info.path).name} is {info.shape}"
        problems.append(DatasetProblem(mask_info.path, reason))
    elif not np.allclose(mask_info.affine, info.affine, atol=_AFFINE_TOLERANCE):
        reason = (
            f"mask affine differs from its volume {Path(info.path).name}'s (largest difference "
            f"{np.abs(mask_info.affine - info.affine).max():.4g} mm): the mask is not aligned with the scan; "
            "resample it onto the volume's grid"
        )
        problems.append(DatasetProblem(mask_info.path, reason))
    return problems


# --------------------------------------------------------------------------------------------------
# Dataset of slices
# --------------------------------------------------------------------------------------------------
class VolumeSliceDataset(AnomalibDataset):
    """anomalib dataset of volume slices, each read on demand.

    Args:
        samples: One row per slice (see :meth:`VolumeFolder.prepare_samples`).
        name: Dataset name.
        split: Keep only this split; ``None`` keeps every slice.
        augmentations: anomalib augmentations of image and mask.
        settings: Slice and intensity settings (axis, resampling).
    """

    def __init__(
        self,
        samples: DataFrame,
        name: str = "VolumeFolder",
        split: str | Split | None = None,
        augmentations: Transform | None = None,
        settings: VolumeSettings | None = None,
    ) -> None:
        super().__init__(augmentations=augmentations)
        self._name = name
        self.split = split
        self.settings = settings or VolumeSettings()
        self.samples = samples_of_split(samples, split, dict(samples.attrs))
        self._infos: dict[str, VolumeInfo] = {}

    @property
    def name(self) -> str:
        """Name of the dataset."""
        return self._name

    @property
    def samples(self) -> DataFrame:
        """One row per slice."""
        return self._samples

    @samples.setter
    def samples(self, samples: DataFrame) -> None:
        # anomalib's setter checks that every image_path is a file; a slice's is not (see slice_image_path).
        missing = [path for path in samples["volume_path"].unique() if not Path(path).exists()]
        if missing:
            msg = f"{self.name}: volume(s) no longer on disk: {missing[:3]}"
            raise FileNotFoundError(msg)
        self._samples = samples.sort_values(by="image_path", ignore_index=True)

    @property
    def collate_fn(self) -> Callable:
        """Collate into :class:`~anomalib_skipts.data.items.MedicalImageBatch` (keeps patient and slice)."""
        return MedicalImageBatch.collate

    def _info(self, path: str) -> VolumeInfo:
        if path not in self._infos:
            self._infos[path] = inspect_volume(path)
        return self._infos[path]

    def _plane(self, path: str, index: int) -> np.ndarray:
        return read_slice(self._info(path), index, self.settings.slice_axis)

    def __getitem__(self, index: int) -> MedicalImageItem:
        """Read one slice: normalised, resampled, three channels; its mask slice; its patient."""
        row = self.samples.iloc[index]
        info = self._info(row.volume_path)
        values = normalise_intensity(
            self._plane(row.volume_path, int(row.slice_index)), row.intensity_low, row.intensity_high
        )
        image = torch.from_numpy(values)[None]
        gt_mask = None
        if self.task == TaskType.SEGMENTATION:
            if row.mask_path:
                gt_mask = torch.from_numpy((self._plane(row.mask_path, int(row.slice_index)) != 0).astype(np.uint8))
            else:
                gt_mask = torch.zeros(values.shape, dtype=torch.uint8)
        if self.settings.spacing is not None:
            size = resampled_size(values.shape, spacing_of_plane(info, self.settings.slice_axis), self.settings.spacing)
            image = functional.interpolate(
                image[None], size=size, mode="bilinear", antialias=True, align_corners=False
            )[0]
            if gt_mask is not None:
                gt_mask = functional.interpolate(gt_mask[None, None].float(), size=size, mode="nearest")[0, 0].to(
                    torch.uint8
                )
        image = Image(image.expand(3, -1, -1).contiguous())
        gt_mask = Mask(gt_mask) if gt_mask is not None else None
        if self.augmentations:
            if gt_mask is None:
                image = self.augmentations(image)
            else:
                image, gt_mask = self.augmentations(image, gt_mask)
        return MedicalImageItem(
            image=image,
            gt_mask=gt_mask,
            gt_label=torch.tensor(int(row.label_index)),
            image_path=row.image_path,
            mask_path=row.mask_path or None,
            patient_id=str(row.patient_id),
            volume_path=str(row.volume_path),
            slice_index=int(row.slice_index),
        )


# --------------------------------------------------------------------------------------------------
# Datamodule
# --------------------------------------------------------------------------------------------------
class VolumeFolder(MedicalDataModule):
    """Datamodule for folders of CT / MRI volumes (NIfTI files or DICOM series), one slice per sample.

    anomalib's :class:`~anomalib.data.Folder` arguments carry over (``name``, ``normal_dir``, ``root``,
    ``abnormal_dir``, ``normal_test_dir``, ``mask_dir``, batch sizes, workers, augmentations, split
    modes, ``seed``), with the split of :class:`~anomalib_skipts.data.MedicalFolder` (``num_train``,
    ``num_test_normal``, ``num_test_abnormal``, ``normal_split_ratio``, ``split_seed``) counted in
    volumes and always by patient. The validation split (``val_split_mode``) is by patient too.

    Args:
        name: Dataset name.
        normal_dir: Folder(s) of normal volumes, relative to ``root`` unless absolute.
        root: Dataset root.
        abnormal_dir: Folder(s) of abnormal volumes.
        normal_test_dir: Folder(s) of normal test volumes.
        mask_dir: Folder(s) of mask volumes, named like their volume or with ``mask_suffix``.
        mask_suffix: Stem suffix of mask volumes, beside the volumes or in ``mask_dir`` (BraTS: ``_seg``).
        slice_axis: Voxel axis the slices are taken along (``2``: the third axis, axial for most CT and
            for DICOM series their own stacking axis, read one file per slice).
        slice_range: Keep slices ``[start, stop)`` of every volume; ``None`` keeps all.
        min_body_fraction: Keep only slices whose body (normalised intensity >= 0.05) covers at least
            this fraction of the slice, e.g. ``0.05``; ``None`` keeps all.
        window: CT window ``(center, width)`` in HU or a name (``"brain"``: 40 / 80); ``None``:
            percentile normalisation (MRI).
        percentiles: Lower / upper percentile of each volume's body voxels mapped to 0 and 1 when no
            window is given.
        spacing: Resample slices to this in-plane spacing ``(row, column)`` in mm; ``None`` keeps the grid.
        **kwargs: The arguments of :class:`~anomalib_skipts.data.base.MedicalDataModule`, counted in
            volumes and split by patient: ``num_train`` / ``num_test_normal`` / ``num_test_abnormal``
            (normal training, normal test and abnormal test volumes; ``None`` for abnormal takes all),
            ``normal_split_ratio`` (fraction of normal volumes tested when no count is given),
            ``split_seed``, ``skip_invalid`` (leave out invalid volumes, one warning each, instead of
            failing at set-up), batch sizes (in slices), workers, augmentations (of slices), split
            modes and ratios (``val_split_ratio``: the fraction of patients for validation),
            ``seed`` (of the validation split; ``None`` uses ``split_seed``) and
            ``patient_pattern`` (a regular expression with a group named ``patient`` searched in
            volume names, for several volumes per patient; by default the patient is a DICOM
            series' ``PatientID`` or the volume's name). The base's ``dicom_window`` is not one of
            them: ``window`` sets the intensities of every volume, NIfTI and DICOM alike.
    """

    def __init__(
        self,
        name: str,
        normal_dir: str | Path | Sequence[str | Path],
        root: str | Path | None = None,
        abnormal_dir: str | Path | Sequence[str | Path] | None = None,
        normal_test_dir: str | Path | Sequence[str | Path] | None = None,
        mask_dir: str | Path | Sequence[str | Path] | None = None,
        mask_suffix: str | None = DEFAULT_VOLUME_MASK_SUFFIX,
        slice_axis: int = 2,
        slice_range: tuple[int, int] | None = None,
        min_body_fraction: float | None = None,
        window: DicomWindow | None = None,
        percentiles: tuple[float, float] = (0.5, 99.5),
        spacing: tuple[float, float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, dicom_window=None, **kwargs)
        self.root = root
        self.normal_dir = normal_dir
        self.abnormal_dir = abnormal_dir
        self.normal_test_dir = normal_test_dir
        self.mask_dir = mask_dir
        self.mask_suffix = mask_suffix
        self.settings = VolumeSettings(
            slice_axis=slice_axis,
            slice_range=tuple(slice_range) if slice_range is not None else None,
            min_body_fraction=min_body_fraction,
            window=tuple(window) if isinstance(window, list) else window,
            percentiles=tuple(percentiles),
            spacing=tuple(spacing) if spacing is not None else None,
        )

    def input_settings(self) -> dict[str, Any]:
        """How this datamodule reads images, with the volume settings (slice axis, intensity, spacing).

        Stored in every checkpoint, so that predicting on volumes takes slices as in training.
        """
        return {**super().input_settings(), VOLUME_SETTINGS_KEY: self.settings.to_dict()}

    def _make_samples(self) -> tuple[DataFrame, list[DatasetProblem]]:
        return make_volume_samples(
            normal_dir=self.normal_dir,
            root=self.root,
            abnormal_dir=self.abnormal_dir,
            normal_test_dir=self.normal_test_dir,
            mask_dir=self.mask_dir,
            mask_suffix=self.mask_suffix,
        )

    def _layout_hint(self) -> str:
        return (
            f"Expected: normal volumes (.nii, .nii.gz or one folder of DICOM slices per series) in "
            f"{self.normal_dir!r}, abnormal volumes in {self.abnormal_dir!r}"
            f"{f', mask volumes in {self.mask_dir!r}' if self.mask_dir else ''}, relative to "
            f"{Path(self.root).expanduser().resolve() if self.root is not None else Path.cwd()}."
        )

    def prepare_samples(self) -> DataFrame:
        """List, split by patient, check the chosen volumes, then one row per kept slice.

        Returns:
            Slice rows: ``image_path`` (see :func:`slice_image_path`), ``volume_path``,
            ``slice_index``, ``patient_id``, ``label`` / ``label_index`` (of the slice),
            ``patient_label`` (1 when any of the patient's volumes is abnormal), ``mask_path`` (the
            mask volume), ``split``, ``intensity_low`` / ``intensity_high``.

        Raises:
            InvalidDatasetError: If volumes are invalid (see ``skip_invalid``) or folders missing.
            SplitError: If the requested counts cannot be satisfied.
        """
        volumes, listed = self._make_samples()
        if self.patient_pattern is not None:
            named = add_patients(volumes.drop(columns="patient"), self.patient_pattern, self.name)
            volumes["patient"] = [
                match or default for match, default in zip(named["patient"], volumes["patient"], strict=True)
            ]
        choose = functools.partial(
            assign_split,
            name=self.name,
            num_train=self.num_train,
            num_test_normal=self.num_test_normal,
            num_test_abnormal=self.num_test_abnormal,
            normal_split_ratio=self.normal_split_ratio,
            split_seed=self.split_seed,
        )
        fatal = any(problem.fatal for problem in listed)
        if listed and (fatal or not self.skip_invalid):
            raise InvalidDatasetError(self.name, listed, hint=self._layout_hint())
        pool = self._without(volumes, listed)
        checked: dict[str, tuple[CheckedVolume | None, list[DatasetProblem]]] = {}
        while True:
            chosen = choose(pool)
            new = [
                (path, mask)
                for path, mask in zip(chosen["image_path"], chosen["mask_path"], strict=True)
                if path not in checked
            ]
            with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as threads:
                results = list(threads.map(lambda pair: check_volume(*pair, self.settings), new))
            checked.update((path, result) for (path, _), result in zip(new, results, strict=True))
            invalid = [problem for path in chosen["image_path"] for problem in checked[path][1]]
            if invalid and not self.skip_invalid:
                raise InvalidDatasetError(self.name, invalid, hint=self._layout_hint())
            if not invalid:
                break
            pool = self._without(pool, invalid)
        return self._slice_rows(chosen, {path: checked[path][0] for path in chosen["image_path"]})

    def _without(self, volumes: DataFrame, problems: list[DatasetProblem]) -> DataFrame:
        bad = set()
        for problem in problems:
            logger.warning("%s: leaving out %s", self.name, problem)
            bad.add(problem.path)
        keep = [
            path not in bad and mask not in bad
            for path, mask in zip(volumes["image_path"], volumes["mask_path"], strict=True)
        ]
        return volumes[keep].reset_index(drop=True)

    def _slice_rows(self, volumes: DataFrame, checked: dict[str, CheckedVolume | None]) -> DataFrame:
        patient_label = volumes.groupby("patient")["label_index"].max().to_dict()
        rows = []
        for volume in volumes.itertuples():
            result = checked[volume.image_path]
            assert result is not None  # invalid volumes were raised or left out
            for index in result.slices:
                label_index = int(index in result.lesion_slices) if volume.mask_path else int(volume.label_index)
                rows.append(
                    {
                        "image_path": slice_image_path(volume.image_path, index),
                        "volume_path": volume.image_path,
                        "slice_index": index,
                        "patient_id": volume.patient,
                        "label": ABNORMAL if label_index else NORMAL,
                        "label_index": label_index,
                        "patient_label": int(patient_label[volume.patient]),
                        "mask_path": volume.mask_path,
                        "split": volume.split,
                        "intensity_low": result.low,
                        "intensity_high": result.high,
                    }
                )
        samples = DataFrame(rows)
        samples.attrs["task"] = (
            TaskType.SEGMENTATION if (volumes["mask_path"] != "").any() else TaskType.CLASSIFICATION
        ).value
        return samples

    def _setup(self, _stage: str | None = None) -> None:
        samples = self.prepare_samples()
        volumes = samples.drop_duplicates("volume_path")
        patients = volumes.groupby("split")["patient_id"].nunique().to_dict()
        logger.info(
            "%s: %d training slices from %d patients; test: %d slices (%d abnormal) from %d patients "
            "(split by patient, split_seed=%d).",
            self.name,
            int((samples["split"] == "train").sum()),
            patients.get("train", 0),
            int((samples["split"] == "test").sum()),
            int(((samples["split"] == "test") & (samples["label_index"] == 1)).sum()),
            patients.get("test", 0),
            self.split_seed,
        )
        self.train_data = VolumeSliceDataset(samples, self.name, Split.TRAIN, settings=self.settings)
        self.test_data = VolumeSliceDataset(copy.deepcopy(samples), self.name, Split.TEST, settings=self.settings)

    def _create_val_split(self) -> None:
        """Split off validation as anomalib does, but whole patients (seeded by ``seed``), not slices."""
        if self.val_split_mode in {ValSplitMode.FROM_TEST, ValSplitMode.FROM_TRAIN}:
            source = self.test_data if self.val_split_mode == ValSplitMode.FROM_TEST else self.train_data
            rest, val = _split_patients(source, self.val_split_ratio, self.seed)
            if self.val_split_mode == ValSplitMode.FROM_TEST:
                self.test_data, self.val_data = rest, val
            else:
                self.train_data, self.val_data = rest, val
            return
        super()._create_val_split()


def _split_patients(
    dataset: VolumeSliceDataset, ratio: float, seed: int | None
) -> tuple[AnomalibDataset, AnomalibDataset]:
    """Split a slice dataset by patient: ``ratio`` of the normal and of the abnormal patients, seeded."""
    samples = dataset.samples
    chosen: set[str] = set()
    for _, group in samples.groupby("patient_label"):
        patients = sorted(
            group["patient_id"].unique(),
            key=lambda patient: hashlib.sha256(f"{seed}:{patient}".encode()).hexdigest(),
        )
        chosen.update(patients[: max(1, round(ratio * len(patients)))] if len(patients) > 1 else [])
    in_val = samples["patient_id"].isin(chosen).to_numpy()
    if not in_val.any():
        msg = f"{dataset.name}: too few patients for a validation split by patient ({samples['patient_id'].nunique()})."
        raise SplitError(msg)
    indices = np.arange(len(samples))
    return dataset.subsample(indices[~in_val].tolist()), dataset.subsample(indices[in_val].tolist())
