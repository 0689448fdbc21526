"""Checkpoints: canonical state dicts, offline loading, architecture checks, fresh inference copies."""

import copy
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
from anomalib.engine import Engine
from lightning.pytorch import Callback

from anomalib_skipts.data.phantom import HeadPhantom
from anomalib_skipts.models import SkipTS
from anomalib_skipts.models.skip_ts.batch_norm_folding import fold_batch_norm
from anomalib_skipts.models.skip_ts.lightning_model import ARCHITECTURE_KEY

from ..conftest import IMAGE_SIZE

SMALL = {"backbone": "resnet18", "pre_trained": False, "image_size": IMAGE_SIZE}


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _scores(model: SkipTS, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        output = model.model(images)
    return output.anomaly_map, output.pred_score


def _images() -> torch.Tensor:
    return torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))


def _engine(root: Path, callbacks: list | None = None) -> Engine:
    return Engine(
        default_root_dir=root,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        logger=False,
        callbacks=callbacks,
    )


# ------------------------------------------------------------------------------------------------
# Canonical state dict
# ------------------------------------------------------------------------------------------------


def test_state_dict_does_not_depend_on_folding_or_memory_layout() -> None:
    state_dicts = {}
    for fold in (True, False):
        for channels_last in (True, False):
            torch.manual_seed(0)
            model = SkipTS(**SMALL, fold_batch_norm=fold, channels_last=channels_last)
            _scores(model, _images())  # inference builds the folded copies: they must stay out of the state
            state_dicts[fold, channels_last] = model.state_dict()
    reference = state_dicts[False, False]
    for state_dict in state_dicts.values():
        assert state_dict.keys() == reference.keys()
        for key in reference:  # the post-processor's unset statistics are NaN
            torch.testing.assert_close(state_dict[key], reference[key], rtol=0, atol=0, equal_nan=True)
    assert any(key.endswith("bn1.running_var") for key in reference if key.startswith("model.teacher."))


def test_checkpoint_saved_folded_loads_unfolded_with_the_same_scores(trained: tuple) -> None:
    model, _, checkpoint = trained
    assert model.hparams["fold_batch_norm"] is True
    saved = _load(checkpoint)["state_dict"]
    assert all(value.is_contiguous() for value in saved.values())  # standard layout, not channels-last
    unfolded = SkipTS.load_from_checkpoint(checkpoint, fold_batch_norm=False, channels_last=False)
    images = _images()
    for actual, expected in zip(_scores(unfolded, images), _scores(model, images), strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# In-place weight updates (EMA / SWA callbacks) reach the folded inference copies
# ------------------------------------------------------------------------------------------------


class _RecordMaps(Callback):
    def __init__(self) -> None:
        self.images: list[torch.Tensor] = []
        self.maps: list[torch.Tensor] = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.images.append(batch.image.clone())
        self.maps.append(outputs.anomaly_map.clone())


def test_validation_uses_weights_updated_in_place_through_data(tmp_path: Path, phantom_datamodule: HeadPhantom) -> None:
    torch.manual_seed(0)
    model = SkipTS(**SMALL)
    recorder = _RecordMaps()
    engine = _engine(tmp_path, [recorder])
    engine.validate(model=model, datamodule=phantom_datamodule)  # builds the folded copies from the first weights
    before = torch.cat(recorder.maps)

    torch.manual_seed(1)
    averaged = SkipTS(**SMALL)  # e.g. an EMA copy, written into the model as EMA callbacks do
    for parameter, new in zip(model.model.student.parameters(), averaged.model.student.parameters(), strict=True):
        parameter.data.copy_(new.data)
    for buffer, new in zip(model.model.student.buffers(), averaged.model.student.buffers(), strict=True):
        buffer.data.copy_(new.data)
    recorder.images.clear()
    recorder.maps.clear()
    engine.validate(model=model, datamodule=phantom_datamodule)

    reference = SkipTS(**SMALL, fold_batch_norm=False)
    reference.load_state_dict(model.state_dict())
    reference.eval()
    with torch.no_grad():
        expected = torch.cat([reference.model(images).anomaly_map for images in recorder.images])
    after = torch.cat(recorder.maps).reshape(expected.shape)
    assert not torch.allclose(after, before, atol=1e-4)
    torch.testing.assert_close(after, expected, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Loading never touches the network
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every download of pretrained weights through timm fail, as on an air-gapped machine."""
    original = timm.create_model

    def create_model(*args, **kwargs):
        if kwargs.get("pretrained"):
            msg = "Cannot reach the Hugging Face Hub (offline)"
            raise OSError(msg)
        return original(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", create_model)


@pytest.mark.usefixtures("offline")
@pytest.mark.parametrize(
    "hyper_parameters",
    [{"pre_trained": True}, {"pre_trained": False, "backbone_weights": "/machine/that/trained/it/resnet18.pth"}],
)
def test_checkpoint_of_an_imagenet_teacher_loads_offline(
    trained: tuple, tmp_path: Path, hyper_parameters: dict
) -> None:
    model, _, checkpoint = trained
    content = _load(checkpoint)
    content["hyper_parameters"].update(hyper_parameters)  # as trained with downloaded / local ImageNet weights
    path = tmp_path / "imagenet_teacher.ckpt"
    torch.save(content, path)

    restored = SkipTS.load_from_checkpoint(path)
    images = _images()
    for actual, expected in zip(_scores(restored, images), _scores(model, images), strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    for name, value in hyper_parameters.items():  # the record of how it was trained is kept
        assert restored.hparams[name] == value


# ------------------------------------------------------------------------------------------------
# A checkpoint of another architecture is never loaded silently
# ------------------------------------------------------------------------------------------------


def test_engine_predict_adopts_the_checkpoint_architecture_with_a_warning(
    trained: tuple, tmp_path: Path, phantom_datamodule: HeadPhantom, caplog: pytest.LogCaptureFixture
) -> None:
    _, _, checkpoint = trained  # num_skips=2
    expected = _engine(tmp_path / "a").predict(
        model=SkipTS(**SMALL), datamodule=phantom_datamodule, ckpt_path=checkpoint
    )
    model = SkipTS(**SMALL, num_skips=0)
    with caplog.at_level(logging.WARNING):
        actual = _engine(tmp_path / "b").predict(model=model, datamodule=phantom_datamodule, ckpt_path=checkpoint)
    assert "num_skips: model 0, checkpoint 2" in caplog.text
    assert model.model.student.num_skips == 2
    assert model.hparams["num_skips"] == 2
    for got, want in zip(actual, expected, strict=True):
        torch.testing.assert_close(got.anomaly_map, want.anomaly_map)
        torch.testing.assert_close(got.pred_score, want.pred_score)


@pytest.mark.parametrize(
    ("setting", "value", "recorded"),
    [
        ("backbone", "resnet34", "'resnet18.tv_in1k'"),
        ("backbone", "resnet18.a1_in1k", "'resnet18.tv_in1k'"),
        ("upsample_kernel_size", 2, "3"),
        ("anomaly_map_layers", [2, 3], "[1, 2, 3]"),
        ("similarity", "mse", "'cosine'"),
        ("loss_variant", "authors_code", "'paper'"),
    ],
)
def test_each_architecture_setting_of_the_checkpoint_is_adopted_with_a_warning(
    trained: tuple, setting: str, value: object, recorded: str, caplog: pytest.LogCaptureFixture
) -> None:
    trained_model, _, checkpoint = trained
    content = _load(checkpoint)
    model = SkipTS(**{**SMALL, setting: value})
    with caplog.at_level(logging.WARNING):
        model.on_load_checkpoint(content)  # what Lightning calls before loading the state dict
    model.load_state_dict(content["state_dict"])
    assert f"{setting}: model {model_value(value)}, checkpoint {recorded}" in caplog.text
    assert model.architecture() == trained_model.architecture() == content["skipts_architecture"]
    images = _images()
    for actual, expected in zip(_scores(model, images), _scores(trained_model, images), strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def model_value(value: object) -> str:
    """The model's value as the warning writes it (backbones with their pretrained tag)."""
    if value == "resnet34":
        return "'resnet34.tv_in1k'"
    return repr(value)


def test_settings_that_cannot_be_adopted_fail_with_both_values(trained: tuple) -> None:
    _, _, checkpoint = trained
    model = SkipTS(**SMALL, num_skips=1)
    # strategies that restore checkpoints after building the optimizers (DeepSpeed, FSDP) cannot rebuild the model
    model._trainer = SimpleNamespace(strategy=SimpleNamespace(restore_checkpoint_after_setup=True))
    with pytest.raises(ValueError, match=r"num_skips: model 1, checkpoint 2"):
        model.on_load_checkpoint(_load(checkpoint))


def test_checkpoint_of_an_earlier_release_with_a_folded_teacher_loads_with_the_same_scores(
    trained: tuple, tmp_path: Path
) -> None:
    """Earlier releases saved the teacher batch-norm-folded (conv biases, no batch norms) by default."""
    model, _, checkpoint = trained
    legacy = _load(checkpoint)
    prefix = "model.teacher.feature_extractor."
    folded_teacher = copy.deepcopy(model.model.teacher.feature_extractor).eval()
    assert fold_batch_norm(folded_teacher) > 0
    state_dict = {key: value for key, value in legacy["state_dict"].items() if not key.startswith(prefix)}
    state_dict |= {prefix + key: value for key, value in folded_teacher.state_dict().items()}
    assert not any(key.endswith("bn1.weight") for key in state_dict if key.startswith(prefix))
    legacy["state_dict"] = state_dict
    legacy.pop(ARCHITECTURE_KEY, None)  # written before the architecture was stored
    torch.save(legacy, tmp_path / "legacy.ckpt")

    loaded = SkipTS.load_from_checkpoint(tmp_path / "legacy.ckpt")
    images = _images()
    for actual, expected in zip(_scores(loaded, images), _scores(model, images), strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_load_state_dict_into_a_used_model_reaches_the_folded_teacher() -> None:
    """The folded teacher copy watches only moves and casts; loaded weights must still reach it."""
    torch.manual_seed(0)
    used = SkipTS(**SMALL)
    torch.manual_seed(1)
    other = SkipTS(**SMALL)
    images = _images()
    before = _scores(used, images)  # builds the folded copies from the first weights
    used.load_state_dict(other.state_dict())
    for actual, expected, old in zip(_scores(used, images), _scores(other, images), before, strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(actual, old)
    used.model.double()  # a cast is seen too
    assert next(used.model.inference_teacher().parameters()).dtype == torch.float64
