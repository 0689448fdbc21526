"""Fixtures for the data tests: small generated image, mask, DICOM and dataset-layout files."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_png(path: Path, array: np.ndarray) -> Path:
    """Write an 8- or 16-bit PNG by hand (Pillow cannot write 16-bit colour PNGs).

    The array is (H, W) gray, (H, W, 2) gray+alpha, (H, W, 3) RGB or (H, W, 4) RGBA, uint8 or uint16.
    """
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[..., None]
    height, width, channels = array.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    bit_depth = 16 if array.dtype == np.uint16 else 8
    rows = array.astype(">u2" if bit_depth == 16 else np.uint8).reshape(height, width * channels)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
    return path


class Files:
    """Writes small test files under a temporary folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, relative: str | Path) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def image(
        self,
        relative: str | Path,
        mode: str = "L",
        size: tuple[int, int] = (24, 20),
        seed: int = 0,
        exif_orientation: int | None = None,
        fmt: str | None = None,
    ) -> Path:
        """Random image of a Pillow mode (``size`` is (width, height))."""
        path = self.path(relative)
        rng = np.random.default_rng(seed)
        width, height = size
        if mode in {"RGB", "RGBA"}:
            image = Image.fromarray(rng.integers(0, 256, (height, width, len(mode)), dtype=np.uint8), mode)
        elif mode == "P":
            image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert("P")
        else:
            image = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)).convert(mode)
        kwargs = {}
        if exif_orientation is not None:
            exif = Image.Exif()
            exif[0x0112] = exif_orientation
            kwargs["exif"] = exif.tobytes()
        image.save(path, format=fmt, **kwargs)
        return path

    def mask(
        self, relative: str | Path, size: tuple[int, int] = (24, 20), box: tuple[int, int, int, int] = (2, 2, 6, 6)
    ) -> Path:
        """Binary 0/255 mask with a rectangle ``box`` = (x0, y0, x1, y1) set."""
        path = self.path(relative)
        array = np.zeros((size[1], size[0]), dtype=np.uint8)
        x0, y0, x1, y1 = box
        array[y0:y1, x0:x1] = 255
        Image.fromarray(array).save(path)
        return path

    def png(self, relative: str | Path, array: np.ndarray) -> Path:
        return write_png(self.path(relative), array)

    def text(self, relative: str | Path, content: str = "not an image\n") -> Path:
        path = self.path(relative)
        path.write_text(content)
        return path

    def truncated(self, relative: str | Path, size: tuple[int, int] = (64, 64)) -> Path:
        """A PNG cut in the middle of its image data."""
        path = self.image(relative, mode="RGB", size=size, seed=7)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path

    def empty(self, relative: str | Path) -> Path:
        path = self.path(relative)
        path.write_bytes(b"")
        return path

    def dicom(
        self,
        relative: str | Path,
        pixels: np.ndarray,
        slope: float = 1.0,
        intercept: float = 0.0,
        window: tuple[float, float] | None = None,
        photometric: str = "MONOCHROME2",
        frames: int = 1,
        preamble: bool = True,
    ) -> Path:
        """A CT-like DICOM slice (int16 pixels) written with pydicom."""
        pydicom = pytest.importorskip("pydicom")
        from pydicom.dataset import FileDataset, FileMetaDataset
        from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

        path = self.path(relative)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        dataset.SOPClassUID = CTImageStorage
        dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        dataset.Modality = "CT"
        pixels = np.asarray(pixels, dtype=np.int16)
        dataset.Rows, dataset.Columns = pixels.shape[-2:]
        dataset.SamplesPerPixel = 1
        dataset.PhotometricInterpretation = photometric
        dataset.BitsAllocated = 16
        dataset.BitsStored = 16
        dataset.HighBit = 15
        dataset.PixelRepresentation = 1
        dataset.RescaleSlope = slope
        dataset.RescaleIntercept = intercept
        if window is not None:
            dataset.WindowCenter, dataset.WindowWidth = window
        if frames > 1:
            dataset.NumberOfFrames = frames
            pixels = np.repeat(pixels[None], frames, axis=0)
        dataset.PixelData = pixels.tobytes()
        if preamble:
            dataset.save_as(path, enforce_file_format=True)
        else:
            pydicom.dcmwrite(path, dataset, enforce_file_format=False)
        return path


@pytest.fixture
def files(tmp_path: Path) -> Files:
    """Factory of small test files under ``tmp_path``."""
    return Files(tmp_path)


@pytest.fixture
def medical_tree(files: Files) -> Path:
    """A medical folder: 10 normal and 6 abnormal images with messy names, modes and sizes."""
    modes = ["L", "RGB", "RGBA", "P"]
    for index in range(10):
        name = [f"{index} no.jpg", f"N{index}.JPG", f"no {index}.png", f"n{index}.Png"][index % 4]
        fmt = "JPEG" if name.lower().endswith("jpg") else "PNG"
        mode = "L" if fmt == "JPEG" and modes[index % 4] in {"RGBA", "P"} else modes[index % 4]
        files.image(f"data/normal/{name}", mode=mode, size=(24 + index, 20), seed=index, fmt=fmt)
    for index in range(6):
        files.image(f"data/abnormal/Y{index} tumour.PNG", mode=modes[index % 4], size=(30, 22), seed=100 + index)
    return files.root / "data"
