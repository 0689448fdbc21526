"""Evaluation metrics of the Skip-TS benchmark protocol.

Skip-TS (IEEE TIM 2024, Sec. IV) reports image AUROC, F1 and accuracy at the threshold that
maximises TPR - FPR (Youden's J statistic), and averages AUROC over datasets both plainly and
weighted by dataset size (Fig. 5). Everything here works on raw (un-normalised) anomaly scores.

Where test masks exist, localisation is measured three ways: pixel AUROC, anomalib's AUPRO (area
under the per-region overlap curve up to a false-positive rate of 0.3, normalised to [0, 1]) and
the Dice coefficient of the segmentation the paper draws in Fig. 9(g): each anomaly map min-max
normalised over its own image and thresholded at 0.8.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score, roc_curve
from torchmetrics.functional.classification import binary_auroc

AUPRO_FPR_LIMIT = 0.3
"""anomalib's default false-positive-rate limit of AUPRO."""
SEGMENTATION_THRESHOLD = 0.8
"""Threshold on the per-image min-max normalised anomaly map (Skip-TS, Fig. 9(g))."""


@dataclass(frozen=True)
class ImageMetrics:
    """Image-level metrics of one run.

    Attributes:
        auroc: Area under the ROC curve (NaN when the test set has a single class).
        threshold: Youden threshold on the raw score (a score >= threshold is called abnormal).
        f1: F1 score of the abnormal class at the threshold.
        accuracy: Accuracy at the threshold.
        tpr: True-positive rate at the threshold.
        fpr: False-positive rate at the threshold.
    """

    auroc: float
    threshold: float
    f1: float
    accuracy: float
    tpr: float
    fpr: float


def youden_threshold(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Threshold maximising Youden's J = TPR - FPR.

    Candidate thresholds are the distinct scores (``sklearn.metrics.roc_curve``); among equally good
    thresholds the highest one is taken. A sample is predicted abnormal when ``score >= threshold``.

    Args:
        labels: Ground-truth labels, 1 = abnormal.
        scores: Anomaly scores, higher = more abnormal.

    Returns:
        float: The threshold.

    Raises:
        ValueError: If the labels do not contain both classes.
    """
    labels, scores = _as_arrays(labels, scores)
    if len(np.unique(labels)) != 2:
        msg = "Youden's threshold needs both normal and abnormal samples."
        raise ValueError(msg)
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    youden = np.where(np.isfinite(thresholds), tpr - fpr, -np.inf)  # roc_curve prepends +inf
    # Thresholds decrease along the curve: the first (near-)maximum is the highest threshold.
    index = int(np.flatnonzero(youden >= youden.max() - 1e-12)[0])
    return float(thresholds[index])


def image_metrics(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> ImageMetrics:
    """Image AUROC, and F1 / accuracy at the Youden threshold.

    Args:
        labels: Ground-truth labels, 1 = abnormal.
        scores: Anomaly scores, higher = more abnormal.

    Returns:
        ImageMetrics: The metrics (all NaN if only one class is present).
    """
    labels, scores = _as_arrays(labels, scores)
    if len(np.unique(labels)) != 2:
        nan = math.nan
        return ImageMetrics(auroc=nan, threshold=nan, f1=nan, accuracy=nan, tpr=nan, fpr=nan)
    threshold = youden_threshold(labels, scores)
    predictions = (scores >= threshold).astype(int)
    positives = labels == 1
    return ImageMetrics(
        auroc=float(roc_auc_score(labels, scores)),
        threshold=threshold,
        f1=float(f1_score(labels, predictions, zero_division=0)),
        accuracy=float(accuracy_score(labels, predictions)),
        tpr=float(predictions[positives].mean()),
        fpr=float(predictions[~positives].mean()),
    )


def pixel_auroc(masks: Sequence[torch.Tensor], maps: Sequence[torch.Tensor]) -> float:
    """Pixel-level AUROC over all test pixels (anomalib's pixel AUROC, computed with torchmetrics).

    Args:
        masks: Ground-truth masks, one tensor per image or batch (non-zero = anomalous pixel).
        maps: Anomaly maps of the same shapes.

    Returns:
        float: The AUROC, or NaN when there are no masks or no anomalous pixels.
    """
    if not masks:
        return math.nan
    target, preds = _pixels(masks, maps)
    if target.min() == target.max():
        return math.nan
    return float(binary_auroc(preds.flatten(), target.flatten().to(torch.int64)))


def pixel_aupro(
    masks: Sequence[torch.Tensor],
    maps: Sequence[torch.Tensor],
    fpr_limit: float = AUPRO_FPR_LIMIT,
) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, normalised (``anomalib.metrics.AUPRO``).

    Every connected anomalous region of every mask counts alike, whatever its size, so small
    lesions weigh as much as large ones.

    Args:
        masks: Ground-truth masks, one tensor ``(H, W)`` per image or ``(N, H, W)`` per batch.
        maps: Anomaly maps of the same shapes.
        fpr_limit: Upper bound of the false-positive rate (anomalib's default 0.3).

    Returns:
        float: AUPRO in [0, 1], or NaN when there are no masks or no anomalous pixels.
    """
    if not masks:
        return math.nan
    from anomalib.metrics import AUPRO

    target, preds = _pixels(masks, maps)
    if not target.any():
        return math.nan
    metric = AUPRO(fields=("anomaly_map", "gt_mask"), fpr_limit=fpr_limit)
    metric.update(SimpleNamespace(anomaly_map=preds, gt_mask=target))
    return float(metric.compute())


def dice_at_threshold(
    masks: Sequence[torch.Tensor],
    maps: Sequence[torch.Tensor],
    threshold: float = SEGMENTATION_THRESHOLD,
) -> float:
    """Mean Dice of the paper's segmentation over the test images that have an anomalous region.

    Each map is min-max normalised over its own image and the pixels at or above ``threshold``
    form the predicted region (Skip-TS, Sec. IV, Fig. 9(g): threshold 0.8); Dice =
    2 |P & G| / (|P| + |G|). Images with an empty mask are left out (on them the per-image
    normalisation always predicts some pixels, so Dice would be 0 by construction). A constant
    map predicts its whole image.

    Args:
        masks: Ground-truth masks, one tensor ``(H, W)`` per image or ``(N, H, W)`` per batch.
        maps: Anomaly maps of the same shapes.
        threshold: Threshold on the normalised map.

    Returns:
        float: Mean Dice, or NaN when no image has an anomalous region.
    """
    if not masks:
        return math.nan
    target, preds = _pixels(masks, maps)
    keep = target.flatten(1).any(dim=1)
    if not keep.any():
        return math.nan
    target, preds = target[keep].flatten(1), preds[keep].flatten(1)
    low = preds.min(dim=1, keepdim=True).values
    span = preds.max(dim=1, keepdim=True).values - low
    normalised = torch.where(span > 0, (preds - low) / span.clamp_min(torch.finfo(preds.dtype).tiny), 1.0)
    predicted = normalised >= threshold
    overlap = (predicted & target).sum(dim=1).double()
    total = predicted.sum(dim=1).double() + target.sum(dim=1).double()
    return float((2 * overlap / total).mean())


def _pixels(masks: Sequence[torch.Tensor], maps: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack masks and maps into ``(N, H, W)`` boolean targets and float32 predictions."""
    target = torch.cat([mask.reshape(-1, *mask.shape[-2:]) for mask in masks]).bool()
    preds = torch.cat([amap.reshape(-1, *amap.shape[-2:]) for amap in maps]).to(torch.float32)
    if target.shape != preds.shape:
        msg = f"Masks {tuple(target.shape)} and anomaly maps {tuple(preds.shape)} differ in size."
        raise ValueError(msg)
    return target, preds


def weighted_mean(values: Sequence[float], weights: Sequence[float]) -> float:
    """Average weighted by dataset size (Skip-TS, Fig. 5(b)); NaN values are left out.

    Args:
        values: One value per dataset.
        weights: One weight per dataset (the benchmark uses the number of test images).

    Returns:
        float: The weighted mean, or NaN when no value is finite.

    Raises:
        ValueError: If the lengths differ or a weight is negative.
    """
    values_ = np.asarray(values, dtype=float)
    weights_ = np.asarray(weights, dtype=float)
    if values_.shape != weights_.shape:
        msg = f"{values_.size} values but {weights_.size} weights."
        raise ValueError(msg)
    if (weights_ < 0).any():
        msg = "Weights must be non-negative."
        raise ValueError(msg)
    keep = np.isfinite(values_) & np.isfinite(weights_)
    if not keep.any() or weights_[keep].sum() == 0:
        return math.nan
    return float(np.average(values_[keep], weights=weights_[keep]))


def plain_mean(values: Sequence[float]) -> float:
    """Unweighted average over datasets (Skip-TS, Fig. 5(a)); NaN values are left out.

    Args:
        values: One value per dataset.

    Returns:
        float: The mean, or NaN when no value is finite.
    """
    values_ = np.asarray(values, dtype=float)
    keep = np.isfinite(values_)
    return float(values_[keep].mean()) if keep.any() else math.nan


def _as_arrays(
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    labels_ = np.asarray(labels).astype(int).ravel()
    scores_ = np.asarray(scores, dtype=float).ravel()
    if labels_.shape != scores_.shape:
        msg = f"{labels_.size} labels but {scores_.size} scores."
        raise ValueError(msg)
    if not np.isfinite(scores_).all():
        msg = "Anomaly scores contain NaN or infinite values."
        raise ValueError(msg)
    return labels_, scores_
