"""Predict on CT / MRI volumes: a 3-D anomaly map as NIfTI over the scan, and the patient's score.

Each slice is read, normalised and resampled exactly as :class:`~anomalib_skipts.data.VolumeFolder`
does for training (same :class:`~anomalib_skipts.data.volumes.VolumeSettings`), scored by the model
(its pre-processor, network and post-processor: the engine's normalised scores and maps), and its
map resized back to the slice's own grid and put into a volume with the input's affine. The map
(``<name>_anomaly_map.nii.gz``) therefore opens aligned over the scan in 3D Slicer or ITK-SNAP. The
patient's score (:func:`~anomalib_skipts.patient.patient_score` of the slice scores) is written to
``patient_scores.csv`` beside the maps, one row per volume.

Python::

    from anomalib_skipts.models import SkipTS
    from anomalib_skipts.volume_predict import predict_volumes
    model = SkipTS.load_from_checkpoint("model.ckpt")
    predict_volumes(model, ["scan.nii.gz", "dicom/series_3"], "predictions")

Command line::

    python -m anomalib_skipts.volume_predict --ckpt_path model.ckpt scan.nii.gz series_3/

A checkpoint trained on :class:`~anomalib_skipts.data.VolumeFolder` stores its volume settings (slice
axis, window or percentiles, spacing), so prediction takes the slices as in training with no flags;
settings given explicitly replace them, with a warning where they differ.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.nn import functional

from anomalib_skipts.data.volume_readers import (
    normalise_intensity,
    put_slice,
    read_slice,
    resampled_size,
    spacing_of_plane,
    volume_stem,
)
from anomalib_skipts.data.volumes import VOLUME_SETTINGS_KEY, VolumeSettings, check_volume
from anomalib_skipts.input_settings import find_input_settings
from anomalib_skipts.patient import patient_score

__all__ = ["VolumePrediction", "main", "predict_volume", "predict_volumes", "trained_volume_settings"]

logger = logging.getLogger(__name__)

SCORES_CSV = "patient_scores.csv"


def trained_volume_settings(input_settings: Mapping[str, Any] | None) -> VolumeSettings | None:
    """Return the volume settings a model was trained with, from its input settings.

    Args:
        input_settings: A model's ``input_settings`` or
            :func:`~anomalib_skipts.input_settings.find_input_settings` of a checkpoint.

    Returns:
        The settings of the training ``VolumeFolder``, or ``None`` when the model was not trained on
        volumes (or its checkpoint predates stored volume settings).
    """
    stored = (input_settings or {}).get(VOLUME_SETTINGS_KEY)
    return VolumeSettings.from_dict(dict(stored)) if isinstance(stored, Mapping) else None


def resolve_settings(trained: VolumeSettings | None, given: VolumeSettings | None) -> VolumeSettings:
    """Choose the settings to predict with: those given, else the trained ones, else the defaults.

    Args:
        trained: The settings stored with the model, if any.
        given: Settings the caller passed, if any.

    Returns:
        The settings; a warning is logged when the given ones differ from the trained ones.
    """
    if given is not None and trained is not None and given != trained:
        logger.warning(
            "Predicting with volume settings %s, but the model was trained with %s: its scores and threshold "
            "may not apply. Leave the settings out to read the volumes as in training.",
            given,
            trained,
        )
    return given or trained or VolumeSettings()


@dataclass(frozen=True)
class VolumePrediction:
    """The result of one volume.

    Attributes:
        volume_path: The input volume.
        map_path: The written NIfTI anomaly map.
        score: The patient score (aggregated slice scores).
        slice_scores: Score of each scored slice (those training would use), in slice order.
    """

    volume_path: str
    map_path: str
    score: float
    slice_scores: tuple[float, ...]


@torch.no_grad()
def predict_volume(
    model: torch.nn.Module,
    volume_path: str | Path,
    output_dir: str | Path,
    settings: VolumeSettings | None = None,
    aggregation: str = "max",
    top_k: int = 3,
    batch_size: int = 8,
) -> VolumePrediction:
    """Score every slice of a volume and write its anomaly map as NIfTI with the volume's affine.

    The map covers every slice; the patient score aggregates the slices training would have used
    (``slice_range`` and the ``min_body_fraction`` rule of the settings), so that slices outside
    the body, never seen in training, do not decide the patient.

    Args:
        model: An anomalib model (``AnomalibModule``): ``model(images)`` returns scores and maps.
        volume_path: NIfTI file or DICOM series folder.
        output_dir: Folder of the map (created).
        settings: Slice axis, intensity and resampling, as in training (``VolumeFolder.settings``).
        aggregation: Patient score from slice scores: ``"max"`` or ``"mean_top_k"``.
        top_k: Slices averaged by ``"mean_top_k"``.
        batch_size: Slices per forward pass.

    Returns:
        The :class:`VolumePrediction` (``slice_scores``: the scored slices, in slice order).

    Raises:
        InvalidDatasetError: If the volume cannot be read, or no slice passes the settings (the message
            names the file).
    """
    import nibabel

    from anomalib_skipts.data.problems import InvalidDatasetError

    settings = settings or VolumeSettings()
    checked, problems = check_volume(str(volume_path), "", settings)
    if checked is None:
        raise InvalidDatasetError("predict", problems)
    info, low, high = checked.info, checked.low, checked.high
    axis = settings.slice_axis
    device = next(model.parameters()).device
    model.eval()
    anomaly_map = np.zeros(info.shape, dtype=np.float32)
    scores: list[float] = []
    indices = list(range(info.shape[axis]))
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        planes = [normalise_intensity(read_slice(info, index, axis), low, high) for index in chunk]
        size = planes[0].shape
        images = torch.from_numpy(np.stack(planes))[:, None]
        if settings.spacing is not None:
            resized = resampled_size(size, spacing_of_plane(info, axis), settings.spacing)
            images = functional.interpolate(images, size=resized, mode="bilinear", antialias=True, align_corners=False)
        output = model(images.expand(-1, 3, -1, -1).contiguous().to(device))
        maps = output.anomaly_map.detach().float().cpu().reshape(len(chunk), 1, *output.anomaly_map.shape[-2:])
        maps = functional.interpolate(maps, size=size, mode="bilinear", align_corners=False)[:, 0].numpy()
        batch_scores = output.pred_score
        if batch_scores is None:
            batch_scores = torch.amax(output.anomaly_map, dim=(-2, -1))
        scores += batch_scores.detach().float().cpu().reshape(-1).tolist()
        for index, plane_map in zip(chunk, maps, strict=True):
            put_slice(anomaly_map, plane_map, index, axis)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    map_path = output_dir / f"{volume_stem(volume_path)}_anomaly_map.nii.gz"
    image = nibabel.Nifti1Image(anomaly_map, info.affine)
    image.header.set_xyzt_units("mm")
    nibabel.save(image, map_path)
    return VolumePrediction(
        volume_path=str(volume_path),
        map_path=str(map_path),
        score=patient_score([scores[index] for index in checked.slices], aggregation, top_k),
        slice_scores=tuple(scores[index] for index in checked.slices),
    )


def predict_volumes(
    model: torch.nn.Module,
    volume_paths: Sequence[str | Path],
    output_dir: str | Path,
    settings: VolumeSettings | None = None,
    aggregation: str = "max",
    top_k: int = 3,
    batch_size: int = 8,
) -> pd.DataFrame:
    """Predict on several volumes; write each map and ``patient_scores.csv`` (one row per volume).

    Every volume is checked first (as :class:`~anomalib_skipts.data.VolumeFolder` checks them), so
    that one clear error lists every unreadable volume before any work is done.

    Args:
        model: An anomalib model.
        volume_paths: NIfTI files or DICOM series folders.
        output_dir: Output folder.
        settings: Slice axis, intensity and resampling; ``None``: those stored with the model (its
            ``input_settings``, from the checkpoint), else the defaults.
        aggregation: ``"max"`` or ``"mean_top_k"``.
        top_k: Slices averaged by ``"mean_top_k"``.
        batch_size: Slices per forward pass.

    Returns:
        The table written to ``patient_scores.csv``: ``volume_path``, ``patient_score``,
        ``aggregation``, ``n_slices``, ``map_path``.

    Raises:
        InvalidDatasetError: If any volume cannot be read.
    """
    from anomalib_skipts.data.problems import InvalidDatasetError

    settings = resolve_settings(trained_volume_settings(getattr(model, "input_settings", None)), settings)
    problems = [problem for path in volume_paths for problem in check_volume(str(path), "", settings)[1]]
    if problems:
        raise InvalidDatasetError("predict", problems)
    rows = []
    for number, path in enumerate(volume_paths, start=1):
        result = predict_volume(model, path, output_dir, settings, aggregation, top_k, batch_size)
        logger.info(
            "[%d/%d] %s: patient score %.4f -> %s", number, len(volume_paths), path, result.score, result.map_path
        )
        rows.append(
            {
                "volume_path": result.volume_path,
                "patient_score": result.score,
                "aggregation": aggregation if aggregation == "max" else f"mean_top_{top_k}",
                "n_slices": len(result.slice_scores),
                "map_path": result.map_path,
            }
        )
    table = pd.DataFrame(rows)
    table.to_csv(Path(output_dir) / SCORES_CSV, index=False)
    return table


def _load_model(class_path: str, ckpt_path: str) -> torch.nn.Module:
    module_name, _, class_name = class_path.rpartition(".")
    model_class = getattr(importlib.import_module(module_name), class_name)
    return model_class.load_from_checkpoint(ckpt_path, map_location="cpu")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m anomalib_skipts.volume_predict --ckpt_path X --output DIR VOLUME...``."""
    parser = argparse.ArgumentParser(description="Write NIfTI anomaly maps and patient scores for CT / MRI volumes.")
    parser.add_argument("volumes", nargs="+", help=".nii / .nii.gz files or DICOM series folders")
    parser.add_argument("--ckpt_path", required=True, help="checkpoint written by anomalib train / Engine.fit")
    parser.add_argument("--model", default="anomalib_skipts.models.SkipTS", help="model class (dotted path)")
    parser.add_argument("--output", default="predictions", help="output folder (default: predictions)")
    parser.add_argument(
        "--window", default=None, help="CT window: a name (brain) or 'center,width' (default: as in training)"
    )
    parser.add_argument("--slice_axis", type=int, default=None, help="0, 1 or 2 (default: as in training, else 2)")
    parser.add_argument("--aggregation", default="max", choices=["max", "mean_top_k"])
    parser.add_argument("--top_k", type=int, default=3)
    args = parser.parse_args(argv)
    window = args.window
    if window is not None and "," in window:
        window = tuple(float(value) for value in window.split(","))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model = _load_model(args.model, args.ckpt_path)
    checkpoint = torch.load(args.ckpt_path, map_location="cpu", weights_only=False)
    trained = trained_volume_settings(find_input_settings(checkpoint))
    given = None
    if window is not None or args.slice_axis is not None:
        overrides = {"window": window, "slice_axis": args.slice_axis}
        given = dataclasses.replace(
            trained or VolumeSettings(), **{name: value for name, value in overrides.items() if value is not None}
        )
    settings = resolve_settings(trained, given)
    logger.info("volume settings: %s", settings)
    table = predict_volumes(model, args.volumes, args.output, settings, args.aggregation, args.top_k)
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
