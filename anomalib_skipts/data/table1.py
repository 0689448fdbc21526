"""The Skip-TS benchmark datasets (the journal paper's Table I): raw public layouts and datamodules.

The facts of the twelve datasets (name, modality, where to download, the raw layout, the Table I
split counts, the conference paper's counts where it has them, how file names tell the patient)
are data: ``table1.yaml`` beside this module, read into :data:`DATASETS`. This module holds what is
code: a loader per raw layout (the download -> a samples frame), :class:`BenchmarkDataModule` (the
paper's split as defaults over the :class:`~anomalib_skipts.data.base.MedicalDataModule` base) and
one datamodule per dataset that has a loader (:class:`HeadCT`, :class:`BrainMRI`, :class:`BUSI`,
:class:`RetinalOCT`, :class:`CPChildA`, :class:`CPChildB`, :class:`IQOTHNCCD`, :class:`MalariaCell`).
Datasets without a loader say why in their ``notes`` and are read with
:class:`~anomalib_skipts.data.MedicalFolder`.

Example:
    >>> from anomalib_skipts.data import DATASETS, HeadCT
    >>> DATASETS["headct"].journal
    SplitCounts(train=60, test_normal=40, test_abnormal=100)
    >>> datamodule = HeadCT(root="../shared/data/headct")                  # Table I split
    >>> datamodule = HeadCT(root="../shared/data/headct", split="conference")  # 90 / 10 & 100

    From the command line::

        anomalib train --model SkipTS --data datamodules/headct.yaml --data.root /data/headct
"""

from __future__ import annotations

import csv
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import yaml
from anomalib.data.utils import LabelName, ValSplitMode
from pandas import DataFrame

from anomalib_skipts.data.base import MedicalDataModule
from anomalib_skipts.data.listing import child_folder, list_folder, make_samples, normalise_name
from anomalib_skipts.data.medical_folder import make_medical_folder_samples
from anomalib_skipts.data.problems import DatasetProblem

__all__ = [
    "DATAMODULES",
    "DATASETS",
    "BUSI",
    "BenchmarkDataModule",
    "BenchmarkDataset",
    "BrainMRI",
    "CPChildA",
    "CPChildB",
    "HeadCT",
    "IQOTHNCCD",
    "MalariaCell",
    "RetinalOCT",
    "SplitCounts",
    "get_benchmark_datamodule",
    "get_dataset",
    "load_brainmri",
    "load_busi",
    "load_cp_child_a",
    "load_cp_child_b",
    "load_headct",
    "load_iq_oth_nccd",
    "load_malaria_cell",
    "load_retinal_oct",
]

logger = logging.getLogger(__name__)

#: A loader: dataset root -> (samples frame, problems found). See :func:`make_samples`.
Loader = Callable[[Path], tuple[DataFrame, list[DatasetProblem]]]

SPLITS = ("journal", "conference")
#: The facts table, shipped with the package.
FACTS_FILE = "table1.yaml"


@dataclass(frozen=True)
class SplitCounts:
    """Image counts of a benchmark split.

    Attributes:
        train: Normal training images.
        test_normal: Normal test images.
        test_abnormal: Abnormal test images.
    """

    train: int
    test_normal: int
    test_abnormal: int

    @property
    def total(self) -> int:
        """Number of images used in all."""
        return self.train + self.test_normal + self.test_abnormal


@dataclass(frozen=True)
class BenchmarkDataset:
    """One public dataset of the Skip-TS benchmark (journal paper, Table I).

    Attributes:
        key: Registry key (``"headct"``), also the name of its YAML in ``datamodules/``.
        id: Table I ID (1-12).
        name: Name used in the papers.
        modality: Imaging modality.
        disease: The anomaly (abnormal class).
        url: Where to download the raw data.
        reference: Citation of the data.
        layout: The raw layout of the download, as the loader expects it.
        journal: Table I (journal paper) split counts.
        conference: Conference paper (ISCAS 2023) split counts, for the datasets it used.
        loader: Raw layout -> samples, or ``None`` where the layout is not unambiguous.
        patient_pattern: Where the file names tell the patient: a regular expression with a group
            named ``patient``, searched in each file name; the split is then by patient (no
            patient's images on both sides). ``None``: the layout does not tell the patient.
        notes: Anything a user should know (why there is no loader, which classes are used).
    """

    key: str
    id: int
    name: str
    modality: str
    disease: str
    url: str
    reference: str
    layout: str
    journal: SplitCounts
    conference: SplitCounts | None = None
    loader: Loader | None = None
    notes: str = ""
    patient_pattern: str | None = None

    @property
    def default_root(self) -> Path:
        """Where the datamodule looks when no ``root`` is given: ``./datasets/<key>``."""
        return Path("datasets") / self.key

    def split_counts(self, split: str = "journal") -> SplitCounts:
        """Return the counts of a named split.

        Args:
            split: ``"journal"`` (Table I) or ``"conference"`` (ISCAS 2023 paper).

        Returns:
            The split counts.

        Raises:
            ValueError: If the split is unknown or the conference paper did not use the dataset.
        """
        if split == "journal":
            return self.journal
        if split == "conference":
            if self.conference is None:
                available = ", ".join(info.name for info in DATASETS.values() if info.conference is not None)
                msg = f"{self.name} has no conference split; the conference paper used {available}."
                raise ValueError(msg)
            return self.conference
        msg = f"Unknown split {split!r}: expected one of {SPLITS}."
        raise ValueError(msg)


# --------------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------------
def _dataset_base(root: Path, wrappers: Sequence[str], marker: str) -> Path:
    """Return ``root``, or the wrapper folder inside it that holds ``marker`` (a nested download)."""
    if child_folder(root, marker) is not None:
        return root
    for wrapper in wrappers:
        nested = child_folder(root, wrapper)
        if nested is not None and child_folder(nested, marker) is not None:
            return nested
    return root


def _find_dirs(root: Path, names: Iterable[str], max_depth: int = 4) -> list[Path]:
    """Folders under ``root`` (``root`` included) whose normalised name is one of ``names``."""
    wanted = {normalise_name(name) for name in names}
    found = []
    root = root.absolute()
    for current, dirs, _ in os.walk(root):
        current_path = Path(current)
        depth = len(current_path.relative_to(root).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if depth >= max_depth:
            dirs[:] = []
        if normalise_name(current_path.name) in wanted:
            found.append(current_path)
            dirs[:] = []  # a class folder's sub-folders belong to it
    return sorted(found)


def _missing(root: Path, what: str) -> DatasetProblem:
    return DatasetProblem(str(root), f"no {what} found (searched {root} and its sub-folders)", fatal=True)


def load_headct(root: Path) -> tuple[DataFrame, list[DatasetProblem]]:
    """HeadCT: ``head_ct/<id>.png`` and ``labels.csv`` (``id, hemorrhage``).

    Args:
        root: Folder holding ``labels.csv`` and ``head_ct/`` (a nested ``head_ct/head_ct/``, as in
            the Kaggle archive, is accepted).

    Returns:
        Samples and problems: labels naming missing images, images without labels, duplicate or
        malformed rows, file names that are not ids, unreadable or missing labels file.
    """
    root = Path(root).absolute()
    problems: list[DatasetProblem] = []
    image_dir = root / "head_ct"
    nested = child_folder(image_dir, "head_ct")
    if nested is not None and not any(path.is_file() for path in image_dir.iterdir()):
        image_dir = nested
    listing = list_folder(image_dir, mask_suffix=None, recursive=False, role="HeadCT image")
    problems += listing.problems

    labels_path = root / "labels.csv"
    labels: dict[int, int] = {}
    if not labels_path.is_file():
        problems.append(DatasetProblem(str(labels_path), "labels file does not exist", fatal=True))
    else:
        labels = _read_headct_labels(labels_path, problems)

    images_by_id: dict[int, Path] = {}
    for image in listing.images:
        if not image.stem.isdigit():
            reason = "file name is not a numeric id, so labels.csv cannot label it (rename it or remove it)"
            problems.append(DatasetProblem(str(image), reason))
            continue
        image_id = int(image.stem)
        if image_id in images_by_id:
            reason = f"id {image_id} is also the id of {images_by_id[image_id].name}; ids must be unique"
            problems.append(DatasetProblem(str(image), reason))
            continue
        images_by_id[image_id] = image
    if labels_path.is_file():
        for image_id, image in images_by_id.items():
            if image_id not in labels:
                problems.append(
                    DatasetProblem(str(image), f"image has no label: no row with id {image_id} in labels.csv")
                )
        for image_id in sorted(set(labels) - set(images_by_id)):
            reason = f"labels id {image_id}, but there is no image {image_id:03d}.png in {image_dir}"
            problems.append(DatasetProblem(f"{labels_path} (id {image_id})", reason))

    records = [
        (image, labels[image_id], "", [], f"head_ct/{image.name}")
        for image_id, image in sorted(images_by_id.items())
        if image_id in labels
    ]
    return make_samples(records), problems


def _read_headct_labels(path: Path, problems: list[DatasetProblem]) -> dict[int, int]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            rows = list(csv.reader(file))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        problems.append(DatasetProblem(str(path), f"labels file cannot be read ({error})", fatal=True))
        return {}
    header = [cell.strip().lower() for cell in rows[0]] if rows else []
    if "id" not in header or "hemorrhage" not in header:
        reason = f"labels file needs the header 'id, hemorrhage', found {rows[0] if rows else 'an empty file'}"
        problems.append(DatasetProblem(str(path), reason, fatal=True))
        return {}
    id_column, label_column = header.index("id"), header.index("hemorrhage")
    labels: dict[int, int] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path} (line {line})"
        try:
            image_id, label = int(row[id_column].strip()), int(row[label_column].strip())
        except (ValueError, IndexError):
            problems.append(DatasetProblem(where, f"malformed row {row}: expected '<id>, <0 or 1>'"))
            continue
        if label not in {LabelName.NORMAL, LabelName.ABNORMAL}:
            problems.append(DatasetProblem(where, f"hemorrhage must be 0 or 1, got {label}"))
        elif image_id in labels:
            problems.append(DatasetProblem(where, f"id {image_id} is labelled twice"))
        else:
            labels[image_id] = label
    return labels


def load_brainmri(root: Path) -> tuple[DataFrame, list[DatasetProblem]]:
    """BrainMRI: ``no/`` (normal) and ``yes/`` (tumour), also inside ``brain_tumor_dataset/``.

    Args:
        root: Folder holding ``no/`` and ``yes/``.

    Returns:
        Samples and problems.
    """
    base = _dataset_base(Path(root).absolute(), ["brain_tumor_dataset"], "no")
    return make_medical_folder_samples(normal_dir="no", abnormal_dir="yes", root=base, mask_suffix=None)


def load_busi(root: Path) -> tuple[DataFrame, list[DatasetProblem]]:
    """BUSI: ``normal/``, ``benign/``, ``malignant/`` with ``*_mask.png`` (``*_mask_<n>.png``) beside.

    Args:
        root: Folder holding the three class folders (or ``Dataset_BUSI_with_GT/`` holding them).

    Returns:
        Samples (segmentation when masks are present: masks of normal images are ignored and
        several masks of one image are OR-ed; classification without masks) and problems.
    """
    base = _dataset_base(Path(root).absolute(), ["Dataset_BUSI_with_GT"], "benign")
    return make_medical_folder_samples(
        normal_dir="normal",
        abnormal_dir=["benign", "malignant"],
        root=base,
        mask_suffix="_mask",
    )


def _class_folder_loader(
    normal: Sequence[str],
    abnormal: Sequence[str],
    subset: str | None = None,
    shallowest_only: bool = False,
) -> Loader:
    """Loader for layouts of class folders found anywhere under the root (names normalised)."""

    def load(root: Path) -> tuple[DataFrame, list[DatasetProblem]]:
        base = Path(root).absolute()
        if subset is not None:
            base = child_folder(base, subset) or base
        normal_dirs = _find_dirs(base, normal)
        abnormal_dirs = _find_dirs(base, abnormal)
        if shallowest_only:
            normal_dirs, abnormal_dirs = _shallowest(normal_dirs, base), _shallowest(abnormal_dirs, base)
        problems = []
        if not normal_dirs:
            problems.append(_missing(base, f"normal-class folder ({' or '.join(normal)})"))
        if not abnormal_dirs:
            problems.append(_missing(base, f"abnormal-class folder ({' or '.join(abnormal)})"))
        if problems:
            return make_samples([]), problems
        samples, found = make_medical_folder_samples(
            normal_dir=normal_dirs,
            abnormal_dir=abnormal_dirs,
            root=base,
            mask_suffix=None,
        )
        return samples, problems + found

    return load


def _shallowest(folders: list[Path], base: Path) -> list[Path]:
    if not folders:
        return folders
    depth = min(len(folder.relative_to(base).parts) for folder in folders)
    kept = [folder for folder in folders if len(folder.relative_to(base).parts) == depth]
    for folder in folders:
        if folder not in kept:
            logger.warning("Ignoring %s: a nested copy of %s (the archive repeats its tree).", folder, kept[0].name)
    return kept


load_retinal_oct = _class_folder_loader(normal=["NORMAL"], abnormal=["DME"])
load_retinal_oct.__doc__ = "Retinal OCT (Kermany 2018): every ``NORMAL/`` and ``DME/`` folder (train/test/val pooled)."
load_cp_child_a = _class_folder_loader(normal=["Non-Polyp"], abnormal=["Polyp"], subset="CP-CHILD-A")
load_cp_child_a.__doc__ = "CP-CHILD-A: ``CP-CHILD-A/{Train,Test}/{Non-Polyp,Polyp}/`` pooled."
load_cp_child_b = _class_folder_loader(normal=["Non-Polyp"], abnormal=["Polyp"], subset="CP-CHILD-B")
load_cp_child_b.__doc__ = "CP-CHILD-B: ``CP-CHILD-B/{Train,Test}/{Non-Polyp,Polyp}/`` pooled."
load_iq_oth_nccd = _class_folder_loader(
    normal=["Normal cases"],
    abnormal=["Bengin cases", "Benign cases", "Malignant cases"],
)
load_iq_oth_nccd.__doc__ = "IQ-OTH/NCCD: ``Normal cases/`` vs ``Bengin cases/`` + ``Malignant cases/``."
load_malaria_cell = _class_folder_loader(normal=["Uninfected"], abnormal=["Parasitized"], shallowest_only=True)
load_malaria_cell.__doc__ = "Malaria-Cell: ``cell_images/{Uninfected,Parasitized}/`` (nested copy ignored)."


#: The loader of each dataset with an unambiguous raw layout, by registry key.
LOADERS: dict[str, Loader] = {
    "headct": load_headct,
    "brainmri": load_brainmri,
    "busi": load_busi,
    "retinal_oct": load_retinal_oct,
    "cp_child_a": load_cp_child_a,
    "cp_child_b": load_cp_child_b,
    "iq_oth_nccd": load_iq_oth_nccd,
    "malaria_cell": load_malaria_cell,
}


# --------------------------------------------------------------------------------------------------
# Registry: the facts table
# --------------------------------------------------------------------------------------------------
def _counts(values: Sequence[int] | None) -> SplitCounts | None:
    return SplitCounts(*values) if values is not None else None


def load_facts(text: str | None = None) -> dict[str, BenchmarkDataset]:
    """Read the facts table (``table1.yaml``) into :class:`BenchmarkDataset` entries.

    Args:
        text: YAML text of the table; ``None`` reads the one shipped with the package.

    Returns:
        The entries by registry key, in Table I order, each with its loader where there is one.
    """
    if text is None:
        text = resources.files(__package__).joinpath(FACTS_FILE).read_text(encoding="utf-8")
    entries = {}
    for entry in yaml.safe_load(text):
        fields = dict(entry)
        fields["journal"] = _counts(fields["journal"])
        fields["conference"] = _counts(fields.get("conference"))
        entries[fields["key"]] = BenchmarkDataset(**fields, loader=LOADERS.get(fields["key"]))
    return entries


DATASETS: dict[str, BenchmarkDataset] = load_facts()


def get_dataset(dataset: str | int) -> BenchmarkDataset:
    """Look a benchmark dataset up by key, name or Table I ID.

    Args:
        dataset: ``"headct"``, ``"HeadCT"``, ``"CP-CHILD-A"``, ``1``... (case and punctuation ignored).

    Returns:
        The registry entry.

    Raises:
        KeyError: If no dataset matches.
    """
    for info in DATASETS.values():
        if isinstance(dataset, int) and not isinstance(dataset, bool):
            if info.id == dataset:
                return info
        elif normalise_name(str(dataset)) in {normalise_name(info.key), normalise_name(info.name), str(info.id)}:
            return info
    msg = f"Unknown benchmark dataset {dataset!r}; known: {', '.join(info.name for info in DATASETS.values())}."
    raise KeyError(msg)


# --------------------------------------------------------------------------------------------------
# Datamodules
# --------------------------------------------------------------------------------------------------
class BenchmarkDataModule(MedicalDataModule):
    """Datamodule of a benchmark dataset: its raw public layout with the paper's split as defaults.

    Subclasses only set :attr:`dataset_key`. The split counts come from :data:`DATASETS`
    (``split="journal"``: Table I; ``split="conference"``: the ISCAS 2023 paper) unless overridden.
    The validation split mode defaults to ``same_as_test``: the paper evaluates on the test set and
    has no validation set, and anomalib's Folder default (half of the test set) would change
    Table I's test counts. Where the file names tell the patient (the entry's ``patient_pattern``),
    the split is by patient.

    Args:
        root: Folder of the unpacked download; ``None`` means ``./datasets/<key>``.
        split: ``"journal"`` (Table I) or ``"conference"``.
        num_train: Override the number of normal training images.
        num_test_normal: Override the number of normal test images.
        num_test_abnormal: Override the number of abnormal test images.
        val_split_mode: anomalib's validation split mode (default ``same_as_test``, see above).
        **kwargs: The seeds, validation and anomalib arguments of
            :class:`~anomalib_skipts.data.base.MedicalDataModule` (``split_seed``, ``seed``,
            ``skip_invalid``, ``dicom_window``, batch sizes, workers, augmentations, split modes).
    """

    #: Key of the dataset in :data:`DATASETS`.
    dataset_key: ClassVar[str] = ""

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "journal",
        num_train: int | None = None,
        num_test_normal: int | None = None,
        num_test_abnormal: int | None = None,
        val_split_mode: ValSplitMode | str = ValSplitMode.SAME_AS_TEST,
        **kwargs: Any,
    ) -> None:
        if self.dataset_key not in DATASETS:
            msg = f"{type(self).__name__} must set dataset_key to one of {sorted(DATASETS)}."
            raise TypeError(msg)
        info = DATASETS[self.dataset_key]
        if info.loader is None:
            msg = f"{info.name} has no loader: {info.notes}"
            raise TypeError(msg)
        counts = info.split_counts(split)
        super().__init__(
            name=info.name,
            num_train=counts.train if num_train is None else num_train,
            num_test_normal=counts.test_normal if num_test_normal is None else num_test_normal,
            num_test_abnormal=counts.test_abnormal if num_test_abnormal is None else num_test_abnormal,
            val_split_mode=val_split_mode,
            patient_pattern=info.patient_pattern,
            **kwargs,
        )
        self.info = info
        self.split = split
        self.root = Path(root).expanduser() if root is not None else info.default_root

    def _make_samples(self) -> tuple[DataFrame, list[DatasetProblem]]:
        assert self.info.loader is not None  # checked in __init__
        return self.info.loader(self.root)

    def _layout_hint(self) -> str:
        return (
            f"root is {self.root.absolute()}. {self.info.name} is downloaded from {self.info.url}; "
            f"expected raw layout:\n{self.info.layout}"
        )


class HeadCT(BenchmarkDataModule):
    """HeadCT (Table I, ID 1): ``head_ct/*.png`` + ``labels.csv``; 60 / 40 & 100 (conference 90 / 10 & 100).

    See :class:`BenchmarkDataModule` for the arguments.
    """

    dataset_key = "headct"


class BrainMRI(BenchmarkDataModule):
    """BrainMRI (Table I, ID 2): ``no/``, ``yes/``; 58 / 40 & 154 (conference 88 / 10 & 154).

    See :class:`BenchmarkDataModule` for the arguments.
    """

    dataset_key = "brainmri"


class BUSI(BenchmarkDataModule):
    """BUSI (Table I, ID 4): ``normal/``, ``benign/``, ``malignant/`` with masks; 99 / 34 & 647.

    Masks (``*_mask.png``, ``*_mask_<n>.png``, OR-ed) give pixel metrics; without them the task is
    classification (image metrics only). See :class:`BenchmarkDataModule` for the arguments.
    """

    dataset_key = "busi"


class RetinalOCT(BenchmarkDataModule):
    """Retinal OCT (Table I, ID 6): ``NORMAL/`` vs ``DME/`` folders of OCT2017; 542 / 50 & 735.

    Split by patient (``NORMAL-<patient>-<n>.jpeg``): no patient has images in training and test.

    See :class:`BenchmarkDataModule` for the arguments.
    """

    dataset_key = "retinal_oct"


class CPChildA(BenchmarkDataModule):
    """CP-CHILD-A (Table I, ID 7): ``Non-Polyp/`` vs ``Polyp/``; 800 / 800 & 800.

    See :class:`BenchmarkDataModule` for the arguments.
    """

    dataset_key = "cp_child_a"


class CPChildB(BenchmarkDataModule):
    """CP-CHILD-B (Table I, ID 8): ``Non-Polyp/`` vs ``Polyp/``; 800 / 300 & 300.

    See :class:`BenchmarkDataModule` for the arguments.
    """

    dataset_key = "cp_child_b"


class IQOTHNCCD(BenchmarkDataModule):
    """IQ-OTH/NCCD (Table I, ID 10): ``Normal cases/`` vs benign + malignant; 277 / 139 & 681.

    See :class:`BenchmarkDataModule` for the arguments.
    """

    dataset_key = "iq_oth_nccd"


class MalariaCell(BenchmarkDataModule):
    """Malaria-Cell (Table I, ID 12): ``Uninfected/`` vs ``Parasitized/``; 344 / 345 & 330.

    See :class:`BenchmarkDataModule` for the arguments.
    """

    dataset_key = "malaria_cell"


#: Datamodule class of every dataset that has a loader, by registry key.
DATAMODULES: dict[str, type[BenchmarkDataModule]] = {
    cls.dataset_key: cls for cls in (HeadCT, BrainMRI, BUSI, RetinalOCT, CPChildA, CPChildB, IQOTHNCCD, MalariaCell)
}


def get_benchmark_datamodule(dataset: str | int, **kwargs: Any) -> BenchmarkDataModule:
    """Create the datamodule of a benchmark dataset by key, name or Table I ID.

    Args:
        dataset: ``"headct"``, ``"BrainMRI"``, ``4``... (see :func:`get_dataset`).
        **kwargs: Arguments of :class:`BenchmarkDataModule` (``root``, ``split``...).

    Returns:
        The datamodule.

    Raises:
        KeyError: If the dataset is unknown or has no loader.
    """
    info = get_dataset(dataset)
    if info.key not in DATAMODULES:
        msg = f"{info.name} has no loader: {info.notes}"
        raise KeyError(msg)
    return DATAMODULES[info.key](**kwargs)


def get_datamodule(dataset: str | int, **kwargs: Any) -> BenchmarkDataModule:
    """Create the datamodule of a benchmark dataset (old name of :func:`get_benchmark_datamodule`).

    Deprecated: the name shadows anomalib's :func:`anomalib.data.get_datamodule`, which takes a
    configuration, not a dataset name.

    Args:
        dataset: ``"headct"``, ``"BrainMRI"``, ``4``... (see :func:`get_dataset`).
        **kwargs: Arguments of :class:`BenchmarkDataModule`.

    Returns:
        The datamodule.
    """
    warnings.warn(
        "anomalib_skipts.data.get_datamodule is renamed get_benchmark_datamodule (the old name shadows "
        "anomalib.data.get_datamodule); the old name will be removed.",
        FutureWarning,
        stacklevel=2,
    )
    return get_benchmark_datamodule(dataset, **kwargs)
