"""Read medical image files as float RGB tensors in ``[0, 1]``, or fail with a clear error.

anomalib's :func:`~anomalib.data.utils.read_image` (``PIL.Image.convert("RGB")`` then ``/ 255``) is
right for 8-bit photographs but wrong for much of what medical downloads contain: 16-bit PNG and TIFF
are truncated to their high byte, EXIF orientation is ignored and DICOM is not read at all. The
readers here return the same kind of tensor as anomalib's (a float32
:class:`torchvision.tv_tensors.Image` of shape ``(3, H, W)`` with values in ``[0, 1]``), so
anomalib's pre-processing, collation and metrics work unchanged, and they handle:

- every 8-bit PIL mode: grayscale (``L``, ``1``), palette (``P``, with or without transparency),
  ``RGB``, ``RGBA``/``LA`` (alpha composited over black, the background of medical images),
  ``CMYK``, ``YCbCr``; grayscale is replicated to three channels;
- 16-bit grayscale, RGB and RGBA PNG and TIFF, scaled by ``65535`` (never truncated to 8 bits);
  32-bit integer and floating-point images, scaled by their own minimum and maximum;
- EXIF orientation (and the TIFF orientation tag), applied before anything else;
- DICOM slices (``.dcm``/``.dicom``, or any file with the ``DICM`` signature) through ``pydicom``
  (the ``dicom`` extra): modality LUT (rescale slope / intercept, e.g. to Hounsfield units), then
  the VOI transform (the file's VOI LUT or ``WindowCenter``/``WindowWidth`` unless a window is given,
  applied by pydicom's ``apply_voi_lut`` on the file's own dataset), then
  ``MONOCHROME1`` inversion, so that a CT slice looks the way a radiologist's viewer shows it.

Any failure (empty, truncated or corrupt file, unknown format, undecodable DICOM) raises
:class:`ImageReadError`, a :class:`ValueError` that names the file and the reason.

Example:
    >>> from anomalib_skipts.data.readers import read_image, read_mask
    >>> image = read_image("head_ct/000.png")                   # (3, H, W) float32 in [0, 1]
    >>> ct = read_image("slice.dcm", dicom_window="brain")       # centre 40 HU, width 80 HU
    >>> mask = read_mask(["benign (4)_mask.png", "benign (4)_mask_1.png"])  # OR of both
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.tv_tensors import Image as ImageTensor
from torchvision.tv_tensors import Mask

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = [
    "DICOM_EXTENSIONS",
    "DICOM_WINDOWS",
    "IMAGE_EXTENSIONS",
    "SUPPORTED_EXTENSIONS",
    "DicomWindow",
    "ImageReadError",
    "apply_dicom_window",
    "is_dicom_file",
    "read_image",
    "read_image_array",
    "read_mask",
    "verify_image",
]

#: Extensions of the raster formats read through Pillow (matched case-insensitively).
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".jpe",
    ".jfif",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".pgm",
    ".ppm",
    ".pnm",
)
#: Extensions of DICOM files (files without an extension are recognised by their signature).
DICOM_EXTENSIONS: tuple[str, ...] = (".dcm", ".dicom")
#: Every extension the readers accept.
SUPPORTED_EXTENSIONS: tuple[str, ...] = IMAGE_EXTENSIONS + DICOM_EXTENSIONS

#: Named display windows ``(center, width)`` in Hounsfield units, usable as ``dicom_window``.
DICOM_WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "stroke": (32.0, 8.0),
    "soft_tissue": (50.0, 400.0),
    "mediastinum": (50.0, 350.0),
    "lung": (-600.0, 1500.0),
    "liver": (60.0, 160.0),
    "bone": (400.0, 1800.0),
}

#: A display window: ``(center, width)`` or the name of one of :data:`DICOM_WINDOWS`.
DicomWindow = tuple[float, float] | str

_DICOM_MAGIC_OFFSET = 128
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_GRAYSCALE = 0
_EXIF_ORIENTATION = 0x0112
_MAX_8BIT = 255.0
_MAX_16BIT = 65535.0
# Integer images are multiplied by the reciprocal, as torchvision's ``to_dtype(scale=True)`` in
# anomalib's reader does: an 8-bit image then reads bit for bit as in anomalib's ``Folder`` (a
# division differs by one ulp on some values, and a seeded training from a random teacher amplifies
# such round-off).
_SCALE_8BIT = np.float32(1.0 / _MAX_8BIT)
_SCALE_16BIT = np.float32(1.0 / _MAX_16BIT)


class ImageReadError(ValueError):
    """A file could not be read as an image.

    Args:
        path: The offending file.
        reason: What is wrong with it, in words a user can act on.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------
def read_image(path: str | Path, dicom_window: DicomWindow | None = None) -> ImageTensor:
    """Read any supported image file as a 3-channel float image.

    Args:
        path: Image file (see :data:`SUPPORTED_EXTENSIONS`; DICOM files are also recognised by
            content).
        dicom_window: DICOM display window ``(center, width)`` in modality units (Hounsfield units
            for CT) or a name from :data:`DICOM_WINDOWS`. ``None`` uses the window stored in the
            file, or the full value range when the file has none. Ignored for non-DICOM files.

    Returns:
        ``torchvision.tv_tensors.Image`` of dtype float32, shape ``(3, H, W)``, values in ``[0, 1]``.

    Raises:
        ImageReadError: If the file is missing, empty, corrupt, truncated or not an image.
    """
    array = read_image_array(path, dicom_window=dicom_window)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1).contiguous()
    return ImageTensor(tensor)


def read_image_array(path: str | Path, dicom_window: DicomWindow | None = None) -> np.ndarray:
    """Read an image file as a float32 array in ``[0, 1]``, without forcing three channels.

    Args:
        path: Image file.
        dicom_window: See :func:`read_image`.

    Returns:
        Array of shape ``(H, W)`` (grayscale) or ``(H, W, 3)`` (colour), float32 in ``[0, 1]``.

    Raises:
        ImageReadError: If the file cannot be read as an image.
    """
    path = Path(path)
    _check_file(path)
    array = _read_dicom(path, dicom_window) if is_dicom_file(path) else _read_raster(path)
    if not np.isfinite(array).all():
        raise ImageReadError(path, "image contains NaN or infinite values")
    return np.clip(array, 0.0, 1.0).astype(np.float32, copy=False)


def read_mask(paths: str | Path | Sequence[str | Path]) -> Mask:
    """Read one or several mask files and OR them into one binary mask.

    Any nonzero pixel (in any colour channel; alpha is ignored) is anomalous. Datasets such as BUSI
    store several masks for one image (``x_mask.png``, ``x_mask_1.png``); they are combined.

    Args:
        paths: One mask file or a sequence of mask files of the same size.

    Returns:
        ``torchvision.tv_tensors.Mask`` of dtype uint8 and shape ``(H, W)`` with values 0 and 1, like
        anomalib's :func:`~anomalib.data.utils.read_mask`.

    Raises:
        ImageReadError: If a file cannot be read, or the masks differ in size.
        ValueError: If ``paths`` is empty.
    """
    mask_paths = [Path(paths)] if isinstance(paths, str | Path) else [Path(path) for path in paths]
    if not mask_paths:
        msg = "read_mask needs at least one mask file."
        raise ValueError(msg)
    combined: np.ndarray | None = None
    for path in mask_paths:
        _check_file(path)
        array = _read_raster(path, for_mask=True)
        if array.ndim == 3:
            channels = array.shape[-1]
            colour = array[..., :3] if channels >= 3 else array[..., :1]  # drop alpha
            binary = (colour != 0).any(axis=-1)
        else:
            binary = array != 0
        if combined is None:
            combined = binary
        elif combined.shape != binary.shape:
            msg = f"mask is {binary.shape[1]}x{binary.shape[0]} pixels, but {mask_paths[0].name} is "
            msg += f"{combined.shape[1]}x{combined.shape[0]}; all masks of one image must have the same size"
            raise ImageReadError(path, msg)
        else:
            combined |= binary
    assert combined is not None  # mask_paths is not empty
    return Mask(torch.from_numpy(combined.astype(np.uint8)))


def verify_image(path: str | Path, dicom_window: DicomWindow | None = None) -> tuple[int, int]:
    """Check that a file is a complete, decodable image, the way the dataset will read it.

    Runs Pillow's integrity check (PNG chunk checksums and the like) and then a full decode through
    :func:`read_image_array`, so that a file that passes cannot fail later during training.

    Args:
        path: Image file.
        dicom_window: See :func:`read_image`.

    Returns:
        The image size as ``(height, width)``.

    Raises:
        ImageReadError: If the file is not a valid image.
    """
    path = Path(path)
    _check_file(path)
    if not is_dicom_file(path):
        try:
            with Image.open(path) as image:
                image.verify()
        except UnidentifiedImageError as error:
            raise ImageReadError(path, _not_an_image(path)) from error
        except Exception as error:  # Pillow raises many types (SyntaxError, OSError, struct.error...)
            raise ImageReadError(path, f"corrupt or truncated image file ({_describe(error)})") from error
    array = read_image_array(path, dicom_window=dicom_window)
    return int(array.shape[0]), int(array.shape[1])


def is_dicom_file(path: str | Path) -> bool:
    """Whether a file is DICOM: by extension, or by the ``DICM`` signature at byte 128.

    Args:
        path: File to test.

    Returns:
        ``True`` for DICOM files.
    """
    path = Path(path)
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return True
    try:
        with path.open("rb") as file:
            header = file.read(_DICOM_MAGIC_OFFSET + 4)
    except OSError:
        return False
    return header[_DICOM_MAGIC_OFFSET:] == b"DICM"


def apply_dicom_window(
    values: np.ndarray,
    center: float,
    width: float,
    function: str = "LINEAR",
) -> np.ndarray:
    """Map modality values to ``[0, 1]`` with a DICOM VOI window (PS3.3 C.11.2.1.2), via pydicom.

    pydicom's :func:`~pydicom.pixels.apply_windowing` does the windowing; this wrapper gives it the
    window and maps its output range to ``[0, 1]`` (it needs pydicom, the ``dicom`` extra).

    Args:
        values: Modality values (after the modality LUT, e.g. Hounsfield units).
        center: Window center.
        width: Window width.
        function: ``VOILUTFunction``: ``"LINEAR"`` (the default), ``"LINEAR_EXACT"`` or ``"SIGMOID"``.

    Returns:
        Float64 array in ``[0, 1]``.

    Raises:
        ValueError: If the width is not positive (``>= 1`` for ``LINEAR``) or the function unknown.
    """
    from pydicom.dataset import Dataset

    try:
        from pydicom.pixels import apply_windowing  # pydicom >= 3
    except ImportError:  # pragma: no cover - pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_windowing

    # An unsigned 1-bit image without rescale: pydicom's output range is then exactly [0, 1].
    window = Dataset()
    window.PhotometricInterpretation = "MONOCHROME2"
    window.BitsStored = 1
    window.PixelRepresentation = 0
    window.WindowCenter = float(center)
    window.WindowWidth = float(width)
    window.VOILUTFunction = function.upper()
    try:
        return apply_windowing(np.array(values, dtype=np.float64), window)
    except ValueError as error:
        msg = f"Invalid DICOM window (center {center}, width {width}, {function.upper()}): {error}"
        raise ValueError(msg) from error


# --------------------------------------------------------------------------------------------------
# Raster formats (Pillow, with OpenCV for 16-bit colour)
# --------------------------------------------------------------------------------------------------
def _check_file(path: Path) -> None:
    if not path.exists():
        raise ImageReadError(path, "file does not exist")
    if not path.is_file():
        raise ImageReadError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")


def _describe(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _not_an_image(path: Path) -> str:
    return f"not an image file (no image format recognises its content; extension {path.suffix or 'none'!r})"


def _read_raster(path: Path, for_mask: bool = False) -> np.ndarray:
    """Decode a Pillow-readable file, honouring EXIF orientation.

    Args:
        path: Image file.
        for_mask: Return the decoded values unscaled and keep the alpha channel (for masks) instead
            of a float image in ``[0, 1]`` with alpha composited over black.

    Returns:
        ``(H, W)`` or ``(H, W, C)`` array.
    """
    try:
        with Image.open(path) as image:
            orientation = _orientation(image)
            if _is_high_bit_depth_colour(path, image):
                array = _apply_orientation(_read_with_opencv(path), orientation)
                return array if for_mask else _scale_array(array)
            image.load()
            if orientation != 1:
                image = ImageOps.exif_transpose(image)
            if for_mask:
                return np.asarray(_mask_mode(image))
            return _pil_to_float(image)
    except ImageReadError:
        raise
    except UnidentifiedImageError as error:
        raise ImageReadError(path, _not_an_image(path)) from error
    except Exception as error:  # truncated data, bad chunks, decoder errors, unsupported modes
        raise ImageReadError(path, f"corrupt or truncated image file ({_describe(error)})") from error


def _mask_mode(image: Image.Image) -> Image.Image:
    """Bring a mask to a mode whose raw values are zero exactly where the mask is background."""
    if image.mode in {"P", "PA"}:
        return image.convert("RGBA")
    if image.mode == "1":
        return image.convert("L")
    if image.mode in {"CMYK", "YCbCr", "LAB", "HSV"}:
        return image.convert("RGB")
    return image


def _orientation(image: Image.Image) -> int:
    try:
        value = int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block must not make a readable image unreadable
        return 1
    return value if 1 <= value <= 8 else 1


def _apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """Numpy equivalent of :func:`PIL.ImageOps.exif_transpose` for an ``(H, W[, C])`` array."""
    operations = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, k=-1),
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: np.rot90(a, k=1),
    }
    return np.ascontiguousarray(operations[orientation](array))


def _is_high_bit_depth_colour(path: Path, image: Image.Image) -> bool:
    """Whether Pillow would truncate this file: 16-bit PNG/TIFF with colour or alpha channels."""
    if image.format == "PNG":
        with path.open("rb") as file:
            header = file.read(26)
        if header[:8] != _PNG_SIGNATURE or len(header) < 26:
            return False
        bit_depth, colour_type = header[24], header[25]
        return bit_depth == 16 and colour_type != _PNG_GRAYSCALE
    if image.format == "TIFF":
        tags = getattr(image, "tag_v2", {})
        bits = tags.get(258, (8,))
        bits = bits if isinstance(bits, tuple) else (bits,)
        samples = int(tags.get(277, 1))
        return samples > 1 and max(bits) > 8
    return False


def _read_with_opencv(path: Path) -> np.ndarray:
    import cv2  # an anomalib dependency; imported lazily because only 16-bit colour files need it

    array = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ImageReadError(path, "corrupt 16-bit image file (OpenCV could not decode it)")
    if array.ndim == 3 and array.shape[-1] == 3:
        array = array[..., ::-1]  # BGR -> RGB
    elif array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., [2, 1, 0, 3]]  # BGRA -> RGBA
    return np.ascontiguousarray(array)


def _scale_array(array: np.ndarray) -> np.ndarray:
    """Scale an integer or float array to ``[0, 1]`` and composite any alpha channel over black."""
    if array.dtype == np.uint8:
        scaled = array.astype(np.float32) * _SCALE_8BIT
    elif array.dtype == np.uint16:
        scaled = array.astype(np.float32) * _SCALE_16BIT
    else:
        scaled = _min_max(array)
    if scaled.ndim == 3 and scaled.shape[-1] in {2, 4}:
        colour, alpha = scaled[..., :-1], scaled[..., -1:]
        scaled = colour * alpha
        if scaled.shape[-1] == 1:
            scaled = scaled[..., 0]
    return scaled


def _min_max(array: np.ndarray) -> np.ndarray:
    """Scale by the finite minimum and maximum; float data already within ``[0, 1]`` is kept."""
    is_float = array.dtype.kind == "f"
    array = array.astype(np.float64)
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        return np.zeros(array.shape, dtype=np.float32)
    low, high = float(finite.min()), float(finite.max())
    if is_float and low >= 0.0 and high <= 1.0:
        return array.astype(np.float32)
    if math.isclose(low, high):
        return np.zeros(array.shape, dtype=np.float32)
    return ((array - low) / (high - low)).astype(np.float32)


def _pil_to_float(image: Image.Image) -> np.ndarray:
    """Convert a loaded Pillow image of any mode to a float array in ``[0, 1]``."""
    mode = image.mode
    if mode.startswith("I;16"):
        return np.asarray(image).astype(np.float32) * _SCALE_16BIT
    if mode == "I":
        array = np.asarray(image)
        # Pillow stores 16-bit grayscale files (PNG, PGM) as "I" too: keep their absolute scale.
        if array.size and array.min() >= 0 and array.max() <= _MAX_16BIT:
            return array.astype(np.float32) * _SCALE_16BIT
        return _min_max(array)
    if mode == "F":
        return _min_max(np.asarray(image))
    if mode in {"1", "L"}:
        return np.asarray(image.convert("L")).astype(np.float32) * _SCALE_8BIT
    if mode in {"LA", "La", "PA", "RGBA", "RGBa"} or (mode == "P" and "transparency" in image.info):
        target = "LA" if mode in {"LA", "La"} else "RGBA"
        return _scale_array(np.asarray(image.convert(target)))
    return np.asarray(image.convert("RGB")).astype(np.float32) * _SCALE_8BIT


# --------------------------------------------------------------------------------------------------
# DICOM (pydicom)
# --------------------------------------------------------------------------------------------------
def _resolve_window(window: DicomWindow | Sequence[float] | None, path: Path) -> tuple[float, float] | None:
    if window is None:
        return None
    if isinstance(window, str):
        key = window.strip().lower().replace("-", "_").replace(" ", "_")
        if key not in DICOM_WINDOWS:
            msg = f"Unknown DICOM window {window!r}: give (center, width) or one of {sorted(DICOM_WINDOWS)}."
            raise ValueError(msg)
        return DICOM_WINDOWS[key]
    values = [float(value) for value in window]
    if len(values) != 2:
        msg = f"A DICOM window is (center, width), got {window!r} for {path}."
        raise ValueError(msg)
    return values[0], values[1]


def _first_value(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, str | bytes):
        return float(value)
    if isinstance(value, Sequence):
        return float(value[0]) if len(value) else None
    return float(value)  # type: ignore[arg-type]


def _read_dicom(path: Path, window: DicomWindow | None) -> np.ndarray:
    resolved = _resolve_window(window, path)
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError as error:
        reason = "reading DICOM needs pydicom: pip install 'anomalib-skipts[dicom]' (or pip install pydicom)"
        raise ImageReadError(path, reason) from error
    try:
        from pydicom.pixels import apply_color_lut, apply_modality_lut  # pydicom >= 3
    except ImportError:  # pragma: no cover - pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_color_lut, apply_modality_lut

    forced = False
    try:
        dataset: Dataset = pydicom.dcmread(path)
    except InvalidDicomError:
        forced = True  # files written without the 128-byte preamble are still common
        try:
            dataset = pydicom.dcmread(path, force=True)
        except Exception as error:
            raise ImageReadError(path, f"not a valid DICOM file ({_describe(error)})") from error
    except Exception as error:
        raise ImageReadError(path, f"corrupt or truncated DICOM file ({_describe(error)})") from error
    if "PixelData" not in dataset:
        if forced:
            raise ImageReadError(path, "not a valid DICOM file (no DICOM header and no pixel data)")
        raise ImageReadError(path, "DICOM file has no pixel data (not an image, e.g. a DICOMDIR or a report)")
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        reason = f"multi-frame DICOM ({frames} frames) is not supported: Skip-TS reads 2-D slices, "
        reason += "so export each frame as its own file"
        raise ImageReadError(path, reason)
    try:
        pixels = dataset.pixel_array
    except Exception as error:
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        if syntax is not None and getattr(syntax, "is_compressed", False):
            reason = f"cannot decode the compressed DICOM pixel data ({syntax.name}: {_describe(error)}); "
            reason += "install a pydicom decoder plug-in such as pylibjpeg[all] or python-gdcm"
        else:
            reason = f"corrupt or truncated DICOM pixel data ({_describe(error)})"
        raise ImageReadError(path, reason) from error

    photometric = str(dataset.get("PhotometricInterpretation", "")).upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, dataset)
        return rgb.astype(np.float32) * (_SCALE_16BIT if rgb.dtype.itemsize > 1 else _SCALE_8BIT)
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    if samples > 1 or pixels.ndim == 3:
        # Colour (RGB / YBR, converted to RGB by pydicom): no modality LUT or window applies.
        bits = int(dataset.get("BitsStored", 8) or 8)
        return pixels.astype(np.float32) / float(2**bits - 1)

    values = apply_modality_lut(pixels, dataset)
    if resolved is not None:  # the given window replaces the file's own VOI LUT
        _set_window(dataset, resolved[0], resolved[1])
    result = _apply_voi(values, dataset)
    if photometric == "MONOCHROME1":
        result = 1.0 - result
    return result.astype(np.float32)


def _set_window(dataset: Dataset, center: float, width: float, function: str = "LINEAR") -> None:
    """Make ``(center, width)`` the dataset's VOI window (its VOI LUT sequence no longer applies)."""
    if "VOILUTSequence" in dataset:
        del dataset.VOILUTSequence
    dataset.WindowCenter = float(center)
    dataset.WindowWidth = float(width)
    # A LINEAR window narrower than one unit is a threshold, which only LINEAR_EXACT expresses.
    dataset.VOILUTFunction = "LINEAR_EXACT" if function == "LINEAR" and width < 1 else function


def _apply_voi(values: np.ndarray, dataset: Dataset) -> np.ndarray:
    """Apply the dataset's VOI transform with pydicom's ``apply_voi_lut``, scaled to ``[0, 1]``.

    The VOI LUT sequence or the window (``WindowCenter`` / ``WindowWidth`` / ``VOILUTFunction``)
    of the dataset maps modality values to display values; these are scaled by the transform's
    own output range (a LUT's bit depth, a window's output range). Without a valid VOI transform
    (none, or a window of width <= 0) the values are scaled by their own minimum and maximum.
    """
    try:
        from pydicom.pixels import apply_voi_lut  # pydicom >= 3
    except ImportError:  # pragma: no cover - pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_voi_lut

    lut = dataset.get("VOILUTSequence")
    if lut and lut[0].get("LUTDescriptor") is not None and lut[0].get("LUTData") is not None:
        bits = int(lut[0].LUTDescriptor[2])
        return apply_voi_lut(np.asarray(values), dataset).astype(np.float64) / float(2**bits - 1)
    center = _first_value(dataset.get("WindowCenter"))
    width = _first_value(dataset.get("WindowWidth"))
    if center is None or width is None or width <= 0:
        return _min_max(np.asarray(values, dtype=np.float64))
    function = str(dataset.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    _set_window(dataset, center, width, function)
    try:
        windowed = apply_voi_lut(np.asarray(values, dtype=np.float64), dataset, prefer_lut=False)
        with np.errstate(over="ignore"):
            low, high = apply_voi_lut(np.array([-np.inf, np.inf]), dataset, prefer_lut=False)
    except ValueError as error:
        msg = f"Invalid DICOM window (center {center}, width {width}, {function}): {error}"
        raise ValueError(msg) from error
    return np.clip((windowed - low) / (high - low), 0.0, 1.0)
