r"""Predict on, and draw, medical images the way the model was trained on them.

anomalib's own paths after training read images with Pillow as 8-bit RGB: its
:class:`~anomalib.data.PredictDataset` finds no DICOM file and saturates 16-bit PNGs, and its
:class:`~anomalib.visualization.ImageVisualizer` re-opens every ``image_path`` with Pillow, so testing
on DICOM slices fails and 16-bit pictures are drawn white. This module provides:

- :class:`MedicalPredictDataset`: anomalib's ``PredictDataset`` for every format the medical
  datamodules read (DICOM, 16-bit PNG/TIFF, grayscale, palette...), over a folder or one file, with
  :func:`~anomalib_skipts.data.readers.read_image`;
- :class:`MedicalInputs`: a Lightning callback that, in a trainer that tests or predicts on medical
  data, gives a :class:`MedicalPredictDataset` the input settings stored in the checkpoint (the
  DICOM window used in training; see :mod:`anomalib_skipts.input_settings`) and draws the pictures
  from the images as they were read, windowed, instead of re-opening the files
  (:class:`MedicalImageVisualizer`). It works for every model, the baselines included.

The package registers :class:`MedicalInputs` with Lightning (entry point
``lightning.pytorch.callbacks_factory``), so every trainer has it: it does nothing unless the test or
predict data are the project's. The medical datamodules also add it to the trainer themselves.

Example:
    >>> from anomalib.engine import Engine
    >>> from anomalib_skipts.data import MedicalPredictDataset
    >>> engine = Engine()
    >>> predictions = engine.predict(
    ...     model=SkipTS(), dataset=MedicalPredictDataset(path="new_ct_slices/"), ckpt_path="model.ckpt"
    ... )

or, from the command line::

    anomalib predict --model SkipTS --ckpt_path model.ckpt \
        --data anomalib_skipts.data.MedicalPredictDataset --data.path new_ct_slices/
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from anomalib.data import ImageBatch, ImageItem
from anomalib.utils.path import generate_output_filename
from anomalib.visualization import ImageVisualizer
from anomalib.visualization.image.item_visualizer import visualize_image_item
from lightning.pytorch import Callback, LightningModule, Trainer
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2 import Transform

from anomalib_skipts.data.listing import list_folder
from anomalib_skipts.data.medical_folder import MedicalDataModule, MedicalFolderDataset
from anomalib_skipts.data.readers import DicomWindow, _resolve_window, is_dicom_file, read_image
from anomalib_skipts.input_settings import READER, find_input_settings

__all__ = [
    "MedicalImageVisualizer",
    "MedicalInputs",
    "MedicalPredictDataset",
    "medical_input_callbacks",
    "same_window",
]

logger = logging.getLogger(__name__)


def _window_values(window: DicomWindow | list[float] | None) -> tuple[float, float] | None:
    return _resolve_window(window, Path())


def same_window(first: DicomWindow | list[float] | None, second: DicomWindow | list[float] | None) -> bool:
    """Whether two DICOM windows read images identically (``"brain"`` is ``(40, 80)``).

    Args:
        first: A window: ``None`` (each file's own), a name or ``(center, width)``.
        second: Another window.

    Returns:
        ``True`` when both give the same pixels.
    """
    return _window_values(first) == _window_values(second)


# --------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------
class MedicalPredictDataset(Dataset):
    """anomalib's ``PredictDataset`` for medical images: a folder (recursively) or one file.

    Images are read with :func:`~anomalib_skipts.data.readers.read_image`, as in training. The DICOM
    window is the one the model was trained with: a trainer that loads a checkpoint written by a
    medical datamodule passes the checkpoint's settings to this dataset (through
    :class:`MedicalInputs`), so nothing needs repeating. A ``dicom_window`` given here that differs
    from the training one is used, with a warning that the model did not see images read so.

    Args:
        path: Image file or folder of images (every format of
            :data:`~anomalib_skipts.data.readers.SUPPORTED_EXTENSIONS`, DICOM also without extension).
        dicom_window: DICOM window ``(center, width)`` or name; ``None`` takes the training window from
            the checkpoint (or, without one, each file's own window).
        extensions: Accepted extensions in a folder; ``None`` accepts every supported format.
        transform: Transform applied to each image (the model's pre-processor runs anyway).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the folder holds no image, or ``dicom_window`` is not a window.

    Example:
        >>> dataset = MedicalPredictDataset(path="head_ct/")
        >>> item = dataset[0]
        >>> item.image.shape, item.image_path    # (3, H, W) float in [0, 1], the file
    """

    def __init__(
        self,
        path: str | Path,
        dicom_window: DicomWindow | None = None,
        extensions: Iterable[str] | None = None,
        transform: Transform | None = None,
    ) -> None:
        super().__init__()
        self.path = Path(path).expanduser()
        self.dicom_window = tuple(dicom_window) if isinstance(dicom_window, list) else dicom_window
        _window_values(self.dicom_window)  # fail early on an unknown window name
        self.transform = transform
        self.input_settings: dict[str, Any] | None = None
        self.image_filenames = self._list(self.path, extensions)

    @staticmethod
    def _list(path: Path, extensions: Iterable[str] | None) -> list[Path]:
        if not path.exists():
            msg = f"{path}: no such file or folder to predict on; give an image file or a folder of images."
            raise FileNotFoundError(msg)
        if path.is_file():
            return [path]
        listing = list_folder(path, extensions=extensions, mask_suffix=None, role="image")
        fatal = [problem for problem in listing.problems if problem.fatal]
        if fatal:
            raise ValueError(f"{fatal[0].path}: {fatal[0].reason}")
        for problem in listing.problems:
            logger.warning("Skipping %s: %s", problem.path, problem.reason)
        return listing.images

    @property
    def window(self) -> DicomWindow | None:
        """The DICOM window the images are read with: the given one, else the training one."""
        if self.dicom_window is not None or self.input_settings is None:
            return self.dicom_window
        window = self.input_settings.get("dicom_window")
        return tuple(window) if isinstance(window, list) else window

    def use_input_settings(self, settings: dict[str, Any] | None, source: str) -> bool:
        """Read the images as the model's training data were read.

        Args:
            settings: Input settings (see :mod:`anomalib_skipts.input_settings`), or ``None`` when the
                model was not trained on a medical datamodule.
            source: Where the settings come from, for messages.

        Returns:
            Whether the window the images are read with changed.
        """
        before = self.window
        self.input_settings = settings
        if settings is None:
            return False
        if settings.get("reader", READER) != READER:
            logger.warning(
                "%s: the model was trained on images read by %s, not %s; the scores may not match training.",
                source,
                settings.get("reader"),
                READER,
            )
        trained = settings.get("dicom_window")
        if self.dicom_window is not None and not same_window(self.dicom_window, trained):
            logger.warning(
                "MedicalPredictDataset(dicom_window=%r) reads DICOM images with another window than the model "
                "was trained with (%s: %r): the model never saw images read this way, so its scores and "
                "threshold may not apply. Leave dicom_window unset to use the training window.",
                self.dicom_window,
                source,
                "each file's own" if trained is None else trained,
            )
        return not same_window(before, self.window)

    def __len__(self) -> int:
        """Return the number of images."""
        return len(self.image_filenames)

    def __getitem__(self, index: int) -> ImageItem:
        """Read one image as anomalib's :class:`~anomalib.data.dataclasses.ImageItem`.

        Args:
            index: Image index.

        Returns:
            The item: float image ``(3, H, W)`` in ``[0, 1]`` and its path.
        """
        image_path = self.image_filenames[index]
        image = read_image(image_path, dicom_window=self.window)
        if self.transform:
            image = self.transform(image)
        return ImageItem(image=image, image_path=str(image_path))

    @property
    def collate_fn(self) -> Callable:
        """Collate ``ImageItem`` s into anomalib's ``ImageBatch``."""
        return ImageBatch.collate


# --------------------------------------------------------------------------------------------------
# Visualizer and callback
# --------------------------------------------------------------------------------------------------
class MedicalImageVisualizer(ImageVisualizer):
    """anomalib's ``ImageVisualizer`` drawing each image as it was read, not re-opened with Pillow.

    The images come from :class:`MedicalInputs`, which keeps each batch's images as the dataset read
    them (windowed DICOM, 16-bit scaled to ``[0, 1]``), before the model's pre-processing. Pictures of
    inputs Pillow cannot write (DICOM) are saved as PNG beside where anomalib would put them.

    Args:
        inputs: The callback holding the images of the current batch.
        **kwargs: :class:`~anomalib.visualization.ImageVisualizer` arguments.
    """

    def __init__(self, inputs: MedicalInputs, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._inputs = inputs

    @classmethod
    def like(cls, visualizer: ImageVisualizer, inputs: MedicalInputs) -> MedicalImageVisualizer:
        """Build a medical visualizer with the same fields, sizes, colours and output folder as ``visualizer``."""
        return cls(
            inputs,
            fields=visualizer.fields,
            overlay_fields=visualizer.overlay_fields,
            field_size=visualizer.field_size,
            fields_config=visualizer.fields_config,
            overlay_fields_config=visualizer.overlay_fields_config,
            text_config=visualizer.text_config,
            output_dir=visualizer.output_dir,
        )

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: ImageBatch,
        batch: ImageBatch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Draw and save the pictures of a batch."""
        images = self._inputs.pop_images(batch)
        if images is None:
            super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
            return
        if self.output_dir is None:
            self.output_dir = Path(trainer.default_root_dir) / "images"
        datamodule = getattr(trainer, "datamodule", None)
        for index, item in enumerate(batch):
            image_path = item.image_path
            item.image = images[index]
            item.image_path = None  # draw the image as read instead of re-opening the file
            picture = visualize_image_item(
                item,
                fields=self.fields,
                overlay_fields=self.overlay_fields,
                field_size=self.field_size,
                fields_config=self.fields_config,
                overlay_fields_config=self.overlay_fields_config,
                text_config=self.text_config,
            )
            if picture is None:
                continue
            filename = generate_output_filename(
                input_path=image_path or "",
                output_path=self.output_dir,
                dataset_name=getattr(datamodule, "name", None),
                category=getattr(datamodule, "category", None),
            )
            if filename.suffix.lower() not in Image.registered_extensions() or is_dicom_file(image_path or ""):
                filename = filename.with_name(filename.name + ".png")
            picture.save(filename)

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: ImageBatch,
        batch: ImageBatch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Draw and save the pictures of a batch."""
        self.on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)


def _loaders(loaders: object) -> list[object]:
    if loaders is None:
        return []
    if isinstance(loaders, dict):
        return list(loaders.values())
    if isinstance(loaders, list | tuple):
        return list(loaders)
    return [loaders]


class MedicalInputs(Callback):
    """Test and predict on medical data as in training, and draw what the model saw.

    In a trainer whose test or predict data are the project's (a medical datamodule, a
    :class:`~anomalib_skipts.data.medical_folder.MedicalFolderDataset` or a
    :class:`MedicalPredictDataset`), this callback

    - gives every :class:`MedicalPredictDataset` the input settings of the loaded checkpoint (else
      those the model keeps, as Skip-TS does, else those of the datamodule it was trained on in the
      same trainer), so that files are read with the training window;
    - replaces anomalib's :class:`~anomalib.visualization.ImageVisualizer` by a
      :class:`MedicalImageVisualizer` with the same settings, fed with the images as they were read.

    With other data it does nothing. The package registers it with Lightning for every trainer; the
    medical datamodules add it too when it is missing (a source checkout that is not installed).
    """

    def __init__(self) -> None:
        self._trained_settings: dict[str, Any] | None = None
        self._checkpoint_settings: dict[str, Any] | None = None
        self._visualizers: dict[int, MedicalImageVisualizer] = {}
        self._originals: dict[int, ImageVisualizer] = {}
        self._images: dict[int, torch.Tensor] = {}
        self._active = False

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Remember the input settings of a medical datamodule; forget those of an earlier checkpoint."""
        del pl_module, stage
        self._checkpoint_settings = None
        self._active = False
        datamodule = getattr(trainer, "datamodule", None)
        if isinstance(datamodule, MedicalDataModule):
            self._trained_settings = datamodule.input_settings()

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """Take the input settings stored in the checkpoint."""
        del trainer, pl_module
        self._checkpoint_settings = find_input_settings(checkpoint)

    def _is_first(self, trainer: Trainer) -> bool:
        first = next(callback for callback in trainer.callbacks if isinstance(callback, MedicalInputs))
        return first is self

    def _start(self, trainer: Trainer, loaders: object) -> None:
        loaders = _loaders(loaders)
        datasets = [getattr(loader, "dataset", None) for loader in loaders]
        medical = isinstance(getattr(trainer, "datamodule", None), MedicalDataModule) or any(
            isinstance(dataset, MedicalFolderDataset | MedicalPredictDataset) for dataset in datasets
        )
        self._active = medical and self._is_first(trainer)
        if not self._active:
            return
        settings, source = self._checkpoint_settings, "checkpoint"
        if settings is None:  # a model that keeps its settings itself (Skip-TS), e.g. loaded without a trainer
            settings, source = getattr(trainer.lightning_module, "input_settings", None), "model"
        if settings is None:
            settings, source = self._trained_settings, "training datamodule"
        for loader, dataset in zip(loaders, datasets, strict=True):
            if not isinstance(dataset, MedicalPredictDataset):
                continue
            changed = dataset.use_input_settings(settings, source)
            if changed and getattr(loader, "num_workers", 0) > 0:
                msg = (
                    f"MedicalPredictDataset must read with the training DICOM window {dataset.window!r}, but its "
                    "DataLoader workers were started before the checkpoint was read. Pass "
                    f"dicom_window={dataset.window!r} to MedicalPredictDataset, or use num_workers=0."
                )
                raise RuntimeError(msg)
        for index, callback in enumerate(trainer.callbacks):
            if type(callback) is ImageVisualizer:
                key = id(callback)
                if key not in self._visualizers:
                    self._visualizers[key] = MedicalImageVisualizer.like(callback, self)
                    self._originals[id(self._visualizers[key])] = callback
                trainer.callbacks[index] = self._visualizers[key]

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Prepare the test data and visualizer."""
        del pl_module
        self._start(trainer, trainer.test_dataloaders)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Prepare the predict data and visualizer."""
        del pl_module
        self._start(trainer, trainer.predict_dataloaders)

    def _keep(self, trainer: Trainer, batch: ImageBatch) -> None:
        if self._active and any(isinstance(callback, MedicalImageVisualizer) for callback in trainer.callbacks):
            self._images[id(batch)] = batch.image.detach().to("cpu", copy=True)

    def on_test_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: ImageBatch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Keep the images as read, before the model's pre-processing."""
        del pl_module, batch_idx, dataloader_idx
        self._keep(trainer, batch)

    def on_predict_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: ImageBatch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Keep the images as read, before the model's pre-processing."""
        del pl_module, batch_idx, dataloader_idx
        self._keep(trainer, batch)

    def pop_images(self, batch: ImageBatch) -> torch.Tensor | None:
        """Return the images of ``batch`` as read (``(N, 3, H, W)`` in ``[0, 1]``), once; ``None`` if not kept."""
        return self._images.pop(id(batch), None)

    def _finish(self, trainer: Trainer) -> None:
        """Give the model's visualizers back to the trainer (the next run attaches them again), drop images."""
        for index, callback in enumerate(trainer.callbacks):
            original = self._originals.get(id(callback))
            if original is not None:
                trainer.callbacks[index] = original
        self._images.clear()
        self._active = False

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Restore the trainer's callbacks."""
        del pl_module
        self._finish(trainer)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Restore the trainer's callbacks."""
        del pl_module
        self._finish(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Restore the trainer's callbacks."""
        del pl_module, exception
        self._finish(trainer)


def medical_input_callbacks() -> list[Callback]:
    """Lightning's entry point (``lightning.pytorch.callbacks_factory``): a :class:`MedicalInputs`."""
    return [MedicalInputs()]
