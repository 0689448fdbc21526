"""Anomaly maps and scores of Skip-TS (Liu et al., IEEE TIM 2024, Eq. 1, 7 and 8).

- Eq. 1: per-layer anomaly map ``M_l(h, w) = 1 - cos(F_t^l(h, w), F_s^l(h, w))``, cosine along channels.
- Eq. 7: ``M_ano`` = sum of the selected ``M_l`` upsampled bilinearly to the input size, then a
  Gaussian filter with ``sigma = 4``.
- Eq. 8: image score = ``max(M_ano)`` (not the mean: lesions are small).

Eq. 7 is computed fused (upsampling, sum and Gaussian are linear along each axis): see
``AnomalyMapGenerator``. The map always has the input image's size: its operators are cached per
input size, layer-map size, device and dtype.
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


def interpolation_matrix(output_size: int, input_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Bilinear (``align_corners=True``) resizing along one axis as a matrix ``A``: ``resize(x) = A @ x``.

    Args:
        output_size: Length after resizing.
        input_size: Length before resizing.
        device: Device to build it on (default: the CPU).

    Returns:
        ``A`` of shape ``(output_size, input_size)``, float32.
    """
    identity = torch.eye(input_size, device=device).view(1, 1, input_size, input_size)
    return F.interpolate(identity, size=(output_size, input_size), mode="bilinear", align_corners=True)[0, 0]


def blur_matrix(size: int, blur: GaussianBlur2d, axis: int, device: torch.device | str | None = None) -> torch.Tensor:
    """One axis of anomalib's ``GaussianBlur2d`` (its kernel and border mode) as a matrix ``G``.

    The normalised 2-D Gaussian kernel is the outer product of its row and column sums, so the 2-D
    filter of a map ``X`` is ``G_rows @ X @ G_cols.T``.

    Args:
        size: Length of the axis.
        blur: The 2-D filter (one channel, "same" padding).
        axis: 0 for rows (the vertical pass), 1 for columns (the horizontal pass).
        device: Device to build it on (default: the filter kernel's).

    Returns:
        ``G`` of shape ``(size, size)``, float32.
    """
    kernel = blur.kernel[0, 0].to(device=device, dtype=torch.float32).sum(dim=1 - axis)
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

    The map has the size of the input image, given to ``forward`` (``SkipTSModel`` passes its
    input's), or the configured ``image_size`` when none is given. The operators are built once per
    (image size, layer-map size, device, dtype), on the features' device, and cached; those of the
    configured size are built at construction.

    Args:
        image_size: Configured input image size ``(H, W)``: the map's size when ``forward`` is not
            given one. ``None``: none configured (``forward`` must be given the size; nothing is
            precomputed).
        layers: Which layer maps to sum, 1-based as in the paper (``M1`` is the largest map).
            ``(1, 2, 3)`` is the full method; ``(1, 2)``, ``(1, 3)``, ``(2, 3)`` are Table IV's ablations.
        sigma: Standard deviation of the Gaussian filter.
        reductions: Downsampling factor of each layer map (ResNet teachers: 4, 8, 16), used to
            precompute the operators of the configured size.
    """

    def __init__(
        self,
        image_size: tuple[int, int] | None,
        layers: Sequence[int] = (1, 2, 3),
        sigma: float = PAPER_SIGMA,
        reductions: Sequence[int] = (4, 8, 16),
    ) -> None:
        super().__init__()
        self.image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
        self.layers = tuple(int(layer) for layer in layers)
        self.blur = GaussianBlur2d(sigma=sigma, channels=1)  # kernel 2 * int(4 * sigma + 0.5) + 1
        self._operators: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        for layer in self.layers if self.image_size is not None else ():
            map_size = tuple(side // reductions[layer - 1] for side in self.image_size)
            self.operators(map_size)

    def operators(
        self,
        map_size: Sequence[int],
        image_size: Sequence[int] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Resizing-and-filter matrices of one layer map: ``M_ano`` gets ``rows @ M_l @ columns.T``.

        Built in float32 on ``device`` the first time a combination is asked for, then cached.

        Args:
            map_size: ``(h, w)`` of the layer map.
            image_size: ``(H, W)`` of the anomaly map; the configured size when ``None``.
            device: Device of the operators (default: the CPU).
            dtype: Their dtype.

        Returns:
            ``rows`` of shape ``(H, h)`` and ``columns`` of shape ``(W, w)``.
        """
        if image_size is None:
            if self.image_size is None:
                msg = "No image size: give the anomaly map's size, the generator was built without one."
                raise ValueError(msg)
            image_size = self.image_size
        height, width = int(image_size[0]), int(image_size[1])
        device = torch.device("cpu") if device is None else torch.device(device)
        key = (height, width, int(map_size[0]), int(map_size[1]), device, dtype)
        cached = self._operators.get(key)
        if cached is None:
            with torch.inference_mode(False), torch.no_grad():  # plain tensors, usable in and out of inference mode
                rows = blur_matrix(height, self.blur, axis=0, device=device) @ interpolation_matrix(
                    height, key[2], device
                )
                columns = blur_matrix(width, self.blur, axis=1, device=device) @ interpolation_matrix(
                    width, key[3], device
                )
                cached = (rows.to(dtype), columns.to(dtype))
            self._operators[key] = cached
        return cached

    def forward(
        self,
        teacher_features: Sequence[torch.Tensor],
        student_features: Sequence[torch.Tensor],
        image_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Compute ``M_ano``.

        Args:
            teacher_features: ``[F_t^1, F_t^2, F_t^3]``.
            student_features: ``[F_s^1, F_s^2, F_s^3]``.
            image_size: ``(H, W)`` of the input images, the size of the map; the configured
                ``image_size`` when ``None``.

        Returns:
            Anomaly map of shape ``(B, 1, H, W)`` at the input size.
        """
        device_type = teacher_features[0].device.type
        autocast = torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)
        if autocast:  # under mixed precision, keep the map in float32
            with torch.autocast(device_type=device_type, enabled=False):
                return self.forward(teacher_features, student_features, image_size)
        anomaly_map = None
        for layer in self.layers:
            layer_map = cosine_distance_map(teacher_features[layer - 1], student_features[layer - 1])
            rows, columns = self.operators(layer_map.shape[-2:], image_size, layer_map.device, layer_map.dtype)
            # rows @ M_l @ columns.T as two linear maps with the constant operator on the right (as in a
            # linear layer): with the constant on the left, NNCF's INT8 model does not compile on
            # OpenVINO's CPU plugin ("Check 'any_of(scale.size(), OC, 1U)' failed")
            term = F.linear(F.linear(layer_map, columns).transpose(-1, -2), rows).transpose(-1, -2)
            anomaly_map = term if anomaly_map is None else anomaly_map + term
        return anomaly_map.unsqueeze(1)
