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
from typing import TYPE_CHECKING, Any

import timm
import torch
from anomalib.data import InferenceBatch
from anomalib.data.utils.tiler import ImageUpscaleMode
from anomalib.models.components import TimmFeatureExtractor
from torch import nn

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
TORCHVISION_TAG = "tv_in1k"
"""timm's tag of torchvision's ImageNet weights: the teacher's default, as in the paper and RD4AD."""
INPUT_STRIDE = 32
ANOMALY_MAP_LAYERS = (1, 2, 3)


class TeacherWeightsError(RuntimeError):
    """The teacher's pretrained weights could not be obtained."""


def pretrained_tags(architecture: str) -> list[str]:
    """Return the tags of timm's pretrained weights for one architecture (``tv_in1k``, ``a1_in1k``, ...)."""
    return [name.partition(".")[2] for name in timm.list_pretrained(f"{architecture}.*")]


def validate_backbone(backbone: str) -> None:
    """Check that the backbone is a four-stage ResNet-family timm model with a mirrored decoder.

    A timm pretrained tag may follow the name (``"resnet18.a1_in1k"``, ``"wide_resnet50_2.racm_in1k"``):
    it selects which ImageNet weights the teacher gets and must be one that timm has.

    Raises:
        ValueError: Naming the parameter and the allowed values.
    """
    allowed = ", ".join(SUPPORTED_BACKBONES)
    if not isinstance(backbone, str):
        msg = f"backbone={backbone!r} is not a backbone name. Use one of: {allowed}."
        raise ValueError(msg)
    architecture, _, tag = backbone.partition(".")
    if architecture not in SUPPORTED_BACKBONES:
        if timm.is_model(architecture):
            msg = (
                f"backbone={backbone!r} is a timm model but not a supported four-stage ResNet-family backbone: "
                f"Skip-TS needs a teacher with four stages and a mirrored student decoder. Use one of: {allowed}."
            )
        else:
            msg = f"backbone={backbone!r} is not a known backbone name. Use one of: {allowed}."
        raise ValueError(msg)
    if tag:
        tags = pretrained_tags(architecture)
        if tag not in tags:
            msg = (
                f"backbone={backbone!r}: timm has no pretrained weights tagged {tag!r} for {architecture}. "
                f"Available: {', '.join(f'{architecture}.{t}' for t in tags)}; without a tag the teacher gets "
                f"torchvision's ImageNet weights ({architecture}.{TORCHVISION_TAG}, the paper's)."
            )
            raise ValueError(msg)


def resolve_backbone(backbone: str) -> str:
    """Return the backbone with its pretrained tag: the given one, else torchvision's ImageNet weights.

    The paper's teacher, like RD4AD's, has torchvision's ImageNet weights, which timm tags ``tv_in1k``;
    timm's own default tag differs for most ResNets (``wide_resnet50_2`` defaults to ``racm_in1k``),
    so an untagged name gets ``tv_in1k`` (timm's default only for an architecture without it).

    Example:
        >>> resolve_backbone("wide_resnet50_2")
        'wide_resnet50_2.tv_in1k'
        >>> resolve_backbone("resnet18.a1_in1k")
        'resnet18.a1_in1k'

    Raises:
        ValueError: As :func:`validate_backbone`.
    """
    validate_backbone(backbone)
    architecture, _, tag = backbone.partition(".")
    if not tag:
        tags = pretrained_tags(architecture)
        tag = TORCHVISION_TAG if TORCHVISION_TAG in tags else timm.models.get_pretrained_cfg(architecture).tag
    return f"{architecture}.{tag}"


def input_size_error(input_size: Sequence[int], name: str = "image_size") -> str | None:
    """Say why an input size cannot be used, or return ``None`` when both sides are positive multiples of 32.

    Args:
        input_size: ``(H, W)``.
        name: What the size is called in the message (the argument, or where it comes from).

    Returns:
        The message of the ``ValueError`` that :func:`validate_input_size` raises, or ``None``.
    """
    size = tuple(int(side) for side in input_size)
    if len(size) == 2 and all(side > 0 and side % INPUT_STRIDE == 0 for side in size):
        return None
    return (
        f"{name}={tuple(input_size)} is not allowed: use a height and width that are positive multiples of "
        f"{INPUT_STRIDE} (the teacher downsamples by {INPUT_STRIDE}), e.g. 256 (the paper's) or 128."
    )


def validate_input_size(input_size: Sequence[int], name: str = "image_size") -> tuple[int, int]:
    """Check that both sides are positive multiples of 32 (the teacher's total stride).

    Args:
        input_size: ``(H, W)``.
        name: What the size is called in the error message.

    Returns:
        The size as ``(H, W)``.

    Raises:
        ValueError: If the size is not two positive multiples of 32.
    """
    message = input_size_error(input_size, name)
    if message is not None:
        raise ValueError(message)
    return int(input_size[0]), int(input_size[1])


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


def build_teacher(backbone: str) -> TimmFeatureExtractor:
    """Build the frozen teacher T-Net (stages E1..E4) through anomalib's timm feature extractor, without weights.

    Its ImageNet weights are loaded by :func:`load_teacher_weights` (``SkipTSModel`` does so at the
    teacher's first use, unless a state dict with the teacher was loaded before).

    Args:
        backbone: timm ResNet-family name, with a pretrained tag (``"wide_resnet50_2.tv_in1k"``).

    Returns:
        The teacher (randomly initialised), with gradients disabled, in eval mode.
    """
    teacher = TimmFeatureExtractor(backbone=backbone, layers=list(TEACHER_LAYERS), pre_trained=False)
    teacher.requires_grad_(False)
    return teacher.eval()


def load_teacher_weights(
    teacher: TimmFeatureExtractor, backbone: str, backbone_weights: str | Path | None = None
) -> None:
    """Load ImageNet weights into a teacher built by :func:`build_teacher`, in place.

    Args:
        teacher: The teacher; its device, dtype and memory layout are kept.
        backbone: timm name with pretrained tag, whose weights are downloaded through timm (as
            anomalib's built-in models do) when ``backbone_weights`` is ``None``.
        backbone_weights: Local checkpoint to load instead of downloading (air-gapped sites).

    Raises:
        TeacherWeightsError: If the weights cannot be downloaded.
        FileNotFoundError: If ``backbone_weights`` does not exist.
        ValueError: If ``backbone_weights`` does not fit the backbone.
    """
    with torch.inference_mode(False), torch.no_grad():
        if backbone_weights is not None:
            load_backbone_weights(teacher.feature_extractor, backbone_weights)
            return
        try:
            downloaded = TimmFeatureExtractor(backbone=backbone, layers=list(TEACHER_LAYERS), pre_trained=True)
        except Exception as error:
            msg = (
                f"Could not download the ImageNet weights of the teacher backbone {backbone!r} through timm "
                f"({type(error).__name__}: {error}). If this machine is offline, either pass "
                f"backbone_weights=/path/to/{backbone.partition('.')[0]}.pth (a local ImageNet checkpoint, e.g. "
                f"copied from a machine with internet), or pre_trained=False (random teacher: results are far below "
                f"the paper's). A trained checkpoint needs neither: its teacher is loaded from it."
            )
            raise TeacherWeightsError(msg) from error
        teacher.feature_extractor.load_state_dict(downloaded.feature_extractor.state_dict())


def _load_pending_teacher_weights_before_saving(module: "SkipTSModel", prefix: str, keep_vars: bool) -> None:
    """``state_dict`` pre-hook: a state dict (a checkpoint) never holds the not-yet-loaded random teacher."""
    del prefix, keep_vars
    module.load_teacher_weights()


def _teacher_from_state_dict(module: "SkipTSModel", state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """``load_state_dict`` pre-hook: a state dict that holds the whole teacher replaces its pending weights."""
    del args
    teacher_prefix = f"{prefix}teacher."
    if module.teacher_weights_pending and all(
        teacher_prefix + key in state_dict for key in module.teacher.state_dict(keep_vars=True)
    ):
        module.teacher_weights_pending = False
        module.refresh_inference_copies()


def _refresh_after_loading(module: "SkipTSModel", incompatible_keys: Any) -> None:
    """``load_state_dict`` post-hook: the loaded weights were written in place, so rebuild the folded copies."""
    del incompatible_keys
    module.refresh_inference_copies()


class SkipTSModel(nn.Module):
    """Skip-TS teacher-student model.

    The registered modules (``teacher``, ``student``) are the canonical ones: the state dict has the
    same keys and values whatever ``fold_batch_norm`` and ``channels_last`` are. The batch-norm-folded
    teacher and student that run when ``fold_batch_norm`` is on are copies kept out of the state dict
    (see :meth:`refresh_inference_copies`).

    Args:
        backbone: Teacher backbone (four-stage timm ResNet family), default ``wide_resnet50_2``; a timm
            pretrained tag may follow (``"resnet18.a1_in1k"``). Without one the teacher gets
            torchvision's ImageNet weights (``tv_in1k``), as in the paper.
        input_size: Configured input image size ``(H, W)``, multiples of 32. Inputs of any other size
            that is a multiple of 32 give anomaly maps of their own size. ``None``: no configured size
            (``SkipTS`` builds such a model when its pre-processor resizes to a size the teacher cannot
            take; only ``forward`` on images of a valid size, and no fit, can use it).
        pre_trained: Use ImageNet weights for the teacher (downloaded through timm).
        backbone_weights: Path of a local teacher checkpoint, used instead of downloading.

    The teacher's ImageNet weights (``pre_trained`` or ``backbone_weights``) are loaded lazily: at the
    teacher's first use (``forward``, ``teacher_features``, ``state_dict``) or by
    :meth:`load_teacher_weights`, and never when a state dict holding the teacher (a checkpoint) is
    loaded before. So building the model and loading a checkpoint into it touch neither the network
    nor the file system.
        num_skips: Number of skip connections, 0, 1 or 2 (Skip-ST0 / ST1 / ST2).
        upsample_kernel_size: Student transposed-convolution kernel, 3 (paper) or 2 (authors' code).
        anomaly_map_layers: Layer maps summed in Eq. 7, 1-based, e.g. ``(1, 2, 3)`` or ``(2, 3)``.
        channels_last: Keep weights and activations in channels-last memory layout, which oneDNN and
            cuDNN run faster; the results are the same up to float round-off.
        fold_batch_norm: Run the frozen teacher, and the student at inference without gradients,
            through batch-norm-folded copies (rebuilt when the originals change). Same function up to
            float round-off, one pass per activation map fewer; the student's own batch norms still
            train.
    """

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        input_size: Sequence[int] | None = (256, 256),
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
        backbone = resolve_backbone(backbone)
        input_size = None if input_size is None else validate_input_size(input_size)
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

        self.backbone = backbone
        self.upsample_kernel_size = upsample_kernel_size
        self.teacher = build_teacher(backbone)
        self.backbone_weights = backbone_weights
        self.teacher_weights_pending = pre_trained or backbone_weights is not None
        """Whether the teacher still waits for its ImageNet weights (see :meth:`load_teacher_weights`)."""
        self.student = SkipStudent(
            backbone.partition(".")[0], num_skips=num_skips, upsample_kernel_size=upsample_kernel_size
        )
        self.anomaly_map_generator = AnomalyMapGenerator(
            image_size=input_size, layers=layers, reductions=self.teacher.reductions[:3]
        )
        self.channels_last = channels_last
        self.fold_batch_norm = fold_batch_norm
        self._folded_teacher = FoldedCopy(channels_last=channels_last, frozen=True)
        self._folded_student = FoldedCopy(channels_last=channels_last)
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self.register_state_dict_pre_hook(_load_pending_teacher_weights_before_saving)
        self.register_load_state_dict_pre_hook(_teacher_from_state_dict)
        self.register_load_state_dict_post_hook(_refresh_after_loading)

    def load_teacher_weights(self) -> None:
        """Load the teacher's pending ImageNet weights now (download, or ``backbone_weights``); else do nothing.

        Called at the teacher's first use; ``SkipTS`` calls it when a fit starts without a
        checkpoint, so that a machine without the weights fails before the first epoch. The
        batch-norm-folded copies are rebuilt from the loaded weights.

        Raises:
            TeacherWeightsError: If the weights cannot be downloaded.
            FileNotFoundError: If ``backbone_weights`` does not exist.
            ValueError: If ``backbone_weights`` does not fit the backbone.
        """
        if not self.teacher_weights_pending:
            return
        load_teacher_weights(self.teacher, self.backbone, self.backbone_weights)
        self.teacher_weights_pending = False
        self.refresh_inference_copies()

    def architecture(self) -> dict[str, Any]:
        """Return the settings that decide what a state dict means (a checkpoint is valid for the same ones)."""
        return {
            "backbone": self.backbone,
            "num_skips": self.student.num_skips,
            "upsample_kernel_size": self.upsample_kernel_size,
            "anomaly_map_layers": list(self.anomaly_map_generator.layers),
        }

    def train(self, mode: bool = True) -> "SkipTSModel":
        """Set train/eval mode; the frozen teacher always stays in eval mode (batch-norm statistics fixed).

        Returns:
            The model itself.
        """
        super().train(mode)
        self.teacher.eval()
        return self

    def refresh_inference_copies(self) -> None:
        """Drop the batch-norm-folded copies so that their next use rebuilds them from the current weights.

        The student's copy also follows every change seen by PyTorch's version counters (optimizer
        steps, moves), the frozen teacher's its moves and casts; ``load_state_dict`` and loading the
        ImageNet weights call this. A change made through ``.data`` (EMA or SWA callbacks) is not
        seen, so ``SkipTS`` calls this at the start of each validation, test and predict loop.
        """
        self._folded_teacher.invalidate()
        self._folded_student.invalidate()

    def inference_teacher(self) -> nn.Module:
        """Return the teacher module that runs: its batch-norm-folded copy when ``fold_batch_norm`` is on.

        The teacher is frozen and always in eval mode, so the folded copy computes the same function
        in training and evaluation. Under ``torch.export`` / ``torch.compile`` (ONNX and OpenVINO
        export) the canonical teacher is traced: the exported graph holds the model's own weights,
        and those runtimes fold batch norms themselves.
        """
        self.load_teacher_weights()
        if self.fold_batch_norm and not torch.compiler.is_compiling():
            return self._folded_teacher.get(self.teacher)
        return self.teacher

    def teacher_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Run the frozen teacher: ``[F_t^1, F_t^2, F_t^3, F_t^4]`` without gradients."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return list(self.inference_teacher()(images).values())

    def inference_student(self) -> nn.Module:
        """Return the student module that ``forward`` runs now.

        The batch-norm-folded copy when ``fold_batch_norm`` is on, the model is in eval mode and no
        gradients are recorded (Lightning's validation, test and predict loops); the trainable
        student otherwise, so that gradients always reach the real parameters, and under
        ``torch.export`` / ``torch.compile``.
        """
        inference = not self.training and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
        if self.fold_batch_norm and inference:
            return self._folded_student.get(self.student)
        return self.student

    def teacher_feature_bytes(self, dtype: torch.dtype = torch.float16) -> int:
        """Memory taken by one image's teacher features ``F_t^1..F_t^4`` stored in ``dtype``.

        Raises:
            ValueError: If the model has no configured input size.
        """
        if self.anomaly_map_generator.image_size is None:
            msg = "The model has no configured input size: build it with input_size=(H, W), multiples of 32."
            raise ValueError(msg)
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
            images: Normalised images ``(B, 3, H, W)``, ``H`` and ``W`` multiples of 32 (any, not only
                the configured size).
            teacher_features: Precomputed ``[F_t^1, ..., F_t^4]`` for these images (from a cache); the
                teacher runs when ``None``. Not allowed with tiling.

        With ``tiler`` set (anomalib's ``TilerConfigurationCallback``, as for its built-in models),
        teacher and student run on the tiles and the feature maps are put back together before the
        loss or the anomaly map, which therefore comes back at the full input size.

        Returns:
            In training mode ``([F_t^1, F_t^2, F_t^3], [F_s^1, F_s^2, F_s^3])``; in evaluation mode an
            ``InferenceBatch`` with ``anomaly_map`` ``(B, 1, H, W)`` (the input's height and width) and
            ``pred_score`` ``(B, 1)``.

        Raises:
            ValueError: If the images' height or width is not a multiple of 32.
        """
        image_size = (int(images.shape[-2]), int(images.shape[-1]))
        if self.tiler is None and (image_size[0] % INPUT_STRIDE or image_size[1] % INPUT_STRIDE):
            msg = (
                f"Input images of size {image_size[0]}x{image_size[1]} are not allowed: Skip-TS needs a height and "
                f"width that are multiples of {INPUT_STRIDE} (the teacher downsamples by {INPUT_STRIDE}). Resize "
                f"them, e.g. with the model's pre-processor (image_size)."
            )
            raise ValueError(msg)
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
        anomaly_map = self.anomaly_map_generator(teacher_features[:3], student_features, image_size)
        return InferenceBatch(pred_score=anomaly_score(anomaly_map), anomaly_map=anomaly_map)
