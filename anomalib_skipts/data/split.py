"""The seeded train/test split: by count or ratio, bit-for-bit reproducible, optionally by patient.

The order is a SHA-256 of ``split_seed`` and each file's ``key`` (its path inside its dataset
folder), so the same files give the same split on any machine, any library version and any
dataset location; adding a file moves only that file. Where the file names tell the patient
(:func:`add_patients`), whole patients are ordered instead, and no patient has images on both sides.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
from anomalib.data.utils import LabelName
from pandas import DataFrame

from anomalib_skipts.data.problems import SplitError

__all__ = ["add_patients", "assign_split", "check_split_arguments"]

logger = logging.getLogger(__name__)


def _split_order(keys: Iterable[str], split_seed: int) -> list[str]:
    """Deterministic pseudo-random order: SHA-256 of the seed and each key (ties broken by key)."""
    return sorted(keys, key=lambda key: (hashlib.sha256(f"{split_seed}:{key}".encode()).hexdigest(), key))


def check_split_arguments(
    num_train: int | None,
    num_test_normal: int | None,
    num_test_abnormal: int | None,
    normal_split_ratio: float,
) -> None:
    """Check the split arguments (see :func:`assign_split`).

    Raises:
        ValueError: If a count is not a non-negative integer or ``None``, or the ratio not in ``[0, 1)``.
    """
    for value, name in (
        (num_train, "num_train"),
        (num_test_normal, "num_test_normal"),
        (num_test_abnormal, "num_test_abnormal"),
    ):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            msg = f"{name} must be a non-negative integer or None, got {value!r}."
            raise ValueError(msg)
    if not 0.0 <= normal_split_ratio < 1.0:
        msg = f"normal_split_ratio must be in [0, 1), got {normal_split_ratio}."
        raise ValueError(msg)


def add_patients(samples: DataFrame, patient_pattern: str, name: str = "dataset") -> DataFrame:
    r"""Set the ``patient`` column from the file names, for a split by patient (:func:`assign_split`).

    Args:
        samples: Samples frame.
        patient_pattern: Regular expression searched in each image's file name (case-insensitive),
            with a group named ``patient``: Kermany's OCT ``NORMAL-1001666-1.jpeg`` and
            ``DME-1001666-2.jpeg`` give patient ``1001666`` with ``^[A-Z]+-(?P<patient>\d+)-``.
        name: Dataset name, for messages.

    Returns:
        The samples with a ``patient`` column; a file whose name does not match gets ``""``
        (split on its own), and the files that do not match are counted in one warning.

    Raises:
        ValueError: If the pattern is not a regular expression with a ``patient`` group.
    """
    try:
        regex = re.compile(patient_pattern, flags=re.IGNORECASE)
    except re.error as error:
        msg = f"patient_pattern {patient_pattern!r} is not a regular expression ({error})."
        raise ValueError(msg) from error
    if "patient" not in regex.groupindex:
        msg = f"patient_pattern {patient_pattern!r} needs a group named 'patient', e.g. '^[A-Z]+-(?P<patient>\\d+)-'."
        raise ValueError(msg)
    matches = [regex.search(Path(path).name) for path in samples["image_path"]]
    samples = samples.assign(patient=[match.group("patient") if match else "" for match in matches])
    unmatched = [path for path, match in zip(samples["image_path"], matches, strict=True) if match is None]
    if unmatched:
        logger.warning(
            "%s: %d file name(s) do not match patient_pattern %r and are split one by one, e.g. %s.",
            name,
            len(unmatched),
            patient_pattern,
            Path(unmatched[0]).name,
        )
    return samples


def _patient_groups(samples: DataFrame, mask: pd.Series, split_seed: int) -> list[tuple[str, list[str]]]:
    """Keys of the selected samples grouped by patient, groups and keys in seeded order.

    A sample without a patient (no ``patient`` column, or ``""``) is a group of its own, named by
    its key: without patients the order is exactly :func:`_split_order` of the keys.
    """
    keys = samples.loc[mask, "key"]
    patients = samples.loc[mask, "patient"] if "patient" in samples else pd.Series("", index=keys.index)
    by_group: dict[str, list[str]] = {}
    for key, patient in zip(keys, patients, strict=True):
        by_group.setdefault(f"patient:{patient}" if patient else key, []).append(key)
    return [(group, _split_order(by_group[group], split_seed)) for group in _split_order(by_group, split_seed)]


def _fill(
    groups: list[tuple[str, list[str]]], count: int | None, how: str
) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Take images from the front of ``groups``, whole groups only except as ``how`` says.

    Args:
        groups: Ordered ``(group, keys)``.
        count: Images wanted; ``None`` takes every group.
        how: ``"exact"``: whole groups, then part of the next group to reach ``count`` (the rest of
            that group is left unused); ``"closest"``: whole groups while that brings the total
            closer to ``count`` (at least one group); ``"at_most"``: whole groups while the total
            stays within ``count``.

    Returns:
        The keys taken, and the groups not touched.
    """
    if count is None:
        return [key for _, keys in groups for key in keys], []
    taken: list[str] = []
    index = 0
    while index < len(groups) and len(taken) < count:
        size = len(groups[index][1])
        closer = not taken or len(taken) + size - count <= count - len(taken)
        if len(taken) + size <= count or (how == "closest" and closer):
            taken += groups[index][1]
        elif how == "exact":
            taken += groups[index][1][: count - len(taken)]
        else:
            break
        index += 1
    return taken, groups[index:]


def assign_split(
    samples: DataFrame,
    name: str = "dataset",
    num_train: int | None = None,
    num_test_normal: int | None = None,
    num_test_abnormal: int | None = None,
    normal_split_ratio: float = 0.2,
    split_seed: int = 0,
) -> DataFrame:
    """Assign train/test splits by count or ratio, reproducibly; leave out the unused images.

    Normal images with no predefined split are ordered by SHA-256 of ``split_seed`` and their
    ``key``; the first ``num_test_normal`` go to the test set and the next ``num_train`` to the
    training set. With one count missing, the other takes every remaining image; with both missing,
    ``normal_split_ratio`` of the images (rounded) are test images. Normal images with a predefined
    split (``normal_test_dir``) are only subsampled to the requested counts. Abnormal images are
    test images; ``num_test_abnormal`` takes a subset in the same seeded order.

    With a ``patient`` column (see :func:`add_patients`) the split is by patient: no patient has
    images on both sides. Patients are ordered by SHA-256 of ``split_seed`` and their id, and
    patients of the chosen abnormal images come first, as they may only be tested. The test set
    takes whole patients, except that a given count is met exactly by part of the last patient
    (whose other images are then unused); the training set likewise; a ratio gives the test set
    the whole patients that come closest to it.

    Args:
        samples: Samples frame (see :func:`make_samples`).
        name: Dataset name, for messages.
        num_train: Number of normal training images.
        num_test_normal: Number of normal test images.
        num_test_abnormal: Number of abnormal test images; ``None`` takes them all.
        normal_split_ratio: Fraction of the normal images used for testing when neither count is given.
        split_seed: Seed of the order.

    Returns:
        The selected samples with their ``split`` set to ``"train"`` or ``"test"``.

    Raises:
        SplitError: If the counts cannot be satisfied; the message gives the numbers.
        ValueError: If an argument is out of range.
    """
    check_split_arguments(num_train, num_test_normal, num_test_abnormal, normal_split_ratio)

    samples = samples.copy()
    normal = samples["label_index"] == LabelName.NORMAL
    key_to_index = dict(zip(samples["key"], samples.index, strict=True))
    if len(key_to_index) != len(samples):
        msg = f"{name}: sample keys are not unique; every image needs its own key."
        raise ValueError(msg)
    chosen: dict[int, str] = {}

    def take(mask: pd.Series, count: int | None, split: str, what: str) -> list[str]:
        order = _split_order(samples.loc[mask, "key"], split_seed)
        if count is not None and count > len(order):
            msg = f"{name}: cannot take {count} {what} from the {len(order)} available."
            raise SplitError(msg)
        selected = order if count is None else order[:count]
        for key in selected:
            chosen[key_to_index[key]] = split
        return selected

    def assign(keys: Iterable[str], split: str) -> None:
        for key in keys:
            chosen[key_to_index[key]] = split

    unassigned = normal & (samples["split"] == "")
    available = int(unassigned.sum())
    if available:
        if num_train is None and num_test_normal is None:
            n_test = round(normal_split_ratio * available)
            n_train = available - n_test
            wanted = f"{normal_split_ratio:g} of the normal images for testing"
        elif num_train is None:
            n_test, n_train = num_test_normal, available - num_test_normal
            wanted = f"{num_test_normal} normal test images and at least one for training"
        elif num_test_normal is None:
            n_train, n_test = num_train, available - num_train
            wanted = f"{num_train} normal training images"
        else:
            n_train, n_test = num_train, num_test_normal
            wanted = (
                f"{num_train} normal training + {num_test_normal} normal test = {num_train + num_test_normal} images"
            )
        if n_test < 0 or n_train < 0 or n_train + n_test > available:
            msg = (
                f"{name}: the split needs {wanted}, but only {available} valid normal images were found. "
                "Lower num_train / num_test_normal, or add images."
            )
            raise SplitError(msg)
    if (normal & (samples["split"] == "train")).any():
        take(normal & (samples["split"] == "train"), num_train, "train", "normal training images")
    if (normal & (samples["split"] == "test")).any():
        take(normal & (samples["split"] == "test"), num_test_normal, "test", "normal test images")
    take(~normal, num_test_abnormal, "test", "abnormal test images")

    if available:
        tested = set()
        if "patient" in samples:
            test_rows = [index for index, split in chosen.items() if split == "test"]
            tested = {patient for patient in samples.loc[test_rows, "patient"] if patient}
        groups = _patient_groups(samples, unassigned, split_seed)
        test_only = {f"patient:{patient}" for patient in tested}
        groups = [group for group in groups if group[0] in test_only] + [
            group for group in groups if group[0] not in test_only
        ]
        if num_test_normal is not None:  # exact test count; the training set takes its count or the rest
            test, rest = _fill(groups, n_test, "exact")
            train, _ = _fill([group for group in rest if group[0] not in test_only], num_train, "exact")
            leftover: list[tuple[str, list[str]]] = []
        elif num_train is not None:  # exact training count; the test set takes the rest
            test, rest = _fill(groups, n_test, "at_most")
            trainable = [group for group in rest if group[0] not in test_only]
            train, leftover = _fill(trainable, num_train, "exact")
            leftover += [group for group in rest if group[0] in test_only]
        else:  # ratio: the test set takes the whole patients closest to it, the training set the rest
            test, rest = _fill(groups, n_test, "closest")
            train, _ = _fill([group for group in rest if group[0] not in test_only], None, "all")
            leftover = [group for group in rest if group[0] in test_only]
        test += [key for _, keys in leftover for key in keys]
        if num_train is not None and len(train) < num_train:
            msg = (
                f"{name}: the split needs {wanted}, but keeping each patient's images on one side leaves only "
                f"{len(train)} normal images of patients without test images for training. Lower num_train / "
                "num_test_normal, or add images."
            )
            raise SplitError(msg)
        assign(test, "test")
        assign(train, "train")

    n_train = sum(split == "train" for split in chosen.values())
    if n_train == 0:
        msg = f"{name}: no normal images are left for training ({int(normal.sum())} normal images found)."
        raise SplitError(msg)
    result = samples.loc[sorted(chosen)].copy()
    result["split"] = [chosen[index] for index in result.index]
    result = result.reset_index(drop=True)
    result.attrs = dict(samples.attrs)
    unused = len(samples) - len(result)
    if unused:
        logger.info("%s: the split uses %d of %d images (split_seed=%d).", name, len(result), len(samples), split_seed)
    return result
