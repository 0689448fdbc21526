"""How a model's input files were read, as stored in checkpoints and exported models.

A model trained on the medical datamodules saw images read by
:func:`anomalib_skipts.data.readers.read_image` with one DICOM window; prediction and deployment must
read new files the same way. The datamodules store these *input settings* in every checkpoint (a
plain dictionary under :data:`INPUT_SETTINGS_KEY`, inside the datamodule's state), exports carry them
in their metadata, and the predict dataset and deployment reader use them.

This module has no dependencies, so that both the data and the model packages can use it.

Example:
    >>> import torch
    >>> settings = find_input_settings(torch.load("model.ckpt", weights_only=False))
    >>> settings
    {'reader': 'anomalib_skipts.data.readers.read_image', 'dicom_window': None, 'version': 1}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["INPUT_SETTINGS_KEY", "READER", "VERSION", "describe_inputs", "find_input_settings"]

#: Key of the input settings in a datamodule's ``state_dict()`` and in export metadata.
INPUT_SETTINGS_KEY = "medical_input"


def find_input_settings(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """Find the input settings in a Lightning checkpoint.

    Lightning stores a datamodule's state under the datamodule's class name, so the settings are
    looked up at the top level and one level down, whichever datamodule wrote them.

    Args:
        checkpoint: Loaded checkpoint dictionary.

    Returns:
        The settings, or ``None`` when the model was not trained on a medical datamodule (or the
        checkpoint predates input settings).
    """
    if isinstance(checkpoint.get(INPUT_SETTINGS_KEY), Mapping):
        return dict(checkpoint[INPUT_SETTINGS_KEY])
    for value in checkpoint.values():
        if isinstance(value, Mapping) and isinstance(value.get(INPUT_SETTINGS_KEY), Mapping):
            return dict(value[INPUT_SETTINGS_KEY])
    return None


#: The function that reads the images of the medical datamodules.
READER = "anomalib_skipts.data.readers.read_image"
#: Version of the settings' layout.
VERSION = 1


def describe_inputs(dicom_window: str | tuple[float, float] | list[float] | None) -> dict[str, Any]:
    """Describe how the medical datamodules read images, as stored in checkpoints and exports.

    Args:
        dicom_window: The DICOM window of the datamodule: ``None`` (each file's own window), a name
            (``"brain"``) or ``(center, width)``.

    Returns:
        Plain (JSON-serialisable) settings: ``reader``, ``dicom_window`` and ``version``.
    """
    window = [float(value) for value in dicom_window] if isinstance(dicom_window, tuple | list) else dicom_window
    return {"reader": READER, "dicom_window": window, "version": VERSION}
