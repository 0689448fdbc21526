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

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anomalib.data.datamodules.image import bmad as anomalib_bmad
from anomalib.data.utils import LabelName, ValSplitMode
from pandas import DataFrame

from anomalib_skipts.data.base import MedicalDataModule
from anomalib_skipts.data.listing import child_folder, list_folder, make_samples, normalise_name
from anomalib_skipts.data.problems import DatasetProblem

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
        if normalise_name(category) in {normalise_name(name) for name in (info.name, *info.aliases)}:
            return info
    known = ", ".join(f"{info.name} ({info.source})" for info in BMAD_CATEGORIES.values())
    msg = f"Unknown BMAD category {category!r}; BMAD's categories are {known}."
    raise ValueError(msg)


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
    found = child_folder(root, info.name, *info.aliases)
    if found is not None:
        return found
    names = {normalise_name(name) for name in (info.name, *info.aliases)}
    if normalise_name(root.name) in names and (root / "train").is_dir():
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
        split_dir = child_folder(category_dir, split)
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
            image_dir = child_folder(class_dir, "img") or class_dir
            listing = list_folder(image_dir, mask_suffix=None, recursive=False, role=f"{split} {class_dir.name}")
            problems += listing.problems
            records += [(path, int(label), split, path.relative_to(category_dir).as_posix()) for path in listing.images]
            label_dir = child_folder(class_dir, "label")
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


class BMAD(MedicalDataModule):
    """BMAD datamodule reading a local copy in place (see the module docstring).

    The arguments of :class:`anomalib.data.BMAD`, plus ``skip_invalid``, ``download`` and the
    subsets of the :class:`~anomalib_skipts.data.base.MedicalDataModule` base. The validation set is
    BMAD's ``valid`` split (``val_split_mode="from_dir"``, the default); the other anomalib split
    modes work as usual.

    Args:
        root: BMAD root (holding the category folders) or the category folder itself.
        category: ``Brain``, ``Liver``, ``Retina_RESC`` (with masks), ``Retina_OCT2017``, ``Chest``,
            ``Histopathology`` (image labels only); aliases such as ``BraTS2021``, ``RSNA``,
            ``Camelyon16`` are accepted.
        val_split_mode: anomalib's validation split mode; ``from_dir`` uses BMAD's ``valid`` split.
        download: Download anomalib's copy of BMAD into ``root`` when the category folder is
            missing. Off by default: nothing is downloaded, a missing folder is an error.
        **kwargs: The arguments of :class:`~anomalib_skipts.data.base.MedicalDataModule`:
            ``skip_invalid``, batch sizes, workers, augmentations, split modes and ratios, ``seed``
            (anomalib's random splits, other modes), and ``num_train`` / ``num_test_normal`` /
            ``num_test_abnormal`` (seeded subsets of BMAD's split, seeded by ``split_seed``).
    """

    def __init__(
        self,
        root: str | Path | None = "./datasets/BMAD",
        category: str = "Brain",
        val_split_mode: ValSplitMode | str = ValSplitMode.FROM_DIR,
        download: bool = False,
        **kwargs: Any,
    ) -> None:
        info = resolve_category(category)
        super().__init__(name="BMAD", val_split_mode=val_split_mode, **kwargs)
        self.root = Path(root).expanduser() if root is not None else Path.cwd()
        self.category = info.name
        self.info = info
        self.download = download

    @property
    def _label(self) -> str:
        return f"BMAD {self.category}"

    @property
    def category_dir(self) -> Path | None:
        """The category folder found under ``root``, or ``None``."""
        return find_category_dir(self.root, self.category)

    def prepare_data(self) -> None:
        """Download anomalib's copy only if ``download=True`` and the category folder is missing."""
        if self.category_dir is not None:
            logger.info("BMAD %s: reading %s in place.", self.category, self.category_dir)
        elif self.download:
            anomalib_bmad.download_and_extract(self.root, anomalib_bmad.DOWNLOAD_INFO)
        # else: setup() reports the missing folder with the expected layout

    def _layout_hint(self) -> str:
        names = ", ".join((self.info.name, *self.info.aliases))
        return (
            f"root is {self.root.absolute()}; the category folder is looked for there under the names {names}.\n"
            f"BMAD is distributed by its authors ({BMAD_URL}); anomalib's copy is downloaded with "
            f"download=True (CLI: --data.download true).\nExpected layout:\n{LAYOUT}"
        )

    def _make_samples(self) -> tuple[DataFrame, list[DatasetProblem]]:
        category_dir = self.category_dir
        if category_dir is None:
            reason = f"no {self.category} folder found (nothing is downloaded unless download=True)"
            return make_samples([]), [DatasetProblem(str(self.root), reason, fatal=True)]
        splits = _SPLITS if self.val_split_mode == ValSplitMode.FROM_DIR else ("train", "test")
        samples, problems = make_bmad_samples(category_dir, splits)
        if self.info.masks and samples.attrs.get("task") != "segmentation":
            logger.warning("BMAD %s has pixel masks, but none were found: only image metrics.", self.category)
        return samples, problems
