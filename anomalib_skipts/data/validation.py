"""Validation: open and decode the files a split uses, and report every problem at once.

Only the files the split chooses are decoded (:func:`select_samples`): a 37,000-image pool of which
the split uses 1,300 costs 1,300 decodes. All problems (the listing's and the decoding's) are
collected and raised in one :class:`~anomalib_skipts.data.problems.InvalidDatasetError`, or, with
``skip_invalid=True``, left out with one warning each. Nothing is dropped silently.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pandas import DataFrame

from anomalib_skipts.data.problems import DatasetProblem, InvalidDatasetError, SplitError
from anomalib_skipts.data.readers import DicomWindow, ImageReadError, read_mask, verify_image

__all__ = ["select_samples", "validate_samples"]

logger = logging.getLogger(__name__)


def _check_row(row: tuple[str, tuple[str, ...]], dicom_window: DicomWindow | None) -> list[DatasetProblem]:
    image_path, mask_paths = row
    try:
        height, width = verify_image(image_path, dicom_window=dicom_window)
    except ImageReadError as error:
        return [DatasetProblem(error.path, error.reason)]
    except ValueError as error:  # e.g. an invalid dicom_window: a configuration error, not a file error
        raise ValueError(f"{image_path}: {error}") from error
    problems = []
    for mask_path in mask_paths:
        try:
            mask = read_mask(mask_path)
        except ImageReadError as error:
            problems.append(DatasetProblem(error.path, f"mask of {Path(image_path).name}: {error.reason}"))
            continue
        if tuple(mask.shape) != (height, width):
            reason = f"mask is {mask.shape[1]}x{mask.shape[0]} pixels but its image {Path(image_path).name} is "
            reason += f"{width}x{height}"
            problems.append(DatasetProblem(mask_path, reason))
    return problems


def _decode_problems(
    rows: Sequence[tuple[str, tuple[str, ...]]],
    dicom_window: DicomWindow | None,
    num_threads: int | None = None,
) -> list[list[DatasetProblem]]:
    """Open and decode each ``(image, masks)`` row (in threads); the problems of each row, in order."""
    if not rows:
        return []
    threads = num_threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(lambda row: _check_row(row, dicom_window), rows))


def _rows(samples: DataFrame) -> list[tuple[str, tuple[str, ...]]]:
    mask_column = samples["mask_paths"] if "mask_paths" in samples else [()] * len(samples)
    return list(zip(samples["image_path"], mask_column, strict=True))


def _without(samples: DataFrame, problems: Iterable[DatasetProblem], name: str) -> DataFrame:
    """Leave out the rows whose image or a mask is the path of a problem (one warning per problem)."""
    bad_paths = set()
    for problem in problems:
        logger.warning("%s: leaving out %s", name, problem)
        bad_paths.add(problem.path)
    keep = [image not in bad_paths and not any(mask in bad_paths for mask in masks) for image, masks in _rows(samples)]
    kept = samples[keep].reset_index(drop=True)
    kept.attrs = dict(samples.attrs)
    return kept


def validate_samples(
    samples: DataFrame,
    name: str,
    problems: Sequence[DatasetProblem] = (),
    skip_invalid: bool = False,
    dicom_window: DicomWindow | None = None,
    hint: str = "",
    num_threads: int | None = None,
) -> DataFrame:
    """Open and decode every image and mask; raise one error listing all problems, or skip them.

    :meth:`MedicalDataModule.prepare_samples` uses :func:`select_samples` instead, which decodes
    only the files the split chooses.

    Args:
        samples: Samples frame.
        name: Dataset name, for messages.
        problems: Problems already found while listing the dataset.
        skip_invalid: Leave out the offending files (one warning each) instead of raising. Fatal
            problems (missing or empty folders, unreadable labels file) always raise.
        dicom_window: DICOM window used to read the images (see :func:`read_image`).
        hint: Help appended to the error for fatal problems (expected layout, download address).
        num_threads: Threads used to decode files; ``None`` uses up to 8.

    Returns:
        The samples without the offending rows (the same rows when nothing is wrong).

    Raises:
        InvalidDatasetError: If there are problems and ``skip_invalid`` is ``False``, or a problem
            is fatal.
    """
    return select_samples(
        samples,
        lambda pool: pool,
        name,
        problems,
        skip_invalid=skip_invalid,
        dicom_window=dicom_window,
        hint=hint,
        num_threads=num_threads,
    )


def select_samples(
    samples: DataFrame,
    choose: Callable[[DataFrame], DataFrame],
    name: str,
    problems: Sequence[DatasetProblem] = (),
    skip_invalid: bool = False,
    dicom_window: DicomWindow | None = None,
    hint: str = "",
    num_threads: int | None = None,
) -> DataFrame:
    """Choose the samples first (from the listing), then open and decode only the chosen files.

    A 37,000-image pool of which the split uses 1,300 images costs 1,300 decodes, not 37,000. The
    report is the one of :func:`validate_samples`: one :class:`InvalidDatasetError` listing the
    listing problems and every invalid chosen file. With ``skip_invalid`` the invalid files are
    left out (one warning each) and the split is chosen again from the remaining pool, until every
    chosen file is valid: the result is the split of the valid files, as if the whole pool had
    been validated first.

    Args:
        samples: Samples frame (every listed image).
        choose: The split, e.g. :func:`assign_split` with its counts bound: samples -> chosen samples.
        name: Dataset name, for messages.
        problems: Problems already found while listing the dataset.
        skip_invalid: Leave out the offending files (one warning each) instead of raising. Fatal
            problems always raise.
        dicom_window: DICOM window used to read the images (see :func:`read_image`).
        hint: Help appended to the error for fatal problems (expected layout, download address).
        num_threads: Threads used to decode files; ``None`` uses up to 8.

    Returns:
        The chosen samples, every one of them valid.

    Raises:
        InvalidDatasetError: If there are problems and ``skip_invalid`` is ``False``, or a problem
            is fatal.
        SplitError: If the valid files cannot satisfy the split (see :func:`assign_split`).
    """
    listed = list(problems)
    fatal = any(problem.fatal for problem in listed)
    pool = samples
    if listed and skip_invalid and not fatal:
        pool = _without(pool, listed, name)
    checked: dict[str, list[DatasetProblem]] = {}
    while True:
        try:
            chosen = choose(pool)
        except SplitError:
            if listed and (fatal or not skip_invalid):
                raise InvalidDatasetError(name, listed, hint=hint) from None
            raise
        rows = _rows(chosen)
        new_rows = [row for row in rows if row[0] not in checked]
        decoded = _decode_problems(new_rows, dicom_window, num_threads)
        checked.update((image, row_problems) for (image, _), row_problems in zip(new_rows, decoded, strict=True))
        invalid = [problem for image, _ in rows for problem in checked[image]]
        if (listed and not skip_invalid) or fatal or (invalid and not skip_invalid):
            raise InvalidDatasetError(name, listed + invalid, hint=hint)
        if not invalid:
            return chosen
        pool = _without(pool, invalid, name)
