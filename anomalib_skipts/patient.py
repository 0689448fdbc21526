"""Patient-level answers from slice-level scores: one score per patient, and metrics over patients.

A clinician asks whether a scan (a patient) is abnormal, not a slice. A patient's score is made from
the scores of all their slices (of all their volumes), outside any model, so that Skip-TS and every
anomalib baseline are aggregated alike:

- ``"max"``: the most anomalous slice (a lesion on one slice is enough);
- ``"mean_top_k"``: the mean of the ``k`` highest slice scores (less sensitive to one noisy slice).

Patient metrics are the paper's image metrics computed over patients: AUROC, and F1 and accuracy at
the Youden threshold (:func:`~anomalib_skipts.benchmark.metrics.image_metrics`). A patient is abnormal
when any of their volumes is (``patient_label``), else when any of their slices is.

Example:
    >>> frame = pd.DataFrame({"patient_id": ["a", "a", "b"], "score": [0.1, 0.9, 0.2], "label": [0, 1, 0]})
    >>> aggregate_patient_scores(frame, aggregation="max")["score"].tolist()
    [0.9, 0.2]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "AGGREGATIONS",
    "PatientMetrics",
    "aggregate_patient_scores",
    "dataset_patient_metrics",
    "tested_patients",
    "patient_metrics",
    "patient_score",
]

#: Ways to make a patient's score from their slice scores.
AGGREGATIONS = ("max", "mean_top_k")


@dataclass(frozen=True)
class PatientMetrics:
    """Metrics over patients (NaN when the test set has no patients or a single class).

    Attributes:
        auroc: Patient AUROC.
        f1: F1 of the abnormal class at the Youden threshold on patient scores.
        accuracy: Accuracy at that threshold.
        n_patients: Number of test patients.
    """

    auroc: float
    f1: float
    accuracy: float
    n_patients: int


def patient_score(scores: Sequence[float] | np.ndarray, aggregation: str = "max", top_k: int = 3) -> float:
    """One patient's score from their slice scores.

    Args:
        scores: Slice scores (higher = more anomalous).
        aggregation: ``"max"`` or ``"mean_top_k"``.
        top_k: Slices averaged by ``"mean_top_k"`` (all slices when the patient has fewer).

    Returns:
        The patient's score.

    Raises:
        ValueError: If the aggregation is unknown, ``top_k < 1`` or there are no scores.
    """
    _check(aggregation, top_k)
    values = np.asarray(scores, dtype=float).ravel()
    if values.size == 0:
        msg = "A patient needs at least one slice score."
        raise ValueError(msg)
    if aggregation == "max":
        return float(values.max())
    return float(np.sort(values)[-top_k:].mean())


def aggregate_patient_scores(frame: pd.DataFrame, aggregation: str = "max", top_k: int = 3) -> pd.DataFrame:
    """Patient scores and labels from one row per slice.

    Args:
        frame: Columns ``patient_id`` and ``score``; optional ``label`` (slice label) and
            ``patient_label`` (the patient's own label, which wins over the slice labels).
        aggregation: ``"max"`` or ``"mean_top_k"``.
        top_k: See :func:`patient_score`.

    Returns:
        One row per patient (in order of first appearance): ``patient_id``, ``score``, ``label``
        (when known) and ``n_slices``.
    """
    _check(aggregation, top_k)
    grouped = frame.groupby("patient_id", sort=False)
    patients = grouped["score"].apply(lambda scores: patient_score(scores, aggregation, top_k)).rename("score")
    result = patients.to_frame()
    label_column = "patient_label" if "patient_label" in frame else "label" if "label" in frame else None
    if label_column is not None:
        result["label"] = grouped[label_column].max().astype(int)
    result["n_slices"] = grouped.size()
    return result.reset_index()


def patient_metrics(
    patient_ids: Sequence[str | None],
    scores: Sequence[float],
    labels: Sequence[int],
    patient_labels: Sequence[int] | None = None,
    aggregation: str = "max",
    top_k: int = 3,
) -> PatientMetrics:
    """Patient AUROC, F1 and accuracy (Youden threshold) from slice scores.

    Args:
        patient_ids: Patient of each slice; slices without one (``None``, ``""``, NaN) are left out.
        scores: Slice scores.
        labels: Slice labels (1 = abnormal).
        patient_labels: Label of each slice's patient, when the dataset knows it.
        aggregation: ``"max"`` or ``"mean_top_k"``.
        top_k: See :func:`patient_score`.

    Returns:
        The :class:`PatientMetrics`; NaN metrics when no slice has a patient.
    """
    from anomalib_skipts.benchmark.metrics import image_metrics

    frame = pd.DataFrame({"patient_id": list(patient_ids), "score": list(scores), "label": list(labels)})
    if patient_labels is not None:
        frame["patient_label"] = list(patient_labels)
    frame = frame[frame["patient_id"].notna() & (frame["patient_id"].astype(str) != "")]
    if frame.empty:
        return PatientMetrics(auroc=math.nan, f1=math.nan, accuracy=math.nan, n_patients=0)
    patients = aggregate_patient_scores(frame, aggregation, top_k)
    metrics = image_metrics(patients["label"].to_numpy(), patients["score"].to_numpy())
    return PatientMetrics(auroc=metrics.auroc, f1=metrics.f1, accuracy=metrics.accuracy, n_patients=len(patients))


def tested_patients(datamodule: object, paths: Sequence[str]) -> pd.DataFrame | None:
    """The patient (and patient label, where known) of each tested image, as the test samples name them.

    Args:
        datamodule: The tested datamodule (its ``test_data.samples``).
        paths: ``image_path`` of each tested slice or image.

    Returns:
        One row per path: ``patient_id`` (from ``patient_id``, or ``patient`` for 2-D datasets split by
        ``patient_pattern``) and ``patient_label`` when the samples have one; ``None`` when the
        datamodule names no patients.
    """
    samples = getattr(getattr(datamodule, "test_data", None), "samples", None)
    column = next((name for name in ("patient_id", "patient") if samples is not None and name in samples), None)
    if column is None:
        return None
    columns = [column, *(["patient_label"] if "patient_label" in samples else [])]
    rows = samples.drop_duplicates("image_path").set_index("image_path")[columns].reindex(list(paths))
    return rows.rename(columns={column: "patient_id"})


def dataset_patient_metrics(
    datamodule: object,
    paths: Sequence[str],
    scores: Sequence[float],
    labels: Sequence[int],
    patients: pd.DataFrame | None = None,
) -> PatientMetrics:
    """Patient metrics of a test run, with the patients the datamodule's test samples name.

    The patients are those :func:`tested_patients` finds (pass them as ``patients`` when already
    looked up); the aggregation is the datamodule's ``patient_aggregation`` / ``patient_top_k`` when
    it has them, else ``"max"``. A datamodule that names no patients gives NaN metrics.

    Args:
        datamodule: The tested datamodule (its ``test_data.samples``).
        paths: ``image_path`` of each tested slice or image.
        scores: Their raw scores.
        labels: Their labels.
        patients: :func:`tested_patients` of ``datamodule`` and ``paths``; ``None`` looks them up.

    Returns:
        The :class:`PatientMetrics`.
    """
    patients = tested_patients(datamodule, paths) if patients is None else patients
    if patients is None:
        return PatientMetrics(auroc=math.nan, f1=math.nan, accuracy=math.nan, n_patients=0)
    patient_labels = patients["patient_label"].fillna(0).astype(int).tolist() if "patient_label" in patients else None
    return patient_metrics(
        patients["patient_id"].tolist(),
        scores,
        labels,
        patient_labels,
        aggregation=getattr(datamodule, "patient_aggregation", "max"),
        top_k=getattr(datamodule, "patient_top_k", 3),
    )


def _check(aggregation: str, top_k: int) -> None:
    if aggregation not in AGGREGATIONS:
        msg = f"Unknown patient aggregation {aggregation!r}: use one of {AGGREGATIONS}."
        raise ValueError(msg)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        msg = f"top_k must be a positive integer, got {top_k!r}."
        raise ValueError(msg)
