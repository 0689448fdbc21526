"""Skip-TS as an anomalib model (Liu et al., IEEE TIM 2024; Skip-ST, ISCAS 2023).

``SkipTS`` is an ``AnomalibModule``: anomalib's engine, pre-processor (resize + ImageNet
normalisation), post-processor (threshold + normalisation), evaluator, visualizer and export work
on it unchanged. Defaults are the paper's: WideResNet50-2 teacher with ImageNet weights, 256x256
input, two skip connections, cosine + MAC loss with ``beta = 0.05``, Adam with lr 0.005 and betas
(0.5, 0.999). Batch size (16) and epochs (200) belong to the datamodule and trainer: see
``configs/skipts.yaml``.

Example:
    >>> from anomalib.engine import Engine
    >>> from anomalib_skipts.data import HeadPhantom
    >>> from anomalib_skipts.models import SkipTS
    >>> model = SkipTS(backbone="resnet18", pre_trained=False, image_size=128)  # doctest: +SKIP
    >>> Engine(max_epochs=5).train(model, datamodule=HeadPhantom())  # doctest: +SKIP
"""

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import optim
from torchvision.transforms import v2

from .feature_cache import TeacherFeatureCache
from .loss import PAPER_BETA, SIMILARITIES, VARIANTS, SkipTSLoss
from .torch_model import ANOMALY_MAP_LAYERS, SkipTSModel, validate_input_size

logger = logging.getLogger(__name__)

CACHE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
PAPER_IMAGE_SIZE = (256, 256)
DETERMINISTIC_TRANSFORMS = (
    v2.Compose,
    v2.Resize,
    v2.Normalize,
    v2.CenterCrop,
    v2.ToDtype,
    v2.ToImage,
    v2.ToPureTensor,
    v2.Grayscale,
    v2.RGB,
    v2.Identity,
)
PAPER_LR = 0.005
PAPER_BETAS = (0.5, 0.999)


def _validate_loss_options(similarity: str, beta: float, loss_variant: str) -> None:
    if similarity not in SIMILARITIES:
        msg = f"similarity={similarity!r} is not allowed: use 'cosine' (the paper) or 'mse' (Table IV ablation)."
        raise ValueError(msg)
    if not isinstance(beta, int | float) or beta < 0:
        msg = f"beta={beta!r} is not allowed: the MAC loss weight must be a number >= 0 (the paper's is 0.05)."
        raise ValueError(msg)
    if loss_variant not in VARIANTS:
        msg = f"loss_variant={loss_variant!r} is not allowed: use 'paper' (the equations) or 'authors_code'."
        raise ValueError(msg)
    if loss_variant == "authors_code" and similarity != "cosine":
        msg = "loss_variant='authors_code' reproduces the public code's cosine loss: use it with similarity='cosine'."
        raise ValueError(msg)


def is_deterministic(transform: object) -> bool:
    """Whether a (possibly composed) torchvision transform gives the same output every time.

    Only known deterministic transforms count; anything else is treated as augmentation.
    """
    if transform is None:
        return True
    if isinstance(transform, v2.Compose):
        return all(is_deterministic(child) for child in transform.transforms)
    return isinstance(transform, DETERMINISTIC_TRANSFORMS)


class SkipTS(AnomalibModule):
    """Skip-TS: teacher-student model with skip connections and multiscale anomaly consistency.

    Args:
        backbone: Teacher backbone, a four-stage timm ResNet (``resnet18/34/50``, ``wide_resnet50_2``,
            ``wide_resnet101_2``, ...). Defaults to ``"wide_resnet50_2"`` (the paper's).
        pre_trained: Load ImageNet weights for the teacher through timm. Defaults to ``True``.
        backbone_weights: Path of a local teacher checkpoint (``.pth`` or ``.safetensors``) used instead
            of downloading, for air-gapped machines. Defaults to ``None``.
        num_skips: Skip connections 0, 1 or 2 (Skip-ST0 / ST1 / ST2). Defaults to ``2``.
        similarity: Similarity loss, ``"cosine"`` (Eq. 1-3) or ``"mse"``. Defaults to ``"cosine"``.
        mac: Add the MAC loss (Eq. 4). Defaults to ``True``.
        beta: MAC loss weight in Eq. 5. Defaults to ``0.05``.
        loss_variant: ``"paper"`` (the equations) or ``"authors_code"`` (the public code's flattened
            per-image cosine and MSE-based MAC). Defaults to ``"paper"``.
        anomaly_map_layers: Layer maps summed in Eq. 7 (1-based). Defaults to ``(1, 2, 3)``.
        upsample_kernel_size: Student transposed-convolution kernel: 3 (paper) or 2 (authors' code).
        image_size: Input size for the default pre-processor, an int or ``(H, W)``, multiples of 32.
            Defaults to 256x256 (the paper's). Ignored when a ``pre_processor`` instance is given.
        lr: Adam learning rate. Defaults to ``0.005``.
        betas: Adam betas. Defaults to ``(0.5, 0.999)``.
        teacher_cache: Compute each training image's teacher features once and reuse them in later
            epochs (the teacher is frozen). Used only when it is safe: it turns itself off, with a log
            line, when training transforms are random (augmentation). Defaults to ``True``.
        teacher_cache_mb: Memory budget of that cache in MiB (on the training device); a training set
            whose features do not fit is trained without cache, with a log line. Defaults to ``4096``.
        teacher_cache_dtype: Storage precision of the cache: ``"float16"`` (half the memory; the loss
            curve matches the uncached one to about 1e-2 relative) or ``"float32"`` (matches to float
            round-off). Defaults to ``"float16"``.
        channels_last: Run convolutions in channels-last memory layout (faster on CPU and GPU, same
            results up to round-off). Defaults to ``True``.
        fold_batch_norm: Fold the frozen teacher's batch norms into its convolutions, and run
            validation, test and predict through a batch-norm-folded copy of the student (same
            results up to round-off, faster). Defaults to ``True``.
        pre_processor: Pre-processor instance or flag to use the default. Defaults to ``True``.
        post_processor: Post-processor instance or flag to use the default. Defaults to ``True``.
        evaluator: Evaluator instance or flag to use the default. Defaults to ``True``.
        visualizer: Visualizer instance or flag to use the default. Defaults to ``True``.
    """

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        pre_trained: bool = True,
        backbone_weights: str | Path | None = None,
        num_skips: int = 2,
        similarity: str = "cosine",
        mac: bool = True,
        beta: float = PAPER_BETA,
        loss_variant: str = "paper",
        anomaly_map_layers: Sequence[int] = ANOMALY_MAP_LAYERS,
        upsample_kernel_size: int = 3,
        image_size: int | Sequence[int] | None = None,
        lr: float = PAPER_LR,
        betas: Sequence[float] = PAPER_BETAS,
        teacher_cache: bool = True,
        teacher_cache_mb: float = 4096.0,
        teacher_cache_dtype: str = "float16",
        channels_last: bool = True,
        fold_batch_norm: bool = True,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        _validate_loss_options(similarity, beta, loss_variant)
        if image_size is not None:
            sides = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
            image_size = validate_input_size(sides)
        if pre_processor is True:
            pre_processor = self.configure_pre_processor(image_size or PAPER_IMAGE_SIZE)
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        input_size = self.input_size
        if input_size is None:
            msg = "Skip-TS needs a fixed input size: give image_size, or a pre_processor whose transform resizes."
            raise ValueError(msg)
        self.lr = lr
        self.betas = tuple(betas)
        self.model = SkipTSModel(
            backbone=backbone,
            input_size=input_size,
            pre_trained=pre_trained,
            backbone_weights=backbone_weights,
            num_skips=num_skips,
            upsample_kernel_size=upsample_kernel_size,
            anomaly_map_layers=anomaly_map_layers,
            channels_last=channels_last,
            fold_batch_norm=fold_batch_norm,
        )
        self.loss = SkipTSLoss(similarity=similarity, mac=mac, beta=beta, variant=loss_variant)
        if teacher_cache_mb < 0:
            msg = f"teacher_cache_mb={teacher_cache_mb!r} is not allowed: use a memory budget in MiB >= 0."
            raise ValueError(msg)
        if teacher_cache_dtype not in CACHE_DTYPES:
            msg = f"teacher_cache_dtype={teacher_cache_dtype!r} is not allowed: use one of {', '.join(CACHE_DTYPES)}."
            raise ValueError(msg)
        self.teacher_cache_dtype = CACHE_DTYPES[teacher_cache_dtype]
        self.teacher_cache = teacher_cache
        self.teacher_cache_mb = teacher_cache_mb
        self.feature_cache: TeacherFeatureCache | None = None

    def _cache_unsafe_reason(self) -> str | None:
        """Why caching teacher features would change training, or ``None`` when it is safe."""
        if self.model.tiler is not None:
            return "tiling is on (the teacher runs on tiles, the cache keeps whole images)"
        datamodule = getattr(self.trainer, "datamodule", None)
        augmentations = getattr(datamodule, "train_augmentations", None)
        if not is_deterministic(augmentations):
            return f"the training data has random augmentations ({type(augmentations).__name__})"
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        if not is_deterministic(getattr(dataset, "augmentations", None)):
            return "the training dataset applies random augmentations"
        if self.pre_processor is not None and not is_deterministic(getattr(self.pre_processor, "transform", None)):
            return "the pre-processor's transform is not a known deterministic transform"
        return None

    def _build_feature_cache(self) -> TeacherFeatureCache | None:
        """Decide whether to cache teacher features for this fit, and say so in the log."""
        if not self.teacher_cache:
            return None
        reason = self._cache_unsafe_reason()
        if reason is not None:
            logger.info("Teacher-feature cache off: %s.", reason)
            return None
        budget = int(self.teacher_cache_mb * 2**20)
        per_image = self.model.teacher_feature_bytes(self.teacher_cache_dtype)
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        num_images = len(dataset) if hasattr(dataset, "__len__") else None
        if num_images is not None and num_images * per_image > budget:
            logger.warning(
                "Teacher-feature cache off: the %d training images need %.0f MiB of teacher features, more than "
                "teacher_cache_mb=%.0f. Training goes on without the cache (slower); raise teacher_cache_mb to use it.",
                num_images,
                num_images * per_image / 2**20,
                self.teacher_cache_mb,
            )
            return None
        logger.info(
            "Teacher-feature cache on: %.1f MiB per image in %s, budget %.0f MiB.",
            per_image / 2**20,
            str(self.teacher_cache_dtype).removeprefix("torch."),
            self.teacher_cache_mb,
        )
        return TeacherFeatureCache(budget_bytes=budget, dtype=self.teacher_cache_dtype)

    def on_train_start(self) -> None:
        """Set up the teacher-feature cache for this fit."""
        self.feature_cache = self._build_feature_cache()

    def on_train_end(self) -> None:
        """Free the teacher-feature cache."""
        self.feature_cache = None

    def _teacher_features(self, batch: Batch) -> list | None:
        """Return cached teacher features of a training batch, or ``None`` to let the model run the teacher."""
        if self.feature_cache is None:
            return None
        if batch.image_path is None or len(batch.image_path) != len(batch.image):
            logger.info("Teacher-feature cache off: training batches carry no image paths to key the cache.")
            self.feature_cache = None
            return None
        try:
            return self.feature_cache.features(
                list(map(str, batch.image_path)), batch.image, self.model.teacher_features
            )
        except MemoryError as error:
            logger.warning("Teacher-feature cache off (%s); training goes on without it.", error)
            self.feature_cache = None
            return None

    def configure_optimizers(self) -> optim.Adam:
        """Adam on the student only (the teacher is frozen), with the paper's lr and betas.

        Returns:
            The optimizer.
        """
        return optim.Adam(self.model.student.parameters(), lr=self.lr, betas=self.betas)

    def training_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Compute ``L_DRKD`` (Eq. 5) on a batch of normal images.

        Args:
            batch: Input batch.
            args: Unused.
            kwargs: Unused.

        Returns:
            The loss.
        """
        del args, kwargs
        loss = self.loss(*self.model(batch.image, self._teacher_features(batch)))
        self.log("train_loss", loss, on_epoch=True, prog_bar=True, logger=True, batch_size=len(batch.image))
        return {"loss": loss}

    def validation_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Compute anomaly maps and scores for the validation batch.

        Args:
            batch: Input batch.
            args: Unused.
            kwargs: Unused.

        Returns:
            The batch updated with ``anomaly_map`` and ``pred_score``.
        """
        del args, kwargs
        predictions = self.model(batch.image)
        return batch.update(**predictions._asdict())

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """Trainer settings the model needs (and nothing else: epochs live in ``configs/``).

        No sanity validation: it would run the untrained student through anomalib's
        normalisation and threshold statistics.
        """
        return {"num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """Skip-TS learns from normal images only."""
        return LearningType.ONE_CLASS
