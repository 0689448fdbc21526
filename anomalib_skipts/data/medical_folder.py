"""Medical-folder dataset and datamodule: normal, abnormal and optional mask folders, split by seed.

Medical downloads are folders of images, rarely MVTec trees with a predefined train/test split.
:class:`MedicalFolder` turns "normal images here, abnormal images there, optional masks there" into
an anomalib datamodule:

each job is a module of its own, and this one puts them together:

- :mod:`~anomalib_skipts.data.listing` finds the files (recursively, case-insensitive extensions,
  DICOM by content) and :mod:`~anomalib_skipts.data.masks` matches the masks (``mask_dir``, or
  ``<image stem><mask_suffix>[_<n>].<ext>`` beside the images; several masks are OR-ed);
- :mod:`~anomalib_skipts.data.split` chooses the seeded split from the listing (by count or ratio,
  bit-for-bit reproducible, by patient where the file names tell the patient);
- :mod:`~anomalib_skipts.data.validation` then decodes only the chosen files at
  :meth:`~MedicalDataModule.setup`, before training starts, and reports every problem in one
  :class:`~anomalib_skipts.data.problems.InvalidDatasetError` (or, with ``skip_invalid=True``,
  leaves them out with one warning each);
- :class:`MedicalFolderDataset` and the datamodules here are anomalib's: samples carry anomalib's
  ``split`` column, so ``TestSplitMode`` / ``ValSplitMode`` and the rest of the
  :class:`~anomalib.data.AnomalibDataModule` machinery work unchanged; images are read with
  :func:`~anomalib_skipts.data.readers.read_image` (16-bit, EXIF, DICOM).

The functions of those modules are re-exported here, so ``from anomalib_skipts.data.medical_folder
import assign_split`` keeps working.

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
import logging
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from anomalib import TaskType
from anomalib.data import AnomalibDataModule, AnomalibDataset
from anomalib.data.dataclasses import ImageItem
from anomalib.data.utils import LabelName, Split, TestSplitMode, ValSplitMode
from pandas import DataFrame
from torchvision.transforms.v2 import Transform
from torchvision.tv_tensors import Mask

from anomalib_skipts.data.listing import (
    ABNORMAL,
    NORMAL,
    FolderListing,
    list_folder,
    make_medical_folder_samples,
    make_samples,
    normalise_extensions,
)
from anomalib_skipts.data.masks import DEFAULT_MASK_SUFFIX, mask_stem
from anomalib_skipts.data.problems import DatasetProblem, InvalidDatasetError, SplitError
from anomalib_skipts.data.readers import DicomWindow, read_image, read_mask
from anomalib_skipts.data.split import add_patients, assign_split, check_split_arguments
from anomalib_skipts.data.validation import select_samples, validate_samples
from anomalib_skipts.input_settings import INPUT_SETTINGS_KEY, describe_inputs

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
        check_split_arguments(num_train, num_test_normal, num_test_abnormal, normal_split_ratio)
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

    def input_settings(self) -> dict[str, Any]:
        """How this datamodule reads images (reader and DICOM window), as stored in checkpoints."""
        return describe_inputs(self.dicom_window)

    def state_dict(self) -> dict[str, Any]:
        """Return the input settings; Lightning stores them in every checkpoint, for prediction and export."""
        return {**super().state_dict(), INPUT_SETTINGS_KEY: self.input_settings()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Warn when a checkpoint's model was trained on images read with another DICOM window."""
        from anomalib_skipts.data.predict import same_window  # the predict module builds on this one

        super().load_state_dict(state_dict)
        trained = (state_dict.get(INPUT_SETTINGS_KEY) or {}).get("dicom_window", self.dicom_window)
        if not same_window(trained, self.dicom_window):
            logger.warning(
                "%s reads DICOM images with the window %r, but the checkpoint's model was trained with %r: its "
                "scores and threshold may not apply. Pass dicom_window=%r to read as in training.",
                self.name,
                self.dicom_window,
                trained,
                trained,
            )

    def setup(self, stage: str | None = None) -> None:
        """Set up the data; in a trainer, also read and draw test and predict data as in training.

        Adds :class:`~anomalib_skipts.data.predict.MedicalInputs` to the trainer when it is missing (it
        is registered with Lightning when the package is installed).
        """
        from anomalib_skipts.data.predict import MedicalInputs  # the predict module builds on this one

        trainer = getattr(self, "trainer", None)
        if trainer is not None and not any(isinstance(callback, MedicalInputs) for callback in trainer.callbacks):
            trainer.callbacks.insert(0, MedicalInputs())  # before the model's pre-processor
        super().setup(stage)

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
            counts.get(("train", NORMAL), 0),
            counts.get(("test", NORMAL), 0),
            counts.get(("test", ABNORMAL), 0),
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
