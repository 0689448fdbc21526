"""Anomaly maps and scores of Skip-TS (Liu et al., IEEE TIM 2024, Eq. 1, 7 and 8).

- Eq. 1: per-layer anomaly map ``M_l(h, w) = 1 - cos(F_t^l(h, w), F_s^l(h, w))``, cosine along channels.
- Eq. 7: ``M_ano`` = sum of the selected ``M_l`` upsampled bilinearly to the input size, then a
  Gaussian filter with ``sigma = 4``.
- Eq. 8: image score = ``max(M_ano)`` (not the mean: lesions are small).

The Gaussian filter is anomalib's ``GaussianBlur2d`` kernel applied as two 1-D passes (the Gaussian
is separable): the same result with 66 instead of 1089 taps per pixel at ``sigma = 4``.
"""

from collections.abc import Sequence

import torch
from anomalib.models.components.filters import GaussianBlur2d
from torch import nn
from torch.nn import functional as F  # noqa: N812

PAPER_SIGMA = 4.0


def cosine_distance_map(teacher_feature: torch.Tensor, student_feature: torch.Tensor) -> torch.Tensor:
    """Eq. 1: one minus the cosine similarity along the channel axis, per pixel.

    Computed in float32 whatever the input precision, so that half-precision features give the
    same map as float features (the cosine of fp16 vectors is not reliable).

    Args:
        teacher_feature: Teacher feature map ``F_t^l`` of shape ``(B, C, H, W)``.
        student_feature: Student feature map ``F_s^l`` of the same shape.

    Returns:
        The layer's anomaly map ``M_l`` of shape ``(B, H, W)``, values in ``[0, 2]``.
    """
    return 1.0 - F.cosine_similarity(teacher_feature.float(), student_feature.float(), dim=1)


def upsample_maps(maps: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Upsample per-layer anomaly maps bilinearly to one size and stack them.

    Args:
        maps: Layer maps, each ``(B, H_l, W_l)``.
        size: Target ``(H, W)``.

    Returns:
        Tensor of shape ``(B, L, H, W)``, one channel per layer.
    """
    return torch.cat(
        [F.interpolate(m.unsqueeze(1), size=size, mode="bilinear", align_corners=True) for m in maps],
        dim=1,
    )


class SeparableGaussianBlur2d(GaussianBlur2d):
    """anomalib's ``GaussianBlur2d`` (same kernel, reflect padding, "same" size) as two 1-D passes.

    The normalised 2-D Gaussian kernel is the outer product of its row and column sums, so a
    vertical then a horizontal 1-D convolution gives the 2-D filter's result up to float round-off.

    Args:
        sigma: Standard deviation of the Gaussian.
        channels: Number of channels filtered independently.
    """

    def __init__(self, sigma: float, channels: int = 1) -> None:
        super().__init__(sigma=sigma, channels=channels)
        kernel = self.kernel[0, 0]
        self.register_buffer("kernel_vertical", kernel.sum(dim=1).view(1, 1, -1, 1).repeat(channels, 1, 1, 1), False)
        self.register_buffer("kernel_horizontal", kernel.sum(dim=0).view(1, 1, 1, -1).repeat(channels, 1, 1, 1), False)

    def forward(self, input_tensor: torch.Tensor) -> torch.Tensor:
        """Blur ``(B, C, H, W)`` maps; the output has the input's shape."""
        padded = F.pad(input_tensor, self.padding_shape, mode=self.border_type)
        vertical = F.conv2d(padded, self.kernel_vertical, groups=self.channels)
        return F.conv2d(vertical, self.kernel_horizontal, groups=self.channels)


def anomaly_score(anomaly_map: torch.Tensor) -> torch.Tensor:
    """Eq. 8: the image-level anomaly score is the maximum of the anomaly map.

    Args:
        anomaly_map: ``M_ano`` of shape ``(B, 1, H, W)``.

    Returns:
        Scores of shape ``(B, 1)``, as anomalib's built-in models return them.
    """
    return torch.amax(anomaly_map, dim=(-2, -1))


class AnomalyMapGenerator(nn.Module):
    """Eq. 7: sum of upsampled layer maps, smoothed by a Gaussian filter (sigma 4).

    Args:
        image_size: Input image size ``(H, W)``; the anomaly map has this size.
        layers: Which layer maps to sum, 1-based as in the paper (``M1`` is the largest map).
            ``(1, 2, 3)`` is the full method; ``(1, 2)``, ``(1, 3)``, ``(2, 3)`` are Table IV's ablations.
        sigma: Standard deviation of the Gaussian filter.
    """

    def __init__(
        self, image_size: tuple[int, int], layers: Sequence[int] = (1, 2, 3), sigma: float = PAPER_SIGMA
    ) -> None:
        super().__init__()
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.layers = tuple(int(layer) for layer in layers)
        self.blur = SeparableGaussianBlur2d(sigma=sigma, channels=1)  # kernel 2 * int(4 * sigma + 0.5) + 1

    def forward(
        self, teacher_features: Sequence[torch.Tensor], student_features: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """Compute ``M_ano``.

        Args:
            teacher_features: ``[F_t^1, F_t^2, F_t^3]``.
            student_features: ``[F_s^1, F_s^2, F_s^3]``.

        Returns:
            Anomaly map of shape ``(B, 1, H, W)`` at the input size.
        """
        device_type = teacher_features[0].device.type
        if torch.is_autocast_enabled(device_type):  # under mixed precision, keep the map in float32
            with torch.autocast(device_type=device_type, enabled=False):
                return self.forward(teacher_features, student_features)
        maps = [cosine_distance_map(teacher_features[i - 1], student_features[i - 1]) for i in self.layers]
        summed = upsample_maps(maps, self.image_size).sum(dim=1, keepdim=True)
        return self.blur(summed)
