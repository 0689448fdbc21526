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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from anomalib import TaskType
from anomalib.data.utils import LabelName
from pandas import DataFrame

from anomalib_skipts.data.masks import DEFAULT_MASK_SUFFIX, mask_stem, match_masks
from anomalib_skipts.data.problems import DatasetProblem
from anomalib_skipts.data.readers import SUPPORTED_EXTENSIONS, is_dicom_file

__all__ = [
    "IGNORED_FILE_NAMES",
    "NORMAL",
    "ABNORMAL",
    "SAMPLE_COLUMNS",
    "FolderListing",
    "list_folder",
    "make_medical_folder_samples",
    "make_samples",
    "normalise_extensions",
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
    masks_of = match_masks(records, sorted(set(all_masks)), mask_suffix, resolved_mask_dirs, problems)

    keys = _unique_keys({image: folder for image, (_, _, folder) in records.items()}, root_path)
    samples = make_samples(
        (image, label, split, masks_of.get(image, []), keys[image])
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
