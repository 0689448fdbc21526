"""Equations 1-8 of the paper, checked against direct re-computations."""

import itertools
import math

import pytest
import torch
from anomalib.models.components.filters import GaussianBlur2d
from torch.nn import functional as F  # noqa: N812

from anomalib_skipts.models.skip_ts.anomaly_map import (
    AnomalyMapGenerator,
    anomaly_score,
    blur_matrix,
    cosine_distance_map,
    interpolation_matrix,
)
from anomalib_skipts.models.skip_ts.loss import SkipTSLoss, mac_loss, similarity_loss


def _features(seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [(2, 8, 16, 16), (2, 16, 8, 8), (2, 32, 4, 4)]
    teacher = [torch.rand(s, generator=generator) for s in shapes]
    student = [torch.rand(s, generator=generator) for s in shapes]
    return teacher, student


def test_eq1_cosine_distance_per_pixel() -> None:
    teacher, student = _features()
    result = cosine_distance_map(teacher[0], student[0])
    b, h, w = 1, 3, 5
    t, s = teacher[0][b, :, h, w], student[0][b, :, h, w]
    expected = 1 - torch.dot(t, s) / (t.norm() * s.norm())
    assert result.shape == (2, 16, 16)
    assert result[b, h, w].item() == pytest.approx(expected.item(), abs=1e-6)
    assert torch.allclose(cosine_distance_map(teacher[0], teacher[0]), torch.zeros(2, 16, 16), atol=1e-6)


def test_eq1_is_computed_in_float32_for_half_features() -> None:
    teacher, student = _features()
    half = cosine_distance_map(teacher[0].half(), student[0].half())
    assert half.dtype == torch.float32
    assert torch.allclose(half, cosine_distance_map(teacher[0], student[0]), atol=2e-3)


def test_eq2_eq3_similarity_loss_is_sum_of_layer_means() -> None:
    teacher, student = _features()
    maps = [cosine_distance_map(t, s) for t, s in zip(teacher, student, strict=True)]
    expected = sum(m.mean() for m in maps)
    assert similarity_loss(maps).item() == pytest.approx(expected.item(), rel=1e-6)


def test_eq4_mac_loss_matches_pairwise_definition() -> None:
    teacher, student = _features()
    maps = [cosine_distance_map(t, s) for t, s in zip(teacher, student, strict=True)]
    up = [F.interpolate(m[:, None], size=(16, 16), mode="bilinear", align_corners=True)[:, 0] for m in maps]
    expected = sum((up[i] - up[j]) ** 2 for i, j in itertools.combinations(range(3), 2)).mean()
    assert mac_loss(maps).item() == pytest.approx(expected.item(), rel=1e-6)
    same = [torch.full((2, 4 * 2**k, 4 * 2**k), 0.3) for k in (2, 1, 0)]
    assert mac_loss(same).item() == pytest.approx(0.0, abs=1e-10)


def test_eq5_total_loss_and_options() -> None:
    teacher, student = _features()
    maps = [cosine_distance_map(t, s) for t, s in zip(teacher, student, strict=True)]
    sim, mac = similarity_loss(maps), mac_loss(maps)
    assert SkipTSLoss()(teacher, student).item() == pytest.approx((sim + 0.05 * mac).item(), rel=1e-6)
    assert SkipTSLoss(beta=2.0)(teacher, student).item() == pytest.approx((sim + 2.0 * mac).item(), rel=1e-6)
    assert SkipTSLoss(mac=False)(teacher, student).item() == pytest.approx(sim.item(), rel=1e-6)
    mse = SkipTSLoss(similarity="mse", mac=False)(teacher, student)
    assert mse.item() == pytest.approx(
        sum(F.mse_loss(s, t) for t, s in zip(teacher, student, strict=True)).item(), rel=1e-6
    )
    assert SkipTSLoss()(teacher, teacher).item() == pytest.approx(0.0, abs=1e-5)


def test_authors_code_variant_uses_flattened_per_image_cosine() -> None:
    teacher, student = _features()
    flattened = sum(
        (1 - F.cosine_similarity(t.flatten(1), s.flatten(1))).mean() for t, s in zip(teacher, student, strict=True)
    )
    loss = SkipTSLoss(mac=False, variant="authors_code")(teacher, student)
    assert loss.item() == pytest.approx(flattened.item(), rel=1e-6)
    assert loss.item() != pytest.approx(SkipTSLoss(mac=False)(teacher, student).item(), rel=1e-3)
    mses = [F.mse_loss(s, t) for t, s in zip(teacher, student, strict=True)]
    mac = sum((mses[i] - mses[j]) ** 2 for i, j in itertools.combinations(range(3), 2))
    with_mac = SkipTSLoss(variant="authors_code")(teacher, student)
    assert with_mac.item() == pytest.approx((flattened + 0.05 * mac).item(), rel=1e-6)


def test_loss_is_float32_under_half_inputs() -> None:
    teacher, student = _features()
    loss = SkipTSLoss()([t.half() for t in teacher], [s.half() for s in student])
    assert loss.dtype == torch.float32
    assert math.isfinite(loss.item())


@pytest.mark.parametrize("layers", [(1, 2, 3), (1, 2), (1, 3), (2, 3)])
def test_eq7_sum_of_selected_upsampled_maps_then_gaussian(layers: tuple[int, ...]) -> None:
    teacher, student = _features()
    generator = AnomalyMapGenerator(image_size=(32, 32), layers=layers)
    result = generator(teacher, student)
    summed = sum(
        F.interpolate(
            cosine_distance_map(teacher[i - 1], student[i - 1])[:, None],
            size=(32, 32),
            mode="bilinear",
            align_corners=True,
        )
        for i in layers
    )
    assert result.shape == (2, 1, 32, 32)
    assert torch.allclose(result, generator.blur(summed), atol=1e-6)
    # smoothing: the filtered map is smoother than the raw sum but keeps its mean
    assert result.std() < summed.std()
    assert result.mean().item() == pytest.approx(summed.mean().item(), rel=0.05)


def test_eq7_gaussian_filter_has_sigma_four() -> None:
    generator = AnomalyMapGenerator(image_size=(65, 65))
    delta = torch.zeros(1, 1, 65, 65)
    delta[0, 0, 32, 32] = 1.0
    response = generator.blur(delta)[0, 0]
    offsets = torch.arange(65, dtype=torch.float32) - 32
    profile = response.sum(dim=0) / response.sum()
    measured_sigma = torch.sqrt((profile * offsets**2).sum())
    assert measured_sigma.item() == pytest.approx(4.0, rel=0.02)


def _explicit_eq7(generator: AnomalyMapGenerator, maps: list[torch.Tensor]) -> torch.Tensor:
    """Eq. 7 step by step: upsample each map, sum, then anomalib's 2-D Gaussian filter."""
    size = generator.image_size
    summed = sum(F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=True) for m in maps)
    return GaussianBlur2d(sigma=4.0, channels=1)(summed)


@pytest.mark.parametrize(
    ("image_size", "map_sizes"),
    [
        ((256, 256), [(64, 64), (32, 32), (16, 16)]),  # the paper's input, precomputed operators
        ((96, 64), [(24, 16), (12, 8), (6, 4)]),  # non-square
        ((64, 64), [(20, 20), (9, 9), (5, 5)]),  # sizes the generator did not expect: built on the fly
    ],
)
def test_fused_eq7_equals_upsampling_sum_and_gaussian_filter(
    image_size: tuple[int, int], map_sizes: list[tuple[int, int]]
) -> None:
    generator = AnomalyMapGenerator(image_size=image_size)
    teacher = [torch.randn(2, 8, *size) for size in map_sizes]
    student = [t + 0.5 * torch.randn_like(t) for t in teacher]
    maps = [cosine_distance_map(t, s) for t, s in zip(teacher, student, strict=True)]
    expected = _explicit_eq7(generator, maps)
    actual = generator(teacher, student)
    assert actual.shape == expected.shape == (2, 1, *image_size)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_resizing_and_filter_matrices_match_the_torch_operations() -> None:
    column = torch.rand(1, 1, 16, 1)
    resized = F.interpolate(column, size=(64, 1), mode="bilinear", align_corners=True)[0, 0, :, 0]
    torch.testing.assert_close(interpolation_matrix(64, 16) @ column[0, 0, :, 0], resized)
    blur = GaussianBlur2d(sigma=4.0, channels=1)
    image = torch.rand(1, 1, 48, 40)
    filtered = blur_matrix(48, blur, axis=0) @ image[0, 0] @ blur_matrix(40, blur, axis=1).T
    torch.testing.assert_close(filtered, blur(image)[0, 0], rtol=1e-5, atol=1e-6)


def test_eq8_score_is_the_maximum() -> None:
    anomaly_map = torch.zeros(2, 1, 8, 8)
    anomaly_map[0, 0, 3, 4] = 5.0
    anomaly_map[1, 0, 0, 0] = 1.0
    assert anomaly_score(anomaly_map).flatten().tolist() == [5.0, 1.0]


@pytest.mark.parametrize(
    ("kwargs", "bad", "allowed"),
    [
        ({"similarity": "cosinus"}, "similarity='cosinus'", "'mse'"),
        ({"similarity": "l1"}, "similarity='l1'", "'cosine'"),
        ({"variant": "official"}, "variant='official'", "'authors_code'"),
        ({"variant": "authors_code", "similarity": "mse"}, "similarity='mse'", "similarity='cosine'"),
        ({"beta": -0.1}, "beta=-0.1", ">= 0"),
        ({"beta": float("nan")}, "beta=nan", ">= 0"),
        ({"beta": "0.05"}, "beta='0.05'", ">= 0"),
        ({"mac": "yes"}, "mac='yes'", "True"),
    ],
)
def test_loss_refuses_unknown_options_naming_the_value_and_the_allowed_ones(
    kwargs: dict, bad: str, allowed: str
) -> None:
    # before: every similarity but "cosine" silently became MSE
    with pytest.raises(ValueError, match="not allowed") as error:
        SkipTSLoss(**kwargs)
    assert bad in str(error.value)
    assert allowed in str(error.value)
