"""The medical-folder family: "normal images here, abnormal images there, optional masks there".

Medical downloads are folders of images, rarely MVTec trees with a predefined train/test split.
:func:`make_medical_folder_samples` (the raw-layout loader) finds the files of such folders
(recursively, case-insensitive extensions, DICOM by content, masks in ``mask_dir`` or beside the
images as ``<image stem><mask_suffix>[_<n>].<ext>``, several masks OR-ed) and :class:`MedicalFolder`
(the datamodule) splits them with the seeded split of the
:class:`~anomalib_skipts.data.base.MedicalDataModule` base, validates the chosen files at set-up and
reads them with the medical readers (16-bit, EXIF, DICOM).

The helpers of the other data modules are re-exported here, so that
``from anomalib_skipts.data.medical_folder import assign_split`` keeps working.

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

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from anomalib.data.utils import LabelName
from pandas import DataFrame

from anomalib_skipts.data.base import MedicalDataModule, MedicalFolderDataset
from anomalib_skipts.data.listing import FolderListing, list_folder, make_samples, normalise_extensions
from anomalib_skipts.data.masks import DEFAULT_MASK_SUFFIX, mask_stem, match_masks
from anomalib_skipts.data.problems import DatasetProblem, InvalidDatasetError, SplitError
from anomalib_skipts.data.split import add_patients, assign_split
from anomalib_skipts.data.validation import select_samples, validate_samples

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


# --------------------------------------------------------------------------------------------------
# Raw layout
# --------------------------------------------------------------------------------------------------
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
        (image, label, split, masks_of.get(image, []), keys[image]) for image, (label, split, _) in records.items()
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


def _sample_key(path: Path, base: Path) -> str:
    """Location-independent identifier of a file, used to order it for the split."""
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return path.name


# --------------------------------------------------------------------------------------------------
# Datamodule
# --------------------------------------------------------------------------------------------------
class MedicalFolder(MedicalDataModule):
    """Datamodule for "normal images here, abnormal images there, optional masks there".

    anomalib's :class:`~anomalib.data.Folder` arguments and defaults carry over (``name``,
    ``normal_dir``, ``root``, ``abnormal_dir``, ``normal_test_dir``, ``mask_dir``, ``extensions``,
    ``normal_split_ratio``, batch sizes, workers, augmentations, test/val split modes and ratios,
    ``seed``). What it adds: a reproducible split by count (``num_train``, ``num_test_normal``,
    ``num_test_abnormal``) or ratio with ``split_seed``; validation of every file at set-up with
    one error listing all problems (or ``skip_invalid``); masks beside the images; the medical
    readers (16-bit, EXIF orientation, DICOM with ``dicom_window``); a split by patient with
    ``patient_pattern``.

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
        **kwargs: The split, seeds, validation and anomalib arguments of
            :class:`~anomalib_skipts.data.base.MedicalDataModule` (``num_train``,
            ``num_test_normal``, ``num_test_abnormal``, ``normal_split_ratio``, ``split_seed``,
            ``skip_invalid``, ``dicom_window``, batch sizes, workers, augmentations, split modes,
            ``seed``, ``patient_pattern``, e.g. ``"^[A-Z]+-(?P<patient>[0-9]+)-"`` for
            ``NORMAL-1001666-1.jpeg``).

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
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.root = root
        self.normal_dir = normal_dir
        self.abnormal_dir = abnormal_dir
        self.normal_test_dir = normal_test_dir
        self.mask_dir = mask_dir
        self.extensions = extensions
        self.mask_suffix = mask_suffix
        normalise_extensions(extensions)  # fail early on an empty list

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
