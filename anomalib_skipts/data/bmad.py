"""BMAD (Bao et al., "BMAD: Benchmarks for Medical Anomaly Detection", arXiv:2306.11876, 2023) read locally.

BMAD reorganises six public medical datasets into one layout with its own ``train`` / ``valid`` /
``test`` split. :class:`BMAD` is anomalib's :class:`anomalib.data.BMAD` datamodule (same arguments,
same category names, ``valid`` used for validation by default) with what a local copy needs:

- **every layout BMAD is distributed in**, for the six categories: anomalib's uniform copy
  (``<split>/<class>/img/*.png``, masks in ``<split>/Ungood/label/``) and the authors' own archives
  as their scripts and configs read them: image-level categories without ``img/``; ``val/`` instead
  of ``valid/`` (RESC, OCT2017, Chest); Liver's ``img/`` and ``label/`` above the class folders
  (``valid/img/Ungood/``, ``valid/label/Ungood/``); RESC's ``Train/train/``, ``Val/val/``,
  ``Test/test/`` with masks in ``Val/val_label/`` and ``Test/test_label/``; Brain's masks in
  ``Ungood/anomaly_mask/``. anomalib 2.7's parser reads only the uniform copy, and labels every
  category "segmentation"; here the task is segmentation exactly when masks exist;
- **masks required where BMAD has them**: Brain, Liver and Retina_RESC without masks are an error
  that names the folders looked in, not a run that quietly loses its pixel metrics;
- **masks matched by file name**, not by position, and every problem (a missing mask, a mask
  without an image, a corrupt or empty file, a missing folder) reported at set-up in one
  :class:`~anomalib_skipts.data.InvalidDatasetError` (or left out with ``skip_invalid=True``);
- **no download unless asked**: an existing category folder is read in place; a missing one fails
  with the expected layout and where to get it; ``download=True`` fetches anomalib's copy instead;
- the category folder is found under the names the downloads use (``Brain``, ``BraTS2021_slice``,
  ``hist_DIY``, ``Chest-RSNA``, ``camelyon16_256``...), also inside the archives' own folders
  (``Liver/Train/hist_DIY``); ``root`` may also be the category folder itself;
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
#: Folder names of each split: BMAD's archives of RESC, OCT2017 and Chest use ``val/``.
_SPLIT_NAMES = {"train": ("train",), "valid": ("valid", "val"), "test": ("test",)}
#: The image folder: inside a class folder (``Ungood/img/``) or above the class folders (``img/Ungood/``, Liver).
_IMAGE_FOLDER = "img"
#: Mask folders: inside a class folder (``Ungood/label/``; ``Ungood/anomaly_mask/`` in BMAD's README for
#: Brain) or above the class folders (``label/Ungood/``, Liver).
_MASK_FOLDERS = ("label", "anomaly_mask")
#: How deep under ``root`` a category folder is looked for (``Liver/Train/hist_DIY`` is 3 deep).
_SEARCH_DEPTH = 3


@dataclass(frozen=True)
class BMADCategory:
    """One BMAD category.

    Attributes:
        name: anomalib's category name, also the folder name in anomalib's copy.
        source: The public dataset BMAD reorganised.
        modality: Imaging modality.
        masks: Whether BMAD gives pixel masks (localisation metrics) for it: then they must be found.
        aliases: Other folder names of the category: those of BMAD's archives and of anomalib's copy.
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
        BMADCategory(
            "Brain", "BraTS2021", "brain MRI", masks=True, aliases=("BraTS2021", "BraTS2021_slice", "Brain_AD")
        ),
        BMADCategory("Liver", "BTCV + LiTS", "liver CT", masks=True, aliases=("hist_DIY", "Liver_AD")),
        BMADCategory("Retina_RESC", "RESC", "retinal OCT", masks=True, aliases=("RESC", "Retina_RESC_AD")),
        BMADCategory("Retina_OCT2017", "OCT2017", "retinal OCT", masks=False, aliases=("OCT2017", "Retina_OCT2017_AD")),
        BMADCategory("Chest", "RSNA", "chest X-ray", masks=False, aliases=("RSNA", "Chest-RSNA", "Chest_AD")),
        BMADCategory(
            "Histopathology",
            "Camelyon16",
            "histopathology",
            masks=False,
            aliases=("Camelyon16", "camelyon16_256", "Histopathology_AD"),
        ),
    )
}

LAYOUT = """\
<root>/<category>/    named Brain, Liver, Retina_RESC, Retina_OCT2017, Chest, Histopathology or as in BMAD's
                      archives (BraTS2021_slice, hist_DIY, RESC, OCT2017, Chest-RSNA, camelyon16_256), possibly
                      inside the archive's own folders (Liver/Train/hist_DIY, Brain_AD/BraTS2021_slice)
  train/good/[img/]*.png       normal training images
  valid/good/[img/]*.png       normal validation images (valid/ or val/)
  valid/Ungood/[img/]*.png     abnormal validation images
  valid/Ungood/label/*.png     their masks, named like the images (Brain, Liver, Retina_RESC: required there)
  test/good/[img/]*.png, test/Ungood/[img/]*.png, test/Ungood/label/*.png   the same for the test set
  masks are also found where BMAD's archives put them:
    <split>/Ungood/anomaly_mask/                                   (Brain)
    <split>/label/Ungood/, images in <split>/img/{good,Ungood}/    (Liver)
    <split>_label/Ungood/ beside <split>/                          (RESC: Train/train/, Val/val/ + Val/val_label/,
                                                                    Test/test/ + Test/test_label/)"""


def resolve_category(category: str) -> BMADCategory:
    """Return the BMAD category named ``category`` (anomalib's name or an alias, case ignored).

    Args:
        category: ``"Brain"``, ``"brats2021"``, ``"Retina_OCT2017"``, ``"hist_DIY"``, ``"Chest-RSNA"``...

    Returns:
        The category.

    Raises:
        ValueError: If no category has that name.
    """
    for info in BMAD_CATEGORIES.values():
        if normalise_name(category) in _names(info):
            return info
    known = ", ".join(f"{info.name} ({info.source})" for info in BMAD_CATEGORIES.values())
    msg = f"Unknown BMAD category {category!r}; BMAD's categories are {known}."
    raise ValueError(msg)


def _names(info: BMADCategory) -> set[str]:
    return {normalise_name(name) for name in (info.name, *info.aliases)}


def _subfolders(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))


def _split_folder(category_dir: str | Path, split: str) -> Path | None:
    """Return the folder of one BMAD split: ``valid/`` or ``val/``; RESC's ``Val/val/`` (inside its namesake).

    Args:
        category_dir: The category folder.
        split: ``"train"``, ``"valid"`` or ``"test"``.

    Returns:
        The folder holding the split's class folders, or ``None``.
    """
    folder = child_folder(category_dir, *_SPLIT_NAMES[split])
    inner = child_folder(folder, *_SPLIT_NAMES[split]) if folder is not None else None
    return inner or folder


def _class_folders(split_dir: Path) -> list[Path]:
    """Return the class folders of a split: ``<split>/<class>/`` and, in Liver's layout, ``<split>/img/<class>/``."""
    layout = {normalise_name(name) for name in (_IMAGE_FOLDER, *_MASK_FOLDERS)}
    folders = [path for path in _subfolders(split_dir) if normalise_name(path.name) not in layout]
    image_root = child_folder(split_dir, _IMAGE_FOLDER)
    return folders + (_subfolders(image_root) if image_root is not None else [])


def _is_category_folder(folder: Path) -> bool:
    train = _split_folder(folder, "train")
    return train is not None and any(path.name.lower() in _CLASSES for path in _class_folders(train))


def find_category_dir(root: str | Path, category: str) -> Path | None:
    """Find the folder of a BMAD category under ``root`` (or ``root`` itself if it is that folder).

    The category folder is the shallowest folder, at most three levels under ``root``, that holds a
    ``train/good/`` (or ``Train/train/good/``) folder and is named after the category or lies in a
    folder that is: ``Brain/``, ``BraTS2021_slice/``, ``Liver/Train/hist_DIY/``, ``Chest_AD/Chest-RSNA/``...
    The folders of other categories are not looked into.

    Args:
        root: BMAD root (the folder holding the category folders) or a category folder.
        category: Category name or alias.

    Returns:
        The category folder; else the first folder under ``root`` named after the category (whose
        problems set-up then reports); ``None`` if there is none.
    """
    names = _names(resolve_category(category))
    root = Path(root).expanduser()
    if not root.is_dir():
        return None
    level = [(root, normalise_name(root.name) in names)]
    fallback = root if level[0][1] else None
    for depth in range(_SEARCH_DEPTH + 1):
        deeper: list[tuple[Path, bool]] = []
        for folder, named in level:
            if _is_category_folder(folder):
                if named:
                    return folder
                continue  # another category or dataset: not looked into
            if depth < _SEARCH_DEPTH:
                for child in _subfolders(folder):
                    child_named = named or normalise_name(child.name) in names
                    fallback = fallback or (child if child_named else None)
                    deeper.append((child, child_named))
        level = deeper
    return fallback


def _mask_folder(class_dir: Path, split_dir: Path, split: str) -> tuple[Path | None, list[Path]]:
    """Where the masks of a class folder are: the folder found, and every place looked (for messages)."""
    places = [class_dir / _MASK_FOLDERS[0], class_dir / _MASK_FOLDERS[1]]
    found = child_folder(class_dir, *_MASK_FOLDERS)
    label_root = child_folder(split_dir, *_MASK_FOLDERS)  # Liver: <split>/label/<class>/
    places.append((label_root or split_dir / _MASK_FOLDERS[0]) / class_dir.name)
    if found is None and label_root is not None:
        found = child_folder(label_root, class_dir.name)
    sibling = child_folder(split_dir.parent, *(f"{name}_label" for name in _SPLIT_NAMES[split]))  # RESC
    places.append((sibling or split_dir.parent / f"{split_dir.name}_label") / class_dir.name)
    if found is None and sibling is not None:
        found = child_folder(sibling, class_dir.name)
    return found, places


def make_bmad_samples(
    category_dir: str | Path,
    splits: Iterable[str] = _SPLITS,
    masks_expected: bool = False,
) -> tuple[DataFrame, list[DatasetProblem]]:
    """List the images and masks of one BMAD category folder, in anomalib's or BMAD's own layouts.

    Args:
        category_dir: The category folder (holding ``train/``, ``valid/`` or ``val/``, ``test/``,
            or RESC's ``Train/``, ``Val/``, ``Test/``).
        splits: The splits to list (their folders must exist).
        masks_expected: The category has pixel masks (Brain, Liver, Retina_RESC): the abnormal
            images of a split without them are an error, not an image-level dataset.

    Returns:
        The samples frame (``split`` is ``"train"``, ``"valid"`` or ``"test"``; the task is
        segmentation when the category has masks) and every problem found: a missing folder, a
        folder that is neither ``good`` nor ``Ungood``, abnormal training images, abnormal images
        without masks (always when ``masks_expected``, else when the others have one), a mask
        without an image, non-image files.
    """
    category_dir = Path(category_dir).absolute()
    problems: list[DatasetProblem] = []
    records = []
    masks_of: dict[Path, list[Path]] = {}
    mask_dir_of: dict[Path, Path] = {}  # where an abnormal image's mask was looked for
    for split in splits:
        split_dir = _split_folder(category_dir, split)
        if split_dir is None:
            reason = "folder does not exist"
            if split == "valid":
                reason += (
                    " (BMAD's validation split, valid/ or val/, read with val_split_mode='from_dir'; "
                    "other modes do not need it)"
                )
            problems.append(DatasetProblem(str(category_dir / split), reason, fatal=True))
            continue
        for class_dir in _class_folders(split_dir):
            label = _CLASSES.get(class_dir.name.lower())
            if label is None:
                reason = "unexpected folder: BMAD's class folders are good/ (normal) and Ungood/ (abnormal); left out"
                problems.append(DatasetProblem(str(class_dir), reason))
                continue
            if split == "train" and label == LabelName.ABNORMAL:
                reason = "abnormal images in the training split: BMAD trains on normal images only; left out"
                problems.append(DatasetProblem(str(class_dir), reason))
                continue
            image_dir = child_folder(class_dir, _IMAGE_FOLDER) or class_dir
            listing = list_folder(image_dir, mask_suffix=None, recursive=False, role=f"{split} {class_dir.name}")
            problems += listing.problems
            records += [(path, int(label), split, path.relative_to(category_dir).as_posix()) for path in listing.images]
            mask_dir, places = _mask_folder(class_dir, split_dir, split)
            if label == LabelName.NORMAL:
                if mask_dir is not None:
                    logger.info("BMAD: ignoring the masks of normal images in %s (they have empty masks).", mask_dir)
            elif mask_dir is not None:
                masks_of.update(_match_masks(listing.images, image_dir, mask_dir, problems))
                mask_dir_of.update(dict.fromkeys(listing.images, mask_dir))
            elif masks_expected and listing.images:
                looked = ", ".join(str(place.relative_to(category_dir)) for place in places)
                reason = (
                    f"no masks for its {len(listing.images)} abnormal images: this category has pixel masks "
                    f"(localisation metrics) and none were found (looked for {looked})"
                )
                problems.append(DatasetProblem(str(class_dir), reason, fatal=True))

    abnormal = [image for image, label, split, _ in records if label == LabelName.ABNORMAL]
    if masks_expected or any(image in masks_of for image in abnormal):
        for image in abnormal:
            if image not in masks_of and image in mask_dir_of:
                reason = f"abnormal image has no mask (expected {mask_dir_of[image] / image.name})"
                problems.append(DatasetProblem(str(image), reason))
            elif image not in masks_of and not masks_expected:
                reason = "abnormal image has no mask while others have one (expected in a label/ folder)"
                problems.append(DatasetProblem(str(image), reason))
    samples = make_samples((image, label, split, masks_of.get(image, []), key) for image, label, split, key in records)
    return samples, problems


def _match_masks(
    images: list[Path], image_dir: Path, label_dir: Path, problems: list[DatasetProblem]
) -> dict[Path, list[Path]]:
    """Masks of ``label_dir`` matched to the ``images`` of ``image_dir`` by file stem (case ignored)."""
    listing = list_folder(label_dir, mask_suffix=None, masks_only=True, recursive=False, role="label")
    problems += listing.problems
    by_stem = {image.stem.lower(): image for image in images}
    matched: dict[Path, list[Path]] = {}
    for mask in listing.masks:
        image = by_stem.get(mask.stem.lower())
        if image is None:
            reason = f"mask has no image (no {mask.stem}.* in {image_dir})"
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
            ``Histopathology`` (image labels only); aliases such as ``BraTS2021``, ``hist_DIY``,
            ``RSNA``, ``Chest-RSNA``, ``Camelyon16`` are accepted.
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
            f"root is {self.root.absolute()}; the category folder is looked for there, up to {_SEARCH_DEPTH} folders "
            f"deep, under the names {names}.\n"
            f"BMAD is distributed by its authors ({BMAD_URL}); anomalib's copy is downloaded with "
            f"download=True (CLI: --data.download true).\nExpected layout:\n{LAYOUT}"
        )

    def _make_samples(self) -> tuple[DataFrame, list[DatasetProblem]]:
        category_dir = self.category_dir
        if category_dir is None:
            reason = f"no {self.category} folder found (nothing is downloaded unless download=True)"
            return make_samples([]), [DatasetProblem(str(self.root), reason, fatal=True)]
        splits = _SPLITS if self.val_split_mode == ValSplitMode.FROM_DIR else ("train", "test")
        return make_bmad_samples(category_dir, splits, masks_expected=self.info.masks)
