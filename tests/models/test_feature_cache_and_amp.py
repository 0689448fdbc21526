"""Teacher-feature caching (same training with and without) and mixed precision."""

import logging
import math
from pathlib import Path

import pytest
import torch
from anomalib.engine import Engine
from lightning.pytorch import Callback, seed_everything
from torchvision.transforms import v2

from anomalib_skipts.data.phantom import HeadPhantom
from anomalib_skipts.models import SkipTS
from anomalib_skipts.models.skip_ts.feature_cache import (
    FeatureCacheError,
    FeatureCacheFullError,
    TeacherFeatureCache,
)

from ..conftest import IMAGE_SIZE as SIZE
from ..conftest import PHANTOM


class LossRecorder(Callback):
    """Records the epoch-mean training loss."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.losses.append(float(trainer.callback_metrics["train_loss_epoch"]))


def _datamodule(root: Path, datamodule_class: type[HeadPhantom] = HeadPhantom, **kwargs) -> HeadPhantom:
    return datamodule_class(
        root=root,
        **PHANTOM,
        train_batch_size=4,
        eval_batch_size=4,
        **kwargs,
    )


def _fit(
    root: Path,
    work: Path,
    epochs: int = 3,
    precision: str = "32-true",
    datamodule_kwargs: dict | None = None,
    datamodule_class: type[HeadPhantom] = HeadPhantom,
    **model_kwargs,
) -> tuple[SkipTS, list[float], int]:
    seed_everything(0)
    model = SkipTS(backbone="resnet18", pre_trained=False, image_size=SIZE, **model_kwargs)
    calls = {"images": 0}
    original = model.model.teacher_features

    def counting(images: torch.Tensor) -> list[torch.Tensor]:
        calls["images"] += len(images)
        return original(images)

    model.model.teacher_features = counting
    recorder = LossRecorder()
    engine = Engine(
        default_root_dir=work,
        max_epochs=epochs,
        accelerator="cpu",
        precision=precision,
        enable_progress_bar=False,
        logger=False,
        callbacks=[recorder],
        limit_val_batches=0,
    )
    engine.fit(model=model, datamodule=_datamodule(root, datamodule_class, **(datamodule_kwargs or {})))
    return model, recorder.losses, calls["images"]


# float32 storage: cached features are bit-identical to fresh ones (same values, same layout), so
# training is identical up to platform round-off; float16 storage rounds the features once
@pytest.mark.parametrize(("dtype", "tolerance"), [("float32", 1e-6), ("float16", 1e-2)])
def test_cache_gives_the_same_training_and_runs_the_teacher_once_per_image(
    phantom_root: Path, tmp_path: Path, dtype: str, tolerance: float
) -> None:
    cached, cached_losses, cached_calls = _fit(phantom_root, tmp_path / "a", teacher_cache_dtype=dtype)
    plain, plain_losses, plain_calls = _fit(phantom_root, tmp_path / "b", teacher_cache=False)
    assert cached_calls == 8  # each of the 8 training images once, in the first epoch
    assert plain_calls == 8 * 3
    assert len(cached_losses) == len(plain_losses) == 3
    for with_cache, without in zip(cached_losses, plain_losses, strict=True):
        assert with_cache == pytest.approx(without, rel=tolerance)
    if dtype == "float32":  # exact storage: the same trained weights
        cached_weights = torch.cat([p.flatten() for p in cached.model.student.parameters()])
        plain_weights = torch.cat([p.flatten() for p in plain.model.student.parameters()])
        assert ((cached_weights - plain_weights).norm() / plain_weights.norm()).item() < 1e-6


def test_cache_turns_itself_off_under_augmentation(
    phantom_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        _, losses, calls = _fit(
            phantom_root, tmp_path, epochs=2, datamodule_kwargs={"train_augmentations": v2.RandomHorizontalFlip(p=0.5)}
        )
    assert calls == 8 * 2
    assert len(losses) == 2
    assert "Teacher-feature cache off: the training data has random augmentations" in caplog.text


def test_cache_falls_back_when_the_training_set_does_not_fit(
    phantom_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        _, losses, calls = _fit(phantom_root, tmp_path, epochs=2, teacher_cache_mb=0.1)
    assert calls == 8 * 2
    assert all(math.isfinite(loss) for loss in losses)
    assert "the 8 training images need" in caplog.text
    assert "raise teacher_cache_mb" in caplog.text


def test_cache_store_is_bounded_and_returns_stored_values() -> None:
    teacher = torch.nn.Conv2d(3, 4, 3, padding=1)

    def compute(images: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            return [teacher(images)]

    images = torch.rand(3, 3, 8, 8)
    per_image = 4 * 8 * 8 * 2
    cache = TeacherFeatureCache(budget_bytes=per_image * 3)
    first = cache.features(["a", "b", "c"], images, compute)[0]
    again = cache.features(["c", "a"], images[[2, 0]], lambda _: pytest.fail("teacher ran for cached images"))[0]
    assert torch.equal(again, first[[2, 0]])
    assert torch.allclose(first, compute(images)[0], atol=1e-2)
    assert cache.nbytes == per_image * 3
    assert all(feature.device.type == "cpu" for entry in cache._entries.values() for feature in entry[0])
    with pytest.raises(FeatureCacheFullError, match="budget") as error:
        cache.features(["d"], torch.rand(1, 3, 8, 8), compute)
    assert "d" not in cache
    # its own error, not the built-in MemoryError that a real out-of-memory raises
    assert isinstance(error.value, FeatureCacheError)
    assert isinstance(error.value, RuntimeError)
    assert not isinstance(error.value, MemoryError)


def test_bf16_mixed_precision_trains_and_tests_without_nans(phantom_root: Path, tmp_path: Path) -> None:
    model, losses, _ = _fit(phantom_root, tmp_path, epochs=2, precision="bf16-mixed")
    assert all(math.isfinite(loss) for loss in losses)
    engine = Engine(
        default_root_dir=tmp_path, accelerator="cpu", precision="bf16-mixed", enable_progress_bar=False, logger=False
    )
    results = engine.test(model=model, datamodule=_datamodule(phantom_root))[0]
    assert math.isfinite(results["image_AUROC"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model.model.eval()(torch.rand(2, 3, SIZE, SIZE))
    assert output.anomaly_map.dtype == torch.float32
    assert torch.isfinite(output.anomaly_map).all()


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [({"teacher_cache_mb": -1}, "teacher_cache_mb"), ({"teacher_cache_dtype": "int8"}, "teacher_cache_dtype")],
)
def test_bad_cache_settings_are_refused(kwargs: dict, parameter: str) -> None:
    with pytest.raises(ValueError, match=parameter):
        SkipTS(backbone="resnet18", pre_trained=False, image_size=SIZE, **kwargs)
