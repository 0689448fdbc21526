"""Evaluation metrics of the Skip-TS benchmark protocol.

Skip-TS (IEEE TIM 2024, Sec. IV) reports image AUROC, F1 and accuracy at the threshold that
maximises TPR - FPR (Youden's J statistic), and averages AUROC over datasets both plainly and
weighted by dataset size (Fig. 5). Everything here works on raw (un-normalised) anomaly scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score, roc_curve
from torchmetrics.functional.classification import binary_auroc


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
    target = torch.cat([mask.flatten() for mask in masks]).to(torch.int64).clamp(max=1)
    preds = torch.cat([amap.flatten() for amap in maps]).to(torch.float32)
    if target.numel() != preds.numel():
        msg = f"Masks ({target.numel()} pixels) and anomaly maps ({preds.numel()} pixels) differ in size."
        raise ValueError(msg)
    if target.min() == target.max():
        return math.nan
    return float(binary_auroc(preds, target))


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
