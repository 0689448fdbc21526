"""Skip-TS through anomalib's Engine: fit, test, predict, export and inferencers."""

from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.deploy import ExportType, OpenVINOInferencer, TorchInferencer
from anomalib.engine import Engine

from anomalib_skipts.data.phantom import HeadPhantom
from anomalib_skipts.models import SkipTS

from .conftest import IMAGE_SIZE


def _images(datamodule: HeadPhantom) -> torch.Tensor:
    """Raw test images (before pre-processing), as anomalib's exported models take them."""
    return next(iter(datamodule.test_dataloader())).image[:2].float()


def test_fit_keeps_teacher_frozen_and_test_reports_anomalib_metrics(
    trained: tuple, phantom_datamodule: HeadPhantom
) -> None:
    model, engine, checkpoint = trained
    assert checkpoint.is_file()
    assert engine.trainer.current_epoch == 2  # the user's max_epochs, not overridden by the model
    fresh = SkipTS(backbone="resnet18", pre_trained=False, image_size=IMAGE_SIZE)
    assert not any(
        torch.equal(a, b)
        for a, b in zip(fresh.model.student.parameters(), model.model.student.parameters(), strict=True)
    )
    results = engine.test(model=model, datamodule=phantom_datamodule)[0]
    # the metrics are reported; that they show learning is checked, seeded, in tests/test_learning.py
    assert {"image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_F1Score"} <= set(results)
    predictions = engine.predict(model=model, datamodule=phantom_datamodule)
    batch = predictions[0]
    assert batch.anomaly_map.shape[-2:] == (IMAGE_SIZE, IMAGE_SIZE)
    assert batch.pred_label is not None
    assert batch.pred_mask is not None


def test_teacher_weights_bit_identical_after_engine_training(tmp_path: Path, phantom_datamodule: HeadPhantom) -> None:
    model = SkipTS(backbone="resnet18", pre_trained=False, image_size=IMAGE_SIZE)
    before = {k: v.clone() for k, v in model.model.teacher.state_dict().items()}
    engine = Engine(default_root_dir=tmp_path, max_epochs=1, accelerator="cpu", enable_progress_bar=False, logger=False)
    engine.fit(model=model, datamodule=phantom_datamodule)
    after = model.model.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_checkpoint_round_trip(trained: tuple, phantom_datamodule: HeadPhantom) -> None:
    model, _, checkpoint = trained
    restored = SkipTS.load_from_checkpoint(checkpoint)
    model.eval()
    restored.eval()
    images = _images(phantom_datamodule)
    with torch.no_grad():
        expected, actual = model(images), restored(images)
    assert torch.allclose(expected.anomaly_map, actual.anomaly_map, atol=1e-6)
    assert torch.allclose(expected.pred_score, actual.pred_score, atol=1e-6)


@pytest.fixture(scope="module")
def reference(trained: tuple, phantom_datamodule: HeadPhantom) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    model, _, _ = trained
    model.eval()
    images = _images(phantom_datamodule)
    with torch.no_grad():
        output = model(images)
    return images.numpy(), {"anomaly_map": output.anomaly_map.numpy(), "pred_score": output.pred_score.numpy()}


def test_onnx_export_matches_torch(trained: tuple, reference: tuple, tmp_path: Path) -> None:
    import onnxruntime as ort

    model, engine, _ = trained
    path = engine.export(
        model=model, export_type=ExportType.ONNX, export_root=tmp_path, input_size=(IMAGE_SIZE, IMAGE_SIZE)
    )
    images, expected = reference
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, {session.get_inputs()[0].name: images}), strict=True))
    np.testing.assert_allclose(
        outputs["anomaly_map"].reshape(expected["anomaly_map"].shape), expected["anomaly_map"], atol=1e-4
    )
    np.testing.assert_allclose(
        outputs["pred_score"].reshape(expected["pred_score"].shape), expected["pred_score"], atol=1e-4
    )


def test_openvino_export_matches_torch_and_runs_in_the_inferencer(
    trained: tuple,
    reference: tuple,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # the inferencer writes an openvino_cache/ folder into the working directory
    model, engine, _ = trained
    path = engine.export(
        model=model, export_type=ExportType.OPENVINO, export_root=tmp_path, input_size=(IMAGE_SIZE, IMAGE_SIZE)
    )
    images, expected = reference
    # This CPU has bf16 units: OpenVINO then defaults to bf16 arithmetic; parity is checked at f32.
    inferencer = OpenVINOInferencer(path=path, device="CPU", config={"INFERENCE_PRECISION_HINT": "f32"})
    for index in range(len(images)):
        prediction = inferencer.predict(images[index])
        np.testing.assert_allclose(
            np.asarray(prediction.anomaly_map).reshape(expected["anomaly_map"][index].shape),
            expected["anomaly_map"][index],
            atol=1e-4,
        )
        np.testing.assert_allclose(
            np.asarray(prediction.pred_score).reshape(-1), expected["pred_score"][index].reshape(-1), atol=1e-4
        )


def test_torch_export_runs_in_the_torch_inferencer(
    trained: tuple,
    reference: tuple,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRUST_REMOTE_CODE", "1")  # anomalib's opt-in for loading a pickled .pt file we just wrote
    model, engine, _ = trained
    path = engine.export(model=model, export_type=ExportType.TORCH, export_root=tmp_path)
    images, expected = reference
    inferencer = TorchInferencer(path=path, device="cpu")
    prediction = inferencer.predict(torch.from_numpy(images[:1]))
    np.testing.assert_allclose(
        prediction.anomaly_map.detach().numpy().reshape(expected["anomaly_map"][0].shape),
        expected["anomaly_map"][0],
        atol=1e-4,
    )
