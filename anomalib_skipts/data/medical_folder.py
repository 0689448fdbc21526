"""Medical-folder dataset and datamodule: normal, abnormal and optional mask folders, split by seed.

Medical downloads are folders of images, rarely MVTec trees with a predefined train/test split.
:class:`MedicalFolder` turns "normal images here, abnormal images there, optional masks there" into
an anomalib datamodule:

- files are found recursively, extensions matched case-insensitively, names with spaces accepted;
  DICOM files without an extension are recognised by content;
- masks live in ``mask_dir`` or beside the images as ``<image stem><mask_suffix>[_<n>].<ext>``
  (BUSI's ``benign (4)_mask.png`` and ``benign (4)_mask_1.png``); several masks of one image are
  OR-ed; mask files are never taken as images;
- the split is chosen from the listing first; then every file it uses (and only those) is opened
  and decoded at :meth:`~MedicalDataModule.setup`, before training starts; all problems are
  collected and reported in one :class:`InvalidDatasetError` (or, with ``skip_invalid=True``, left
  out with one warning each and replaced by the next files of the seeded order). Nothing is
  dropped silently;
- the normal images are split into train and test by count (``num_train``, ``num_test_normal``)
  or by ratio (``normal_split_ratio``), reproducibly: the order is a SHA-256 of ``split_seed`` and
  each file's path relative to its dataset folder, so the same files give the same split bit for
  bit on any machine, any library version and any dataset location;
- samples carry anomalib's ``split`` column, so anomalib's ``TestSplitMode`` / ``ValSplitMode``
  and the rest of the :class:`~anomalib.data.AnomalibDataModule` machinery work unchanged; images
  are read with :func:`~anomalib_skipts.data.readers.read_image` (16-bit, EXIF, DICOM).

Example:
    >>> from anomalib_skipts.data import MedicalFolder
    >>> datamodule = MedicalFolder(
    ...     name="brain_mri",
    ...     root="../shared/data/brainmri",
    ...     normal_dir="no",
    ...     abnormal_dir="yes",
    ...     num_train=58,
    ...     num_test_normal=40,
    ...     split_seed=0,
    ... )
    >>> datamodule.setup()
    >>> len(datamodule.train_data), len(datamodule.test_data)
    (58, 195)
"""

from __future__ import annotations

import copy
import functools
import hashlib
import logging
import os
import re
from abc import abstractmethod
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from anomalib import TaskType
from anomalib.data import AnomalibDataModule, AnomalibDataset
from anomalib.data.dataclasses import ImageItem
from anomalib.data.utils import LabelName, Split, TestSplitMode, ValSplitMode
from pandas import DataFrame
from torchvision.transforms.v2 import Transform
from torchvision.tv_tensors import Mask

from anomalib_skipts.data.readers import (
    SUPPORTED_EXTENSIONS,
    DicomWindow,
    ImageReadError,
    is_dicom_file,
    read_image,
    read_mask,
    verify_image,
)

__all__ = [
    "DEFAULT_MASK_SUFFIX",
    "DatasetProblem",
    "FolderListing",
    "InvalidDatasetError",
    "MedicalDataModule",
    "MedicalFolder",
    "MedicalFolderDataset",
    "SplitError",
    "add_patients",
    "assign_split",
    "list_folder",
    "make_medical_folder_samples",
    "make_samples",
    "mask_stem",
    "select_samples",
    "validate_samples",
]

logger = logging.getLogger(__name__)

#: Suffix that marks a mask file beside its image (``x.png`` -> ``x_mask.png``, ``x_mask_1.png``).
DEFAULT_MASK_SUFFIX = "_mask"
#: Operating-system debris that is never an image; such files are ignored (and logged).
IGNORED_FILE_NAMES = frozenset({"thumbs.db", "desktop.ini", ".ds_store"})
#: Columns of a samples frame, in order.
SAMPLE_COLUMNS = ["image_path", "label", "label_index", "mask_path", "mask_paths", "split", "key"]

_NORMAL = "normal"
_ABNORMAL = "abnormal"


# --------------------------------------------------------------------------------------------------
# Problems and errors
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetProblem:
    """One thing wrong with a dataset on disk.

    Args:
        path: The offending file or folder (or a labels file, with the row in ``reason``).
        reason: What is wrong, in words a user can act on.
        fatal: ``True`` when leaving the file out cannot help (a missing or empty folder, an
            unreadable labels file): ``skip_invalid`` does not apply.
    """

    path: str
    reason: str
    fatal: bool = False

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class InvalidDatasetError(ValueError):
    """The dataset on disk has problems; the message lists every one and says how to fix them.

    Args:
        name: Name of the dataset.
        problems: Every problem found.
        hint: Extra help for fatal problems (expected layout, download address).
    """

    def __init__(self, name: str, problems: Sequence[DatasetProblem], hint: str = "") -> None:
        self.problems = list(problems)
        count = len(self.problems)
        lines = [f"{name}: {count} problem{'s' if count != 1 else ''} found in the dataset (nothing was trained):"]
        lines += [f"  - {problem}" for problem in self.problems]
        lines.append("How to fix:")
        if any(problem.fatal for problem in self.problems):
            lines.append(
                "  - check that `root` and the folder arguments point at the unpacked download "
                "(relative paths are resolved from the current working directory)."
            )
            if hint:
                lines += [f"    {line}" for line in hint.strip().splitlines()]
        if any(not problem.fatal for problem in self.problems):
            lines.append(
                "  - remove or replace the files listed above (or correct the labels file), or pass "
                "skip_invalid=True (CLI: --data.skip_invalid true) to leave them out; each file left "
                "out is then logged as a warning."
            )
        super().__init__("\n".join(lines))


class SplitError(ValueError):
    """The requested train/test counts cannot be taken from the images that are available."""


# --------------------------------------------------------------------------------------------------
# Listing folders and building samples
# --------------------------------------------------------------------------------------------------
@dataclass
class FolderListing:
    """The files found in one folder.

    Attributes:
        images: Image files (never masks).
        masks: Mask files (names ending in the mask suffix, or every image file of a mask folder).
        problems: Missing or empty folder, files that are not images.
        ignored: Hidden files and operating-system debris (``Thumbs.db``...), left out.
    """

    images: list[Path] = field(default_factory=list)
    masks: list[Path] = field(default_factory=list)
    problems: list[DatasetProblem] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)


def _normalise_extensions(extensions: Iterable[str] | None) -> tuple[str, ...]:
    if extensions is None:
        return SUPPORTED_EXTENSIONS
    if isinstance(extensions, str):
        extensions = (extensions,)
    normalised = tuple(ext.lower() if ext.startswith(".") else f".{ext.lower()}" for ext in extensions)
    if not normalised:
        msg = "extensions must name at least one file extension, e.g. ['.png']."
        raise ValueError(msg)
    return normalised


def mask_stem(stem: str, mask_suffix: str | None) -> str | None:
    """Return the image stem a mask file name refers to, or ``None`` if it is not a mask name.

    Args:
        stem: File name without extension, e.g. ``"benign (4)_mask_1"``.
        mask_suffix: Mask suffix, e.g. ``"_mask"``; ``None`` disables mask detection.

    Returns:
        The image stem (``"benign (4)"``), or ``None``.
    """
    if not mask_suffix:
        return None
    match = re.fullmatch(rf"(?P<stem>.+?){re.escape(mask_suffix)}(?:_\d+)?", stem, flags=re.IGNORECASE)
    return match.group("stem") if match else None


def list_folder(
    folder: str | Path,
    extensions: Iterable[str] | None = None,
    mask_suffix: str | None = DEFAULT_MASK_SUFFIX,
    masks_only: bool = False,
    recursive: bool = True,
    role: str = "image",
) -> FolderListing:
    """List the image and mask files of a folder, and everything wrong with it.

    Args:
        folder: Folder to list.
        extensions: Accepted extensions (case-insensitive); ``None`` accepts every format the
            readers support. Files with another extension are reported as non-image files, except
            DICOM files recognised by content.
        mask_suffix: File stems ending in this suffix (optionally followed by ``_<n>``) are masks.
        masks_only: Every image file of the folder is a mask (a dedicated mask folder).
        recursive: Also list sub-folders.
        role: What the folder holds (``"normal"``, ``"abnormal"``, ``"mask"``...), for messages.

    Returns:
        The listing, with files sorted by path.
    """
    folder = Path(folder)
    listing = FolderListing()
    extensions = _normalise_extensions(extensions)
    if not folder.exists():
        listing.problems.append(DatasetProblem(str(folder), f"{role} folder does not exist", fatal=True))
        return listing
    if not folder.is_dir():
        listing.problems.append(DatasetProblem(str(folder), f"{role} folder is a file, not a folder", fatal=True))
        return listing

    candidates = folder.rglob("*") if recursive else folder.iterdir()
    for path in sorted(candidates):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or path.name.lower() in IGNORED_FILE_NAMES:
            if path.is_file():
                listing.ignored.append(path)
            continue
        if not path.is_file():
            continue
        suffix = path.suffix.lower()
        if suffix in extensions or (
            ".dcm" in extensions and suffix not in SUPPORTED_EXTENSIONS and is_dicom_file(path)
        ):
            if masks_only or mask_stem(path.stem, mask_suffix) is not None:
                listing.masks.append(path)
            else:
                listing.images.append(path)
        else:
            reason = f"not an image file (extension {path.suffix or 'none'!r} is not one of {', '.join(extensions)})"
            listing.problems.append(DatasetProblem(str(path), reason))

    if listing.ignored:
        logger.warning(
            "Ignoring %d hidden or system file(s) in %s: %s",
            len(listing.ignored),
            folder,
            ", ".join(str(path.relative_to(folder)) for path in listing.ignored),
        )
    found = listing.masks if masks_only else listing.images
    if not found:
        what = "mask" if masks_only else role
        reason = f"folder contains no {what} files (looked for {', '.join(extensions)}"
        reason += ", recursively)" if recursive else ")"
        listing.problems.append(DatasetProblem(str(folder), reason, fatal=True))
    return listing


def _sample_key(path: Path, base: Path) -> str:
    """Location-independent identifier of a file, used to order it for the split."""
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return path.name


def make_samples(
    records: Iterable[tuple[Path, int, str, Sequence[Path], str]],
    task: TaskType | str | None = None,
) -> DataFrame:
    """Build a samples frame from ``(image, label_index, split, masks, key)`` records.

    Args:
        records: One record per image: its path, ``0`` (normal) or ``1`` (abnormal), a predefined
            split (``"train"``, ``"test"``, or ``""`` for "to be assigned by :func:`assign_split`"),
            its mask files (OR-ed together) and a key: a location-independent identifier such as
            the path relative to the dataset root, used to order files for the split.
        task: ``"segmentation"`` or ``"classification"``; ``None`` infers it from the masks.

    Returns:
        Frame with :data:`SAMPLE_COLUMNS`, sorted by ``image_path``, with ``attrs["task"]`` set.
    """
    rows = []
    for image, label_index, split, masks, key in records:
        mask_paths = tuple(str(mask) for mask in masks)
        rows.append(
            {
                "image_path": str(image),
                "label": _NORMAL if label_index == LabelName.NORMAL else _ABNORMAL,
                "label_index": int(label_index),
                "mask_path": mask_paths[0] if mask_paths else "",
                "mask_paths": mask_paths,
                "split": split,
                "key": key,
            },
        )
    samples = DataFrame(rows, columns=SAMPLE_COLUMNS)
    samples = samples.astype({"image_path": "str", "label": "str", "mask_path": "str", "split": "str", "key": "str"})
    samples["label_index"] = samples["label_index"].astype("int64")
    samples = samples.sort_values("image_path", ignore_index=True)
    if task is None:
        task = TaskType.SEGMENTATION if (samples["mask_path"] != "").any() else TaskType.CLASSIFICATION
    samples.attrs["task"] = TaskType(task).value
    return samples


def _as_paths(value: str | Path | Sequence[str | Path] | None, root: Path | None) -> list[Path]:
    if value is None:
        return []
    values = [value] if isinstance(value, str | Path) else list(value)
    paths = []
    for item in values:
        path = Path(item).expanduser()
        paths.append((path if path.is_absolute() or root is None else root / path).absolute())
    return paths


def make_medical_folder_samples(
    normal_dir: str | Path | Sequence[str | Path],
    root: str | Path | None = None,
    abnormal_dir: str | Path | Sequence[str | Path] | None = None,
    normal_test_dir: str | Path | Sequence[str | Path] | None = None,
    mask_dir: str | Path | Sequence[str | Path] | None = None,
    extensions: Iterable[str] | None = None,
    mask_suffix: str | None = DEFAULT_MASK_SUFFIX,
) -> tuple[DataFrame, list[DatasetProblem]]:
    """Find the images and masks of a medical folder dataset.

    Args:
        normal_dir: Folder(s) of normal images (relative to ``root`` unless absolute).
        root: Dataset root; ``None`` resolves folders from the working directory.
        abnormal_dir: Folder(s) of abnormal images.
        normal_test_dir: Folder(s) of normal images reserved for testing. When given, the images of
            ``normal_dir`` are all training candidates.
        mask_dir: Folder(s) of masks of the abnormal images, named like their image (``x.png``) or
            with the mask suffix (``x_mask.png``, ``x_mask_1.png``). May be the image folder itself.
        extensions: Accepted image extensions (case-insensitive); ``None`` for all supported ones.
        mask_suffix: Suffix that marks masks beside images; ``None`` disables it.

    Returns:
        The samples frame (see :func:`make_samples`; normal images from ``normal_dir`` have an
        unassigned split) and every problem found.
    """
    root_path = Path(root).expanduser() if root is not None else None
    problems: list[DatasetProblem] = []
    records: dict[Path, tuple[int, str, Path]] = {}  # image -> (label_index, split, its folder)
    all_masks: list[Path] = []
    image_dirs: set[Path] = set()

    roles = [
        (normal_dir, LabelName.NORMAL, "train" if normal_test_dir is not None else "", "normal"),
        (normal_test_dir, LabelName.NORMAL, "test", "normal test"),
        (abnormal_dir, LabelName.ABNORMAL, "test", "abnormal"),
    ]
    for value, label_index, split, role in roles:
        for folder in _as_paths(value, root_path):
            image_dirs.add(folder.resolve())
            listing = list_folder(folder, extensions, mask_suffix, role=role)
            problems += listing.problems
            all_masks += listing.masks
            for image in listing.images:
                if image in records and records[image][0] != label_index:
                    problems.append(DatasetProblem(str(image), "listed as both normal and abnormal"))
                records.setdefault(image, (int(label_index), split, folder))

    mask_dirs = _as_paths(mask_dir, root_path)
    for folder in mask_dirs:
        if folder.resolve() in image_dirs:
            if not mask_suffix:
                reason = "mask folder is also an image folder, so masks need a mask_suffix to be told apart"
                problems.append(DatasetProblem(str(folder), reason, fatal=True))
            continue  # masks beside the images were listed with them
        listing = list_folder(folder, extensions, mask_suffix, masks_only=True, role="mask")
        problems += listing.problems
        all_masks += listing.masks
    if mask_dirs and not all_masks and not any(problem.fatal for problem in problems):
        problems.append(
            DatasetProblem(", ".join(map(str, mask_dirs)), "mask folder given but no mask files found", fatal=True)
        )

    resolved_mask_dirs = {folder.resolve() for folder in mask_dirs if folder.resolve() not in image_dirs}
    masks_of = _match_masks(records, sorted(set(all_masks)), mask_suffix, resolved_mask_dirs, problems)
    abnormal = [image for image, (label, _, _) in records.items() if label == LabelName.ABNORMAL]
    if any(masks_of.get(image) for image in abnormal):
        for image in abnormal:
            if not masks_of.get(image):
                problems.append(
                    DatasetProblem(
                        str(image),
                        f"abnormal image has no mask while others have one (expected e.g. "
                        f"{image.stem}{mask_suffix or ''}{image.suffix} beside it or in mask_dir)",
                    ),
                )
    normal_masks = sum(len(masks_of.get(image, ())) for image, (label, _, _) in records.items() if label == 0)
    if normal_masks:
        logger.info("Ignoring %d mask file(s) of normal images (normal images have empty masks).", normal_masks)

    keys = _unique_keys({image: folder for image, (_, _, folder) in records.items()}, root_path)
    samples = make_samples(
        (image, label, split, masks_of.get(image, []) if label == LabelName.ABNORMAL else [], keys[image])
        for image, (label, split, _) in records.items()
    )
    return samples, problems


def _unique_keys(folders: dict[Path, Path], root: Path | None) -> dict[Path, str]:
    """Key each image by ``<its folder's name>/<path inside it>``: independent of where the data lives.

    Images whose keys collide (equally named folders, e.g. ``train/NORMAL`` and ``test/NORMAL``,
    holding equally named files) are keyed by their path relative to ``root`` (or the filesystem
    root) instead.
    """
    keys = {image: (Path(folder.name) / image.relative_to(folder)).as_posix() for image, folder in folders.items()}
    counts: dict[str, int] = {}
    for key in keys.values():
        counts[key] = counts.get(key, 0) + 1
    for image, key in keys.items():
        if counts[key] > 1:
            keys[image] = _sample_key(image, root if root is not None else Path(image.anchor))
    return keys


def _match_masks(
    records: dict[Path, tuple[int, str, Path]],
    masks: list[Path],
    mask_suffix: str | None,
    mask_dirs: set[Path],
    problems: list[DatasetProblem],
) -> dict[Path, list[Path]]:
    """Match each mask to its image: same folder and stem first, else a unique stem anywhere."""
    by_folder_stem: dict[tuple[Path, str], Path] = {}
    by_stem: dict[str, list[Path]] = {}
    for image in records:
        by_folder_stem[(image.parent, image.stem.lower())] = image
        by_stem.setdefault(image.stem.lower(), []).append(image)
    matched: dict[Path, list[Path]] = {}
    for mask in masks:
        stem = mask_stem(mask.stem, mask_suffix)
        in_mask_dir = any(mask.resolve().is_relative_to(folder) for folder in mask_dirs)
        if stem is None and in_mask_dir:
            stem = mask.stem  # mask folder with masks named exactly like their images
        if stem is None:
            problems.append(DatasetProblem(str(mask), "mask file name does not end in the mask suffix"))
            continue
        image = by_folder_stem.get((mask.parent, stem.lower()))
        if image is None:
            candidates = by_stem.get(stem.lower(), [])
            abnormal = [path for path in candidates if records[path][0] == LabelName.ABNORMAL]
            candidates = abnormal if len(abnormal) == 1 else candidates
            if len(candidates) > 1:
                names = ", ".join(str(path) for path in candidates)
                problems.append(DatasetProblem(str(mask), f"mask matches several images ({names}); rename them"))
                continue
            image = candidates[0] if candidates else None
        if image is None:
            problems.append(DatasetProblem(str(mask), f"mask has no image (no image named {stem}.* was found)"))
            continue
        matched.setdefault(image, []).append(mask)
    return matched


# --------------------------------------------------------------------------------------------------
# Validation and split
# --------------------------------------------------------------------------------------------------
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
    found = list(problems)
    for row_problems in _decode_problems(_rows(samples), dicom_window, num_threads):
        found += row_problems
    if not found:
        return samples
    if not skip_invalid or any(problem.fatal for problem in found):
        raise InvalidDatasetError(name, found, hint=hint)
    return _without(samples, found, name)


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


def _split_order(keys: Iterable[str], split_seed: int) -> list[str]:
    """Deterministic pseudo-random order: SHA-256 of the seed and each key (ties broken by key)."""
    return sorted(keys, key=lambda key: (hashlib.sha256(f"{split_seed}:{key}".encode()).hexdigest(), key))


def _check_count(value: int | None, name: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        msg = f"{name} must be a non-negative integer or None, got {value!r}."
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
    for value, arg in (
        (num_train, "num_train"),
        (num_test_normal, "num_test_normal"),
        (num_test_abnormal, "num_test_abnormal"),
    ):
        _check_count(value, arg)
    if not 0.0 <= normal_split_ratio < 1.0:
        msg = f"normal_split_ratio must be in [0, 1), got {normal_split_ratio}."
        raise ValueError(msg)

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


# --------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------
class MedicalFolderDataset(AnomalibDataset):
    """anomalib dataset over a samples frame, reading images with the medical readers.

    Args:
        samples: Samples frame with at least ``image_path``, ``label_index``, ``mask_path`` and
            ``split`` (see :func:`make_samples`; an optional ``mask_paths`` column lists several
            masks per image, OR-ed together).
        name: Dataset name.
        split: Keep only this split (``"train"``/``"test"``); ``None`` keeps every sample.
        augmentations: Augmentations applied to image (and mask), as in anomalib.
        dicom_window: DICOM display window, see :func:`~anomalib_skipts.data.readers.read_image`.

    Example:
        >>> samples, problems = make_medical_folder_samples("no", root="brainmri", abnormal_dir="yes")
        >>> samples = assign_split(validate_samples(samples, "brainmri", problems), num_train=58)
        >>> dataset = MedicalFolderDataset(samples, name="brainmri", split="train")
        >>> dataset[0].image.shape   # (3, H, W), float in [0, 1]
    """

    def __init__(
        self,
        samples: DataFrame,
        name: str = "MedicalFolder",
        split: str | Split | None = None,
        augmentations: Transform | None = None,
        dicom_window: DicomWindow | None = None,
    ) -> None:
        super().__init__(augmentations=augmentations)
        self._name = name
        self.split = split
        self.dicom_window = dicom_window
        attrs = dict(samples.attrs)
        if "task" not in attrs:
            has_masks = "mask_path" in samples and (samples["mask_path"].fillna("") != "").any()
            attrs["task"] = (TaskType.SEGMENTATION if has_masks else TaskType.CLASSIFICATION).value
        if "mask_path" not in samples:
            samples = samples.assign(mask_path="")
        if split is not None:
            split_value = split.value if isinstance(split, Split) else str(split)
            samples = samples[samples["split"] == split_value].reset_index(drop=True)
        samples = samples.copy()
        samples.attrs = attrs
        self.samples = samples

    @property
    def name(self) -> str:
        """Name of the dataset."""
        return self._name

    def __getitem__(self, index: int) -> ImageItem:
        """Read one sample as anomalib's :class:`~anomalib.data.dataclasses.ImageItem`.

        Same as :meth:`AnomalibDataset.__getitem__` except that images and masks are read with
        :func:`~anomalib_skipts.data.readers.read_image` / :func:`read_mask` (16-bit, EXIF, DICOM,
        several masks per image).

        Args:
            index: Sample index.

        Returns:
            The item: float image in ``[0, 1]``, mask (segmentation), label and paths.
        """
        row = self.samples.iloc[index]
        image_path, mask_path, label_index = row.image_path, row.mask_path, row.label_index
        image = read_image(image_path, dicom_window=self.dicom_window)

        gt_mask = None
        if self.task == TaskType.SEGMENTATION:
            if label_index == LabelName.NORMAL:
                gt_mask = Mask(torch.zeros(image.shape[-2:], dtype=torch.uint8))
            elif label_index == LabelName.ABNORMAL:
                mask_paths = row.get("mask_paths") or (mask_path,)
                gt_mask = read_mask(list(mask_paths))

        if self.augmentations:
            if self.task == TaskType.CLASSIFICATION:
                image = self.augmentations(image)
            elif self.task == TaskType.SEGMENTATION:
                temp_mask = gt_mask if gt_mask is not None else Mask(torch.zeros(image.shape[-2:], dtype=torch.uint8))
                image, augmented_mask = self.augmentations(image, temp_mask)
                gt_mask = augmented_mask if gt_mask is not None else None

        gt_label = None if label_index == LabelName.UNKNOWN else torch.tensor(label_index)
        return ImageItem(
            image=image,
            gt_mask=gt_mask,
            gt_label=gt_label,
            image_path=image_path,
            mask_path=mask_path,
        )


# --------------------------------------------------------------------------------------------------
# Datamodules
# --------------------------------------------------------------------------------------------------
class MedicalDataModule(AnomalibDataModule):
    """Shared machinery of the medical datamodules: list, validate, split, then anomalib's subsets.

    Subclasses implement :meth:`_make_samples` (find the files of their layout); everything else
    (validation at set-up, the seeded split, anomalib's test/val split modes, dataloaders) is here.

    Args:
        name: Dataset name (logs, result folders).
        num_train: Number of normal training images; ``None``: see :func:`assign_split`.
        num_test_normal: Number of normal test images; ``None``: see :func:`assign_split`.
        num_test_abnormal: Number of abnormal test images; ``None`` takes all.
        normal_split_ratio: Fraction of normal images for testing when no count is given.
        split_seed: Seed of the train/test split (bit-for-bit reproducible, see module docstring).
        skip_invalid: Leave out invalid files with a warning each instead of failing at set-up.
        dicom_window: DICOM window ``(center, width)`` or a name from
            :data:`~anomalib_skipts.data.readers.DICOM_WINDOWS`; ``None`` uses each file's own.
        train_batch_size: Training batch size.
        eval_batch_size: Validation/test batch size.
        num_workers: Dataloader workers.
        train_augmentations: Augmentations of training images.
        val_augmentations: Augmentations of validation images.
        test_augmentations: Augmentations of test images.
        augmentations: Augmentations used where no stage-specific ones are given.
        test_split_mode: anomalib's test split mode.
        test_split_ratio: anomalib's test split ratio (only used when the test set has no normals).
        val_split_mode: anomalib's validation split mode.
        val_split_ratio: anomalib's validation split ratio.
        seed: Seed of anomalib's validation split; ``None`` uses ``split_seed`` so that the
            validation split is reproducible too.
        patient_pattern: Regular expression with a group named ``patient``, searched in each file
            name; when given, the split is by patient (see :func:`add_patients`, :func:`assign_split`).
    """

    def __init__(
        self,
        name: str,
        num_train: int | None = None,
        num_test_normal: int | None = None,
        num_test_abnormal: int | None = None,
        normal_split_ratio: float = 0.2,
        split_seed: int = 0,
        skip_invalid: bool = False,
        dicom_window: DicomWindow | None = None,
        train_batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 8,
        train_augmentations: Transform | None = None,
        val_augmentations: Transform | None = None,
        test_augmentations: Transform | None = None,
        augmentations: Transform | None = None,
        test_split_mode: TestSplitMode | str = TestSplitMode.FROM_DIR,
        test_split_ratio: float = 0.2,
        val_split_mode: ValSplitMode | str = ValSplitMode.FROM_TEST,
        val_split_ratio: float = 0.5,
        seed: int | None = None,
        patient_pattern: str | None = None,
    ) -> None:
        super().__init__(
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            train_augmentations=train_augmentations,
            val_augmentations=val_augmentations,
            test_augmentations=test_augmentations,
            augmentations=augmentations,
            test_split_mode=TestSplitMode(test_split_mode),
            test_split_ratio=test_split_ratio,
            val_split_mode=ValSplitMode(val_split_mode),
            val_split_ratio=val_split_ratio,
            seed=split_seed if seed is None else seed,
        )
        for value, arg in (
            (num_train, "num_train"),
            (num_test_normal, "num_test_normal"),
            (num_test_abnormal, "num_test_abnormal"),
        ):
            _check_count(value, arg)
        if not 0.0 <= normal_split_ratio < 1.0:
            msg = f"normal_split_ratio must be in [0, 1), got {normal_split_ratio}."
            raise ValueError(msg)
        self._name = name
        self.num_train = num_train
        self.num_test_normal = num_test_normal
        self.num_test_abnormal = num_test_abnormal
        self.normal_split_ratio = normal_split_ratio
        self.split_seed = split_seed
        self.skip_invalid = skip_invalid
        self.dicom_window = tuple(dicom_window) if isinstance(dicom_window, list) else dicom_window
        self.patient_pattern = patient_pattern
        if patient_pattern is not None:
            add_patients(DataFrame({"image_path": []}), patient_pattern)  # fail early on a bad pattern

    @property
    def name(self) -> str:
        """Name of the datamodule."""
        return self._name

    @abstractmethod
    def _make_samples(self) -> tuple[DataFrame, list[DatasetProblem]]:
        """Find every image (and mask) of the dataset, with the problems met on the way."""

    def _layout_hint(self) -> str:
        """Help shown with fatal problems (expected layout, where to download)."""
        return ""

    def prepare_samples(self) -> DataFrame:
        """List and split the dataset, then validate the chosen files: the samples :meth:`setup` uses.

        Only the files the split chooses are opened and decoded (see :func:`select_samples`).

        Returns:
            Samples frame with ``split`` set to ``"train"`` or ``"test"``.

        Raises:
            InvalidDatasetError: If files are invalid (see ``skip_invalid``) or folders missing.
            SplitError: If the requested counts cannot be satisfied.
        """
        samples, problems = self._make_samples()
        if self.patient_pattern is not None:
            samples = add_patients(samples, self.patient_pattern, self.name)
        return select_samples(
            samples,
            functools.partial(
                assign_split,
                name=self.name,
                num_train=self.num_train,
                num_test_normal=self.num_test_normal,
                num_test_abnormal=self.num_test_abnormal,
                normal_split_ratio=self.normal_split_ratio,
                split_seed=self.split_seed,
            ),
            self.name,
            problems,
            skip_invalid=self.skip_invalid,
            dicom_window=self.dicom_window,
            hint=self._layout_hint(),
        )

    def _setup(self, _stage: str | None = None) -> None:
        samples = self.prepare_samples()
        counts = samples.groupby(["split", "label"]).size().to_dict()
        logger.info(
            "%s: %d normal training images; test: %d normal, %d abnormal (split_seed=%d).",
            self.name,
            counts.get(("train", _NORMAL), 0),
            counts.get(("test", _NORMAL), 0),
            counts.get(("test", _ABNORMAL), 0),
            self.split_seed,
        )
        if "patient" in samples:
            patients = samples[samples["patient"] != ""].groupby("split")["patient"].nunique().to_dict()
            logger.info(
                "%s: split by patient: %d patients in training, %d in test, none in both.",
                self.name,
                patients.get("train", 0),
                patients.get("test", 0),
            )
        self.train_data = MedicalFolderDataset(
            samples,
            name=self.name,
            split=Split.TRAIN,
            dicom_window=self.dicom_window,
        )
        self.test_data = MedicalFolderDataset(
            copy.deepcopy(samples),
            name=self.name,
            split=Split.TEST,
            dicom_window=self.dicom_window,
        )


class MedicalFolder(MedicalDataModule):
    """Datamodule for "normal images here, abnormal images there, optional masks there".

    anomalib's :class:`~anomalib.data.Folder` arguments and defaults carry over (``name``,
    ``normal_dir``, ``root``, ``abnormal_dir``, ``normal_test_dir``, ``mask_dir``, ``extensions``,
    ``normal_split_ratio``, batch sizes, workers, augmentations, test/val split modes and ratios,
    ``seed``). What it adds: a reproducible split by count (``num_train``, ``num_test_normal``,
    ``num_test_abnormal``) or ratio with ``split_seed``; validation of every file at set-up with
    one error listing all problems (or ``skip_invalid``); masks beside the images; the medical
    readers (16-bit, EXIF orientation, DICOM with ``dicom_window``).

    Args:
        name: Dataset name (logs, result folders).
        normal_dir: Folder(s) of normal images, relative to ``root`` unless absolute.
        root: Dataset root; ``None`` resolves folders from the working directory.
        abnormal_dir: Folder(s) of abnormal images.
        normal_test_dir: Folder(s) of normal test images; then every ``normal_dir`` image is a
            training candidate (``num_train`` / ``num_test_normal`` subsample each pool).
        mask_dir: Folder(s) of masks of the abnormal images (may be the abnormal folder itself).
            Without it, masks beside the images are still found by ``mask_suffix``. Without any
            mask the task is classification (image metrics only).
        extensions: Accepted extensions, case-insensitive; ``None`` accepts every supported format.
        mask_suffix: Stem suffix of mask files (``x_mask.png``, ``x_mask_1.png``); ``None`` disables it.
        num_train: Number of normal training images.
        num_test_normal: Number of normal test images.
        num_test_abnormal: Number of abnormal test images (a seeded subset); ``None`` takes all.
        normal_split_ratio: Fraction of normal images for testing when no count is given.
        split_seed: Seed of the train/test split.
        skip_invalid: Leave out invalid files (one warning each) instead of failing at set-up.
        dicom_window: DICOM window ``(center, width)`` or name; ``None`` uses each file's own.
        train_batch_size: Training batch size.
        eval_batch_size: Validation/test batch size.
        num_workers: Dataloader workers.
        train_augmentations: Augmentations of training images.
        val_augmentations: Augmentations of validation images.
        test_augmentations: Augmentations of test images.
        augmentations: Augmentations used where no stage-specific ones are given.
        test_split_mode: anomalib's test split mode (default ``from_dir``, as Folder).
        test_split_ratio: anomalib's test split ratio.
        val_split_mode: anomalib's validation split mode (default ``from_test``, as Folder).
        val_split_ratio: anomalib's validation split ratio.
        seed: Seed of anomalib's validation split; ``None`` uses ``split_seed``.
        patient_pattern: Regular expression with a group named ``patient``, searched in each file
            name (e.g. ``"^[A-Z]+-(?P<patient>[0-9]+)-"`` for ``NORMAL-1001666-1.jpeg``): the split
            is then by patient, no patient on both sides. ``None`` splits image by image.

    Example:
        >>> datamodule = MedicalFolder(
        ...     name="busi",
        ...     root="datasets/Dataset_BUSI_with_GT",
        ...     normal_dir="normal",
        ...     abnormal_dir=["benign", "malignant"],   # masks found beside the images
        ...     num_train=99,
        ...     num_test_normal=34,
        ... )
    """

    def __init__(
        self,
        name: str,
        normal_dir: str | Path | Sequence[str | Path],
        root: str | Path | None = None,
        abnormal_dir: str | Path | Sequence[str | Path] | None = None,
        normal_test_dir: str | Path | Sequence[str | Path] | None = None,
        mask_dir: str | Path | Sequence[str | Path] | None = None,
        extensions: Sequence[str] | None = None,
        mask_suffix: str | None = DEFAULT_MASK_SUFFIX,
        num_train: int | None = None,
        num_test_normal: int | None = None,
        num_test_abnormal: int | None = None,
        normal_split_ratio: float = 0.2,
        split_seed: int = 0,
        skip_invalid: bool = False,
        dicom_window: DicomWindow | None = None,
        train_batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 8,
        train_augmentations: Transform | None = None,
        val_augmentations: Transform | None = None,
        test_augmentations: Transform | None = None,
        augmentations: Transform | None = None,
        test_split_mode: TestSplitMode | str = TestSplitMode.FROM_DIR,
        test_split_ratio: float = 0.2,
        val_split_mode: ValSplitMode | str = ValSplitMode.FROM_TEST,
        val_split_ratio: float = 0.5,
        seed: int | None = None,
        patient_pattern: str | None = None,
    ) -> None:
        super().__init__(
            name=name,
            num_train=num_train,
            num_test_normal=num_test_normal,
            num_test_abnormal=num_test_abnormal,
            normal_split_ratio=normal_split_ratio,
            split_seed=split_seed,
            skip_invalid=skip_invalid,
            dicom_window=dicom_window,
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            train_augmentations=train_augmentations,
            val_augmentations=val_augmentations,
            test_augmentations=test_augmentations,
            augmentations=augmentations,
            test_split_mode=test_split_mode,
            test_split_ratio=test_split_ratio,
            val_split_mode=val_split_mode,
            val_split_ratio=val_split_ratio,
            seed=seed,
            patient_pattern=patient_pattern,
        )
        self.root = root
        self.normal_dir = normal_dir
        self.abnormal_dir = abnormal_dir
        self.normal_test_dir = normal_test_dir
        self.mask_dir = mask_dir
        self.extensions = extensions
        self.mask_suffix = mask_suffix
        _normalise_extensions(extensions)  # fail early on an empty list

    def _make_samples(self) -> tuple[DataFrame, list[DatasetProblem]]:
        return make_medical_folder_samples(
            normal_dir=self.normal_dir,
            root=self.root,
            abnormal_dir=self.abnormal_dir,
            normal_test_dir=self.normal_test_dir,
            mask_dir=self.mask_dir,
            extensions=self.extensions,
            mask_suffix=self.mask_suffix,
        )

    def _layout_hint(self) -> str:
        root = Path(self.root).expanduser().resolve() if self.root is not None else Path.cwd()
        return (
            f"Expected: normal images in {self.normal_dir!r}, abnormal images in {self.abnormal_dir!r}"
            f"{f', masks in {self.mask_dir!r}' if self.mask_dir else ''}, relative to {root}."
        )
