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

from .batch_norm_folding import unfold_state_dict
from .export import head_ignored_scope, nncf_ignoring
from .feature_cache import FeatureCacheError, TeacherFeatureCache, samples_per_process
from .input_metadata import InputSettingsMixin
from .loss import PAPER_BETA, SkipTSLoss, validate_loss_options
from .torch_model import ANOMALY_MAP_LAYERS, SkipTSModel, input_size_error, resolve_backbone, validate_input_size

logger = logging.getLogger(__name__)

ARCHITECTURE_KEY = "skipts_architecture"
"""Checkpoint entry with the settings that give the state dict its meaning (see ``SkipTS.architecture``)."""
ARCHITECTURE_SETTINGS = ("backbone", "num_skips", "upsample_kernel_size", "anomaly_map_layers")
LOSS_SETTINGS = ("similarity", "loss_variant")

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


def _plain(value: Any) -> Any:
    """Return a setting as a plain comparable value (a YAML list and a tuple of layers compare equal)."""
    return [int(item) for item in value] if isinstance(value, list | tuple) else value


def is_deterministic(transform: object) -> bool:
    """Whether a (possibly composed) torchvision transform gives the same output every time.

    Only known deterministic transforms count; anything else is treated as augmentation.
    """
    if transform is None:
        return True
    if isinstance(transform, v2.Compose):
        return all(is_deterministic(child) for child in transform.transforms)
    return isinstance(transform, DETERMINISTIC_TRANSFORMS)


class SkipTS(InputSettingsMixin, AnomalibModule):
    """Skip-TS: teacher-student model with skip connections and multiscale anomaly consistency.

    Args:
        backbone: Teacher backbone, a four-stage timm ResNet (``resnet18/34/50``, ``wide_resnet50_2``,
            ``wide_resnet101_2``, ...), optionally with a timm pretrained tag (``"resnet18.a1_in1k"``).
            Without a tag the teacher gets torchvision's ImageNet weights (timm's ``tv_in1k``), as in
            the paper. Defaults to ``"wide_resnet50_2"`` (the paper's).
        pre_trained: Load ImageNet weights for the teacher through timm. Defaults to ``True``. They are
            loaded when a fit starts without a checkpoint (before the first epoch) or at the teacher's
            first use, never at construction: loading a checkpoint (``load_from_checkpoint``, or
            ``ckpt_path`` in test, predict, validate, export and resumed fits) downloads nothing, the
            teacher comes from the checkpoint.
        backbone_weights: Path of a local teacher checkpoint (``.pth`` or ``.safetensors``) used instead
            of downloading, for air-gapped machines; read when ``pre_trained`` weights would be.
            Defaults to ``None``.
        num_skips: Skip connections 0, 1 or 2 (Skip-ST0 / ST1 / ST2). Defaults to ``2``.
        similarity: Similarity loss, ``"cosine"`` (Eq. 1-3) or ``"mse"``. Defaults to ``"cosine"``.
        mac: Add the MAC loss (Eq. 4). Defaults to ``True``.
        beta: MAC loss weight in Eq. 5. Defaults to ``0.05``.
        loss_variant: ``"paper"`` (the equations) or ``"authors_code"`` (the public code's flattened
            per-image cosine and MSE-based MAC). Defaults to ``"paper"``.
        anomaly_map_layers: Layer maps summed in Eq. 7 (1-based). Defaults to ``(1, 2, 3)``.
        upsample_kernel_size: Student transposed-convolution kernel: 3 (paper) or 2 (authors' code).
        image_size: Input size for the default pre-processor, an int or ``(H, W)``, multiples of 32
            (another value fails here). Defaults to 256x256 (the paper's). Ignored when a
            ``pre_processor`` instance is given: its resize is the input size, checked when a fit,
            test, validation or predict starts, since anomalib builds models with pre-processors of
            other sizes only to read their components (the tiled ensemble's metrics stage, at 10x10).
        lr: Adam learning rate. Defaults to ``0.005``.
        betas: Adam betas. Defaults to ``(0.5, 0.999)``.
        teacher_cache: Compute each training image's teacher features once and reuse them in later
            epochs (the teacher is frozen). Used only when it is safe: it turns itself off, with a log
            line, when training transforms are random (augmentation) or a sample's image changes
            between epochs (checked by content on every reuse). Defaults to ``True``.
        teacher_cache_mb: Memory budget of that cache in MiB of host memory (never GPU memory; per
            process under DDP); a training set whose features do not fit is trained without cache, with a
            log line. Defaults to ``4096``.
        teacher_cache_dtype: Storage precision of the cache: ``"float16"`` (half the memory; the loss
            curve matches the uncached one to about 1e-2 relative) or ``"float32"`` (matches to float
            round-off). Defaults to ``"float16"``.
        channels_last: Run convolutions in channels-last memory layout (faster on CPU and GPU, same
            results up to round-off). Defaults to ``True``.
        fold_batch_norm: Run the frozen teacher, and the student in validation, test and predict,
            through batch-norm-folded copies (same results up to round-off, faster). Checkpoints do
            not depend on it. Defaults to ``True``.
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
        validate_loss_options(similarity, mac, beta, loss_variant, variant_name="loss_variant")
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
        self.input_size_error = input_size_error(input_size, name="input_size")
        """Why the pre-processor's size cannot be run (raised by :meth:`setup`), or ``None``."""
        self.lr = lr
        self.betas = tuple(betas)
        self.model = SkipTSModel(
            backbone=backbone,
            input_size=None if self.input_size_error else input_size,
            pre_trained=pre_trained,  # the ImageNet weights are fetched at the teacher's first use, if at all
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

    def setup(self, stage: str) -> None:
        """Check, before any loop runs, that the pre-processor resizes to a size the teacher can take.

        Args:
            stage: The loop that starts (``"fit"``, ``"validate"``, ``"test"`` or ``"predict"``).

        Raises:
            ValueError: If the pre-processor's size is not two multiples of 32.
        """
        super().setup(stage)
        if self.input_size_error is not None:
            msg = (
                f"{self.input_size_error} It is the size the pre-processor resizes to: build SkipTS with "
                "image_size=..., or with a pre_processor whose Resize has such a size."
            )
            raise ValueError(msg)

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
        """Decide whether to cache teacher features for this fit, and say so in the log.

        The cache lives in host memory (see ``feature_cache``). Under DDP each rank has its own
        cache of the samples it meets; ``samples_per_process`` says how many that can be.
        """
        if not self.teacher_cache:
            return None
        reason = self._cache_unsafe_reason()
        if reason is not None:
            logger.info("Teacher-feature cache off: %s.", reason)
            return None
        budget = int(self.teacher_cache_mb * 2**20)
        per_image = self.model.teacher_feature_bytes(self.teacher_cache_dtype)
        num_images, plan = samples_per_process(self.trainer.train_dataloader)
        if num_images is not None and num_images * per_image > budget:
            logger.warning(
                "Teacher-feature cache off: the %d training images need %.0f MiB of teacher features, more than "
                "teacher_cache_mb=%.0f (%s). Training goes on without the cache (slower); raise teacher_cache_mb "
                "to use it.",
                num_images,
                num_images * per_image / 2**20,
                self.teacher_cache_mb,
                plan,
            )
            return None
        logger.info(
            "Teacher-feature cache on: %.1f MiB per image in %s, in host memory, budget %.0f MiB (%s).",
            per_image / 2**20,
            str(self.teacher_cache_dtype).removeprefix("torch."),
            self.teacher_cache_mb,
            plan,
        )
        return TeacherFeatureCache(budget_bytes=budget, dtype=self.teacher_cache_dtype)

    def on_train_start(self) -> None:
        """Load the teacher's pending ImageNet weights and set up the teacher-feature cache for this fit.

        Lightning has restored ``ckpt_path`` (a resumed fit: the teacher comes from it) by then, with
        every strategy; otherwise the weights are loaded here, so that a machine that cannot get them
        fails with ``TeacherWeightsError`` before the first epoch rather than in its first step.
        """
        self.model.load_teacher_weights()
        self.feature_cache = self._build_feature_cache()

    def on_train_epoch_start(self) -> None:
        """Tell the teacher-feature cache that an epoch starts (samples met before may not change)."""
        if self.feature_cache is not None:
            self.feature_cache.start_epoch()

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
        except FeatureCacheError as error:
            logger.warning("Teacher-feature cache off: %s; training goes on without it.", error)
            self.feature_cache = None
            return None

    # ---------------------------------------------------------------------------------------------
    # Checkpoints and evaluation loops
    # ---------------------------------------------------------------------------------------------

    def architecture(self) -> dict[str, Any]:
        """Return the settings that decide what the weights mean, as stored in checkpoints.

        ``backbone`` (with its pretrained tag), ``num_skips``, ``upsample_kernel_size`` and
        ``anomaly_map_layers`` change the network or its map; ``similarity`` and ``loss_variant`` the
        training objective.
        """
        return {
            **self.model.architecture(),
            "similarity": self.loss.similarity,
            "loss_variant": self.loss.variant,
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the architecture settings, and the weights in the standard (contiguous) layout.

        The state dict holds the unfolded teacher and student (the folded copies are not modules of
        the model), so a checkpoint is the same whatever ``fold_batch_norm`` and ``channels_last``.
        """
        super().on_save_checkpoint(checkpoint)
        checkpoint[ARCHITECTURE_KEY] = self.architecture()
        if "state_dict" in checkpoint:
            checkpoint["state_dict"] = {key: value.contiguous() for key, value in checkpoint["state_dict"].items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Adopt the checkpoint's architecture settings where they differ from this model's, with a warning.

        Also reads checkpoints of earlier releases that saved the teacher batch-norm-folded
        (:func:`unfold_state_dict`). Lightning calls this before loading the state dict, both in
        ``load_from_checkpoint`` and for ``Engine.fit/test/predict(..., ckpt_path=...)``
        (``anomalib predict --ckpt_path``). Some
        settings (``num_skips``, ``anomaly_map_layers``, ``similarity``, ``loss_variant``) do not change
        the state-dict keys, so loading would otherwise silently give another model.

        Raises:
            ValueError: If settings differ and the trainer's strategy restores checkpoints after
                setting up the optimizers, when the model can no longer be rebuilt.
        """
        super().on_load_checkpoint(checkpoint)
        self._adopt_checkpoint_architecture(checkpoint)
        state_dict = checkpoint.get("state_dict")
        if state_dict is not None:
            teacher = self.model.teacher.feature_extractor
            restored = unfold_state_dict(state_dict, teacher, prefix="model.teacher.feature_extractor.")
            if restored:
                logger.info(
                    "Checkpoint with a batch-norm-folded teacher (written before checkpoints became canonical): "
                    "restored %d batch norms as exact identities around the folded weights.",
                    restored,
                )

    def _adopt_checkpoint_architecture(self, checkpoint: dict[str, Any]) -> None:
        """Adopt the checkpoint's architecture settings (see :meth:`on_load_checkpoint`)."""
        self._checkpoint_hparams = dict(checkpoint.get("hyper_parameters") or {})
        recorded = checkpoint.get(ARCHITECTURE_KEY)
        if recorded is None:  # checkpoints written before the architecture was stored: use the hyperparameters
            recorded = {
                name: self._checkpoint_hparams[name] for name in self.architecture() if name in self._checkpoint_hparams
            }
            if "backbone" in recorded:
                recorded["backbone"] = resolve_backbone(recorded["backbone"])
        current = self.architecture()
        differences = {
            name: (current[name], _plain(value))
            for name, value in recorded.items()
            if name in current and _plain(value) != _plain(current[name])
        }
        if not differences:
            return
        listing = "; ".join(
            f"{name}: model {ours!r}, checkpoint {theirs!r}" for name, (ours, theirs) in differences.items()
        )
        trainer = self._trainer
        if trainer is not None and getattr(trainer.strategy, "restore_checkpoint_after_setup", False):
            msg = (
                f"The checkpoint was trained with other settings than this model ({listing}). Build the model "
                "with the checkpoint's settings, or load it with SkipTS.load_from_checkpoint."
            )
            raise ValueError(msg)
        logger.warning(
            "The checkpoint was trained with other settings than this model; using the checkpoint's (%s).", listing
        )
        adopted = {name: theirs for name, (_, theirs) in differences.items()}
        if adopted.keys() & set(ARCHITECTURE_SETTINGS):
            self._rebuild_model({name: adopted.get(name, current[name]) for name in ARCHITECTURE_SETTINGS})
        if adopted.keys() & set(LOSS_SETTINGS):
            self.loss = SkipTSLoss(
                similarity=adopted.get("similarity", self.loss.similarity),
                mac=self.loss.mac,
                beta=self.loss.beta,
                variant=adopted.get("loss_variant", self.loss.variant),
            )
        for name, value in adopted.items():
            self.hparams[name] = self._checkpoint_hparams.get(name, value)

    def _rebuild_model(self, settings: dict[str, Any]) -> None:
        """Replace ``self.model`` by one with other architecture settings; its weights come from a checkpoint."""
        old = self.model
        parameter = next(old.parameters())
        self.model = SkipTSModel(
            input_size=old.anomaly_map_generator.image_size,
            pre_trained=False,
            channels_last=old.channels_last,
            fold_batch_norm=old.fold_batch_norm,
            **settings,
        ).to(device=parameter.device)

    def on_validation_start(self) -> None:
        """Rebuild the batch-norm-folded inference copies from the current weights (EMA/SWA-safe)."""
        super().on_validation_start()
        self.model.refresh_inference_copies()

    def on_test_start(self) -> None:
        """Rebuild the batch-norm-folded inference copies from the current weights."""
        super().on_test_start()
        self.model.refresh_inference_copies()

    def on_predict_start(self) -> None:
        """Rebuild the batch-norm-folded inference copies from the current weights."""
        super().on_predict_start()
        self.model.refresh_inference_copies()

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

    def _compress_ov_model(self, model: Any, compression_type: Any = None, *args: Any, **kwargs: Any) -> Any:
        """Compress the exported OpenVINO model as anomalib does, with the anomaly-map head left in float.

        anomalib's export (``Engine.export``, ``anomalib export``) calls this for ``--compression_type``
        ``INT8``, ``INT8_PTQ`` and ``INT8_ACQ``; NNCF gets an ignored scope of the head (see
        :mod:`.export`), and a log line says which operations stayed in float.

        Args:
            model: The OpenVINO model.
            compression_type: anomalib's ``CompressionType``.
            args: Passed on to anomalib (datamodule, metric, task, max_drop).
            kwargs: Passed on to anomalib.

        Returns:
            The compressed OpenVINO model.
        """
        with nncf_ignoring(head_ignored_scope(model)):
            return super()._compress_ov_model(model, compression_type, *args, **kwargs)

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
