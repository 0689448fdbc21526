"""Finding the images of a dataset: folder listings and the samples frame.

- files are found recursively, extensions matched case-insensitively, names with spaces accepted;
  DICOM files without an extension are recognised by content; hidden files and operating-system
  debris (``Thumbs.db``) are ignored with a warning; every other file that is not an image is a
  :class:`~anomalib_skipts.data.problems.DatasetProblem`;
- mask files are never taken as images (:mod:`~anomalib_skipts.data.masks`);
- each image gets a location-independent ``key`` (its path inside its class folder), which orders
  it for the seeded split (:mod:`~anomalib_skipts.data.split`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from anomalib import TaskType
from anomalib.data.utils import LabelName
from pandas import DataFrame

from anomalib_skipts.data.masks import DEFAULT_MASK_SUFFIX, mask_stem
from anomalib_skipts.data.problems import DatasetProblem
from anomalib_skipts.data.readers import SUPPORTED_EXTENSIONS, is_dicom_file

__all__ = [
    "IGNORED_FILE_NAMES",
    "NORMAL",
    "ABNORMAL",
    "SAMPLE_COLUMNS",
    "FolderListing",
    "list_folder",
    "make_samples",
    "child_folder",
    "normalise_extensions",
    "normalise_name",
]

logger = logging.getLogger(__name__)

#: Operating-system debris that is never an image; such files are ignored (and logged).
IGNORED_FILE_NAMES = frozenset({"thumbs.db", "desktop.ini", ".ds_store"})
#: Columns of a samples frame, in order.
SAMPLE_COLUMNS = ["image_path", "label", "label_index", "mask_path", "mask_paths", "split", "key"]
#: Values of the ``label`` column.
NORMAL = "normal"
ABNORMAL = "abnormal"


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


def normalise_extensions(extensions: Iterable[str] | None) -> tuple[str, ...]:
    """Lower-case extensions with their dot (``"PNG"`` -> ``".png"``); ``None``: every supported one.

    Raises:
        ValueError: If no extension is given.
    """
    if extensions is None:
        return SUPPORTED_EXTENSIONS
    if isinstance(extensions, str):
        extensions = (extensions,)
    normalised = tuple(ext.lower() if ext.startswith(".") else f".{ext.lower()}" for ext in extensions)
    if not normalised:
        msg = "extensions must name at least one file extension, e.g. ['.png']."
        raise ValueError(msg)
    return normalised


def normalise_name(name: str) -> str:
    """Return a name with case, spaces and punctuation dropped (``"CP-CHILD A"`` -> ``"cpchilda"``)."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def child_folder(folder: str | Path, *names: str) -> Path | None:
    """Return the sub-folder of ``folder`` whose name is one of ``names`` (case and punctuation ignored).

    Args:
        folder: Folder to look in (may not exist).
        *names: Accepted names, e.g. ``"valid"``, ``"val"``.

    Returns:
        The first matching sub-folder in sorted order, or ``None``.
    """
    folder = Path(folder)
    wanted = {normalise_name(name) for name in names}
    if not folder.is_dir():
        return None
    matches = (path for path in sorted(folder.iterdir()) if path.is_dir() and normalise_name(path.name) in wanted)
    return next(matches, None)


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
    extensions = normalise_extensions(extensions)
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
                "label": NORMAL if label_index == LabelName.NORMAL else ABNORMAL,
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
