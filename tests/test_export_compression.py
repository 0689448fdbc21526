"""Compressed OpenVINO exports of Skip-TS (FP16, INT8_PTQ, INT8_ACQ) through anomalib's unmodified export.

The INT8 models must compile on the OpenVINO CPU plugin, run in anomalib's ``OpenVINOInferencer`` and
rank images like the float model (Spearman correlation of the image scores, Eq. 8).
"""

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch
from anomalib.deploy import CompressionType, ExportType, OpenVINOInferencer
from anomalib.metrics import AUROC
from scipy.stats import spearmanr

from anomalib_skipts.data.phantom import HeadPhantom
from tools.compression import run_inferencer

from .conftest import IMAGE_SIZE, PHANTOM

ANOMALIB = str(Path(sys.executable).with_name("anomalib"))
MIN_SPEARMAN = 0.8
MIN_SPEARMAN_HEAD_IN_FLOAT = 0.95
HEAD_OPERATIONS = ("MatMul", "ReduceL2", "ReduceSum", "Divide", "ReduceMax")
"""Operation types of the anomaly-map head (Eq. 1 cosine, fused Eq. 7 products, Eq. 8 maximum)."""
COMPRESSED = ("FakeQuantize", "Convert")
"""What NNCF puts before a quantized operation (activations; int8 weights converted back)."""
ACQ_OPTIONS = ["--metric", "anomalib.metrics.AUROC", "--metric.fields", "[pred_score, gt_label]", "--max_drop", "0.05"]


def _raw_images(datamodule: HeadPhantom) -> torch.Tensor:
    """Every raw test and training image (before pre-processing), as the exported model takes them."""
    batches = [*datamodule.test_dataloader(), *datamodule.train_dataloader()]
    return torch.cat([batch.image for batch in batches]).float()


@pytest.fixture(scope="module")
def fp32_scores(trained: tuple, phantom_datamodule: HeadPhantom) -> tuple[torch.Tensor, np.ndarray]:
    """The images and the float torch model's image scores."""
    model, _, _ = trained
    images = _raw_images(phantom_datamodule)
    model.eval()
    with torch.no_grad():
        scores = model(images).pred_score.reshape(-1).numpy()
    return images, scores


def _inferencer_scores(path: Path, images: torch.Tensor) -> np.ndarray:
    """Image scores of an exported IR run one image at a time in anomalib's ``OpenVINOInferencer``."""
    return run_inferencer(OpenVINOInferencer(path=path, device="CPU"), images)


def _op_types(path: Path) -> set[str]:
    return {op.get_type_name() for op in ov.Core().read_model(str(path)).get_ops()}


def _int8_weights(operation: ov.Node) -> bool:
    """Whether an operation's weights (input 1) are int8 constants converted back to float by NNCF."""
    dequantize = operation.input(1).get_source_output().get_node()
    nodes = [dequantize, *(item.get_source_output().get_node() for item in dequantize.inputs())]
    return any(node.get_type_name() == "Convert" and node.get_input_element_type(0) == ov.Type.i8 for node in nodes)


def _check_ranks_like_fp32(path: Path, fp32_scores: tuple[torch.Tensor, np.ndarray]) -> None:
    images, expected = fp32_scores
    ov.Core().compile_model(str(path), "CPU")  # the IR compiles on the CPU plugin
    scores = _inferencer_scores(path, images)
    assert np.isfinite(scores).all()
    correlation = spearmanr(scores, expected).statistic
    assert correlation >= MIN_SPEARMAN, f"Spearman {correlation:.3f} between INT8 and fp32 scores"


def _export(trained: tuple, tmp_path: Path, **options: object) -> Path:
    """Export the trained tiny model to OpenVINO through anomalib's ``Engine.export``."""
    model, engine, _ = trained
    return engine.export(
        model=model,
        export_type=ExportType.OPENVINO,
        export_root=tmp_path,
        input_size=(IMAGE_SIZE, IMAGE_SIZE),
        **options,
    )


@pytest.mark.parametrize(
    "compression",
    [
        pytest.param({"compression_type": CompressionType.INT8_PTQ}, id="INT8_PTQ"),
        pytest.param(
            {
                "compression_type": CompressionType.INT8_ACQ,
                "metric": AUROC(fields=["pred_score", "gt_label"]),
                "max_drop": 0.05,
            },
            id="INT8_ACQ",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_int8_compiles_runs_in_the_inferencer_and_ranks_like_fp32(
    trained: tuple,
    phantom_datamodule: HeadPhantom,
    fp32_scores: tuple,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    compression: dict,
) -> None:
    monkeypatch.chdir(tmp_path)  # the inferencer writes an openvino_cache/ folder into the working directory
    path = _export(trained, tmp_path, datamodule=phantom_datamodule, **compression)
    assert "FakeQuantize" in _op_types(path)  # really quantized, not a float model under an INT8 name
    _check_ranks_like_fp32(path, fp32_scores)


def test_int8_ptq_keeps_the_head_in_float_and_ranks_like_fp32(
    trained: tuple,
    phantom_datamodule: HeadPhantom,
    fp32_scores: tuple,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="anomalib_skipts"):
        path = _export(trained, tmp_path, datamodule=phantom_datamodule, compression_type=CompressionType.INT8_PTQ)
    assert "anomaly-map head stays in floating point" in caplog.text  # the export says what it kept
    operations = ov.Core().read_model(str(path)).get_ordered_ops()
    sources = {
        operation.get_friendly_name(): [
            item.get_source_output().get_node().get_type_name() for item in operation.inputs()
        ]
        for operation in operations
    }
    head = [operation for operation in operations if operation.get_type_name() in HEAD_OPERATIONS]
    assert len([operation for operation in head if operation.get_type_name() == "MatMul"]) == 6  # Eq. 7, 3 layers
    for operation in head:
        assert not set(sources[operation.get_friendly_name()]) & set(COMPRESSED), operation.get_friendly_name()
    convolutions = [operation for operation in operations if operation.get_type_name().startswith("Convolution")]
    assert all(_int8_weights(operation) for operation in convolutions)  # the networks are quantized
    images, expected = fp32_scores
    correlation = spearmanr(_inferencer_scores(path, images), expected).statistic
    assert correlation >= MIN_SPEARMAN_HEAD_IN_FLOAT, f"Spearman {correlation:.3f} between INT8 and fp32 scores"


def test_fp16_export_stores_half_weights_and_matches_fp32(
    trained: tuple, fp32_scores: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = _export(trained, tmp_path, compression_type=CompressionType.FP16)
    constants = [op for op in ov.Core().read_model(str(path)).get_ops() if op.get_type_name() == "Constant"]
    assert any(op.get_element_type() == ov.Type.f16 for op in constants)
    images, expected = fp32_scores
    inferencer = OpenVINOInferencer(path=path, device="CPU", config={"INFERENCE_PRECISION_HINT": "f32"})
    scores = run_inferencer(inferencer, images)
    np.testing.assert_allclose(scores, expected, rtol=0.02, atol=0.02)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("compression", "options"),
    [
        ("INT8_PTQ", []),
        ("INT8_ACQ", ACQ_OPTIONS),
    ],
)
def test_cli_int8_export_from_checkpoint(
    compression: str,
    options: list[str],
    trained: tuple,
    phantom_root: Path,
    fp32_scores: tuple,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    _, _, checkpoint = trained
    command = [
        ANOMALIB,
        "export",
        "--model",
        "SkipTS",
        "--model.backbone",
        "resnet18",
        "--model.pre_trained",
        "false",
        "--model.image_size",
        str(IMAGE_SIZE),
        "--export_type",
        "openvino",
        "--compression_type",
        compression,
        *options,
        "--data",
        "anomalib_skipts.data.HeadPhantom",
        "--data.root",
        str(phantom_root),
        *(arg for key, value in PHANTOM.items() for arg in (f"--data.{key}", str(value))),
        "--data.num_workers",
        "0",
        "--ckpt_path",
        str(checkpoint),
        "--export_root",
        str(tmp_path),
        "--input_size",
        f"[{IMAGE_SIZE},{IMAGE_SIZE}]",
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (path,) = tmp_path.rglob("model.xml")
    assert "FakeQuantize" in _op_types(path)
    _check_ranks_like_fp32(path, fp32_scores)
