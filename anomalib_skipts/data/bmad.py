"""BMAD (Bao et al., "BMAD: Benchmarks for Medical Anomaly Detection", arXiv:2306.11876, 2023) read locally.

BMAD reorganises six public medical datasets into one layout with its own ``train`` / ``valid`` /
``test`` split. :class:`BMAD` is anomalib's :class:`anomalib.data.BMAD` datamodule (same arguments,
same category names, ``valid`` used for validation by default) with what a local copy needs:

- **both layouts BMAD is distributed in**: the pixel-level categories (Brain, Liver, Retina_RESC)
  as ``<split>/<class>/img/*.png`` with masks in ``<split>/Ungood/label/*.png``, and the image-level
  ones (Retina_OCT2017, Chest, Histopathology) as ``<split>/<class>/*.png`` (BMAD's own archive) or
  with an ``img/`` folder (anomalib's copy). anomalib 2.7's parser finds no test image in the first
  and, because it labels every category "segmentation", fails reading a mask of ``None`` in the
  second; here the task is segmentation exactly when masks exist;
- **masks matched by file name**, not by position, and every problem (a missing mask, a mask
  without an image, a corrupt or empty file, a missing folder) reported at set-up in one
  :class:`~anomalib_skipts.data.InvalidDatasetError` (or left out with ``skip_invalid=True``);
- **no download unless asked**: an existing category folder is read in place; a missing one fails
  with the expected layout and where to get it; ``download=True`` fetches anomalib's copy instead;
- the category folder is found under the names the downloads use (``Brain``, ``Brain_AD``,
  ``BraTS2021``...); ``root`` may also be the category folder itself;
- images and masks are read with the medical readers (16-bit PNG, EXIF orientation).

Example:
    >>> from anomalib_skipts.data import BMAD
    >>> datamodule = BMAD(root="datasets/BMAD", category="Brain")   # valid/ is the validation set
    >>> datamodule.setup()
    >>> len(datamodule.train_data), len(datamodule.val_data), len(datamodule.test_data)

    From the command line::

        anomalib train --model SkipTS --data datamodules/bmad.yaml --data.root datasets/BMAD --data.category Liver
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from anomalib.data.datamodules.image import bmad as anomalib_bmad
from anomalib.data.utils import LabelName, Split, TestSplitMode, ValSplitMode
from pandas import DataFrame
from torchvision.transforms.v2 import Transform

from anomalib_skipts.data.medical_folder import (
    DatasetProblem,
    InvalidDatasetError,
    MedicalFolderDataset,
    list_folder,
    make_samples,
    validate_samples,
)

__all__ = ["BMAD", "BMAD_CATEGORIES", "BMADCategory", "make_bmad_samples"]

logger = logging.getLogger(__name__)

#: Where BMAD is distributed (the authors' archive) and the paper.
BMAD_URL = "https://github.com/DorisBao/BMAD"
#: BMAD's class folders: normal and abnormal.
_CLASSES = {"good": LabelName.NORMAL, "ungood": LabelName.ABNORMAL}
_SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class BMADCategory:
    """One BMAD category.

    Attributes:
        name: anomalib's category name, also the folder name in anomalib's copy.
        source: The public dataset BMAD reorganised.
        modality: Imaging modality.
        masks: Whether BMAD gives pixel masks (localisation metrics) for it.
        aliases: Other folder names of the category in the downloads.
    """

    name: str
    source: str
    modality: str
    masks: bool
    aliases: tuple[str, ...] = ()


#: The six BMAD categories, by anomalib's category name.
BMAD_CATEGORIES: dict[str, BMADCategory] = {
    category.name: category
    for category in (
        BMADCategory("Brain", "BraTS2021", "brain MRI", masks=True, aliases=("BraTS2021", "Brain_AD")),
        BMADCategory("Liver", "BTCV + LiTS", "liver CT", masks=True, aliases=("Liver_AD",)),
        BMADCategory("Retina_RESC", "RESC", "retinal OCT", masks=True, aliases=("RESC", "RetinaRESC_AD")),
        BMADCategory("Retina_OCT2017", "OCT2017", "retinal OCT", masks=False, aliases=("OCT2017", "RetinaOCT2017_AD")),
        BMADCategory("Chest", "RSNA", "chest X-ray", masks=False, aliases=("RSNA", "Chest_AD")),
        BMADCategory(
            "Histopathology", "Camelyon16", "histopathology", masks=False, aliases=("Camelyon16", "Histopathology_AD")
        ),
    )
}

LAYOUT = """\
<root>/<category>/                      (category: Brain, Liver, Retina_RESC, Retina_OCT2017, Chest, Histopathology)
  train/good/[img/]*.png                normal training images
  valid/good/[img/]*.png                normal validation images
  valid/Ungood/[img/]*.png              abnormal validation images
  valid/Ungood/label/*.png              their masks, named like the images (Brain, Liver, Retina_RESC)
  test/good/[img/]*.png, test/Ungood/[img/]*.png, test/Ungood/label/*.png   the same for the test set"""


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def resolve_category(category: str) -> BMADCategory:
    """Return the BMAD category named ``category`` (anomalib's name or an alias, case ignored).

    Args:
        category: ``"Brain"``, ``"brats2021"``, ``"Retina_OCT2017"``, ``"RSNA"``...

    Returns:
        The category.

    Raises:
        ValueError: If no category has that name.
    """
    for info in BMAD_CATEGORIES.values():
        if _normalise(category) in {_normalise(name) for name in (info.name, *info.aliases)}:
            return info
    known = ", ".join(f"{info.name} ({info.source})" for info in BMAD_CATEGORIES.values())
    msg = f"Unknown BMAD category {category!r}; BMAD's categories are {known}."
    raise ValueError(msg)


def _child(folder: Path, names: Iterable[str]) -> Path | None:
    """Sub-folder of ``folder`` whose name is one of ``names`` (case and punctuation ignored)."""
    wanted = {_normalise(name) for name in names}
    if not folder.is_dir():
        return None
    return next((path for path in sorted(folder.iterdir()) if path.is_dir() and _normalise(path.name) in wanted), None)


def find_category_dir(root: str | Path, category: str) -> Path | None:
    """Find the folder of a BMAD category under ``root`` (or ``root`` itself if it is that folder).

    Args:
        root: BMAD root (the folder holding the category folders) or a category folder.
        category: Category name or alias.

    Returns:
        The category folder, or ``None`` if it is not there.
    """
    info = resolve_category(category)
    root = Path(root).expanduser()
    found = _child(root, (info.name, *info.aliases))
    if found is not None:
        return found
    if _normalise(root.name) in {_normalise(name) for name in (info.name, *info.aliases)} and (root / "train").is_dir():
        return root
    return None


def make_bmad_samples(
    category_dir: str | Path,
    splits: Iterable[str] = _SPLITS,
) -> tuple[DataFrame, list[DatasetProblem]]:
    """List the images and masks of one BMAD category folder.

    Args:
        category_dir: The category folder (holding ``train/``, ``valid/``, ``test/``).
        splits: The splits to list (their folders must exist).

    Returns:
        The samples frame (``split`` is ``"train"``, ``"valid"`` or ``"test"``; the task is
        segmentation when the category has masks) and every problem found: a missing folder, a
        folder that is neither ``good`` nor ``Ungood``, abnormal training images, an abnormal image
        without a mask (when the others have one), a mask without an image, non-image files.
    """
    category_dir = Path(category_dir).absolute()
    problems: list[DatasetProblem] = []
    records = []
    masks_of: dict[Path, list[Path]] = {}
    for split in splits:
        split_dir = _child(category_dir, [split])
        if split_dir is None:
            reason = "folder does not exist"
            if split == "valid":
                reason += " (BMAD's validation split, read with val_split_mode='from_dir'; other modes do not need it)"
            problems.append(DatasetProblem(str(category_dir / split), reason, fatal=True))
            continue
        class_dirs = sorted(path for path in split_dir.iterdir() if path.is_dir() and not path.name.startswith("."))
        for class_dir in class_dirs:
            label = _CLASSES.get(class_dir.name.lower())
            if label is None:
                reason = "unexpected folder: BMAD's class folders are good/ (normal) and Ungood/ (abnormal); left out"
                problems.append(DatasetProblem(str(class_dir), reason))
                continue
            if split == "train" and label == LabelName.ABNORMAL:
                reason = "abnormal images in the training split: BMAD trains on normal images only; left out"
                problems.append(DatasetProblem(str(class_dir), reason))
                continue
            image_dir = _child(class_dir, ["img"]) or class_dir
            listing = list_folder(image_dir, mask_suffix=None, recursive=False, role=f"{split} {class_dir.name}")
            problems += listing.problems
            records += [(path, int(label), split, path.relative_to(category_dir).as_posix()) for path in listing.images]
            label_dir = _child(class_dir, ["label"])
            if label_dir is not None and label == LabelName.ABNORMAL:
                masks_of.update(_match_masks(listing.images, label_dir, problems))
            elif label_dir is not None:
                logger.info("BMAD: ignoring the masks of normal images in %s (they have empty masks).", label_dir)

    abnormal = [image for image, label, split, _ in records if label == LabelName.ABNORMAL]
    if any(image in masks_of for image in abnormal):
        for image in abnormal:
            if image not in masks_of:
                expected = image.parent.parent / "label" / image.name
                reason = f"abnormal image has no mask while others have one (expected {expected})"
                problems.append(DatasetProblem(str(image), reason))
    samples = make_samples((image, label, split, masks_of.get(image, []), key) for image, label, split, key in records)
    return samples, problems


def _match_masks(images: list[Path], label_dir: Path, problems: list[DatasetProblem]) -> dict[Path, list[Path]]:
    """Masks of ``label_dir`` matched to ``images`` by file stem (case ignored)."""
    listing = list_folder(label_dir, mask_suffix=None, masks_only=True, recursive=False, role="label")
    problems += listing.problems
    by_stem = {image.stem.lower(): image for image in images}
    matched: dict[Path, list[Path]] = {}
    for mask in listing.masks:
        image = by_stem.get(mask.stem.lower())
        if image is None:
            reason = f"mask has no image (no {mask.stem}.* in {label_dir.parent / 'img'})"
            problems.append(DatasetProblem(str(mask), reason))
        else:
            matched[image] = [mask]
    return matched


class BMAD(anomalib_bmad.BMAD):
    """BMAD datamodule reading a local copy in place (see the module docstring).

    Same arguments as :class:`anomalib.data.BMAD`, plus ``skip_invalid`` and ``download``. The
    validation set is BMAD's ``valid`` split (``val_split_mode="from_dir"``, the default); the
    other anomalib split modes work as usual.

    Args:
        root: BMAD root (holding the category folders) or the category folder itself.
        category: ``Brain``, ``Liver``, ``Retina_RESC`` (with masks), ``Retina_OCT2017``, ``Chest``,
            ``Histopathology`` (image labels only); aliases such as ``BraTS2021``, ``RSNA``,
            ``Camelyon16`` are accepted.
        train_batch_size: Training batch size.
        eval_batch_size: Validation/test batch size.
        num_workers: Dataloader workers.
        train_augmentations: Augmentations of training images.
        val_augmentations: Augmentations of validation images.
        test_augmentations: Augmentations of test images.
        augmentations: Augmentations used where no stage-specific ones are given.
        test_split_mode: anomalib's test split mode.
        test_split_ratio: anomalib's test split ratio.
        val_split_mode: anomalib's validation split mode; ``from_dir`` uses BMAD's ``valid`` split.
        val_split_ratio: anomalib's validation split ratio (other modes).
        seed: Seed of anomalib's random splits (other modes).
        skip_invalid: Leave out invalid files (one warning each) instead of failing at set-up.
        download: Download anomalib's copy of BMAD into ``root`` when the category folder is
            missing. Off by default: nothing is downloaded, a missing folder is an error.
    """

    def __init__(
        self,
        root: str | Path | None = "./datasets/BMAD",
        category: str = "Brain",
        train_batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 8,
        train_augmentations: Transform | None = None,
        val_augmentations: Transform | None = None,
        test_augmentations: Transform | None = None,
        augmentations: Transform | None = None,
        test_split_mode: TestSplitMode | str = TestSplitMode.FROM_DIR,
        test_split_ratio: float = 0.2,
        val_split_mode: ValSplitMode | str = ValSplitMode.FROM_DIR,
        val_split_ratio: float | None = None,
        seed: int | None = None,
        skip_invalid: bool = False,
        download: bool = False,
    ) -> None:
        info = resolve_category(category)
        super().__init__(
            root=Path(root).expanduser() if root is not None else None,
            category=info.name,
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
        )
        self.info = info
        self.skip_invalid = skip_invalid
        self.download = download

    @property
    def category_dir(self) -> Path | None:
        """The category folder found under ``root``, or ``None``."""
        return find_category_dir(self.root, self.category)

    def prepare_data(self) -> None:
        """Download anomalib's copy only if ``download=True`` and the category folder is missing."""
        if self.category_dir is not None:
            logger.info("BMAD %s: reading %s in place.", self.category, self.category_dir)
        elif self.download:
            super().prepare_data()
        # else: setup() reports the missing folder with the expected layout

    def _hint(self) -> str:
        names = ", ".join((self.info.name, *self.info.aliases))
        return (
            f"root is {self.root.absolute()}; the category folder is looked for there under the names {names}.\n"
            f"BMAD is distributed by its authors ({BMAD_URL}); anomalib's copy is downloaded with "
            f"download=True (CLI: --data.download true).\nExpected layout:\n{LAYOUT}"
        )

    def prepare_samples(self) -> DataFrame:
        """List and validate the files of the splits this datamodule uses.

        Returns:
            Samples frame with ``split`` set to ``"train"``, ``"valid"`` or ``"test"`` (``"valid"``
            only with ``val_split_mode="from_dir"``).

        Raises:
            InvalidDatasetError: If folders are missing or files invalid (see ``skip_invalid``).
        """
        name = f"BMAD {self.category}"
        category_dir = self.category_dir
        if category_dir is None:
            reason = f"no {self.category} folder found (nothing is downloaded unless download=True)"
            raise InvalidDatasetError(name, [DatasetProblem(str(self.root), reason, fatal=True)], hint=self._hint())
        splits = _SPLITS if self.val_split_mode == ValSplitMode.FROM_DIR else ("train", "test")
        samples, problems = make_bmad_samples(category_dir, splits)
        task = samples.attrs.get("task")
        if self.info.masks and task != "segmentation":
            logger.warning("BMAD %s has pixel masks, but none were found: only image metrics.", self.category)
        return validate_samples(samples, name, problems, skip_invalid=self.skip_invalid, hint=self._hint())

    def _setup(self, _stage: str | None = None) -> None:
        samples = self.prepare_samples()
        counts = samples.groupby(["split", "label"]).size().to_dict()
        logger.info(
            "BMAD %s (%s): train %d normal; valid %d normal, %d abnormal; test %d normal, %d abnormal.",
            self.category,
            samples.attrs.get("task"),
            *(counts.get(key, 0) for key in (("train", "normal"), ("valid", "normal"), ("valid", "abnormal"))),
            *(counts.get(key, 0) for key in (("test", "normal"), ("test", "abnormal"))),
        )
        name = f"BMAD_{self.category}"
        self.train_data = MedicalFolderDataset(samples, name=name, split=Split.TRAIN)
        self.test_data = MedicalFolderDataset(copy.deepcopy(samples), name=name, split=Split.TEST)
        if self.val_split_mode == ValSplitMode.FROM_DIR:
            self.val_data = MedicalFolderDataset(copy.deepcopy(samples), name=name, split="valid")
