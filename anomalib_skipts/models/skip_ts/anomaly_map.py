"""Anomaly maps and scores of Skip-TS (Liu et al., IEEE TIM 2024, Eq. 1, 7 and 8).

- Eq. 1: per-layer anomaly map ``M_l(h, w) = 1 - cos(F_t^l(h, w), F_s^l(h, w))``, cosine along channels.
- Eq. 7: ``M_ano`` = sum of the selected ``M_l`` upsampled bilinearly to the input size, then a
  Gaussian filter with ``sigma = 4``.
- Eq. 8: image score = ``max(M_ano)`` (not the mean: lesions are small).

Eq. 7 is computed fused (upsampling, sum and Gaussian are linear along each axis): see
``AnomalyMapGenerator``.
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


def interpolation_matrix(output_size: int, input_size: int) -> torch.Tensor:
    """Bilinear (``align_corners=True``) resizing along one axis as a matrix ``A``: ``resize(x) = A @ x``.

    Args:
        output_size: Length after resizing.
        input_size: Length before resizing.

    Returns:
        ``A`` of shape ``(output_size, input_size)``, float32.
    """
    identity = torch.eye(input_size).view(1, 1, input_size, input_size)
    return F.interpolate(identity, size=(output_size, input_size), mode="bilinear", align_corners=True)[0, 0]


def blur_matrix(size: int, blur: GaussianBlur2d, axis: int) -> torch.Tensor:
    """One axis of anomalib's ``GaussianBlur2d`` (its kernel and border mode) as a matrix ``G``.

    The normalised 2-D Gaussian kernel is the outer product of its row and column sums, so the 2-D
    filter of a map ``X`` is ``G_rows @ X @ G_cols.T``.

    Args:
        size: Length of the axis.
        blur: The 2-D filter (one channel, "same" padding).
        axis: 0 for rows (the vertical pass), 1 for columns (the horizontal pass).

    Returns:
        ``G`` of shape ``(size, size)``, float32.
    """
    kernel = blur.kernel[0, 0].float().sum(dim=1 - axis)
    radius = kernel.numel() // 2
    identity = torch.eye(size, device=kernel.device).view(1, 1, size, size)
    padded = F.pad(identity, (0, 0, radius, radius), mode=blur.border_type)
    return F.conv2d(padded, kernel.view(1, 1, -1, 1))[0, 0]


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

    Upsampling, sum and filter are linear along each axis, so they are computed fused: with ``A_l``
    the bilinear resizing of layer ``l`` and ``G`` the Gaussian (anomalib's ``GaussianBlur2d`` kernel
    and reflect border), ``M_ano = sum_l (G_r A_l) M_l (G_c B_l)^T``: two small matrix products per
    layer instead of full-size upsampled maps, a concatenation and a 33x33 filter. The result equals
    the step-by-step computation up to float round-off (tested to 1e-6).

    Args:
        image_size: Input image size ``(H, W)``; the anomaly map has this size.
        layers: Which layer maps to sum, 1-based as in the paper (``M1`` is the largest map).
            ``(1, 2, 3)`` is the full method; ``(1, 2)``, ``(1, 3)``, ``(2, 3)`` are Table IV's ablations.
        sigma: Standard deviation of the Gaussian filter.
        reductions: Downsampling factor of each layer map (ResNet teachers: 4, 8, 16); the operators
            for those map sizes are precomputed, other sizes get theirs on the fly.
    """

    def __init__(
        self,
        image_size: tuple[int, int],
        layers: Sequence[int] = (1, 2, 3),
        sigma: float = PAPER_SIGMA,
        reductions: Sequence[int] = (4, 8, 16),
    ) -> None:
        super().__init__()
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.layers = tuple(int(layer) for layer in layers)
        self.blur = GaussianBlur2d(sigma=sigma, channels=1)  # kernel 2 * int(4 * sigma + 0.5) + 1
        for layer in self.layers:
            map_size = tuple(side // reductions[layer - 1] for side in self.image_size)
            rows, columns = self.operators(map_size)
            self.register_buffer(f"rows_{layer}", rows, persistent=False)
            self.register_buffer(f"columns_{layer}", columns, persistent=False)

    def operators(self, map_size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Resizing-and-filter matrices of one layer map: ``M_ano`` gets ``rows @ M_l @ columns.T``.

        Args:
            map_size: ``(h, w)`` of the layer map.

        Returns:
            ``rows`` of shape ``(H, h)`` and ``columns`` of shape ``(W, w)``.
        """
        height, width = self.image_size
        rows = blur_matrix(height, self.blur, axis=0) @ interpolation_matrix(height, int(map_size[0]))
        columns = blur_matrix(width, self.blur, axis=1) @ interpolation_matrix(width, int(map_size[1]))
        return rows, columns

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
        anomaly_map = None
        for layer in self.layers:
            layer_map = cosine_distance_map(teacher_features[layer - 1], student_features[layer - 1])
            rows, columns = getattr(self, f"rows_{layer}"), getattr(self, f"columns_{layer}")
            if (rows.shape[1], columns.shape[1]) != tuple(layer_map.shape[-2:]):
                rows, columns = (matrix.to(layer_map.device) for matrix in self.operators(layer_map.shape[-2:]))
            # rows @ M_l @ columns.T as two linear maps with the constant operator on the right (as in a
            # linear layer): with the constant on the left, NNCF's INT8 model does not compile on
            # OpenVINO's CPU plugin ("Check 'any_of(scale.size(), OC, 1U)' failed")
            rows, columns = rows.to(layer_map.dtype), columns.to(layer_map.dtype)
            term = F.linear(F.linear(layer_map, columns).transpose(-1, -2), rows).transpose(-1, -2)
            anomaly_map = term if anomaly_map is None else anomaly_map + term
        return anomaly_map.unsqueeze(1)
