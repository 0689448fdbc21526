"""The anomaly map has the input's height and width, whatever size the model was configured with."""

import pytest
import torch
from torch.nn import functional as F  # noqa: N812

from anomalib_skipts.models import SkipTS, SkipTSModel
from anomalib_skipts.models.skip_ts.anomaly_map import AnomalyMapGenerator, cosine_distance_map

CONFIGURED = (64, 64)


def _model(input_size: tuple[int, int], seed: int = 0) -> SkipTSModel:
    torch.manual_seed(seed)
    return SkipTSModel("resnet18", input_size=input_size, pre_trained=False).eval()


@pytest.mark.parametrize("size", [(128, 128), (96, 64), (32, 160)])
def test_map_has_the_input_size_and_equals_a_model_built_for_it(size: tuple[int, int]) -> None:
    model = _model(CONFIGURED)
    at_size = _model(size, seed=1)
    at_size.load_state_dict(model.state_dict())
    images = torch.rand(2, 3, *size)
    with torch.inference_mode():
        output, expected = model(images), at_size(images)
    assert output.anomaly_map.shape == (2, 1, *size)
    torch.testing.assert_close(output.anomaly_map, expected.anomaly_map, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(output.pred_score, expected.pred_score, rtol=1e-5, atol=1e-6)


def test_configured_size_is_unchanged_and_matches_step_by_step_eq7() -> None:
    model = _model(CONFIGURED)
    images = torch.rand(2, 3, *CONFIGURED)
    with torch.inference_mode():
        anomaly_map = model(images).anomaly_map
        teacher = model.teacher_features(images)
        student = model.inference_student()(teacher)
    summed = sum(
        F.interpolate(cosine_distance_map(t, s)[:, None], size=CONFIGURED, mode="bilinear", align_corners=True)
        for t, s in zip(teacher[:3], student, strict=True)
    )
    torch.testing.assert_close(anomaly_map, model.anomaly_map_generator.blur(summed), rtol=1e-5, atol=1e-6)


def test_input_that_is_not_a_multiple_of_32_is_refused() -> None:
    with pytest.raises(ValueError, match=r"100x128.*multiples of 32"):
        _model(CONFIGURED)(torch.rand(1, 3, 100, 128))


def test_operators_are_built_once_per_size_on_the_features_device() -> None:
    generator = AnomalyMapGenerator(image_size=CONFIGURED)
    teacher = [torch.randn(2, 8, side, side, device="meta") for side in (32, 16, 8)]
    # a device other than the CPU: every operator must be built there, none mixed with CPU tensors
    anomaly_map = generator(teacher, teacher, (128, 128))
    assert anomaly_map.shape == (2, 1, 128, 128)
    assert anomaly_map.device.type == "meta"
    rows, columns = generator.operators((32, 32), (128, 128), "meta")
    assert rows.device.type == columns.device.type == "meta"
    assert generator.operators((32, 32), (128, 128), "meta")[0] is rows  # cached, not rebuilt per call
    configured = generator.operators((16, 16))
    assert configured[0].shape == (64, 16)
    assert generator.operators((16, 16), CONFIGURED, "cpu")[0] is configured[0]  # precomputed at construction


def test_any_pre_processor_size_builds_and_the_size_is_checked_when_a_loop_starts() -> None:
    """anomalib builds models at sizes it never runs (its tiled ensemble reads the evaluator of a 10x10 model)."""
    pre_processor = SkipTS.configure_pre_processor((10, 10))
    model = SkipTS(backbone="resnet18", pre_trained=False, pre_processor=pre_processor)
    assert model.evaluator is not None
    for stage in ("fit", "validate", "test", "predict"):
        with pytest.raises(ValueError, match=r"input_size=\(10, 10\).*multiples of 32.*pre-processor"):
            model.setup(stage)
    model.eval()
    with torch.inference_mode():  # images of a valid size still run, with a map of their own size
        assert model.model(torch.rand(1, 3, 64, 64)).anomaly_map.shape == (1, 1, 64, 64)
