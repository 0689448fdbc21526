"""The unmodified ``anomalib`` command line trains, tests, exports and predicts with Skip-TS."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import PHANTOM

ANOMALIB = str(Path(sys.executable).with_name("anomalib"))


def _anomalib(*args: str, cwd: Path, offline: bool = False) -> str:
    """Run ``anomalib``; ``offline``: as on an air-gapped machine, with no Hugging Face Hub and an empty cache."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(cwd / "empty_hf_home")} if offline else None
    result = subprocess.run(
        [ANOMALIB, *args], capture_output=True, text=True, cwd=cwd, timeout=900, check=False, env=env
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory, phantom_root: Path) -> Path:
    """``anomalib train`` from a YAML config naming ``class_path: SkipTS``; returns the results folder."""
    work = tmp_path_factory.mktemp("cli")
    config = {
        "seed_everything": 0,
        "default_root_dir": str(work / "results"),
        "trainer": {"accelerator": "cpu", "max_epochs": 1, "enable_progress_bar": False},
        "model": {
            "class_path": "SkipTS",
            "init_args": {"backbone": "resnet18", "pre_trained": False, "image_size": 64},
        },
        "data": {
            "class_path": "anomalib_skipts.data.HeadPhantom",
            "init_args": {
                "root": str(phantom_root),
                **PHANTOM,
                "train_batch_size": 4,
                "eval_batch_size": 4,
            },
        },
    }
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    output = _anomalib("train", "--config", "config.yaml", cwd=work)
    assert "image_AUROC" in output
    return work


def test_train_writes_checkpoint_and_anomaly_map_images(cli_run: Path) -> None:
    run = cli_run / "results" / "SkipTS" / "head_phantom" / "latest"
    assert (run / "weights" / "lightning" / "model.ckpt").is_file()
    assert list((run / "images").rglob("*.png"))


def test_short_model_name_and_export_from_checkpoint(cli_run: Path) -> None:
    checkpoint = cli_run / "results" / "SkipTS" / "head_phantom" / "latest" / "weights" / "lightning" / "model.ckpt"
    for export_type, suffix in (("onnx", ".onnx"), ("openvino", ".xml")):
        root = cli_run / f"export_{export_type}"
        _anomalib(
            "export",
            "--model",
            "SkipTS",
            "--model.backbone",
            "resnet18",  # pre_trained=True: the teacher comes from the checkpoint, nothing is downloaded
            "--model.image_size",
            "64",
            "--export_type",
            export_type,
            "--ckpt_path",
            str(checkpoint),
            "--export_root",
            str(root),
            "--input_size",
            "[64,64]",
            cwd=cli_run,
            offline=True,
        )
        assert list(root.rglob(f"*{suffix}"))


def test_predict_from_checkpoint(cli_run: Path, phantom_root: Path) -> None:
    checkpoint = cli_run / "results" / "SkipTS" / "head_phantom" / "latest" / "weights" / "lightning" / "model.ckpt"
    output = _anomalib(
        "predict",
        "--model",
        "SkipTS",
        "--model.backbone",
        "resnet18",  # pre_trained=True: the teacher comes from the checkpoint, nothing is downloaded
        "--model.image_size",
        "64",
        "--ckpt_path",
        str(checkpoint),
        "--data",
        str(phantom_root / "test" / "lesion"),
        "--default_root_dir",
        str(cli_run / "predict"),
        cwd=cli_run,
        offline=True,
    )
    assert "Traceback" not in output
    assert list((cli_run / "predict").rglob("*.png"))


def test_fit_and_test_subcommands_with_short_names(tmp_path: Path, phantom_root: Path) -> None:
    model_args = ["--model", "SkipTS", "--model.backbone", "resnet18", "--model.pre_trained", "false"]
    model_args += ["--model.image_size", str(PHANTOM["image_size"])]
    data_args = ["--data", "anomalib_skipts.data.HeadPhantom", "--data.root", str(phantom_root)]
    for name, value in PHANTOM.items():
        data_args += [f"--data.{name}", str(value)]
    _anomalib(
        "fit", *model_args, *data_args, "--trainer.max_epochs", "1", "--default_root_dir", str(tmp_path), cwd=tmp_path
    )
    checkpoint = next(tmp_path.rglob("model.ckpt"))
    output = _anomalib("test", *model_args, *data_args, "--ckpt_path", str(checkpoint), cwd=tmp_path)
    assert "image_AUROC" in output
