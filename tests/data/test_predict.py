"""Test, predict and draw on DICOM and 16-bit PNG files as in training, for Skip-TS and a baseline."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.models import Padim
from PIL import Image
from torchvision.transforms.v2.functional import to_pil_image

from anomalib_skipts.data import MedicalFolder, MedicalPredictDataset
from anomalib_skipts.data.readers import read_image
from anomalib_skipts.input_settings import find_input_settings
from anomalib_skipts.models import SkipTS

from .medical_inputs import FILE_WINDOW, TRAIN_WINDOW, ensure_entry_point, make_engine, write_ct_tree

pytest.importorskip("pydicom")

FIELD = 64  # side of each panel of the written pictures


def _datamodule(root: Path, kind: str, dicom_window: tuple[float, float] | None = TRAIN_WINDOW) -> MedicalFolder:
    return MedicalFolder(
        name=f"ct_{kind}",
        root=root / kind,
        normal_dir="normal",
        abnormal_dir="abnormal",
        num_train=6,
        num_test_normal=4,
        dicom_window=dicom_window,
        train_batch_size=3,
        eval_batch_size=4,
        num_workers=0,
    )


@pytest.fixture(scope="module")
def ct_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ct_tree(tmp_path_factory.mktemp("ct"))


@pytest.fixture(scope="module")
def subprocess_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return ensure_entry_point(tmp_path_factory.mktemp("entry_points"))


@pytest.fixture(scope="module")
def skipts_checkpoint(ct_root: Path, tmp_path_factory: pytest.TempPathFactory, subprocess_env: dict) -> Path:
    """Skip-TS fitted for one epoch on the DICOM folder with the narrow training window."""
    del subprocess_env  # the entry point must be visible before the trainer is built
    engine = make_engine(tmp_path_factory.mktemp("skipts"), max_epochs=1)
    model = SkipTS(backbone="resnet18", pre_trained=False, image_size=64, visualizer=False)
    engine.fit(model=model, datamodule=_datamodule(ct_root, "dicom"))
    return Path(engine.trainer.checkpoint_callback.best_model_path)


def _image_panel(picture_path: Path) -> np.ndarray:
    """The first panel (the input image) of a written picture, below its title."""
    picture = np.asarray(Image.open(picture_path).convert("L"), dtype=np.float64)
    side = picture.shape[0]
    return picture[side * 3 // 5 : side, :side]


def _expected_panel(image_path: Path, dicom_window: tuple[float, float] | None, side: int) -> np.ndarray:
    expected = to_pil_image(read_image(image_path, dicom_window=dicom_window)).resize((side, side))
    return np.asarray(expected.convert("L"), dtype=np.float64)[side * 3 // 5 :]


def _pictures(folder: Path) -> dict[str, Path]:
    return {path.name.split(".")[0]: path for path in folder.rglob("*.png")}


@pytest.mark.parametrize("kind", ["dicom", "png16"])
def test_baseline_test_draws_what_the_model_saw(ct_root: Path, tmp_path: Path, kind: str) -> None:
    """PaDiM (a baseline) tested on DICOM / 16-bit PNG: no crash, pictures of the windowed images."""
    datamodule = _datamodule(ct_root, kind)
    model = Padim(backbone="resnet18", layers=["layer1"], pre_trained=False, n_features=20)
    model.visualizer.field_size = (FIELD, FIELD)
    engine = make_engine(tmp_path, max_epochs=1)
    engine.fit(model=model, datamodule=datamodule)
    engine.test(model=model, datamodule=datamodule)
    engine.test(model=model, datamodule=datamodule)  # the same trainer again: drawn once more, as read
    pictures = _pictures(tmp_path)
    test_paths = list(datamodule.test_data.samples.image_path)
    assert len(pictures) == len(test_paths) == 4
    for image_path in map(Path, test_paths):
        drawn = _image_panel(pictures[image_path.stem])
        expected = _expected_panel(image_path, TRAIN_WINDOW, FIELD)
        assert drawn.mean() < 200, f"{image_path.name} drawn saturated"
        assert np.abs(drawn - expected).mean() < 4, f"{image_path.name} not drawn as read"


@pytest.mark.parametrize("kind", ["dicom", "png16"])
def test_predict_dataset_scores_equal_test_scores(
    ct_root: Path, skipts_checkpoint: Path, tmp_path: Path, kind: str
) -> None:
    """Same checkpoint: MedicalPredictDataset (no settings given) scores = the datamodule's test scores."""
    datamodule = _datamodule(ct_root, kind)
    datamodule.setup()
    reference = make_engine(tmp_path / "reference").predict(
        model=SkipTS(visualizer=False), dataloaders=datamodule.test_dataloader(), ckpt_path=skipts_checkpoint
    )
    expected = {
        Path(path).name: float(score)
        for batch in reference
        for path, score in zip(batch.image_path, batch.pred_score, strict=True)
    }
    dataset = MedicalPredictDataset(path=ct_root / kind)
    predictions = make_engine(tmp_path / "predict").predict(
        model=SkipTS(), dataset=dataset, ckpt_path=skipts_checkpoint
    )
    assert dataset.window == TRAIN_WINDOW  # from the checkpoint, not the files' own
    actual = {
        Path(path).name: float(score)
        for batch in predictions
        for path, score in zip(batch.image_path, batch.pred_score, strict=True)
    }
    assert len(actual) == 14
    assert expected
    for name, score in expected.items():
        assert actual[name] == pytest.approx(score, abs=1e-6)
    pictures = _pictures(tmp_path / "predict")
    assert len(pictures) == 14


def test_checkpoint_carries_the_input_settings(skipts_checkpoint: Path) -> None:
    checkpoint = torch.load(skipts_checkpoint, map_location="cpu", weights_only=False)
    settings = find_input_settings(checkpoint)
    assert settings is not None
    assert settings["dicom_window"] == list(TRAIN_WINDOW)
    assert settings["reader"] == "anomalib_skipts.data.readers.read_image"


def test_forced_window_mismatch_is_warned_and_used(
    ct_root: Path, skipts_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dataset = MedicalPredictDataset(path=ct_root / "dicom" / "abnormal" / "a00.dcm", dicom_window=FILE_WINDOW)
    with caplog.at_level(logging.WARNING):
        make_engine(tmp_path).predict(model=SkipTS(visualizer=False), dataset=dataset, ckpt_path=skipts_checkpoint)
    assert "another window than the model was trained with" in caplog.text
    assert dataset.window == FILE_WINDOW


def test_predict_dataset_rejects_missing_and_empty_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        MedicalPredictDataset(path=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="contains no image files"):
        MedicalPredictDataset(path=tmp_path / "empty")
    with pytest.raises(ValueError, match="Unknown DICOM window"):
        MedicalPredictDataset(path=tmp_path, dicom_window="nonsense")


@pytest.mark.slow
def test_cli_train_and_predict_on_dicom(
    ct_root: Path, skipts_checkpoint: Path, tmp_path: Path, subprocess_env: dict
) -> None:
    """``anomalib train`` fits and tests on DICOM; ``anomalib predict`` reads with the checkpoint's window."""
    anomalib = [str(Path(sys.executable).parent / "anomalib")]
    common = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.enable_progress_bar", "false"]
    train = [
        *anomalib, "train", "--model", "SkipTS", "--model.backbone", "resnet18", "--model.pre_trained", "false",
        "--model.image_size", "64", "--data", "anomalib_skipts.data.MedicalFolder", "--data.name", "ct",
        "--data.root", str(ct_root / "dicom"), "--data.normal_dir", "normal", "--data.abnormal_dir", "abnormal",
        "--data.num_train", "6", "--data.num_test_normal", "4", "--data.num_workers", "0",
        "--trainer.max_epochs", "1", "--default_root_dir", str(tmp_path / "train"), *common,
    ]  # fmt: skip
    result = subprocess.run(train, env=subprocess_env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(_pictures(tmp_path / "train")) == 4  # the test stage ran to the end and drew every image

    folder = ct_root / "dicom" / "abnormal"
    predict = [
        *anomalib, "predict", "--model", "SkipTS", "--ckpt_path", str(skipts_checkpoint),
        "--data", "anomalib_skipts.data.MedicalPredictDataset", "--data.path", str(folder),
        "--default_root_dir", str(tmp_path / "predict"), *common,
    ]  # fmt: skip
    result = subprocess.run(predict, env=subprocess_env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    pictures = _pictures(tmp_path / "predict")
    assert len(pictures) == 4
    for image_path in sorted(folder.glob("*.dcm")):
        drawn = _image_panel(pictures[image_path.stem])
        side = drawn.shape[1]
        trained = np.abs(drawn - _expected_panel(image_path, TRAIN_WINDOW, side)).mean()
        own = np.abs(drawn - _expected_panel(image_path, None, side)).mean()
        assert trained < 4 < own  # read with the training window from the checkpoint, not the file's


def test_a_loaded_skipts_model_brings_its_settings_without_ckpt_path(
    ct_root: Path, skipts_checkpoint: Path, tmp_path: Path
) -> None:
    model = SkipTS.load_from_checkpoint(skipts_checkpoint, visualizer=False)
    assert model.input_settings["dicom_window"] == list(TRAIN_WINDOW)
    dataset = MedicalPredictDataset(path=ct_root / "dicom" / "abnormal")
    predictions = make_engine(tmp_path).predict(model=model, dataset=dataset)
    assert dataset.window == TRAIN_WINDOW
    assert sum(len(batch.pred_score) for batch in predictions) == 4


def test_datamodule_warns_when_the_checkpoint_was_trained_with_another_window(
    ct_root: Path, skipts_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    datamodule = _datamodule(ct_root, "dicom", dicom_window=FILE_WINDOW)
    with caplog.at_level(logging.WARNING):
        make_engine(tmp_path).test(model=SkipTS(visualizer=False), datamodule=datamodule, ckpt_path=skipts_checkpoint)
    assert "the checkpoint's model was trained with [40.0, 80.0]" in caplog.text
