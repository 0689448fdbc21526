"""Batch-norm folding of the teacher and of the inference copy of the student."""

import copy
import pickle

import pytest
import torch
from anomalib.models.components import TimmFeatureExtractor
from torch import nn

from anomalib_skipts.models import SkipTSModel
from anomalib_skipts.models.skip_ts.batch_norm_folding import fold_batch_norm
from anomalib_skipts.models.skip_ts.lightning_model import SkipTS
from anomalib_skipts.models.skip_ts.student import build_decoder
from anomalib_skipts.models.skip_ts.torch_model import TEACHER_LAYERS

SIZE = (64, 64)


def _count_batch_norms(module: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())


def _randomize_batch_norms(module: nn.Module) -> None:
    """Give every batch norm non-trivial statistics and affine parameters (fresh ones are identities)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for bn in (m for m in module.modules() if isinstance(m, nn.BatchNorm2d)):
            size = bn.num_features
            bn.running_mean.copy_(torch.rand(size, generator=generator) - 0.5)
            bn.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            bn.weight.copy_(torch.rand(size, generator=generator) + 0.5)
            bn.bias.copy_(torch.rand(size, generator=generator) - 0.5)


def _assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50", "wide_resnet50_2"])
def test_folded_teacher_computes_the_same_features(backbone: str) -> None:
    teacher = TimmFeatureExtractor(backbone=backbone, layers=list(TEACHER_LAYERS), pre_trained=False).eval()
    _randomize_batch_norms(teacher)
    images = torch.rand(2, 3, *SIZE)
    with torch.no_grad():
        expected = list(teacher(images).values())
    batch_norms = _count_batch_norms(teacher)

    assert fold_batch_norm(teacher) == batch_norms
    assert _count_batch_norms(teacher) == 0
    with torch.no_grad():
        for actual, reference in zip(teacher(images).values(), expected, strict=True):
            _assert_close(actual, reference)


@pytest.mark.parametrize(("backbone", "kernel"), [("resnet18", 3), ("resnet50", 3), ("resnet50", 2)])
def test_folded_decoder_computes_the_same_features(backbone: str, kernel: int) -> None:
    decoder = build_decoder(backbone, upsample_kernel_size=kernel).eval()
    _randomize_batch_norms(decoder)
    channels = 512 if backbone == "resnet18" else 2048
    features = torch.rand(2, channels, 2, 2)
    with torch.no_grad():
        expected = decoder.layer3(decoder.layer2(decoder.layer1(features)))
    batch_norms = _count_batch_norms(decoder)

    assert fold_batch_norm(decoder) == batch_norms  # including the transposed convolutions' batch norms
    with torch.no_grad():
        _assert_close(decoder.layer3(decoder.layer2(decoder.layer1(features))), expected)


def _train_step(model: SkipTSModel, optimizer: torch.optim.Optimizer, images: torch.Tensor) -> None:
    model.train()
    teacher, student = model(images)
    loss = sum((1 - torch.nn.functional.cosine_similarity(t, s)).mean() for t, s in zip(teacher, student, strict=True))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    model.eval()


def _unfolded_anomaly_map(model: SkipTSModel, images: torch.Tensor) -> torch.Tensor:
    model.fold_batch_norm = False
    try:
        return model(images).anomaly_map
    finally:
        model.fold_batch_norm = True


def test_model_runs_a_folded_teacher_and_keeps_the_student_trainable() -> None:
    folded = SkipTSModel("resnet18", input_size=SIZE, pre_trained=False)
    plain = SkipTSModel("resnet18", input_size=SIZE, pre_trained=False, fold_batch_norm=False)
    assert _count_batch_norms(folded.inference_teacher()) == 0
    assert folded.inference_teacher() is folded.inference_teacher()  # folded once, not per call
    assert plain.inference_teacher() is plain.teacher
    assert _count_batch_norms(folded.teacher) == _count_batch_norms(plain.teacher) > 0  # the canonical teacher
    assert _count_batch_norms(folded.student) == _count_batch_norms(plain.student) > 0
    assert not any(p.requires_grad for p in folded.teacher.parameters())
    # the folded copies are not part of the model's state: checkpoints hold the canonical modules only
    assert folded.state_dict().keys() == plain.state_dict().keys()


def test_inference_copy_follows_every_change_of_the_student() -> None:
    torch.manual_seed(0)
    model = SkipTSModel("resnet18", input_size=SIZE, pre_trained=False)
    optimizer = torch.optim.Adam(model.student.parameters(), lr=1e-3)
    images = torch.rand(4, 3, *SIZE)

    for _ in range(2):  # training changes weights and batch-norm statistics
        _train_step(model, optimizer, images)
        with torch.inference_mode():
            copy_before = model.inference_student()
            assert copy_before is not model.student
            _assert_close(model(images).anomaly_map, _unfolded_anomaly_map(model, images))
            assert model.inference_student() is copy_before  # nothing changed: no rebuild

    other = SkipTSModel("resnet18", input_size=SIZE, pre_trained=False)
    model.student.load_state_dict(other.student.state_dict())
    with torch.inference_mode():
        assert model.inference_student() is not copy_before
        _assert_close(model(images).anomaly_map, _unfolded_anomaly_map(model, images))


def test_gradients_and_training_always_use_the_real_student() -> None:
    model = SkipTSModel("resnet18", input_size=SIZE, pre_trained=False).eval()
    assert model.inference_student() is model.student  # eval, but gradients enabled
    model(torch.rand(1, 3, *SIZE)).pred_score.sum().backward()
    assert all(p.grad is not None for p in model.student.parameters())
    with torch.no_grad():
        assert model.train().inference_student() is model.student


def test_pickles_and_deep_copies_leave_the_folded_copy_out() -> None:
    model = SkipTSModel("resnet18", input_size=SIZE, pre_trained=False).eval()
    images = torch.rand(2, 3, *SIZE)
    size_before = len(pickle.dumps(model))
    with torch.inference_mode():
        expected = model(images).anomaly_map
    assert len(pickle.dumps(model)) == size_before
    duplicate = copy.deepcopy(model)
    with torch.inference_mode():
        torch.testing.assert_close(duplicate(images).anomaly_map, expected)
        assert duplicate.inference_student() is not model.inference_student()


def test_lightning_module_passes_the_option_through() -> None:
    model = SkipTS(backbone="resnet18", pre_trained=False, image_size=64).model
    assert _count_batch_norms(model.inference_teacher()) == 0
    module = SkipTS(backbone="resnet18", pre_trained=False, image_size=64, fold_batch_norm=False)
    assert _count_batch_norms(module.model.inference_teacher()) > 0
    assert module.hparams["fold_batch_norm"] is False


def test_model_built_under_inference_mode_runs() -> None:
    with torch.inference_mode():  # parameters are then inference tensors, without version counters
        model = SkipTSModel("resnet18", input_size=SIZE, pre_trained=False).eval()
        assert model(torch.rand(1, 3, *SIZE)).anomaly_map.shape == (1, 1, *SIZE)
