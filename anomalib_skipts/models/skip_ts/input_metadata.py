"""Carry the input settings (how the training images were read) into checkpoints and exported models.

A model trained on the medical datamodules saw images read with one reader and DICOM window (see
:mod:`anomalib_skipts.input_settings`). :class:`InputSettingsMixin` keeps those settings on the
model (``input_settings``, from the training datamodule or the loaded checkpoint) and writes them
into every export of anomalib's ``Engine.export`` / ``anomalib export``:

- torch (``.pt``): the pickled model carries its ``input_settings`` attribute;
- ONNX (``.onnx``): a ``metadata_props`` entry :data:`ONNX_METADATA_KEY` (JSON);
- OpenVINO (``.xml``): the runtime-info entry :data:`OPENVINO_RT_INFO_PATH` (JSON).

:mod:`anomalib_skipts.deploy` reads them back to feed anomalib's inferencers.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from anomalib_skipts.input_settings import INPUT_SETTINGS_KEY, find_input_settings

__all__ = ["ONNX_METADATA_KEY", "OPENVINO_RT_INFO_PATH", "InputSettingsMixin"]

#: ``metadata_props`` key of the input settings in exported ONNX models.
ONNX_METADATA_KEY = f"anomalib_skipts.{INPUT_SETTINGS_KEY}"
#: Runtime-info path of the input settings in exported OpenVINO models.
OPENVINO_RT_INFO_PATH = ["anomalib_skipts", INPUT_SETTINGS_KEY]


def _write_onnx_metadata(path: Path, settings: dict[str, Any]) -> None:
    import onnx

    model = onnx.load(str(path))
    kept = [prop for prop in model.metadata_props if prop.key != ONNX_METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=ONNX_METADATA_KEY, value=json.dumps(settings))
    onnx.save(model, str(path))


def _write_openvino_metadata(path: Path, settings: dict[str, Any]) -> None:
    import openvino as ov

    model = ov.Core().read_model(path)
    model.set_rt_info(json.dumps(settings), OPENVINO_RT_INFO_PATH)
    with tempfile.TemporaryDirectory() as folder:  # the weights of ``path`` stay mapped until saved
        temporary = Path(folder) / path.name
        ov.save_model(model, temporary, compress_to_fp16=False)
        del model
        shutil.move(temporary, path)
        shutil.move(temporary.with_suffix(".bin"), path.with_suffix(".bin"))


class InputSettingsMixin:
    """Keep the training input settings on an anomalib model and write them into its exports.

    Put it before :class:`~anomalib.models.components.AnomalibModule` in the bases. The settings come
    from the datamodule at the start of fitting, or from the checkpoint when one is loaded; a model
    trained on other data has ``input_settings = None`` and exports nothing extra.
    """

    input_settings: dict[str, Any] | None = None

    def on_fit_start(self) -> None:
        """Take the input settings of the training datamodule."""
        super().on_fit_start()  # type: ignore[misc]
        datamodule = getattr(getattr(self, "trainer", None), "datamodule", None)
        if datamodule is not None:
            self.input_settings = find_input_settings(datamodule.state_dict())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the input settings in the checkpoint too (also when saved without the datamodule)."""
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]
        if self.input_settings is not None:
            checkpoint[INPUT_SETTINGS_KEY] = self.input_settings

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Take the input settings of the checkpoint."""
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]
        self.input_settings = find_input_settings(checkpoint)

    def to_onnx(self, *args: Any, **kwargs: Any) -> Path:
        """Export to ONNX (anomalib's ``to_onnx``), with the input settings in the metadata."""
        path = Path(super().to_onnx(*args, **kwargs))  # type: ignore[misc]
        if self.input_settings is not None:
            _write_onnx_metadata(path, self.input_settings)
        return path

    def to_openvino(self, *args: Any, **kwargs: Any) -> Path:
        """Export to OpenVINO (anomalib's ``to_openvino``), with the input settings in the runtime info."""
        path = Path(super().to_openvino(*args, **kwargs))  # type: ignore[misc]
        if self.input_settings is not None:
            _write_openvino_metadata(path, self.input_settings)
        return path
