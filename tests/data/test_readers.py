"""Tests of the image readers: every file -> (3, H, W) float in [0, 1], or a clear error."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torchvision.tv_tensors import Image as ImageTensor
from torchvision.tv_tensors import Mask

from anomalib_skipts.data.readers import (
    DICOM_WINDOWS,
    ImageReadError,
    apply_dicom_window,
    is_dicom_file,
    read_image,
    read_mask,
    verify_image,
)
from anomalib_skipts.data.readers import _apply_orientation as apply_orientation


def _pydicom():
    """pydicom is an optional extra: the DICOM tests skip without it, the others still run."""
    return pytest.importorskip("pydicom")


def _shipped(name: str) -> Path:
    """A sample file pydicom ships in its wheel (never downloaded)."""
    path = Path(_pydicom().__file__).parent / "data" / "test_files" / name
    if not path.is_file():
        pytest.skip(f"pydicom does not ship {name}")
    return path


def _check_image(image: torch.Tensor, height: int, width: int) -> None:
    assert isinstance(image, ImageTensor)
    assert image.dtype == torch.float32
    assert tuple(image.shape) == (3, height, width)
    assert float(image.min()) >= 0.0
    assert float(image.max()) <= 1.0


# --------------------------------------------------------------------------------------------------
# 8-bit modes
# --------------------------------------------------------------------------------------------------
def test_grayscale_png_is_replicated_to_three_channels(files):
    path = files.image("gray.png", mode="L", size=(7, 5))
    expected = np.asarray(Image.open(path), dtype=np.float32) / 255
    image = read_image(path)
    _check_image(image, 5, 7)
    for channel in range(3):
        np.testing.assert_allclose(image[channel].numpy(), expected, atol=1e-7)


def test_8bit_images_read_bit_for_bit_as_anomalibs_reader(files):
    # Every 8-bit value, grayscale and colour: baselines on a MedicalFolder see exactly the tensors
    # anomalib's Folder gives them (a one-ulp difference changes a seeded training's result).
    from anomalib.data.utils import read_image as anomalib_read_image

    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    gray = files.root / "all_values.png"
    Image.fromarray(values, mode="L").save(gray)
    colour = files.root / "all_values_rgb.png"
    Image.fromarray(np.stack([values, values.T, 255 - values], axis=-1), mode="RGB").save(colour)
    for path in (gray, colour):
        assert torch.equal(read_image(path), anomalib_read_image(path, as_tensor=True))


def test_rgb_jpeg_matches_pillow(files):
    path = files.image("colour.jpg", mode="RGB", size=(9, 6), fmt="JPEG")
    expected = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    np.testing.assert_allclose(read_image(path).permute(1, 2, 0).numpy(), expected, atol=1e-7)


def test_rgba_is_composited_over_black(files):
    array = np.zeros((2, 2, 4), dtype=np.uint8)
    array[..., :3] = 200
    array[..., 3] = [[255, 0], [128, 255]]
    path = files.path("rgba.png")
    Image.fromarray(array, "RGBA").save(path)
    image = read_image(path)
    _check_image(image, 2, 2)
    np.testing.assert_allclose(image[:, 0, 0].numpy(), 200 / 255, atol=1e-6)
    np.testing.assert_allclose(image[:, 0, 1].numpy(), 0.0, atol=1e-6)  # fully transparent -> background
    np.testing.assert_allclose(image[:, 1, 0].numpy(), 200 / 255 * 128 / 255, atol=1e-6)


def test_palette_png_with_and_without_transparency(files):
    rgb = np.random.default_rng(3).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    palette = Image.fromarray(rgb).convert("P")
    opaque = files.path("palette.png")
    palette.save(opaque)
    expected = np.asarray(Image.open(opaque).convert("RGB"), dtype=np.float32) / 255
    np.testing.assert_allclose(read_image(opaque).permute(1, 2, 0).numpy(), expected, atol=1e-7)

    transparent = files.path("palette_transparent.png")
    index = palette.getpixel((0, 0))
    palette.save(transparent, transparency=index)
    image = read_image(transparent)
    _check_image(image, 6, 8)
    assert torch.all(image[:, 0, 0] == 0)  # the transparent palette entry is composited over black


@pytest.mark.parametrize("mode", ["1", "LA", "CMYK", "I", "F"])
def test_other_pillow_modes(files, mode):
    fmt = {"CMYK": "TIFF", "F": "TIFF", "I": "TIFF"}.get(mode, "PNG")
    path = files.image(f"image_{mode}.{fmt.lower()}", mode=mode, size=(5, 4), fmt=fmt)
    _check_image(read_image(path), 4, 5)


# --------------------------------------------------------------------------------------------------
# 16-bit
# --------------------------------------------------------------------------------------------------
def test_16bit_grayscale_png_keeps_all_bits(files):
    values = np.array([[0, 1, 255, 256], [1000, 4095, 32768, 65535]], dtype=np.uint16)
    path = files.png("ct16.png", values)
    image = read_image(path)
    _check_image(image, 2, 4)
    np.testing.assert_allclose(image[0].numpy() * 65535, values, atol=0.01)
    # 255 and 256 differ only in the low byte: an 8-bit truncation would merge or zero them.
    assert image[0, 0, 2] < image[0, 0, 3]
    assert image[0, 0, 1] > 0


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_16bit_colour_png_is_not_truncated(files, channels):
    rng = np.random.default_rng(channels)
    array = rng.integers(0, 65536, (5, 6, channels), dtype=np.uint16)
    array[..., -1] = 65535 if channels in {2, 4} else array[..., -1]  # opaque alpha
    array[0, 0, 0] = 300  # a value whose high byte alone would read as 1/255
    path = files.png(f"colour16_{channels}.png", array)
    image = read_image(path)
    _check_image(image, 5, 6)
    colour = array[..., :1] if channels == 2 else array[..., :3]
    expected = np.broadcast_to(colour, (5, 6, 3)) / 65535
    np.testing.assert_allclose(image.permute(1, 2, 0).numpy(), expected, atol=1e-6)


def test_16bit_rgb_tiff_is_not_truncated(files):
    tifffile = pytest.importorskip("tifffile")
    array = np.random.default_rng(1).integers(0, 65536, (4, 5, 3), dtype=np.uint16)
    path = files.path("rgb16.tif")
    tifffile.imwrite(path, array)
    np.testing.assert_allclose(read_image(path).permute(1, 2, 0).numpy(), array / 65535, atol=1e-6)


def test_16bit_grayscale_tiff(files):
    array = np.array([[0, 300], [40000, 65535]], dtype=np.uint16)
    path = files.path("gray16.tif")
    Image.fromarray(array).save(path)
    np.testing.assert_allclose(read_image(path)[0].numpy(), array / 65535, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# EXIF orientation
# --------------------------------------------------------------------------------------------------
def test_exif_orientation_is_honoured(files):
    path = files.image("rotated.jpg", mode="RGB", size=(16, 8), exif_orientation=6, fmt="JPEG")
    raw = Image.open(path)
    assert raw.size == (16, 8)  # stored landscape...
    image = read_image(path)
    _check_image(image, 16, 8)  # ...displayed portrait (rotated 90 degrees clockwise)
    expected = np.asarray(ImageOps.exif_transpose(raw).convert("RGB"), dtype=np.float32) / 255
    np.testing.assert_allclose(image.permute(1, 2, 0).numpy(), expected, atol=1e-7)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillow(files, orientation):
    path = files.image(f"o{orientation}.png", mode="RGB", size=(5, 3), exif_orientation=orientation, fmt="PNG")
    # scaled as anomalib's reader scales 8-bit values (times the float32 reciprocal of 255)
    transposed = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"), dtype=np.float32)
    expected = transposed * np.float32(1 / 255)
    np.testing.assert_array_equal(read_image(path).permute(1, 2, 0).numpy(), expected)
    # The numpy path used for 16-bit files agrees with Pillow too.
    raw = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(apply_orientation(raw, orientation), (expected * 255).round().astype(np.uint8))


# --------------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------------
def test_pydicom_sample_ct_uses_rescale_and_window():
    path = _shipped("CT_small.dcm")
    dataset = _pydicom().dcmread(path)
    hounsfield = dataset.pixel_array * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept)
    # No window in this file: the full value range is used.
    image = read_image(path)
    _check_image(image, 128, 128)
    low, high = hounsfield.min(), hounsfield.max()
    np.testing.assert_allclose(image[0].numpy(), (hounsfield - low) / (high - low), atol=1e-6)
    # A brain window (centre 40 HU, width 80 HU) on the same Hounsfield units.
    brain = read_image(path, dicom_window="brain")
    expected = np.clip((hounsfield - 39.5) / 79 + 0.5, 0, 1)
    np.testing.assert_allclose(brain[0].numpy(), expected, atol=1e-6)


def test_pydicom_sample_mr_uses_its_own_window():
    path = _shipped("MR_small.dcm")
    dataset = _pydicom().dcmread(path)
    center, width = float(dataset.WindowCenter), float(dataset.WindowWidth)
    expected = np.clip((dataset.pixel_array - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(read_image(path)[1].numpy(), expected, atol=1e-6)


def test_written_ct_slice_in_hounsfield_units(files):
    # stored values s, HU = 2 * s - 1024: [-1024, -1000, 0, 40, 80, 1000] HU
    stored = np.array([[0, 12, 512], [532, 552, 1012]], dtype=np.int16)
    path = files.dicom("slice.dcm", stored, slope=2.0, intercept=-1024.0, window=(40.0, 80.0))
    hounsfield = stored * 2.0 - 1024.0
    image = read_image(path)
    _check_image(image, 2, 3)
    expected = np.clip((hounsfield - 39.5) / 79 + 0.5, 0, 1)
    np.testing.assert_allclose(image[0].numpy(), expected, atol=1e-6)
    assert image[0, 0, 0] == 0  # air is black
    assert image[0, 1, 2] == 1  # bone is white
    assert 0.49 < image[0, 1, 0] < 0.51  # the window centre is mid-gray
    # Override the file's window: a wide one keeps air and bone apart.
    wide = read_image(path, dicom_window=(0.0, 2049.0))
    np.testing.assert_allclose(wide[0].numpy(), np.clip((hounsfield + 0.5) / 2048 + 0.5, 0, 1), atol=1e-6)
    named = read_image(path, dicom_window="lung")
    center, width = DICOM_WINDOWS["lung"]
    np.testing.assert_allclose(named[0].numpy(), np.clip((hounsfield - center + 0.5) / (width - 1) + 0.5, 0, 1))


def test_dicom_voi_lut_sequence_is_applied(files):
    # A VOI LUT (PS3.3 C.11.2.1.1) maps stored values 0..3 to 8-bit display values; a given window replaces it.
    path = files.dicom("lut.dcm", np.array([[0, 1], [2, 3]], dtype=np.int16))
    pydicom = _pydicom()
    dataset = pydicom.dcmread(path)
    item = pydicom.Dataset()
    item.add_new("LUTDescriptor", "US", [4, 0, 8])
    item.add_new("LUTData", "US", [0, 50, 200, 255])
    dataset.VOILUTSequence = pydicom.Sequence([item])
    dataset.save_as(path)
    np.testing.assert_allclose(read_image(path)[0].numpy(), [[0, 50 / 255], [200 / 255, 1]], atol=1e-6)
    windowed = read_image(path, dicom_window=(1.5, 3.0))
    np.testing.assert_allclose(windowed[0].numpy(), np.clip((np.array([[0, 1], [2, 3]]) - 1.0) / 2 + 0.5, 0, 1))


def test_monochrome1_is_inverted(files):
    stored = np.array([[0, 100], [200, 300]], dtype=np.int16)
    normal = read_image(files.dicom("m2.dcm", stored, window=(150.0, 301.0)))
    inverted = read_image(files.dicom("m1.dcm", stored, window=(150.0, 301.0), photometric="MONOCHROME1"))
    np.testing.assert_allclose(inverted.numpy(), 1 - normal.numpy(), atol=1e-6)


def test_dicom_without_extension_or_preamble_is_recognised(files):
    stored = np.arange(12, dtype=np.int16).reshape(3, 4)
    path = files.dicom("IM000001", stored, window=(5.0, 10.0))
    assert is_dicom_file(path)
    _check_image(read_image(path), 3, 4)
    no_preamble = files.dicom("legacy.dcm", stored, window=(5.0, 10.0), preamble=False)
    _check_image(read_image(no_preamble), 3, 4)


def test_dicom_window_functions():
    _pydicom()  # the windowing is pydicom's
    values = np.array([-100.0, 0.0, 50.0, 100.0, 200.0])
    # PS3.3 C.11.2.1.2.1: y = (x - (c - 0.5)) / (w - 1) + 0.5, clipped to [0, 1]
    np.testing.assert_allclose(apply_dicom_window(values, 50, 101), [0, 0.005, 0.505, 1.0, 1.0], atol=1e-9)
    np.testing.assert_allclose(apply_dicom_window(values, 50, 100, "LINEAR_EXACT"), [0, 0, 0.5, 1, 1])
    sigmoid = apply_dicom_window(values, 50, 100, "SIGMOID")
    assert sigmoid[2] == pytest.approx(0.5)
    assert np.all(np.diff(sigmoid) > 0)
    with pytest.raises(ValueError, match="width"):
        apply_dicom_window(values, 0, 0)
    np.testing.assert_array_equal(apply_dicom_window(values, 50, 1), [0, 0, 1, 1, 1])  # width 1: a threshold
    with pytest.raises(ValueError, match="VOI LUT Function"):
        apply_dicom_window(values, 50, 100, "CUBIC")
    with pytest.raises(ValueError, match="window"):
        read_image(_shipped("CT_small.dcm"), dicom_window="no-such-window")


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("MR_truncated.dcm", "truncated"),
        ("rtplan.dcm", "no pixel data"),
        ("SC_rgb_rle_2frame.dcm", "multi-frame"),
    ],
)
def test_bad_dicom_files_give_clear_errors(name, reason):
    with pytest.raises(ImageReadError, match=reason) as error:
        read_image(_shipped(name))
    assert name in str(error.value)


def test_rgb_dicom_sample():
    _check_image(read_image(_shipped("SC_rgb_small_odd.dcm")), 3, 3)


def test_dicom_without_pydicom_says_what_to_install(files, monkeypatch):
    path = files.dicom("slice.dcm", np.zeros((2, 2)), window=(0.0, 10.0))
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(ImageReadError, match=r"pip install 'anomalib-skipts\[dicom\]'"):
        read_image(path)


# --------------------------------------------------------------------------------------------------
# Bad files
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda files: files.empty("zero.png"), "empty file"),
        (lambda files: files.truncated("cut.png"), "truncated"),
        (lambda files: files.text("notes.png"), "not an image file"),
        (lambda files: files.text("fake.dcm"), "not a valid DICOM"),
        (lambda files: files.root / "missing.png", "does not exist"),
    ],
)
def test_bad_files_raise_image_read_error(files, make, reason):
    path = make(files)
    for read in (read_image, verify_image):
        with pytest.raises(ImageReadError, match=reason) as error:
            read(path)
        assert error.value.path == str(path)
        assert isinstance(error.value, ValueError)


def test_verify_image_catches_a_corrupt_checksum(files):
    path = files.image("crc.png", mode="L", size=(8, 8))
    data = bytearray(path.read_bytes())
    idat = data.index(b"IDAT")
    data[idat + 8] ^= 0xFF  # flip a byte of the compressed data: the chunk CRC no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match="corrupt"):
        verify_image(path)


def test_verify_image_returns_the_size(files):
    assert verify_image(files.image("ok.png", size=(9, 4))) == (4, 9)


# --------------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------------
def test_masks_are_binary_and_or_ed(files):
    first = files.mask("x_mask.png", size=(10, 8), box=(0, 0, 3, 3))
    second = files.mask("x_mask_1.png", size=(10, 8), box=(5, 4, 8, 8))
    one = read_mask(first)
    assert isinstance(one, Mask)
    assert one.dtype == torch.uint8
    assert tuple(one.shape) == (8, 10)
    assert int(one.sum()) == 9
    both = read_mask([first, second])
    assert int(both.sum()) == 9 + 12
    assert set(torch.unique(both).tolist()) == {0, 1}


def test_mask_any_nonzero_value_and_colour_masks(files):
    gray = np.zeros((4, 4), dtype=np.uint8)
    gray[0, 0], gray[1, 1] = 1, 128  # "any nonzero is anomalous", not only 255
    assert int(read_mask(files.png("small_values.png", gray)).sum()) == 2
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 3] = 255  # opaque alpha everywhere must not count
    rgba[2, 3, 0] = 255
    path = files.path("rgba_mask.png")
    Image.fromarray(rgba, "RGBA").save(path)
    assert int(read_mask(path).sum()) == 1


def test_masks_of_different_sizes_are_an_error(files):
    first = files.mask("a_mask.png", size=(10, 8))
    second = files.mask("a_mask_1.png", size=(12, 8))
    with pytest.raises(ImageReadError, match="same size"):
        read_mask([first, second])
