"""The teacher's ImageNet weights load lazily, so that a checkpoint's teacher never needs the network.

``anomalib predict/test/export --model SkipTS --ckpt_path ...`` and ``Engine.predict(model=SkipTS(),
ckpt_path=...)`` build ``SkipTS()`` (``pre_trained=True``) before loading the checkpoint: building it
must download nothing, and the checkpoint's teacher must replace the pending download.
"""

from pathlib import Path

import pytest
import timm
import torch
from anomalib.engine import Engine
from lightning.pytorch import Callback
from torch import nn

from anomalib_skipts.data.phantom import HeadPhantom
from anomalib_skipts.models import SkipTS, SkipTSModel, TeacherWeightsError

from ..conftest import IMAGE_SIZE

SIZE = (IMAGE_SIZE, IMAGE_SIZE)


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every download of pretrained weights through timm fail (an air-gapped machine); record the names."""
    requested: list[str] = []
    original = timm.create_model

    def create_model(name: str, *args, **kwargs):
        if kwargs.get("pretrained"):
            requested.append(name)
            msg = "Cannot reach the Hugging Face Hub (offline)"
            raise OSError(msg)
        return original(name, *args, **kwargs)

    monkeypatch.setattr(timm, "create_model", create_model)
    return requested


@pytest.fixture
def imagenet(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Stand-in ImageNet weights: a "download" gives one fixed network (seeded, non-trivial batch norms)."""
    requested: list[str] = []
    original = timm.create_model

    def create_model(name: str, *args, **kwargs):
        if not kwargs.pop("pretrained", False):
            return original(name, *args, **kwargs)
        requested.append(name)
        with torch.random.fork_rng():
            torch.manual_seed(1234)
            model = original(name, *args, pretrained=False, **kwargs)
            with torch.no_grad():
                for bn in (module for module in model.modules() if isinstance(module, nn.BatchNorm2d)):
                    bn.running_mean.uniform_(-0.5, 0.5)
                    bn.running_var.uniform_(0.5, 1.5)
                    bn.weight.uniform_(0.5, 1.5)
        return model

    monkeypatch.setattr(timm, "create_model", create_model)
    return requested


def _engine(root: Path, **kwargs) -> Engine:
    return Engine(
        default_root_dir=root, accelerator="cpu", devices=1, enable_progress_bar=False, logger=False, **kwargs
    )


def _images() -> torch.Tensor:
    return torch.rand(2, 3, *SIZE, generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------------------------------
# A checkpoint given to the engine: the teacher comes from it, nothing is downloaded
# ------------------------------------------------------------------------------------------------


def test_engine_predict_with_ckpt_path_downloads_nothing(
    trained: tuple, tmp_path: Path, phantom_datamodule: HeadPhantom, downloads: list[str]
) -> None:
    _, _, checkpoint = trained
    expected = _engine(tmp_path / "a").predict(
        model=SkipTS.load_from_checkpoint(checkpoint), datamodule=phantom_datamodule
    )
    model = SkipTS(backbone="resnet18", image_size=IMAGE_SIZE)  # pre_trained=True, as `anomalib predict` builds it
    actual = _engine(tmp_path / "b").predict(model=model, datamodule=phantom_datamodule, ckpt_path=checkpoint)
    assert downloads == []
    assert not model.model.teacher_weights_pending
    assert len(actual) == len(expected) > 0
    for got, want in zip(actual, expected, strict=True):
        torch.testing.assert_close(got.anomaly_map, want.anomaly_map)
        torch.testing.assert_close(got.pred_score, want.pred_score)


def test_engine_test_with_ckpt_path_downloads_nothing(
    trained: tuple, tmp_path: Path, phantom_datamodule: HeadPhantom, downloads: list[str]
) -> None:
    _, _, checkpoint = trained
    (expected,) = _engine(tmp_path / "a").test(
        model=SkipTS.load_from_checkpoint(checkpoint), datamodule=phantom_datamodule
    )
    model = SkipTS(backbone="resnet18", image_size=IMAGE_SIZE)
    (actual,) = _engine(tmp_path / "b").test(model=model, datamodule=phantom_datamodule, ckpt_path=checkpoint)
    assert downloads == []
    assert actual.keys() == expected.keys()
    assert "image_AUROC" in actual
    for name, value in expected.items():
        assert actual[name] == pytest.approx(value, abs=1e-6), name


def test_resumed_fit_downloads_nothing(
    trained: tuple, tmp_path: Path, phantom_datamodule: HeadPhantom, downloads: list[str]
) -> None:
    _, engine, checkpoint = trained
    model = SkipTS(backbone="resnet18", image_size=IMAGE_SIZE)
    resumed = _engine(tmp_path, max_epochs=engine.trainer.max_epochs + 1)
    resumed.fit(model=model, datamodule=phantom_datamodule, ckpt_path=checkpoint)
    assert downloads == []
    assert resumed.trainer.current_epoch == engine.trainer.max_epochs + 1  # it did train one more epoch


# ------------------------------------------------------------------------------------------------
# A fresh fit needs the weights: it fails before the first epoch when they cannot be had
# ------------------------------------------------------------------------------------------------


class _CountTraining(Callback):
    def __init__(self) -> None:
        self.epochs = 0
        self.steps = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epochs += 1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.steps += 1


def test_fresh_fit_offline_fails_before_the_first_epoch(
    tmp_path: Path, phantom_datamodule: HeadPhantom, downloads: list[str]
) -> None:
    model = SkipTS(backbone="resnet18", image_size=IMAGE_SIZE)  # construction itself downloads nothing
    assert downloads == []
    counter = _CountTraining()
    with pytest.raises(TeacherWeightsError, match="backbone_weights=") as error:
        _engine(tmp_path, max_epochs=1, callbacks=[counter]).fit(model=model, datamodule=phantom_datamodule)
    assert isinstance(error.value.__cause__, OSError)
    assert downloads == ["resnet18.tv_in1k"]
    assert counter.epochs == counter.steps == 0


def test_fresh_fit_trains_with_the_downloaded_teacher(
    tmp_path: Path, phantom_datamodule: HeadPhantom, imagenet: list[str]
) -> None:
    model = SkipTS(backbone="resnet18", image_size=IMAGE_SIZE, teacher_cache=True)
    _engine(tmp_path, max_epochs=1).fit(model=model, datamodule=phantom_datamodule)
    assert imagenet == ["resnet18.tv_in1k"]  # loaded once, when the fit started
    downloaded = timm.create_model("resnet18.tv_in1k", pretrained=True, features_only=True, out_indices=(1, 2, 3, 4))
    torch.testing.assert_close(
        model.model.teacher.feature_extractor.state_dict()["layer4.1.conv2.weight"],
        downloaded.state_dict()["layer4.1.conv2.weight"],
        rtol=0,
        atol=0,
    )


# ------------------------------------------------------------------------------------------------
# The torch model on its own: weights at the first forward, and the folded copy built from them
# ------------------------------------------------------------------------------------------------


def test_first_forward_loads_the_weights_and_the_folded_copy_uses_them(imagenet: list[str]) -> None:
    images = _images()
    lazy = SkipTSModel("resnet18", SIZE, pre_trained=True).eval()  # fold_batch_norm=True
    assert imagenet == []
    assert lazy.teacher_weights_pending
    with torch.no_grad():
        output = lazy(images)
        lazy_features = lazy.teacher_features(images)
    assert imagenet == ["resnet18.tv_in1k"]
    assert not lazy.teacher_weights_pending

    eager = SkipTSModel("resnet18", SIZE, pre_trained=True, fold_batch_norm=False).eval()
    eager.load_teacher_weights()
    eager.student.load_state_dict(lazy.student.state_dict())
    random = SkipTSModel("resnet18", SIZE, pre_trained=False, fold_batch_norm=False).eval()
    with torch.no_grad():
        expected = eager(images)
        eager_features = eager.teacher_features(images)
        random_features = random.teacher_features(images)
    for got, want, other in zip(lazy_features, eager_features, random_features, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
        assert not torch.allclose(other, want, rtol=1e-2, atol=1e-2)  # the random teacher computes otherwise
    torch.testing.assert_close(output.anomaly_map, expected.anomaly_map, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(output.pred_score, expected.pred_score, rtol=1e-4, atol=1e-5)


def test_state_dict_never_holds_the_unloaded_teacher(imagenet: list[str]) -> None:
    pending = SkipTSModel("resnet18", SIZE, pre_trained=True)
    saved = pending.state_dict()  # e.g. a checkpoint written before any forward
    assert imagenet == ["resnet18.tv_in1k"]
    eager = SkipTSModel("resnet18", SIZE, pre_trained=True)
    eager.load_teacher_weights()
    teacher = {key: value for key, value in eager.state_dict().items() if key.startswith("teacher.")}
    for key, value in teacher.items():
        torch.testing.assert_close(saved[key], value, rtol=0, atol=0)


def test_only_a_state_dict_holding_the_whole_teacher_replaces_the_download(downloads: list[str]) -> None:
    source = SkipTSModel("resnet18", SIZE, pre_trained=False).eval()
    state = source.state_dict()
    model = SkipTSModel("resnet18", SIZE, pre_trained=True).eval()
    model.load_state_dict({key: value for key, value in state.items() if key.startswith("student.")}, strict=False)
    assert model.teacher_weights_pending  # the teacher still needs its ImageNet weights
    model.load_state_dict(state)
    assert not model.teacher_weights_pending
    images = _images()
    with torch.no_grad():
        torch.testing.assert_close(model(images).anomaly_map, source(images).anomaly_map, rtol=1e-4, atol=1e-5)
    assert downloads == []
