"""Youden threshold, F1 / accuracy at it, AUROC and the dataset-size-weighted average."""

import math

import numpy as np
import pytest
import torch

from anomalib_skipts.benchmark.metrics import (
    dice_at_threshold,
    image_metrics,
    pixel_aupro,
    pixel_auroc,
    plain_mean,
    weighted_mean,
    youden_threshold,
)


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


def _region_case() -> tuple[torch.Tensor, torch.Tensor]:
    """One 10-pixel region among 100 normal pixels; 15 normal pixels score above the whole region."""
    mask = torch.zeros(1, 10, 11, dtype=torch.bool)
    mask[0, 0, :10] = True
    amap = torch.zeros(1, 10, 11)
    amap[0, 0, :10] = 0.5
    amap[0, 5, :] = 0.9  # 11 normal pixels
    amap[0, 6, :4] = 0.9  # 4 more: FPR 15 / 100 before any region pixel is detected
    return mask, amap


def test_aupro_known_values() -> None:
    mask, amap = _region_case()
    # PRO is 0 up to FPR 0.15, then 1: the area up to FPR 0.3 is 0.15, normalised by 0.3 -> 0.5.
    assert pixel_aupro([mask], [amap]) == pytest.approx(0.5, abs=1e-6)
    assert pixel_aupro([mask], [mask.float()]) == pytest.approx(1.0)
    assert pixel_aupro([mask], [1 - mask.float()]) == pytest.approx(0.0)
    # Limit 0.6: area 0.45 / 0.6.
    assert pixel_aupro([mask], [amap], fpr_limit=0.6) == pytest.approx(0.75, abs=1e-6)
    assert math.isnan(pixel_aupro([torch.zeros(1, 4, 4, dtype=torch.bool)], [torch.rand(1, 4, 4)]))
    assert math.isnan(pixel_aupro([], []))


def test_aupro_weighs_every_region_alike() -> None:
    # Two regions, one of 1 pixel and one of 9 pixels; only the large one is detected at low FPR.
    mask = torch.zeros(1, 12, 12, dtype=torch.bool)
    mask[0, 0, 0] = True
    mask[0, 5:8, 5:8] = True
    amap = torch.zeros(1, 12, 12)
    amap[0, 5:8, 5:8] = 1.0  # large region found first, small one scores like the background
    # PRO jumps to 0.5 (one region of two) at FPR 0 and reaches 1 only at FPR 1 (the small region is
    # tied with the background), linearly in between: PRO(0.3) = 0.65, area (0.5 + 0.65) / 2 * 0.3 / 0.3.
    assert pixel_aupro([mask], [amap]) == pytest.approx(0.575, abs=1e-6)
    # Pixel AUROC, by contrast, is dominated by the large region.
    assert pixel_auroc([mask], [amap]) > 0.9


def test_dice_at_the_papers_threshold() -> None:
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, 0, :] = True  # 4 pixels per image
    amap = torch.zeros(2, 4, 4)
    amap[0, 0, :] = 1.0
    amap[0, 1, :] = 0.85  # 4 more pixels >= 0.8 after normalisation: Dice 2*4 / (8 + 4) = 2/3
    amap[1, 0, :] = 1.0
    amap[1, 1, :] = 0.75  # below 0.8: prediction = mask, Dice 1
    assert dice_at_threshold([mask], [amap]) == pytest.approx((2 / 3 + 1) / 2)
    # The normalisation is per image: scaling and shifting a map does not change its segmentation.
    assert dice_at_threshold([mask], [amap * 7 + 100]) == pytest.approx((2 / 3 + 1) / 2)
    assert dice_at_threshold([mask[:1]], [amap[:1]], threshold=0.9) == pytest.approx(1.0)
    # Images without an anomalous region are left out; a constant map predicts its whole image.
    normal = torch.zeros(1, 4, 4, dtype=torch.bool)
    assert dice_at_threshold([mask[:1], normal], [amap[:1], torch.rand(1, 4, 4)]) == pytest.approx(2 / 3)
    assert dice_at_threshold([mask[:1]], [torch.ones(1, 4, 4)]) == pytest.approx(2 * 4 / (16 + 4))
    assert math.isnan(dice_at_threshold([normal], [torch.rand(1, 4, 4)]))
    with pytest.raises(ValueError, match="differ in size"):
        dice_at_threshold([mask], [amap[:, :2]])
