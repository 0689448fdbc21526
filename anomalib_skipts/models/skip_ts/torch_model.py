"""PyTorch model of Skip-TS (Liu et al., IEEE TIM 2024; Skip-ST, ISCAS 2023).

A frozen ImageNet-pretrained teacher encoder (T-Net, four stages E1..E4) feeds its deepest feature
map straight into a randomly initialised student decoder (S-Net, D3..D1) that mirrors it: direct
reverse knowledge distillation (DRKD), with skip connections from the teacher into the decoder.
Training returns the teacher and student features for the loss; evaluation returns anomalib's
``InferenceBatch`` with the anomaly map (Eq. 7) and image score (Eq. 8).
"""

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import timm
import torch
from anomalib.data import InferenceBatch
from anomalib.data.utils.tiler import ImageUpscaleMode
from anomalib.models.components import TimmFeatureExtractor
from torch import nn

from . import batch_norm_folding
from .anomaly_map import AnomalyMapGenerator, anomaly_score
from .batch_norm_folding import FoldedCopy
from .student import MAX_SKIPS, UPSAMPLE_KERNEL_SIZES, SkipStudent

if TYPE_CHECKING:
    from anomalib.data.utils.tiler import Tiler

logger = logging.getLogger(__name__)

TEACHER_LAYERS = ("layer1", "layer2", "layer3", "layer4")
SUPPORTED_BACKBONES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "wide_resnet50_2",
    "wide_resnet101_2",
)
INPUT_STRIDE = 32
ANOMALY_MAP_LAYERS = (1, 2, 3)


class TeacherWeightsError(RuntimeError):
    """The teacher's pretrained weights could not be obtained."""


def validate_backbone(backbone: str) -> None:
    """Check that the backbone is a four-stage ResNet-family timm model with a mirrored decoder.

    Raises:
        ValueError: Naming the parameter and the allowed values.
    """
    if backbone in SUPPORTED_BACKBONES:
        return
    allowed = ", ".join(SUPPORTED_BACKBONES)
    if isinstance(backbone, str) and timm.is_model(backbone):
        msg = (
            f"backbone={backbone!r} is a timm model but not a supported four-stage ResNet-family backbone: "
            f"Skip-TS needs a teacher with four stages and a mirrored student decoder. Use one of: {allowed}."
        )
    else:
        msg = f"backbone={backbone!r} is not a known backbone name. Use one of: {allowed}."
    raise ValueError(msg)


def validate_input_size(input_size: Sequence[int]) -> tuple[int, int]:
    """Check that both sides are positive multiples of 32 (the teacher's total stride).

    Returns:
        The size as ``(H, W)``.

    Raises:
        ValueError: If the size is not two positive multiples of 32.
    """
    size = tuple(int(side) for side in input_size)
    if len(size) != 2 or any(side <= 0 or side % INPUT_STRIDE for side in size):
        msg = (
            f"image_size={tuple(input_size)} is not allowed: use a height and width that are positive multiples of "
            f"{INPUT_STRIDE} (the teacher downsamples by {INPUT_STRIDE}), e.g. 256 (the paper's) or 128."
        )
        raise ValueError(msg)
    return size  # type: ignore[return-value]


def load_backbone_weights(feature_extractor: nn.Module, path: str | Path) -> None:
    """Load a local ImageNet checkpoint (timm or torchvision ResNet ``state_dict``) into the teacher.

    Accepts ``.pth``/``.pt``/``.bin`` files saved by ``torch.save`` (optionally wrapped in a
    ``"state_dict"`` or ``"model"`` key) and ``.safetensors`` files (the format timm's hub uses).
    The classifier head (``fc.*``) is ignored.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the checkpoint does not fit the backbone.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        msg = f"backbone_weights={str(path)!r} does not exist. Give the path of a local ImageNet checkpoint file."
        raise FileNotFoundError(msg)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state_dict = load_file(str(path))
    else:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state_dict, dict) and isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
    state_dict = {
        k.removeprefix("module."): v for k, v in state_dict.items() if not k.removeprefix("module.").startswith("fc.")
    }
    try:
        missing, unexpected = feature_extractor.load_state_dict(state_dict, strict=False)
    except RuntimeError as error:  # shape mismatch: a checkpoint of another architecture
        msg = f"backbone_weights={str(path)!r} does not fit the teacher backbone: {error}"
        raise ValueError(msg) from error
    if missing or unexpected:
        msg = (
            f"backbone_weights={str(path)!r} does not fit the teacher backbone: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})."
        )
        raise ValueError(msg)
    logger.info("Loaded teacher weights from %s", path)


def build_teacher(
    backbone: str, pre_trained: bool = True, backbone_weights: str | Path | None = None
) -> TimmFeatureExtractor:
    """Build the frozen teacher T-Net (stages E1..E4) through anomalib's timm feature extractor.

    Args:
        backbone: timm ResNet-family name.
        pre_trained: Download ImageNet weights through timm, as anomalib's built-in models do.
        backbone_weights: Local checkpoint to load instead of downloading (air-gapped sites).

    Returns:
        The teacher, with gradients disabled.

    Raises:
        TeacherWeightsError: If ``pre_trained`` weights cannot be downloaded.
    """
    download = pre_trained and backbone_weights is None
    try:
        teacher = TimmFeatureExtractor(backbone=backbone, layers=list(TEACHER_LAYERS), pre_trained=download)
    except Exception as error:
        if not download:
            raise
        msg = (
            f"Could not download the ImageNet weights of the teacher backbone {backbone!r} through timm "
            f"({type(error).__name__}: {error}). If this machine is offline, either pass "
            f"backbone_weights=/path/to/{backbone}.pth (a local ImageNet checkpoint, e.g. copied from a machine "
            f"with internet), or pre_trained=False (random teacher: results are far below the paper's)."
        )
        raise TeacherWeightsError(msg) from error
    if backbone_weights is not None:
        load_backbone_weights(teacher.feature_extractor, backbone_weights)
    teacher.requires_grad_(False)
    return teacher.eval()


class SkipTSModel(nn.Module):
    """Skip-TS teacher-student model.

    Args:
        backbone: Teacher backbone (four-stage timm ResNet family), default ``wide_resnet50_2``.
        input_size: Input image size ``(H, W)``, multiples of 32.
        pre_trained: Use ImageNet weights for the teacher (downloaded through timm).
        backbone_weights: Path of a local teacher checkpoint, used instead of downloading.
        num_skips: Number of skip connections, 0, 1 or 2 (Skip-ST0 / ST1 / ST2).
        upsample_kernel_size: Student transposed-convolution kernel, 3 (paper) or 2 (authors' code).
        anomaly_map_layers: Layer maps summed in Eq. 7, 1-based, e.g. ``(1, 2, 3)`` or ``(2, 3)``.
        channels_last: Keep weights and activations in channels-last memory layout, which oneDNN and
            cuDNN run faster; the results are the same up to float round-off.
        fold_batch_norm: Fold the frozen teacher's batch norms into its convolutions once, and run
            inference without gradients through a batch-norm-folded copy of the student (rebuilt
            when the student changes). Same function up to float round-off, one pass per
            activation map fewer; the student's own batch norms still train.
    """

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        input_size: Sequence[int] = (256, 256),
        pre_trained: bool = True,
        backbone_weights: str | Path | None = None,
        num_skips: int = MAX_SKIPS,
        upsample_kernel_size: int = 3,
        anomaly_map_layers: Sequence[int] = ANOMALY_MAP_LAYERS,
        channels_last: bool = True,
        fold_batch_norm: bool = True,
    ) -> None:
        super().__init__()
        self.tiler: Tiler | None = None  # set by anomalib's TilerConfigurationCallback
        validate_backbone(backbone)
        input_size = validate_input_size(input_size)
        if num_skips not in range(MAX_SKIPS + 1):
            msg = f"num_skips={num_skips!r} is not allowed: use 0, 1 or 2 (Skip-ST0 / ST1 / ST2; the paper's is 2)."
            raise ValueError(msg)
        if upsample_kernel_size not in UPSAMPLE_KERNEL_SIZES:
            msg = (
                f"upsample_kernel_size={upsample_kernel_size!r} is not allowed: use 3 (the paper) or 2 (authors' code)."
            )
            raise ValueError(msg)
        layers = tuple(anomaly_map_layers)
        if not layers or len(set(layers)) != len(layers) or not set(layers) <= set(ANOMALY_MAP_LAYERS):
            msg = (
                f"anomaly_map_layers={anomaly_map_layers!r} is not allowed: use distinct layers from 1, 2, 3, "
                "e.g. [1, 2, 3] (the paper) or [2, 3]."
            )
            raise ValueError(msg)

        self.teacher = build_teacher(backbone, pre_trained=pre_trained, backbone_weights=backbone_weights)
        self.student = SkipStudent(backbone, num_skips=num_skips, upsample_kernel_size=upsample_kernel_size)
        self.anomaly_map_generator = AnomalyMapGenerator(
            image_size=input_size, layers=layers, reductions=self.teacher.reductions[:3]
        )
        self.channels_last = channels_last
        self.fold_batch_norm = fold_batch_norm
        if fold_batch_norm:
            batch_norm_folding.fold_batch_norm(self.teacher)
        self._folded_student = FoldedCopy(channels_last=channels_last)
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True) -> "SkipTSModel":
        """Set train/eval mode; the frozen teacher always stays in eval mode (batch-norm statistics fixed).

        Returns:
            The model itself.
        """
        super().train(mode)
        self.teacher.eval()
        return self

    def teacher_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Run the frozen teacher: ``[F_t^1, F_t^2, F_t^3, F_t^4]`` without gradients."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return list(self.teacher(images).values())

    def inference_student(self) -> nn.Module:
        """Return the student module that ``forward`` runs now.

        The batch-norm-folded copy when ``fold_batch_norm`` is on, the model is in eval mode and no
        gradients are recorded (Lightning's validation, test and predict loops); the trainable
        student otherwise, so that gradients always reach the real parameters.
        """
        if self.fold_batch_norm and not self.training and not torch.is_grad_enabled():
            return self._folded_student.get(self.student)
        return self.student

    def teacher_feature_bytes(self, dtype: torch.dtype = torch.float16) -> int:
        """Memory taken by one image's teacher features ``F_t^1..F_t^4`` stored in ``dtype``."""
        height, width = self.anomaly_map_generator.image_size
        values = sum(
            channels * (height // reduction) * (width // reduction)
            for channels, reduction in zip(self.teacher.out_dims, self.teacher.reductions, strict=True)
        )
        return values * torch.empty((), dtype=dtype).element_size()

    def _tile(self, images: torch.Tensor) -> torch.Tensor:
        """Cut the images into the tiler's tiles (a batch of ``B * tiles``), after checking the tile size."""
        tile_size = (self.tiler.tile_size_h, self.tiler.tile_size_w)
        if any(side % INPUT_STRIDE for side in (*tile_size, self.tiler.stride_h, self.tiler.stride_w)):
            msg = (
                f"Tiling with tile_size={tile_size} and stride={(self.tiler.stride_h, self.tiler.stride_w)} is not "
                f"allowed: Skip-TS needs tile sizes and strides that are multiples of {INPUT_STRIDE} (the teacher "
                "downsamples by 32), e.g. tile_size=256, stride=256 or 128."
            )
            raise ValueError(msg)
        return self.tiler.tile(images)

    def _untile(self, features: torch.Tensor) -> torch.Tensor:
        """Put per-tile feature maps back together into one map per image.

        With the tiler's padding mode the untiled map covers the padded image: the padding (bottom
        and right) is cut off so that the map covers the input image only.
        """
        untiled = self.tiler.untile(features)
        if self.tiler.mode == ImageUpscaleMode.PADDING:
            height = untiled.shape[-2] * self.tiler.input_h // self.tiler.resized_h
            width = untiled.shape[-1] * self.tiler.input_w // self.tiler.resized_w
            untiled = untiled[..., :height, :width]
        return untiled

    def forward(
        self,
        images: torch.Tensor,
        teacher_features: Sequence[torch.Tensor] | None = None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]] | InferenceBatch:
        """Run teacher and student.

        Args:
            images: Normalised images ``(B, 3, H, W)``.
            teacher_features: Precomputed ``[F_t^1, ..., F_t^4]`` for these images (from a cache); the
                teacher runs when ``None``. Not allowed with tiling.

        With ``tiler`` set (anomalib's ``TilerConfigurationCallback``, as for its built-in models),
        teacher and student run on the tiles and the feature maps are put back together before the
        loss or the anomaly map, which therefore comes back at the full input size.

        Returns:
            In training mode ``([F_t^1, F_t^2, F_t^3], [F_s^1, F_s^2, F_s^3])``; in evaluation mode an
            ``InferenceBatch`` with ``anomaly_map`` ``(B, 1, H, W)`` and ``pred_score`` ``(B, 1)``.
        """
        if self.tiler is not None and teacher_features is not None:
            msg = "Cached teacher features cannot be used with tiling: the teacher runs on the tiles."
            raise ValueError(msg)
        if teacher_features is None:
            teacher_features = self.teacher_features(self._tile(images) if self.tiler is not None else images)
        elif self.channels_last:  # cached features: the same layout, hence the same arithmetic, as fresh ones
            teacher_features = [feature.contiguous(memory_format=torch.channels_last) for feature in teacher_features]
        student_features = self.inference_student()(teacher_features)
        if self.tiler is not None:
            teacher_features = [self._untile(feature) for feature in teacher_features[:3]]
            student_features = [self._untile(feature) for feature in student_features]
        if self.training:
            return list(teacher_features[:3]), student_features
        anomaly_map = self.anomaly_map_generator(teacher_features[:3], student_features)
        return InferenceBatch(pred_score=anomaly_score(anomaly_map), anomaly_map=anomaly_map)
