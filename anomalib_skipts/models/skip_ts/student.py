"""Student decoder S-Net of Skip-TS with skip connections (Liu et al., IEEE TIM 2024, Sec. III-B/C).

The student is the mirror image of the teacher: three sub-decoders D3, D2, D1, built from
anomalib's ResNet decoder (the RD4AD family the authors' student also comes from). D3 takes the
teacher's deepest map ``F_t^4`` directly (no bottleneck: "direct" reverse distillation); with skip
connections the input of D2 is ``F_t^3 + F_s^3`` and that of D1 is ``F_t^2 + F_s^2``.

Each sub-decoder upsamples by 2 with a transposed convolution. The paper says kernel 3, stride 2
(the default here); the authors' public code and anomalib's decoder use kernel 2, stride 2
(``upsample_kernel_size=2``).
"""

from collections.abc import Sequence

import torch
from anomalib.models.components.backbone import get_decoder
from torch import nn

UPSAMPLE_KERNEL_SIZES = (2, 3)
MAX_SKIPS = 2


def _paper_upsampling(module: nn.ConvTranspose2d) -> nn.ConvTranspose2d:
    """Return a kernel-3, stride-2 transposed convolution with the same channels that doubles H and W."""
    return nn.ConvTranspose2d(
        module.in_channels,
        module.out_channels,
        kernel_size=3,
        stride=2,
        padding=1,
        output_padding=1,
        groups=module.groups,
        bias=module.bias is not None,
    )


def build_decoder(backbone: str, upsample_kernel_size: int = 3) -> nn.Module:
    """Build the mirrored ResNet decoder with the requested upsampling kernel.

    Args:
        backbone: Teacher backbone name (a key of anomalib's ``get_decoder``).
        upsample_kernel_size: 3 (paper) or 2 (authors' code, anomalib's decoder as is).

    Returns:
        anomalib's ``ResNetDecoder`` with stages ``layer1`` (D3), ``layer2`` (D2), ``layer3`` (D1).
    """
    decoder = get_decoder(backbone)
    if upsample_kernel_size == 3:
        for parent in list(decoder.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.ConvTranspose2d) and child.stride == (2, 2):
                    setattr(parent, name, _paper_upsampling(child))
    return decoder


def fuse_skip(teacher_feature: torch.Tensor, student_feature: torch.Tensor) -> torch.Tensor:
    """Skip connection of Sec. III-C: the next sub-decoder's input is ``F_t^{j+1} + F_s^{j+1}``."""
    return teacher_feature + student_feature


class SkipStudent(nn.Module):
    """Student decoder with ``num_skips`` skip connections from the teacher.

    Args:
        backbone: Teacher backbone name; the decoder mirrors it.
        num_skips: 0, 1 or 2 (Skip-ST0 / ST1 / ST2). One skip feeds D2 only; two feed D2 and D1.
        upsample_kernel_size: Transposed-convolution kernel, 3 (paper) or 2 (authors' code).
    """

    def __init__(self, backbone: str, num_skips: int = MAX_SKIPS, upsample_kernel_size: int = 3) -> None:
        super().__init__()
        self.num_skips = num_skips
        self.decoder = build_decoder(backbone, upsample_kernel_size)
        self.stages = (self.decoder.layer1, self.decoder.layer2, self.decoder.layer3)  # D3, D2, D1

    def forward(self, teacher_features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Reconstruct the teacher's shallow features from its deepest one.

        Args:
            teacher_features: ``[F_t^1, F_t^2, F_t^3, F_t^4]``.

        Returns:
            ``[F_s^1, F_s^2, F_s^3]``, shaped like ``F_t^1, F_t^2, F_t^3``.
        """
        features = teacher_features[3]
        outputs: list[torch.Tensor] = []
        for depth, stage in enumerate(self.stages):
            if 0 < depth <= self.num_skips:
                features = fuse_skip(teacher_features[3 - depth], features)
            features = stage(features)
            outputs.append(features)
        return outputs[::-1]
