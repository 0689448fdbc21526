"""MedIAnomaly (Cai et al., "MedIAnomaly: A comparative study of anomaly detection in medical images", 2024).

MedIAnomaly (arXiv:2404.04518, https://github.com/caiyu6666/MedIAnomaly) distributes pre-processed
benchmarks with a fixed train/test split in three layouts. :class:`MedIAnomaly` reads each as it
comes, with the split the benchmark defines:

- ``images/`` + ``data.json`` (RSNA, VinCXR, BrainTumor, LAG): the JSON lists the file names of
  ``images/`` per split and label, ``{"train": {"0": [...]}, "test": {"0": [...], "1": [...]}}``
  (``0`` normal, ``1`` abnormal); image labels only;
- ``train/``, ``test/normal/``, ``test/tumor/``, ``test/annotation/`` (BraTS2021): the mask of
  ``test/tumor/<name>`` is ``test/annotation/<name with "flair" replaced by "seg">``; pixel metrics;
- ``train/good/``, ``test/good/``, ``test/Ungood/`` (Camelyon16); image labels only.

It is a :class:`~anomalib_skipts.data.base.MedicalDataModule`: every listed file is checked at set-up and
all problems (a missing ``data.json``, a listed file that is not there, a tumour slice without its
annotation, corrupt files) are reported in one :class:`~anomalib_skipts.data.InvalidDatasetError`,
or left out with ``skip_invalid=True``; ``num_train`` / ``num_test_normal`` / ``num_test_abnormal``
take seeded subsets of the benchmark's split (``None``, the default, uses all of it).

Example:
    >>> from anomalib_skipts.data import MedIAnomaly
    >>> datamodule = MedIAnomaly(root="~/MedIAnomaly-Data", category="RSNA")
    >>> datamodule = MedIAnomaly(root="~/MedIAnomaly-Data/BraTS2021", category="BraTS2021")

    From the command line::

        anomalib train --model SkipTS --data datamodules/medianomaly.yaml --data.category VinCXR
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from anomalib.data.utils import LabelName, ValSplitMode
from pandas import DataFrame

from anomalib_skipts.data.base import MedicalDataModule
from anomalib_skipts.data.listing import list_folder, make_samples, normalise_name
from anomalib_skipts.data.medical_folder import make_medical_folder_samples
from anomalib_skipts.data.problems import DatasetProblem

__all__ = [
    "MEDIANOMALY_CATEGORIES",
    "MedIAnomaly",
    "load_medianomaly_brats",
    "load_medianomaly_folders",
    "load_medianomaly_json",
]

logger = logging.getLogger(__name__)

MEDIANOMALY_URL = "https://github.com/caiyu6666/MedIAnomaly"

#: Layout of each MedIAnomaly benchmark read here: ``json``, ``brats`` or ``folders`` (see the module docstring).
MEDIANOMALY_CATEGORIES: dict[str, str] = {
    "RSNA": "json",
    "VinCXR": "json",
    "BrainTumor": "json",
    "LAG": "json",
    "BraTS2021": "brats",
    "Camelyon16": "folders",
}

LAYOUTS = {
    "json": "<category>/images/*.png and <category>/data.json = "
    '{"train": {"0": [file names]}, "test": {"0": [file names], "1": [file names]}} (0 normal, 1 abnormal)',
    "brats": "<category>/train/*.png (normal), test/normal/*.png, test/tumor/*.png and test/annotation/*.png "
    "(the mask of test/tumor/x_flair_n.png is test/annotation/x_seg_n.png)",
    "folders": "<category>/train/good/*.png, test/good/*.png, test/Ungood/*.png",
}

#: The label lists of ``data.json``: (split, label key) -> label index.
_JSON_LISTS = {("train", "0"): LabelName.NORMAL, ("test", "0"): LabelName.NORMAL, ("test", "1"): LabelName.ABNORMAL}


def load_medianomaly_json(base: str | Path) -> tuple[DataFrame, list[DatasetProblem]]:
    """Read the ``images/`` + ``data.json`` layout (RSNA, VinCXR, BrainTumor, LAG).

    Args:
        base: The category folder (holding ``images/`` and ``data.json``).

    Returns:
        Samples with the JSON's split and labels, and the problems: a missing or unreadable
        ``data.json``, a missing ``train``/``test`` list, a listed file that does not exist, a file
        listed twice (a file in both train and test would leak test images into training).
    """
    base = Path(base).absolute()
    json_path, image_dir = base / "data.json", base / "images"
    problems: list[DatasetProblem] = []
    if not json_path.is_file():
        reason = "data.json does not exist (it lists the train and test images of the MedIAnomaly layout)"
        problems.append(DatasetProblem(str(json_path), reason, fatal=True))
    if not image_dir.is_dir():
        problems.append(DatasetProblem(str(image_dir), "images folder does not exist", fatal=True))
    if problems:
        return make_samples([]), problems
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        problems.append(DatasetProblem(str(json_path), f"data.json cannot be read ({error})", fatal=True))
        return make_samples([]), problems

    records = []
    listed_in: dict[str, str] = {}
    for (split, key), label in _JSON_LISTS.items():
        section = data.get(split) if isinstance(data, dict) else None
        names = section.get(key) if isinstance(section, dict) else None
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            reason = f'data.json needs a list of file names at ["{split}"]["{key}"], found {names!r:.80}'
            problems.append(DatasetProblem(str(json_path), reason, fatal=True))
            continue
        for name in names:
            where = f'["{split}"]["{key}"]'
            image = image_dir / name
            if name in listed_in:
                reason = f"listed twice in data.json, at {listed_in[name]} and {where}; list each image once"
                problems.append(DatasetProblem(str(image), reason))
                continue
            listed_in[name] = where
            if not image.is_file():
                reason = (
                    f"listed in data.json at {where}, but there is no such file in {image_dir}: restore the file "
                    "or remove its entry from data.json"
                )
                problems.append(DatasetProblem(str(image), reason))
                continue
            records.append((image, int(label), split, [], Path(name).as_posix()))
    unlisted = sum(1 for path in image_dir.rglob("*") if path.is_file()) - len(records)
    if unlisted > 0 and not problems:
        logger.info("MedIAnomaly: %d file(s) of %s are not listed in data.json and not used.", unlisted, image_dir)
    return make_samples(records), problems


def load_medianomaly_brats(base: str | Path) -> tuple[DataFrame, list[DatasetProblem]]:
    """Read the BraTS2021 layout: ``train/``, ``test/normal/``, ``test/tumor/``, ``test/annotation/``.

    Args:
        base: The category folder.

    Returns:
        Samples (segmentation: every tumour slice with its annotation) and problems, including a
        tumour slice without its annotation and an annotation without its slice.
    """
    base = Path(base).absolute()
    samples, problems = make_medical_folder_samples(
        normal_dir="train",
        normal_test_dir="test/normal",
        abnormal_dir="test/tumor",
        root=base,
        mask_suffix=None,
    )
    annotation_dir = base / "test" / "annotation"
    listing = list_folder(annotation_dir, mask_suffix=None, masks_only=True, role="annotation")
    problems += listing.problems
    annotations = {mask.relative_to(annotation_dir).as_posix(): mask for mask in listing.masks}
    used = set()
    records = []
    for row in samples.itertuples():
        image = Path(row.image_path)
        masks = []
        if row.label_index == LabelName.ABNORMAL and annotation_dir.is_dir():
            name = image.relative_to(base / "test" / "tumor").as_posix()
            mask_name = _mask_name(name)
            if mask_name in annotations:
                masks = [annotations[mask_name]]
                used.add(mask_name)
            else:
                reason = f"tumour slice has no annotation (expected {annotation_dir / mask_name})"
                problems.append(DatasetProblem(str(image), reason))
        records.append((image, row.label_index, row.split, masks, row.key))
    for name in sorted(set(annotations) - used):
        reason = f"annotation has no tumour slice (no {Path(name).name.replace('seg', 'flair')} in test/tumor)"
        problems.append(DatasetProblem(str(annotations[name]), reason))
    return make_samples(records), problems


def _mask_name(name: str) -> str:
    """Annotation file of a tumour slice: MedIAnomaly's ``flair`` -> ``seg`` in the file name."""
    folder, _, file_name = name.rpartition("/")
    return f"{folder}/{file_name.replace('flair', 'seg')}" if folder else file_name.replace("flair", "seg")


def load_medianomaly_folders(base: str | Path) -> tuple[DataFrame, list[DatasetProblem]]:
    """Read the Camelyon16 layout: ``train/good/``, ``test/good/``, ``test/Ungood/``.

    Args:
        base: The category folder.

    Returns:
        Samples (image labels only) and problems.
    """
    return make_medical_folder_samples(
        normal_dir="train/good",
        normal_test_dir="test/good",
        abnormal_dir="test/Ungood",
        root=Path(base).absolute(),
        mask_suffix=None,
    )


_LOADERS = {"json": load_medianomaly_json, "brats": load_medianomaly_brats, "folders": load_medianomaly_folders}


class MedIAnomaly(MedicalDataModule):
    """A MedIAnomaly benchmark with its own train/test split (see the module docstring).

    Args:
        root: The MedIAnomaly data folder (holding the category folders, ``~/MedIAnomaly-Data`` in
            the MedIAnomaly code) or the category folder itself.
        category: ``RSNA``, ``VinCXR``, ``BrainTumor``, ``LAG`` (``data.json``), ``BraTS2021``
            (masks) or ``Camelyon16``. Another name is read if its folder has one of the layouts.
        val_split_mode: anomalib's validation split mode; default ``same_as_test``: MedIAnomaly has
            no validation split and evaluates on the test set.
        **kwargs: The arguments of :class:`~anomalib_skipts.data.base.MedicalDataModule`:
            ``num_train``, ``num_test_normal``, ``num_test_abnormal`` take seeded subsets (seeded by
            ``split_seed``) of the benchmark's split (``None``, the default, uses all of it);
            ``skip_invalid``, batch sizes, workers, augmentations, split modes, ``seed``.
    """

    def __init__(
        self,
        root: str | Path = "./datasets/MedIAnomaly-Data",
        category: str = "RSNA",
        val_split_mode: ValSplitMode | str = ValSplitMode.SAME_AS_TEST,
        **kwargs: Any,
    ) -> None:
        super().__init__(name="MedIAnomaly", val_split_mode=val_split_mode, **kwargs)
        known = {normalise_name(name): name for name in MEDIANOMALY_CATEGORIES}
        self.category = known.get(normalise_name(category), category)
        self.root = Path(root).expanduser()

    @property
    def category_dir(self) -> Path:
        """The category folder: ``root/<category>``, or ``root`` if it is the category folder."""
        nested = self.root / self.category
        if nested.is_dir() or normalise_name(self.root.name) != normalise_name(self.category):
            return nested
        return self.root

    @property
    def layout(self) -> str | None:
        """``json``, ``brats`` or ``folders``: the category's layout, else the one found on disk."""
        if self.category in MEDIANOMALY_CATEGORIES:
            return MEDIANOMALY_CATEGORIES[self.category]
        base = self.category_dir
        if (base / "data.json").is_file():
            return "json"
        if (base / "test" / "tumor").is_dir():
            return "brats"
        if (base / "test" / "Ungood").is_dir():
            return "folders"
        return None

    def _make_samples(self) -> tuple[DataFrame, list[DatasetProblem]]:
        base = self.category_dir
        if not base.is_dir():
            reason = f"category folder does not exist (looked for {self.category}/ in {self.root.absolute()})"
            return make_samples([]), [DatasetProblem(str(base.absolute()), reason, fatal=True)]
        layout = self.layout
        if layout is None:
            reason = "no MedIAnomaly layout found here (no data.json, no test/tumor/, no test/Ungood/)"
            return make_samples([]), [DatasetProblem(str(base.absolute()), reason, fatal=True)]
        return _LOADERS[layout](base)

    def _layout_hint(self) -> str:
        layouts = [self.layout] if self.layout else list(LAYOUTS)
        lines = [f"root is {self.root.absolute()}, category {self.category}. Expected MedIAnomaly layout:"]
        lines += [f"  {LAYOUTS[layout]}" for layout in layouts]
        lines.append(f"The pre-processed benchmarks are downloaded as described at {MEDIANOMALY_URL}.")
        return "\n".join(lines)
