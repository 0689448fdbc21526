"""Youden threshold, F1 / accuracy at it, AUROC and the dataset-size-weighted average."""

import math

import numpy as np
import pytest
import torch

from anomalib_skipts.benchmark.metrics import image_metrics, pixel_auroc, plain_mean, weighted_mean, youden_threshold


def test_youden_threshold_maximises_tpr_minus_fpr() -> None:
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    scores = [0.1, 0.2, 0.3, 0.75, 0.4, 0.8, 0.9, 0.95]
    threshold = youden_threshold(labels, scores)
    # Candidates: >= 0.8 gives TPR 3/4, FPR 0 (J = 0.75); >= 0.4 gives TPR 1, FPR 1/4 (J = 0.75);
    # ties go to the highest threshold.
    assert threshold == pytest.approx(0.8)
    # Brute force over all candidate thresholds agrees on the best J.
    labels_, scores_ = np.array(labels), np.array(scores)
    best = max((scores_[labels_ == 1] >= t).mean() - (scores_[labels_ == 0] >= t).mean() for t in scores_)
    predicted = scores_ >= threshold
    assert predicted[labels_ == 1].mean() - predicted[labels_ == 0].mean() == pytest.approx(best)


def test_metrics_at_youden_threshold() -> None:
    labels = [0, 0, 0, 1, 1, 1]
    scores = [0.1, 0.2, 0.6, 0.5, 0.7, 0.9]
    metrics = image_metrics(labels, scores)
    # Best J: threshold 0.5 (TPR 1, FPR 1/3) vs 0.7 (TPR 2/3, FPR 0): tie at J = 2/3 -> 0.7.
    assert metrics.threshold == pytest.approx(0.7)
    assert metrics.tpr == pytest.approx(2 / 3)
    assert metrics.fpr == 0
    assert metrics.accuracy == pytest.approx(5 / 6)
    assert metrics.f1 == pytest.approx(0.8)  # precision 1, recall 2/3
    assert metrics.auroc == pytest.approx(8 / 9)


def test_perfect_and_inverted_scores() -> None:
    labels = [0, 0, 1, 1]
    assert image_metrics(labels, [0.0, 0.1, 0.8, 0.9]).f1 == 1
    assert image_metrics(labels, [0.9, 0.8, 0.1, 0.0]).auroc == 0


def test_single_class_gives_nan_and_threshold_raises() -> None:
    metrics = image_metrics([1, 1, 1], [0.1, 0.2, 0.3])
    assert math.isnan(metrics.auroc)
    assert math.isnan(metrics.f1)
    with pytest.raises(ValueError, match="both normal and abnormal"):
        youden_threshold([0, 0], [0.1, 0.2])


def test_invalid_scores_are_rejected() -> None:
    with pytest.raises(ValueError, match="NaN"):
        image_metrics([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="labels"):
        image_metrics([0, 1, 1], [0.1, 0.2])


def test_weighted_average_uses_dataset_sizes() -> None:
    # Two datasets of 140 and 194 test images (HeadCT, BrainMRI Table I test sets).
    assert weighted_mean([0.8, 0.5], [140, 194]) == pytest.approx((0.8 * 140 + 0.5 * 194) / 334)
    assert plain_mean([0.8, 0.5]) == pytest.approx(0.65)
    assert weighted_mean([0.8, float("nan")], [140, 194]) == pytest.approx(0.8)
    assert math.isnan(weighted_mean([float("nan")], [10]))
    with pytest.raises(ValueError, match="weights"):
        weighted_mean([0.1, 0.2], [1])
    with pytest.raises(ValueError, match="non-negative"):
        weighted_mean([0.1, 0.2], [1, -1])


def test_pixel_auroc() -> None:
    masks = [torch.tensor([[[0, 1], [0, 1]]])]
    maps = [torch.tensor([[[0.1, 0.9], [0.2, 0.8]]])]
    assert pixel_auroc(masks, maps) == pytest.approx(1.0)
    assert math.isnan(pixel_auroc([], []))
    assert math.isnan(pixel_auroc([torch.zeros(1, 2, 2)], [torch.rand(1, 2, 2)]))
