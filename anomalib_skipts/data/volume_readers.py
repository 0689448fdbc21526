"""Read CT and MRI volumes (NIfTI files, DICOM series) header first and slice by slice.

Two sources of volumes are read:

- **NIfTI** (``.nii``, ``.nii.gz``) through nibabel. :func:`inspect_volume` reads the header only;
  :func:`read_slice` reads one slice through nibabel's proxy array (``img.dataobj[..., k]``), so a
  folder of hundreds of volumes is never loaded at once. Scale factors (``scl_slope``/``scl_inter``,
  e.g. to Hounsfield units) are applied by nibabel.
- **DICOM series**: a folder holding the slices of one series, read through pydicom. Slices are
  ordered by their position along the slice normal (``ImagePositionPatient`` projected on the cross
  product of the two ``ImageOrientationPatient`` directions), never by file name. A series that
  mixes orientations, slice sizes or series, lacks position tags, repeats a position or misses slices
  (a gap larger than 1.5 times the usual spacing) is reported with the files concerned. Values pass
  through the modality LUT (rescale slope and intercept: Hounsfield units for CT). The affine is
  built as nibabel's DICOM reader does (LPS converted to RAS), so a map written over a series opens
  aligned in a viewer.

A slice is returned as a 2-D float32 array in the volume's own units, with the two remaining voxel
axes as ``(columns, rows)`` transposed to ``(rows, columns)``: for a DICOM series along its own axis
that is exactly each file's pixel array, as a PACS viewer shows it. :func:`put_slice` is the inverse
(a 2-D map back into a voxel grid). Any failure raises
:class:`~anomalib_skipts.data.readers.ImageReadError` naming the file and every reason found.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from anomalib_skipts.data.readers import DicomWindow, ImageReadError, _resolve_window, is_dicom_file

__all__ = [
    "NIFTI_EXTENSIONS",
    "VolumeInfo",
    "inspect_volume",
    "intensity_range",
    "is_dicom_series",
    "is_nifti_file",
    "normalise_intensity",
    "put_slice",
    "read_slice",
    "read_volume",
    "volume_stem",
]

#: Extensions of NIfTI files (matched case-insensitively).
NIFTI_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii")

# A gap between two slices larger than this many times the usual spacing means slices are missing.
_GAP_FACTOR = 1.5
# Orientation cosines and affines within this tolerance are the same.
_ORIENTATION_TOLERANCE = 1e-3
_SPATIAL_DIMS = 3


@dataclass(frozen=True)
class VolumeInfo:
    """What the header of a volume tells, without reading its voxels.

    Attributes:
        path: The NIfTI file or DICOM series folder.
        shape: Voxel grid ``(I, J, K)``; a DICOM series has its slices along ``K``.
        affine: 4x4 voxel-to-world (RAS, millimetres) matrix.
        spacing: Voxel size along ``I, J, K`` in millimetres.
        files: DICOM files in slice order (position along the slice normal); empty for NIfTI.
        patient_id: ``PatientID`` of a DICOM series; ``None`` for NIfTI.
    """

    path: str
    shape: tuple[int, int, int]
    affine: np.ndarray = field(repr=False)
    spacing: tuple[float, float, float]
    files: tuple[str, ...] = ()
    patient_id: str | None = None

    @property
    def is_dicom(self) -> bool:
        """Whether the volume is a DICOM series."""
        return bool(self.files)


def is_nifti_file(path: str | Path) -> bool:
    """Whether a path names a NIfTI file (``.nii`` or ``.nii.gz``, any case)."""
    return Path(path).name.lower().endswith(NIFTI_EXTENSIONS)


def volume_stem(path: str | Path) -> str:
    """Name of a volume without its extension: ``p01.nii.gz`` -> ``p01``; a series folder's name."""
    name = Path(path).name
    for extension in NIFTI_EXTENSIONS:
        if name.lower().endswith(extension):
            return name[: -len(extension)]
    return name


def is_dicom_series(path: str | Path) -> bool:
    """Whether a folder directly holds DICOM files (one series per folder)."""
    path = Path(path)
    return path.is_dir() and any(
        child.is_file() and not child.name.startswith(".") and is_dicom_file(child) for child in path.iterdir()
    )


def inspect_volume(path: str | Path) -> VolumeInfo:
    """Read a volume's header: shape, affine, spacing (and, for DICOM, the slice order).

    Args:
        path: NIfTI file or DICOM series folder.

    Returns:
        The :class:`VolumeInfo`.

    Raises:
        ImageReadError: If the volume cannot be read, is not 3-D, or (DICOM) its slices do not form
            one complete, evenly spaced series; the message lists every reason found.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "does not exist")
    if path.is_dir():
        return _inspect_series(path)
    if not is_nifti_file(path):
        raise ImageReadError(path, "not a volume: expected a .nii / .nii.gz file or a folder of DICOM slices")
    return _inspect_nifti(path)


def read_slice(info: VolumeInfo, index: int, axis: int = 2) -> np.ndarray:
    """Read one slice of a volume, without reading the others where the format allows it.

    Args:
        info: The volume (see :func:`inspect_volume`).
        index: Slice index along ``axis``.
        axis: Voxel axis the slices are taken along (``0``, ``1`` or ``2``).

    Returns:
        ``(rows, columns)`` float32 array in the volume's units (rows: the second remaining axis).

    Raises:
        ImageReadError: If the data cannot be decoded.
        IndexError: If ``index`` is outside the volume.
    """
    if not 0 <= index < info.shape[axis]:
        msg = f"slice {index} is outside {info.path} ({info.shape[axis]} slices along axis {axis})"
        raise IndexError(msg)
    if info.is_dicom and axis == 2:  # the series. own axis: one file
        return _read_dicom_values(Path(info.files[index]))
    if info.is_dicom:
        return np.take(read_volume(info), index, axis=axis).T
    selection: list[slice | int] = [slice(None)] * _SPATIAL_DIMS
    selection[axis] = index
    image = _load_nifti(Path(info.path))
    try:
        data = np.asarray(image.dataobj[(*selection, *([0] * (len(image.shape) - _SPATIAL_DIMS)))], dtype=np.float32)
    except Exception as error:  # gzip, zlib, EOF and nibabel errors alike
        raise ImageReadError(info.path, f"corrupt or truncated volume data ({_describe(error)})") from error
    return _finite(data, info.path).T


def read_volume(info: VolumeInfo) -> np.ndarray:
    """Read a whole volume as a float32 ``(I, J, K)`` array in its own units.

    Args:
        info: The volume (see :func:`inspect_volume`).

    Returns:
        The voxels.

    Raises:
        ImageReadError: If the data cannot be decoded or holds NaN / infinite values.
    """
    if info.is_dicom:
        planes = [_read_dicom_values(Path(file)) for file in info.files]
        shapes = {plane.shape for plane in planes}
        if len(shapes) != 1:
            raise ImageReadError(info.path, f"slices of different sizes: {sorted(shapes)}")
        return np.stack([plane.T for plane in planes], axis=-1)
    image = _load_nifti(Path(info.path))
    try:
        data = np.asarray(image.get_fdata(dtype=np.float32), dtype=np.float32)
    except Exception as error:
        raise ImageReadError(info.path, f"corrupt or truncated volume data ({_describe(error)})") from error
    return _finite(data.reshape(info.shape), info.path)


def put_slice(volume: np.ndarray, plane: np.ndarray, index: int, axis: int = 2) -> None:
    """Write a ``(rows, columns)`` plane (as :func:`read_slice` returns it) into a voxel grid.

    Args:
        volume: ``(I, J, K)`` array, modified in place.
        plane: The slice, shape of :func:`read_slice`'s result.
        index: Slice index along ``axis``.
        axis: Voxel axis of the slices.
    """
    np.moveaxis(volume, axis, 0)[index] = plane.T


def intensity_range(
    volume: np.ndarray,
    window: DicomWindow | Sequence[float] | None = None,
    percentiles: Sequence[float] = (0.5, 99.5),
) -> tuple[float, float]:
    """Return the values mapped to 0 and 1: a CT window, or percentiles of the volume (MRI).

    Args:
        volume: The voxels, in the volume's units.
        window: CT window ``(center, width)`` in Hounsfield units or a name of
            :data:`~anomalib_skipts.data.readers.DICOM_WINDOWS` (``"brain"``: 40 / 80). ``None``
            uses ``percentiles``.
        percentiles: Lower and upper percentile of the voxels above the volume's minimum (the body,
            not the air around it) mapped to 0 and 1: MRI has no absolute scale.

    Returns:
        ``(low, high)``, ``low < high``.

    Raises:
        ValueError: If the window or percentiles are invalid.
    """
    if window is not None:
        resolved = _resolve_window(window if isinstance(window, str) else tuple(window), Path("volume"))
        assert resolved is not None
        center, width = resolved
        if width <= 0:
            msg = f"A CT window needs a positive width, got {width}."
            raise ValueError(msg)
        return center - width / 2.0, center + width / 2.0
    low_pct, high_pct = (float(value) for value in percentiles)
    if not 0.0 <= low_pct < high_pct <= 100.0:
        msg = f"percentiles must be (low, high) with 0 <= low < high <= 100, got {tuple(percentiles)}."
        raise ValueError(msg)
    body = volume[volume > volume.min()]
    values = body if body.size else volume.ravel()
    low, high = (float(value) for value in np.percentile(values, (low_pct, high_pct)))
    if not high > low:
        high = low + 1.0  # a constant volume: everything maps to 0
    return low, high


def normalise_intensity(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``[low, high]`` linearly to ``[0, 1]`` and clip; float32."""
    return np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------------------------------
def _describe(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _load_nifti(path: Path) -> object:
    try:
        import nibabel
    except ImportError as error:  # pragma: no cover - nibabel is a dependency
        raise ImageReadError(path, "reading NIfTI needs nibabel: pip install nibabel") from error
    if not path.is_file():
        raise ImageReadError(path, "does not exist" if not path.exists() else "not a regular file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    try:
        return nibabel.load(path)
    except Exception as error:
        raise ImageReadError(path, f"not a readable NIfTI file ({_describe(error)})") from error


def _inspect_nifti(path: Path) -> VolumeInfo:
    image = _load_nifti(path)
    shape = tuple(int(size) for size in image.shape)
    extra = shape[_SPATIAL_DIMS:]
    if len(shape) < _SPATIAL_DIMS:
        reason = f"{len(shape)}-D image of shape {shape}, not a volume; read 2-D slices with MedicalFolder"
        raise ImageReadError(path, reason)
    if any(size != 1 for size in extra):
        reason = (
            f"{len(shape)}-D volume of shape {shape} (several channels or time points); give one 3-D volume "
            "per file, e.g. split it with nibabel.funcs.four_to_three or fslsplit"
        )
        raise ImageReadError(path, reason)
    zooms = tuple(float(zoom) for zoom in image.header.get_zooms()[:_SPATIAL_DIMS])
    affine = np.asarray(image.affine, dtype=np.float64)
    if not np.isfinite(affine).all():
        raise ImageReadError(path, "the header's affine holds NaN or infinite values")
    return VolumeInfo(path=str(path), shape=shape[:_SPATIAL_DIMS], affine=affine, spacing=zooms)


def _finite(data: np.ndarray, path: str | Path) -> np.ndarray:
    if not np.isfinite(data).all():
        raise ImageReadError(path, "volume contains NaN or infinite values")
    return data


# --------------------------------------------------------------------------------------------------
# DICOM series
# --------------------------------------------------------------------------------------------------
def _read_dicom_values(path: Path) -> np.ndarray:
    """One DICOM slice in modality units (rescale slope / intercept applied), float32 ``(rows, cols)``."""
    import pydicom

    try:
        from pydicom.pixels import apply_modality_lut  # pydicom >= 3
    except ImportError:  # pragma: no cover - pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_modality_lut
    try:
        dataset = pydicom.dcmread(path)
        pixels = dataset.pixel_array
    except Exception as error:
        raise ImageReadError(path, f"corrupt or undecodable DICOM slice ({_describe(error)})") from error
    if pixels.ndim != 2:
        raise ImageReadError(path, f"expected one grayscale slice per file, got pixel data of shape {pixels.shape}")
    return _finite(np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float32), path)


def _inspect_series(folder: Path) -> VolumeInfo:
    """Order a folder's DICOM slices along the slice normal and check they form one complete series."""
    try:
        import pydicom
    except ImportError as error:  # pragma: no cover - the dicom extra
        raise ImageReadError(folder, "reading DICOM needs pydicom: pip install 'anomalib-skipts[dicom]'") from error
    files = sorted(
        child
        for child in folder.iterdir()
        if child.is_file() and not child.name.startswith(".") and is_dicom_file(child)
    )
    if not files:
        raise ImageReadError(folder, "folder holds no DICOM files (expected one DICOM series per folder)")
    reasons: list[str] = []
    headers = []
    for file in files:
        try:
            header = pydicom.dcmread(file, stop_before_pixels=True)
        except Exception as error:
            reasons.append(f"{file.name}: unreadable DICOM file ({_describe(error)})")
            continue
        missing = [
            tag for tag in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing") if tag not in header
        ]
        if missing:
            reasons.append(f"{file.name}: no {', '.join(missing)} (cannot place the slice in the volume)")
            continue
        headers.append((file, header))
    series = {str(header.get("SeriesInstanceUID", "")) for _, header in headers}
    if len(series) > 1:
        reasons.append(f"holds {len(series)} series (SeriesInstanceUID); put each series in its own folder")
    if headers:
        reasons += _orientation_problems(headers)
    if reasons:
        raise ImageReadError(folder, "; ".join(reasons))

    orientation = np.asarray([float(value) for value in headers[0][1].ImageOrientationPatient], dtype=np.float64)
    row_cosine, column_cosine = orientation[:3], orientation[3:]
    normal = np.cross(row_cosine, column_cosine)
    placed = sorted(
        (
            (float(np.dot([float(v) for v in header.ImagePositionPatient], normal)), file, header)
            for file, header in headers
        ),
        key=lambda item: item[0],
    )
    positions = np.asarray([position for position, _, _ in placed])
    reasons += _spacing_problems(positions, [file for _, file, _ in placed])
    if reasons:
        raise ImageReadError(folder, "; ".join(reasons))

    first = placed[0][2]
    row_spacing, column_spacing = (float(value) for value in first.PixelSpacing)
    slice_spacing = (
        float(np.median(np.diff(positions))) if len(positions) > 1 else float(first.get("SliceThickness", 1))
    )
    affine = np.eye(4)
    affine[:3, 0] = row_cosine * column_spacing  # voxel axis I runs along a row (across the columns)
    affine[:3, 1] = column_cosine * row_spacing  # voxel axis J runs down a column (across the rows)
    affine[:3, 2] = normal * slice_spacing
    affine[:3, 3] = [float(value) for value in first.ImagePositionPatient]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # DICOM's LPS to NIfTI's RAS
    shape = (int(first.Columns), int(first.Rows), len(placed))
    patient = str(first.get("PatientID", "") or "") or None
    return VolumeInfo(
        path=str(folder),
        shape=shape,
        affine=affine,
        spacing=(column_spacing, row_spacing, slice_spacing),
        files=tuple(str(file) for _, file, _ in placed),
        patient_id=patient,
    )


def _orientation_problems(headers: list[tuple[Path, object]]) -> list[str]:
    """Slices whose orientation or size differs from the first slice's."""
    reference_file, reference = headers[0]
    orientation = np.asarray([float(value) for value in reference.ImageOrientationPatient])
    size = (int(reference.Rows), int(reference.Columns))
    odd_orientation, odd_size = [], []
    for file, header in headers[1:]:
        other = np.asarray([float(value) for value in header.ImageOrientationPatient])
        if not np.allclose(other, orientation, atol=_ORIENTATION_TOLERANCE):
            odd_orientation.append(file.name)
        if (int(header.Rows), int(header.Columns)) != size:
            odd_size.append(file.name)
    reasons = []
    if odd_orientation:
        reasons.append(
            f"mixes orientations: {_names(odd_orientation)} differ from {reference_file.name} "
            f"(ImageOrientationPatient {np.round(orientation, 3).tolist()}); one series must have one orientation"
        )
    if odd_size:
        reasons.append(f"mixes slice sizes: {_names(odd_size)} are not {size[1]}x{size[0]} like {reference_file.name}")
    return reasons


def _spacing_problems(positions: np.ndarray, files: list[Path]) -> list[str]:
    """Repeated positions and gaps (missing slices) along the slice normal."""
    if len(positions) < 2:
        return []
    steps = np.diff(positions)
    reasons = []
    for index in np.flatnonzero(steps < 1e-3):
        reasons.append(
            f"{files[index].name} and {files[index + 1].name} lie at the same position "
            f"({positions[index]:.2f} mm along the slice normal): a duplicated slice or two series in one folder"
        )
    regular = steps[steps >= 1e-3]
    if regular.size == 0:
        return reasons
    spacing = float(np.median(regular))
    for index in np.flatnonzero(steps > _GAP_FACTOR * spacing):
        missing = max(1, round(steps[index] / spacing) - 1)
        reasons.append(
            f"missing slice(s) between {files[index].name} ({positions[index]:.2f} mm) and {files[index + 1].name} "
            f"({positions[index + 1]:.2f} mm): a gap of {steps[index]:.2f} mm where slices are {spacing:.2f} mm "
            f"apart (about {missing} slice{'s' if missing != 1 else ''} missing)"
        )
    return reasons


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def spacing_of_plane(info: VolumeInfo, axis: int) -> tuple[float, float]:
    """Pixel spacing ``(row, column)`` in millimetres of the slices :func:`read_slice` returns."""
    first, second = (dim for dim in range(_SPATIAL_DIMS) if dim != axis)
    return info.spacing[second], info.spacing[first]


def resampled_size(size: tuple[int, int], spacing: tuple[float, float], target: Sequence[float]) -> tuple[int, int]:
    """Size of a ``(rows, columns)`` plane resampled from ``spacing`` to ``target`` millimetres per pixel."""
    return tuple(max(1, math.floor(n * s / t + 0.5)) for n, s, t in zip(size, spacing, target, strict=True))
