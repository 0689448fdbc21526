"""Patient-level scores and metrics from slice scores."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from anomalib_skipts.patient import aggregate_patient_scores, dataset_patient_metrics, patient_metrics, patient_score


def test_patient_score_max_and_mean_of_top_k() -> None:
    assert patient_score([0.1, 0.9, 0.5, 0.7], "max") == 0.9
    assert patient_score([0.1, 0.9, 0.5, 0.7], "mean_top_k", top_k=2) == pytest.approx(0.8)
    assert patient_score([0.4], "mean_top_k", top_k=3) == 0.4
    with pytest.raises(ValueError, match="Unknown patient aggregation"):
        patient_score([0.1], "median")


def test_patient_label_wins_over_slice_labels() -> None:
    frame = pd.DataFrame(
        {
            "patient_id": ["a", "a", "b", "b"],
            "score": [0.2, 0.3, 0.1, 0.2],
            "label": [0, 0, 0, 0],
            "patient_label": [1, 1, 0, 0],
        }
    )
    patients = aggregate_patient_scores(frame)
    assert patients["label"].tolist() == [1, 0]
    assert patients["n_slices"].tolist() == [2, 2]


def test_patient_metrics_differ_from_slice_metrics() -> None:
    # Patient p1 is abnormal by one high slice; slice-level many abnormal slices score low.
    ids = ["p1", "p1", "p1", "p2", "p2", "p3", "p3"]
    scores = [0.9, 0.1, 0.1, 0.3, 0.2, 0.35, 0.3]
    labels = [1, 1, 1, 0, 0, 0, 0]
    metrics = patient_metrics(ids, scores, labels)
    assert metrics.n_patients == 3
    assert metrics.auroc == 1.0
    assert metrics.f1 == 1.0
    assert metrics.accuracy == 1.0
    # Without patients, NaN.
    assert math.isnan(patient_metrics([None] * 7, scores, labels).auroc)


def test_dataset_patient_metrics_reads_the_test_samples() -> None:
    class Data:
        samples = pd.DataFrame(
            {
                "image_path": ["v1#0", "v1#1", "v2#0", "v3#0"],
                "patient_id": ["a", "a", "b", "c"],
                "patient_label": [1, 1, 0, 0],
            }
        )

    class Module:
        test_data = Data()
        patient_aggregation = "mean_top_k"
        patient_top_k = 2

    metrics = dataset_patient_metrics(Module(), ["v3#0", "v1#0", "v1#1", "v2#0"], [0.2, 0.9, 0.0, 0.3], [0, 0, 0, 0])
    # a: mean(0.9, 0.0) = 0.45 > b 0.3, c 0.2: perfectly ranked.
    assert metrics.auroc == 1.0
    assert metrics.n_patients == 3


def test_two_dimensional_samples_split_by_patient_pattern_give_patient_metrics() -> None:
    class Data:
        samples = pd.DataFrame(
            {
                "image_path": ["DME-1-1.jpeg", "DME-1-2.jpeg", "NORMAL-2-1.jpeg", "odd.jpeg"],
                "patient": ["1", "1", "2", ""],
            }
        )

    class Module:
        test_data = Data()

    paths = ["DME-1-1.jpeg", "DME-1-2.jpeg", "NORMAL-2-1.jpeg", "odd.jpeg"]
    metrics = dataset_patient_metrics(Module(), paths, [0.8, 0.1, 0.3, 0.9], [1, 1, 0, 0])
    assert metrics.n_patients == 2  # the file without a patient is left out
    assert metrics.auroc == 1.0
