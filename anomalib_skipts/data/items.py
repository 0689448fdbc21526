"""anomalib items and batches that also tell the patient, and for volume slices the volume and slice.

:class:`MedicalImageItem` and :class:`MedicalImageBatch` are anomalib's
:class:`~anomalib.data.dataclasses.ImageItem` / :class:`~anomalib.data.dataclasses.ImageBatch` with three
optional fields more: ``patient_id`` (whose scan it is: patient-level scores group slices by it),
``volume_path`` (the NIfTI file or DICOM series folder a slice comes from) and ``slice_index`` (its index
along the slice axis). Collation, ``update``, ``to_numpy`` and iteration work as in anomalib, so every
anomalib model, pre- and post-processor and callback accepts them unchanged, and the fields travel with
the model's outputs to the callbacks that aggregate or write them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from anomalib.data.dataclasses import ImageBatch, ImageItem, NumpyImageBatch, NumpyImageItem

__all__ = ["MedicalImageBatch", "MedicalImageItem", "NumpyMedicalImageBatch", "NumpyMedicalImageItem"]


@dataclass
class NumpyMedicalImageItem(NumpyImageItem):
    """Numpy twin of :class:`MedicalImageItem`."""

    patient_id: str | None = None
    volume_path: str | None = None
    slice_index: int | None = None


@dataclass
class NumpyMedicalImageBatch(NumpyImageBatch):
    """Numpy twin of :class:`MedicalImageBatch`."""

    item_class: ClassVar[type[NumpyMedicalImageItem]] = NumpyMedicalImageItem
    patient_id: list[str] | None = None
    volume_path: list[str] | None = None
    slice_index: np.ndarray | None = None


@dataclass
class MedicalImageItem(ImageItem):
    """anomalib image item with the patient, and for a volume slice its volume and index.

    Attributes:
        patient_id: Identifier of the patient (``None`` when the dataset does not tell it).
        volume_path: NIfTI file or DICOM series folder of a slice (``None`` for 2-D files).
        slice_index: Index of a slice along its volume's slice axis (``None`` for 2-D files).
    """

    numpy_class: ClassVar[type[NumpyMedicalImageItem]] = NumpyMedicalImageItem
    patient_id: str | None = None
    volume_path: str | None = None
    slice_index: int | None = None


@dataclass
class MedicalImageBatch(ImageBatch):
    """anomalib image batch with ``patient_id``, ``volume_path`` (lists) and ``slice_index`` (tensor)."""

    item_class: ClassVar[type[MedicalImageItem]] = MedicalImageItem
    numpy_class: ClassVar[type[NumpyMedicalImageBatch]] = NumpyMedicalImageBatch
    patient_id: list[str] | None = None
    volume_path: list[str] | None = None
    slice_index: torch.Tensor | None = None
