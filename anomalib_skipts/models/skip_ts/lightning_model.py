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

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import optim

from .loss import PAPER_BETA, SIMILARITIES, VARIANTS, SkipTSLoss
from .torch_model import ANOMALY_MAP_LAYERS, SkipTSModel, validate_input_size

PAPER_IMAGE_SIZE = (256, 256)
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
        )
        self.loss = SkipTSLoss(similarity=similarity, mac=mac, beta=beta, variant=loss_variant)

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
        loss = self.loss(*self.model(batch.image))
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
