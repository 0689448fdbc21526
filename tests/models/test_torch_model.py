"""Teacher, student and skip connections of the pure-torch Skip-TS model."""

import pytest
import torch
from anomalib.models.components.backbone.resnet_decoder import DecoderBasicBlock, DecoderBottleneck
from torch import nn

from anomalib_skipts.models import SkipTSModel
from anomalib_skipts.models.skip_ts.student import SkipStudent

SIZE = (64, 64)


def _model(backbone: str = "resnet18", **kwargs) -> SkipTSModel:
    return SkipTSModel(backbone=backbone, input_size=SIZE, pre_trained=False, **kwargs)


@pytest.mark.parametrize(
    ("backbone", "block"),
    [
        ("resnet18", DecoderBasicBlock),
        ("resnet34", DecoderBasicBlock),
        ("resnet50", DecoderBottleneck),
        ("wide_resnet50_2", DecoderBottleneck),
        ("wide_resnet101_2", DecoderBottleneck),
    ],
)
def test_student_mirrors_teacher(backbone: str, block: type) -> None:
    model = _model(backbone).train()
    images = torch.rand(2, 3, *SIZE)
    teacher, student = model(images)
    assert len(teacher) == len(student) == 3
    for t, s in zip(teacher, student, strict=True):
        assert s.shape == t.shape
    blocks = [m for m in model.student.modules() if isinstance(m, DecoderBasicBlock | DecoderBottleneck)]
    assert blocks
    assert all(isinstance(b, block) for b in blocks)


def test_student_takes_the_deepest_teacher_map_directly() -> None:
    model = _model("wide_resnet50_2")
    assert not [name for name, _ in model.named_modules() if "bottleneck" in name.lower()]
    first = next(model.student.decoder.layer1.modules())
    first_conv = next(m for m in first.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d))
    assert first_conv.in_channels == model.teacher.out_dims[3] == 2048


@pytest.mark.parametrize("kernel", [3, 2])
def test_upsampling_is_a_stride_two_transposed_convolution(kernel: int) -> None:
    model = _model(upsample_kernel_size=kernel).train()
    ups = [m for m in model.student.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert ups
    assert all(m.stride == (2, 2) and m.kernel_size == (kernel, kernel) for m in ups)
    teacher, student = model(torch.rand(1, 3, *SIZE))
    assert [s.shape for s in student] == [t.shape for t in teacher]


def _teacher_like_features(student: SkipStudent, size: int = 64) -> list[torch.Tensor]:
    channels = (64, 128, 256, 512)
    return [torch.rand(1, c, size // 2 ** (i + 2), size // 2 ** (i + 2)) for i, c in enumerate(channels)]


@pytest.mark.parametrize(("num_skips", "uses_t3", "uses_t2"), [(0, False, False), (1, True, False), (2, True, True)])
def test_skip_connections_feed_teacher_features_into_the_decoder(num_skips: int, uses_t3: bool, uses_t2: bool) -> None:
    torch.manual_seed(0)
    student = SkipStudent("resnet18", num_skips=num_skips).eval()
    features = _teacher_like_features(student)
    with torch.no_grad():
        base = student(features)

        def changed(index: int) -> bool:
            perturbed = [f.clone() for f in features]
            perturbed[index] += 1.0
            return not torch.allclose(student(perturbed)[0], base[0])

        assert changed(3)  # F_t^4 always feeds D3
        assert changed(2) is uses_t3  # skip into D2
        assert changed(1) is uses_t2  # skip into D1
        assert not changed(0)  # F_t^1 is only a target
    if num_skips:
        d3_out = student.decoder.layer1(features[3])
        d2_out = student.decoder.layer2(features[2] + d3_out)
        with torch.no_grad():
            assert torch.allclose(student(features)[1], d2_out)


def test_teacher_is_frozen_in_eval_mode_and_unchanged_by_training() -> None:
    torch.manual_seed(0)
    model = _model().train()
    assert all(not p.requires_grad for p in model.teacher.parameters())
    assert all(p.requires_grad for p in model.student.parameters())
    assert not model.teacher.training
    assert all(not m.training for m in model.teacher.modules())
    before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    optimizer = torch.optim.Adam(model.student.parameters(), lr=0.005)
    for _ in range(3):
        teacher, student = model(torch.rand(4, 3, *SIZE))
        loss = sum(
            (1 - torch.nn.functional.cosine_similarity(t, s)).mean() for t, s in zip(teacher, student, strict=True)
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert all(t.grad_fn is None for t in teacher)
    after = model.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit-identical, BN running stats included


def test_eval_returns_anomalib_inference_batch() -> None:
    model = _model().eval()
    with torch.no_grad():
        output = model(torch.rand(3, 3, *SIZE))
    assert output.anomaly_map.shape == (3, 1, *SIZE)
    assert output.pred_score.shape == (3, 1)
    assert torch.equal(output.pred_score, output.anomaly_map.amax(dim=(-2, -1)))


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"backbone": "resnet19"}, "backbone"),
        ({"backbone": "efficientnet_b0"}, "backbone"),
        ({"backbone": "vit_small_patch16_224"}, "backbone"),
        ({"num_skips": 3}, "num_skips"),
        ({"num_skips": -1}, "num_skips"),
        ({"input_size": (100, 64)}, "image_size"),
        ({"upsample_kernel_size": 4}, "upsample_kernel_size"),
        ({"anomaly_map_layers": (0, 1)}, "anomaly_map_layers"),
        ({"anomaly_map_layers": ()}, "anomaly_map_layers"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_parameter(kwargs: dict, parameter: str) -> None:
    arguments = {"backbone": "resnet18", "input_size": SIZE, "pre_trained": False} | kwargs
    with pytest.raises(ValueError, match=parameter) as error:
        SkipTSModel(**arguments)
    assert "use" in str(error.value).lower()
