"""Medical datamodules for anomalib: any folder of medical images, and the Skip-TS benchmark datasets.

Every datamodule is a :class:`MedicalDataModule` (:mod:`~anomalib_skipts.data.base`); each dataset
family has one module with its raw-layout loader and its datamodule: :mod:`~.medical_folder`
(:class:`MedicalFolder`), :mod:`~.table1` (the paper's Table I datasets, :data:`DATASETS`),
:mod:`~.bmad`, :mod:`~.medianomaly`, :mod:`~.volumes` and :mod:`~.phantom` (the offline demo data).
Importing this package (or anomalib's ``anomalib.data``, once the package is installed) registers the
datamodules of :data:`ANOMALIB_DATAMODULES` on ``anomalib.data``, where anomalib's
``get_datamodule`` (``anomalib benchmark``, the tiled ensemble) looks them up.
"""

from importlib import import_module

from anomalib_skipts.data.base import MedicalDataModule, MedicalFolderDataset
from anomalib_skipts.data.bmad import BMAD, BMAD_CATEGORIES
from anomalib_skipts.data.items import MedicalImageBatch, MedicalImageItem
from anomalib_skipts.data.medianomaly import MEDIANOMALY_CATEGORIES, MedIAnomaly
from anomalib_skipts.data.medical_folder import MedicalFolder
from anomalib_skipts.data.phantom import HeadPhantom, generate_head_phantom
from anomalib_skipts.data.predict import MedicalInputs, MedicalPredictDataset
from anomalib_skipts.data.problems import DatasetProblem, InvalidDatasetError, SplitError
from anomalib_skipts.data.readers import DICOM_WINDOWS, ImageReadError, read_image, read_mask
from anomalib_skipts.data.table1 import (
    BUSI,
    DATAMODULES,
    DATASETS,
    IQOTHNCCD,
    BenchmarkDataModule,
    BenchmarkDataset,
    BrainMRI,
    CPChildA,
    CPChildB,
    HeadCT,
    MalariaCell,
    RetinalOCT,
    SplitCounts,
    get_benchmark_datamodule,
    get_datamodule,
    get_dataset,
)
from anomalib_skipts.data.volume_phantom import generate_volume_phantom
from anomalib_skipts.data.volumes import VolumeFolder, VolumeSliceDataset
from anomalib_skipts.registration import register_datamodules

ANOMALIB_DATAMODULES = {
    "MedicalFolder": MedicalFolder,
    "VolumeFolder": VolumeFolder,
    "HeadPhantom": HeadPhantom,
    "MedicalBMAD": BMAD,  # anomalib.data.BMAD is anomalib's own (its repackaging only)
    "MedIAnomaly": MedIAnomaly,
    **{datamodule.__name__: datamodule for datamodule in DATAMODULES.values()},
}
"""Name on ``anomalib.data`` -> the project's datamodule (``class_path: HeadCT`` in ``anomalib benchmark``)."""

# ``import_module`` returns the module object even while the import hook is finishing it.
register_datamodules(import_module("anomalib.data"))

__all__ = [
    "ANOMALIB_DATAMODULES",
    "BMAD",
    "BMAD_CATEGORIES",
    "BUSI",
    "DATAMODULES",
    "DATASETS",
    "DICOM_WINDOWS",
    "IQOTHNCCD",
    "BenchmarkDataModule",
    "BenchmarkDataset",
    "BrainMRI",
    "CPChildA",
    "CPChildB",
    "DatasetProblem",
    "HeadCT",
    "HeadPhantom",
    "ImageReadError",
    "InvalidDatasetError",
    "MEDIANOMALY_CATEGORIES",
    "MalariaCell",
    "MedicalImageBatch",
    "MedicalImageItem",
    "MedIAnomaly",
    "MedicalDataModule",
    "MedicalFolder",
    "MedicalFolderDataset",
    "MedicalInputs",
    "MedicalPredictDataset",
    "RetinalOCT",
    "SplitCounts",
    "SplitError",
    "VolumeFolder",
    "VolumeSliceDataset",
    "generate_head_phantom",
    "generate_volume_phantom",
    "get_benchmark_datamodule",
    "get_datamodule",
    "get_dataset",
    "read_image",
    "read_mask",
]
