"""Exported Skip-TS on DICOM and 16-bit PNG: the export records the input handling; scores equal the engine's."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from anomalib.deploy import ExportType

from anomalib_skipts.data import MedicalFolder, MedicalPredictDataset
from anomalib_skipts.deploy import export_input_settings, main, predict_folder
from anomalib_skipts.models import SkipTS

from .data.medical_inputs import SIZE, TRAIN_WINDOW, ensure_entry_point, make_engine, write_ct_tree

pytest.importorskip("pydicom")
pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Path]]:
    """Skip-TS fitted for one epoch on DICOM slices with a training window; its torch, ONNX and OpenVINO exports."""
    root = tmp_path_factory.mktemp("deploy")
    ensure_entry_point(root / "entry_points")
    data = write_ct_tree(root / "data")
    datamodule = MedicalFolder(
        name="ct",
        root=data / "dicom",
        normal_dir="normal",
        abnormal_dir="abnormal",
        num_train=6,
        num_test_normal=4,
        dicom_window=TRAIN_WINDOW,
        train_batch_size=3,
        num_workers=0,
    )
    engine = make_engine(root / "train", max_epochs=1)
    engine.fit(model=SkipTS(backbone="resnet18", pre_trained=False, image_size=64), datamodule=datamodule)
    checkpoint = Path(engine.trainer.checkpoint_callback.best_model_path)
    exports = {
        export_type.value: make_engine(root / "export").export(
            model=SkipTS(),
            export_type=export_type,
            export_root=root / "export",
            input_size=None if export_type == ExportType.TORCH else (SIZE, SIZE),
            ckpt_path=checkpoint,
        )
        for export_type in (ExportType.TORCH, ExportType.ONNX, ExportType.OPENVINO)
    }
    return data, checkpoint, exports


@pytest.mark.parametrize("export_type", ["torch", "onnx", "openvino"])
def test_exports_record_the_input_settings(exported: tuple, export_type: str) -> None:
    _, _, exports = exported
    settings = export_input_settings(exports[export_type])
    assert settings is not None
    assert settings["dicom_window"] == list(TRAIN_WINDOW)
    assert settings["reader"] == "anomalib_skipts.data.readers.read_image"


@pytest.mark.parametrize("kind", ["dicom", "png16"])
def test_engine_openvino_and_torch_exports_give_the_same_scores(
    exported: tuple, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # OpenVINO's inferencer writes an openvino_cache/ folder here
    monkeypatch.setenv("TRUST_REMOTE_CODE", "1")  # anomalib's opt-in for the torch export we just wrote
    data, checkpoint, exports = exported
    predictions = make_engine(tmp_path / "engine").predict(
        model=SkipTS(visualizer=False), dataset=MedicalPredictDataset(path=data / kind), ckpt_path=checkpoint
    )
    engine = {
        path: float(score)
        for batch in predictions
        for path, score in zip(batch.image_path, batch.pred_score, strict=True)
    }
    assert len(engine) == 14
    for export_type in ("openvino", "torch"):
        table = predict_folder(exports[export_type], data / kind)
        scores = dict(zip(table.image_path, table.pred_score, strict=True))
        assert scores.keys() == engine.keys()
        for path, score in engine.items():
            assert scores[path] == pytest.approx(score, abs=1e-3), f"{export_type}: {path}"


def test_predict_folder_command_writes_a_csv(exported: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    data, _, exports = exported
    csv = tmp_path / "scores.csv"
    main([str(exports["openvino"]), str(data / "dicom" / "abnormal"), "--csv", str(csv)])
    table = pd.read_csv(csv)
    assert list(table.columns) == ["image_path", "pred_score", "pred_label"]
    assert len(table) == 4
    assert table.pred_score.between(0, 1).all()


def test_predict_folder_errors_name_the_problem(exported: tuple, tmp_path: Path) -> None:
    data, checkpoint, _ = exported
    with pytest.raises(FileNotFoundError, match="no exported model"):
        predict_folder(tmp_path / "model.xml", data)
    with pytest.raises(ValueError, match="not an exported model"):
        predict_folder(checkpoint, data)
