"""The one base of the medical datamodules: constructor, seeds, split modes and validation at set-up.

Every datamodule of this package is a :class:`MedicalDataModule`. A dataset family only says how to
find its files (:meth:`MedicalDataModule._make_samples`, its raw-layout loader) and, optionally,
what to tell a user whose download does not look right (:meth:`MedicalDataModule._layout_hint`).
Everything else is here, once:

- **the constructor**: anomalib's arguments (batch sizes, workers, augmentations, test and
  validation split modes and ratios, ``seed``) plus the seeded split (``num_train``,
  ``num_test_normal``, ``num_test_abnormal``, ``normal_split_ratio``, ``split_seed``),
  ``skip_invalid``, ``dicom_window`` and ``patient_pattern``. Subclasses declare their own
  arguments and pass the rest on with ``**kwargs`` (jsonargparse, hence the anomalib CLI, follows
  them to this signature);
- **one seed vocabulary**: ``split_seed`` seeds the train/test split (and the subsets taken from a
  predefined split), anomalib's ``seed`` seeds anomalib's own random splits (validation split
  modes ``from_test`` / ``from_train`` / ``synthetic``); ``seed=None`` uses ``split_seed``;
- **the split**: samples whose ``split`` is ``""`` are split by :func:`~anomalib_skipts.data.split.assign_split`
  (by count or ratio, bit-for-bit reproducible, by patient when a ``patient`` column exists);
  samples with a predefined ``"train"`` / ``"test"`` split are only subsampled to the counts; samples
  of a predefined validation split (``"valid"``) become the validation set with
  ``val_split_mode="from_dir"``;
- **validation at set-up**: only the files the split chooses are decoded, and every problem (the
  loader's and the decoder's) is reported in one :class:`~anomalib_skipts.data.problems.InvalidDatasetError`
  (or, with ``skip_invalid=True``, left out with one warning each).

Example:
    A family of datamodules in a few lines::

        class MyLayout(MedicalDataModule):
            def __init__(self, root: str | Path = "./datasets/mine", **kwargs: Any) -> None:
                super().__init__(name="mine", **kwargs)
                self.root = Path(root)

            def _make_samples(self) -> tuple[DataFrame, list[DatasetProblem]]:
                return make_medical_folder_samples(normal_dir="ok", abnormal_dir="ko", root=self.root)
"""

from __future__ import annotations

import copy
import logging
from abc import abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from anomalib import TaskType
from anomalib.data import AnomalibDataModule, AnomalibDataset
from anomalib.data.dataclasses import ImageItem
from anomalib.data.utils import LabelName, Split, TestSplitMode, ValSplitMode
from pandas import DataFrame
from torchvision.transforms.v2 import Transform
from torchvision.tv_tensors import Mask

from anomalib_skipts.data.items import MedicalImageBatch, MedicalImageItem
from anomalib_skipts.data.listing import ABNORMAL, NORMAL
from anomalib_skipts.data.problems import DatasetProblem
from anomalib_skipts.data.readers import DicomWindow, read_image, read_mask
from anomalib_skipts.data.split import add_patients, assign_split, check_split_arguments
from anomalib_skipts.data.validation import select_samples
from anomalib_skipts.input_settings import INPUT_SETTINGS_KEY, describe_inputs

__all__ = ["VALID", "MedicalDataModule", "MedicalFolderDataset"]

logger = logging.getLogger(__name__)

#: ``split`` value of the samples of a predefined validation split (BMAD's ``valid/`` folders).
VALID = "valid"


def samples_of_split(samples: DataFrame, split: str | Split | None, attrs: dict[str, Any]) -> DataFrame:
    """Keep the samples of one split (every sample for ``None``) in a new frame carrying ``attrs``.

    Args:
        samples: Samples frame with a ``split`` column.
        split: The split to keep.
        attrs: The frame's attributes (anomalib reads the task from ``attrs["task"]``).

    Returns:
        DataFrame: The kept samples, indexed from 0.
    """
    if split is not None:
        split_value = split.value if isinstance(split, Split) else str(split)
        samples = samples[samples["split"] == split_value].reset_index(drop=True)
    samples = samples.copy()
    samples.attrs = attrs
    return samples


class MedicalFolderDataset(AnomalibDataset):
    """anomalib dataset over a samples frame, reading images with the medical readers.

    Where the samples name patients (a ``patient`` column, see
    :func:`~anomalib_skipts.data.split.add_patients`), they get a ``patient_id`` column and the items
    are :class:`~anomalib_skipts.data.items.MedicalImageItem` s carrying it, for patient-level metrics.

    Args:
        samples: Samples frame with at least ``image_path``, ``label_index``, ``mask_path`` and
            ``split`` (see :func:`~anomalib_skipts.data.listing.make_samples`; an optional
            ``mask_paths`` column lists several masks per image, OR-ed together).
        name: Dataset name.
        split: Keep only this split (``"train"``, ``"test"``, ``"valid"``); ``None`` keeps every sample.
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
        if "patient" in samples and "patient_id" not in samples:  # the patient the split grouped by
            samples = samples.assign(patient_id=[patient or None for patient in samples["patient"]])
        self.samples = samples_of_split(samples, split, attrs)

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
        item = {"image": image, "gt_mask": gt_mask, "gt_label": gt_label, "image_path": image_path}
        if "patient_id" in self.samples:
            return MedicalImageItem(**item, mask_path=mask_path, patient_id=row.patient_id)
        return ImageItem(**item, mask_path=mask_path)

    @property
    def collate_fn(self) -> Callable:
        """Collate items into anomalib's ``ImageBatch``, or a ``MedicalImageBatch`` when they name patients."""
        return MedicalImageBatch.collate if "patient_id" in self.samples else super().collate_fn


class MedicalDataModule(AnomalibDataModule):
    """The base of every medical datamodule: list, split, validate, then anomalib's subsets.

    Subclasses implement :meth:`_make_samples` (find the files of their layout) and may override
    :meth:`_layout_hint` (help for a download that does not look right) and :meth:`_make_dataset`
    (the dataset class of a subset). Everything else (the seeded split, BMAD-style predefined
    validation folders, validation at set-up, anomalib's test/val split modes, dataloaders) is here.

    Args:
        name: Dataset name (logs, result folders).
        num_train: Number of normal training images; ``None``: see :func:`assign_split`.
        num_test_normal: Number of normal test images; ``None``: see :func:`assign_split`.
        num_test_abnormal: Number of abnormal test images; ``None`` takes all.
        normal_split_ratio: Fraction of normal images for testing when no count is given.
        split_seed: Seed of the train/test split (bit-for-bit reproducible) and of the subsets
            taken from a predefined split.
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
        val_split_mode: anomalib's validation split mode; ``from_dir`` uses the dataset's own
            validation folders where its layout has them (BMAD).
        val_split_ratio: anomalib's validation split ratio.
        seed: Seed of anomalib's own random splits (validation split modes ``from_test``,
            ``from_train``, ``synthetic``); ``None`` uses ``split_seed`` so that they are
            reproducible too.
        patient_pattern: Regular expression with a group named ``patient``, searched in each file
            name; when given, the split is by patient (see :func:`add_patients`, :func:`assign_split`).
    """

    split_seed_arg: ClassVar[str] = "split_seed"
    """The argument that seeds the train/test split (the benchmark varies it with the run's seed on request)."""

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

    @property
    def _label(self) -> str:
        """Name of the dataset in messages and logs (e.g. ``"BMAD Brain"``)."""
        return self.name

    # ----------------------------------------------------------------------------------------------
    # Extension points
    # ----------------------------------------------------------------------------------------------
    @abstractmethod
    def _make_samples(self) -> tuple[DataFrame, list[DatasetProblem]]:
        """Find every image (and mask) of the dataset, with the problems met on the way.

        Returns:
            A samples frame (:func:`~anomalib_skipts.data.listing.make_samples`) whose ``split``
            is ``""`` (to be split), ``"train"`` / ``"test"`` (predefined) or ``"valid"`` (a
            predefined validation split), and every problem found (fatal ones stop at set-up even
            with ``skip_invalid``).
        """

    def _layout_hint(self) -> str:
        """Help shown with fatal problems (expected layout, where to download)."""
        return ""

    def _make_dataset(self, samples: DataFrame, split: str | Split) -> AnomalibDataset:
        """Build the dataset of one subset (``"train"``, ``"test"`` or ``"valid"``) of the chosen samples."""
        return MedicalFolderDataset(samples, name=self.name, split=split, dicom_window=self.dicom_window)

    # ----------------------------------------------------------------------------------------------
    # The split and the validation
    # ----------------------------------------------------------------------------------------------
    def _choose(self, samples: DataFrame) -> DataFrame:
        """Split the pool with the seeded train/test split; keep a predefined ``valid`` split aside."""
        valid = samples["split"] == VALID
        chosen = assign_split(
            samples[~valid],
            name=self._label,
            num_train=self.num_train,
            num_test_normal=self.num_test_normal,
            num_test_abnormal=self.num_test_abnormal,
            normal_split_ratio=self.normal_split_ratio,
            split_seed=self.split_seed,
        )
        if not valid.any():
            return chosen
        result = DataFrame.from_records([*chosen.to_dict("records"), *samples[valid].to_dict("records")])
        result.attrs = dict(samples.attrs)
        return result

    def prepare_samples(self) -> DataFrame:
        """List and split the dataset, then validate the chosen files: the samples :meth:`setup` uses.

        Only the files the split chooses are opened and decoded (see :func:`select_samples`).

        Returns:
            Samples frame with ``split`` set to ``"train"``, ``"test"`` or (a predefined
            validation split) ``"valid"``.

        Raises:
            InvalidDatasetError: If files are invalid (see ``skip_invalid``) or folders missing.
            SplitError: If the requested counts cannot be satisfied.
            ValueError: If ``val_split_mode="from_dir"`` but the layout has no validation split.
        """
        samples, problems = self._make_samples()
        if self.patient_pattern is not None:
            samples = add_patients(samples, self.patient_pattern, self._label)
        has_valid = bool((samples["split"] == VALID).any())
        if self.val_split_mode == ValSplitMode.FROM_DIR and not has_valid and not problems:
            msg = (
                f"{self._label}: val_split_mode='from_dir' needs a validation folder, and this dataset's layout has "
                "none. Use val_split_mode='same_as_test' (the test set), 'from_test' or 'from_train'."
            )
            raise ValueError(msg)
        if has_valid and self.val_split_mode != ValSplitMode.FROM_DIR:
            samples = samples[samples["split"] != VALID].reset_index(drop=True)
        return select_samples(
            samples,
            self._choose,
            self._label,
            problems,
            skip_invalid=self.skip_invalid,
            dicom_window=self.dicom_window,
            hint=self._layout_hint(),
        )

    def _setup(self, _stage: str | None = None) -> None:
        samples = self.prepare_samples()
        self._log_split(samples)
        self.train_data = self._make_dataset(samples, Split.TRAIN)
        self.test_data = self._make_dataset(copy.deepcopy(samples), Split.TEST)
        if self.val_split_mode == ValSplitMode.FROM_DIR:
            self.val_data = self._make_dataset(copy.deepcopy(samples), VALID)

    def _log_split(self, samples: DataFrame) -> None:
        counts = samples.groupby(["split", "label"]).size().to_dict()
        valid = ""
        if (samples["split"] == VALID).any():
            normal, abnormal = counts.get((VALID, NORMAL), 0), counts.get((VALID, ABNORMAL), 0)
            valid = f"; validation: {normal} normal, {abnormal} abnormal"
        logger.info(
            "%s (%s): %d normal training images; test: %d normal, %d abnormal%s (split_seed=%d).",
            self._label,
            samples.attrs.get("task"),
            counts.get(("train", NORMAL), 0),
            counts.get(("test", NORMAL), 0),
            counts.get(("test", ABNORMAL), 0),
            valid,
            self.split_seed,
        )
        if "patient" in samples:
            patients = samples[samples["patient"] != ""].groupby("split")["patient"].nunique().to_dict()
            logger.info(
                "%s: split by patient: %d patients in training, %d in test, none in both.",
                self._label,
                patients.get("train", 0),
                patients.get("test", 0),
            )
