"""Run exported models on medical files, read exactly as in training.

anomalib's :class:`~anomalib.deploy.OpenVINOInferencer` and :class:`~anomalib.deploy.TorchInferencer`
read a file path with Pillow as 8-bit RGB: DICOM is not read and 16-bit PNGs saturate. Exports of
Skip-TS record how the training images were read (see
:mod:`anomalib_skipts.models.skip_ts.input_metadata`); this module reads them back and feeds the
inferencers the images as the model saw them in training:

- :func:`export_input_settings`: the input settings of an export (``.xml``, ``.onnx`` or ``.pt``);
- :func:`read_input`: one file as the ``(3, H, W)`` float tensor to pass to ``inferencer.predict``;
- :func:`load_inferencer`: anomalib's inferencer for an export;
- :func:`predict_folder`: one call from an export and a folder (or file) to a table of scores, also
  on the command line as ``skipts-predict``.

Example:
    >>> from anomalib_skipts.deploy import predict_folder
    >>> scores = predict_folder("results/weights/openvino/model.xml", "new_ct_slices/", csv="scores.csv")
    >>> scores.columns.tolist()
    ['image_path', 'pred_score', 'pred_label']

The scores are the exported model's, normalised by anomalib's post-processor as in ``Engine.predict``.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pandas import DataFrame
from torchvision.transforms.v2.functional import resize

from anomalib_skipts.data.predict import MedicalPredictDataset
from anomalib_skipts.data.readers import DicomWindow, read_image
from anomalib_skipts.input_settings import READER
from anomalib_skipts.models.skip_ts.input_metadata import ONNX_METADATA_KEY, OPENVINO_RT_INFO_PATH

if TYPE_CHECKING:
    from anomalib.deploy import OpenVINOInferencer, TorchInferencer

__all__ = ["export_input_settings", "load_inferencer", "main", "predict_folder", "read_input"]

logger = logging.getLogger(__name__)

_OPENVINO_SUFFIXES = {".xml", ".onnx"}


def _check_export(path: Path) -> None:
    if not path.is_file():
        msg = f"{path}: no exported model there; give the .xml, .onnx or .pt file written by anomalib export."
        raise FileNotFoundError(msg)
    if path.suffix.lower() not in {*_OPENVINO_SUFFIXES, ".pt"}:
        msg = f"{path}: not an exported model (expected .xml, .onnx or .pt, got {path.suffix or 'no extension'!r})."
        raise ValueError(msg)


def export_input_settings(export_path: str | Path) -> dict[str, Any] | None:
    """Read the input settings recorded in an exported model.

    Args:
        export_path: OpenVINO ``.xml``, ONNX ``.onnx`` or torch ``.pt`` file of ``anomalib export``.

    Returns:
        The settings (``reader``, ``dicom_window``, ``version``), or ``None`` if the export has none
        (a model not trained on a medical datamodule, or not a Skip-TS model).

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If it is not an exported model.
    """
    path = Path(export_path)
    _check_export(path)
    suffix = path.suffix.lower()
    if suffix == ".xml":
        import openvino as ov

        model = ov.Core().read_model(path)
        if not model.has_rt_info(OPENVINO_RT_INFO_PATH):
            return None
        return json.loads(model.get_rt_info(OPENVINO_RT_INFO_PATH).astype(str))
    if suffix == ".onnx":
        import onnx

        props = {prop.key: prop.value for prop in onnx.load(str(path), load_external_data=False).metadata_props}
        return json.loads(props[ONNX_METADATA_KEY]) if ONNX_METADATA_KEY in props else None
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    return getattr(checkpoint.get("model"), "input_settings", None)


def _window(settings: dict[str, Any] | None, dicom_window: DicomWindow | None) -> DicomWindow | None:
    if dicom_window is not None:
        return dicom_window
    if settings is None:
        return None
    if settings.get("reader", READER) != READER:
        logger.warning("The model was trained on images read by %s, not %s.", settings.get("reader"), READER)
    window = settings.get("dicom_window")
    return tuple(window) if isinstance(window, list) else window


def read_input(
    path: str | Path,
    settings: dict[str, Any] | None = None,
    dicom_window: DicomWindow | None = None,
) -> torch.Tensor:
    """Read one file as an exported model expects it: as in training, before pre-processing.

    Args:
        path: Image file (DICOM, 16-bit PNG/TIFF, grayscale, palette, RGB...).
        settings: Input settings of the export (:func:`export_input_settings`).
        dicom_window: A DICOM window overriding the training one (the model then sees images read
            differently from training).

    Returns:
        ``(3, H, W)`` float32 tensor in ``[0, 1]``, for ``OpenVINOInferencer.predict`` or
        ``TorchInferencer.predict``.
    """
    return read_image(path, dicom_window=_window(settings, dicom_window)).as_subclass(torch.Tensor)


def load_inferencer(export_path: str | Path, device: str | None = None) -> OpenVINOInferencer | TorchInferencer:
    """Load anomalib's inferencer for an export: OpenVINO for ``.xml``/``.onnx``, torch for ``.pt``.

    Args:
        export_path: The exported model.
        device: Inference device (``"CPU"`` for OpenVINO, ``"cpu"``/``"cuda"`` for torch); ``None``
            takes the CPU.

    Returns:
        The inferencer. OpenVINO runs at f32 precision, as the engine does.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If it is not an exported model.
    """
    from anomalib.deploy import OpenVINOInferencer, TorchInferencer

    path = Path(export_path)
    _check_export(path)
    if path.suffix.lower() in _OPENVINO_SUFFIXES:
        return OpenVINOInferencer(path=path, device=device or "CPU", config={"INFERENCE_PRECISION_HINT": "f32"})
    return TorchInferencer(path=path, device=device or "cpu")


def _static_size(inferencer: OpenVINOInferencer | TorchInferencer) -> tuple[int, int] | None:
    input_blob = getattr(inferencer, "input_blob", None)
    if input_blob is None or input_blob.get_partial_shape().is_dynamic:
        return None
    shape = input_blob.get_shape()
    return int(shape[-2]), int(shape[-1])


def predict_folder(
    export_path: str | Path,
    path: str | Path,
    device: str | None = None,
    dicom_window: DicomWindow | None = None,
    csv: str | Path | None = None,
) -> DataFrame:
    """Score every image of a folder (recursively) or one file with an exported model.

    Files are found and read like :class:`~anomalib_skipts.data.predict.MedicalPredictDataset` and with
    the input settings recorded in the export. An export with a static input size gets each image
    resized to it first (as anomalib's own pre-processing would, bilinear with antialiasing).

    Args:
        export_path: OpenVINO ``.xml``, ONNX ``.onnx`` or torch ``.pt`` file of ``anomalib export``.
        path: Folder of images, or one image.
        device: Inference device, see :func:`load_inferencer`.
        dicom_window: Override of the training DICOM window (warned about).
        csv: Also write the table to this CSV file.

    Returns:
        One row per image: ``image_path``, ``pred_score`` (normalised, threshold 0.5) and ``pred_label``.

    Raises:
        FileNotFoundError: If the export or ``path`` does not exist.
        ValueError: If ``path`` holds no image or the export is not a model.
    """
    settings = export_input_settings(export_path)
    if settings is None:
        logger.warning(
            "%s records no input settings (not a Skip-TS model trained on a medical datamodule): reading each "
            "DICOM file with its own window.",
            export_path,
        )
    dataset = MedicalPredictDataset(path=path, dicom_window=dicom_window)
    dataset.use_input_settings(settings, source=str(export_path))
    inferencer = load_inferencer(export_path, device=device)
    size = _static_size(inferencer)
    rows = []
    total = len(dataset)
    for index, image_path in enumerate(dataset.image_filenames, start=1):
        image = read_input(image_path, dicom_window=dataset.window)
        if size is not None and tuple(image.shape[-2:]) != size:
            image = resize(image, list(size), antialias=True)
        prediction = inferencer.predict(image)
        score = float(torch.as_tensor(prediction.pred_score).reshape(-1)[0])
        label = bool(torch.as_tensor(prediction.pred_label).reshape(-1)[0])
        rows.append({"image_path": str(image_path), "pred_score": score, "pred_label": label})
        if index % 50 == 0 or index == total:
            logger.info("Scored %d/%d images.", index, total)
    table = DataFrame(rows, columns=["image_path", "pred_score", "pred_label"])
    if csv is not None:
        table.to_csv(csv, index=False)
    return table


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``skipts-predict EXPORT PATH [--csv FILE] [--device DEVICE] [--dicom-window C W]``."""
    parser = argparse.ArgumentParser(
        prog="skipts-predict",
        description="Score a folder (or file) of medical images with an exported model, read as in training.",
    )
    parser.add_argument("export", type=Path, help="exported model: .xml (OpenVINO), .onnx or .pt (torch)")
    parser.add_argument("path", type=Path, help="folder of images (searched recursively) or one image")
    parser.add_argument("--csv", type=Path, default=None, help="write the scores to this CSV file")
    parser.add_argument("--device", default=None, help="inference device (default: the CPU)")
    parser.add_argument(
        "--dicom-window", nargs=2, type=float, metavar=("CENTER", "WIDTH"), default=None,
        help="override the DICOM window recorded in the export (the model was not trained so)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    window = tuple(args.dicom_window) if args.dicom_window else None
    table = predict_folder(args.export, args.path, device=args.device, dicom_window=window, csv=args.csv)
    if args.csv is None:
        print(table.to_csv(index=False), end="")
