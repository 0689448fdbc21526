"""Callbacks of a benchmark run: last-epoch evaluation is enforced, raw test outputs are collected.

The benchmark evaluates every model as it is after its LAST epoch: :class:`LastEpochGuard` refuses
early stopping and fails the run if the weights tested differ from the weights at the end of
training (a checkpoint was loaded). :class:`TestCollector` keeps the raw scores, labels, paths,
masks and a few anomaly maps of the test loop, from which the benchmark computes every metric.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import EarlyStopping


class LastEpochGuard(Callback):
    """Enforce last-epoch evaluation: no early stopping, and the tested weights are the trained ones."""

    def __init__(self) -> None:
        self.fingerprint: tuple[float, ...] | None = None
        self.epochs_trained: int | None = None
        self.max_epochs: int | None = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        """Refuse early stopping."""
        del pl_module
        stoppers = [type(cb).__name__ for cb in trainer.callbacks if isinstance(cb, EarlyStopping)]
        if stoppers:
            msg = f"Early stopping is not allowed by the benchmark protocol: {stoppers}"
            raise RuntimeError(msg)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """Remember the weights and epochs at the end of training."""
        self.fingerprint = weights_fingerprint(pl_module)
        self.epochs_trained = int(trainer.current_epoch)
        self.max_epochs = trainer.max_epochs

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        """Fail if the weights about to be tested are not the trained ones."""
        del trainer
        if self.fingerprint is None:
            msg = "The model was tested without having been trained by this engine."
            raise RuntimeError(msg)
        if weights_fingerprint(pl_module) != self.fingerprint:
            msg = "The tested weights differ from the weights after the last epoch (a checkpoint was loaded)."
            raise RuntimeError(msg)


class TestCollector(Callback):
    """Collect raw scores, labels, paths, masks and a few anomaly maps from the test loop."""

    def __init__(self, overlay_images: int) -> None:
        # Mostly abnormal images (localisation is what overlays show), at least one normal one.
        self.overlay_normal = max(overlay_images // 4, min(overlay_images // 2, 1))
        self.overlay_abnormal = overlay_images - self.overlay_normal
        self.scores: list[float] = []
        self.labels: list[int] = []
        self.paths: list[str] = []
        self.masks: list[torch.Tensor] = []
        self.mask_maps: list[torch.Tensor] = []
        self.overlays: list[tuple[str, int, float, np.ndarray, np.ndarray | None]] = []

    def on_test_batch_end(
        self,
        trainer: Any,
        pl_module: Any,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep the batch's raw scores, labels, paths, masks and maps."""
        del trainer, pl_module, batch_idx, dataloader_idx
        result = outputs if outputs is not None and hasattr(outputs, "pred_score") else batch
        maps = result.anomaly_map
        if maps is not None:
            maps = maps.detach().float().cpu()
            maps = maps.reshape(maps.shape[0], *maps.shape[-2:])
        scores = result.pred_score
        if scores is None:
            scores = torch.amax(maps, dim=(-2, -1))
        scores = scores.detach().float().cpu().reshape(-1)
        labels = result.gt_label.detach().cpu().reshape(-1).to(torch.int64)
        paths = [str(path) for path in result.image_path]
        self.scores.extend(scores.tolist())
        self.labels.extend(labels.tolist())
        self.paths.extend(paths)
        masks = getattr(result, "gt_mask", None)
        if masks is not None and maps is not None:
            masks = masks.detach().cpu().reshape(maps.shape[0], *masks.shape[-2:])
            if masks.shape[-2:] == maps.shape[-2:]:
                masks = masks.to(torch.bool)
                # Kept compactly (bool, float16) for pixel AUROC / AUPRO / Dice over the whole test set.
                self.masks.append(masks)
                self.mask_maps.append(maps.to(torch.float16))
            else:
                masks = None
        if maps is not None:
            self._keep_overlays(paths, labels.tolist(), scores.tolist(), maps, masks)

    def _keep_overlays(
        self,
        paths: list[str],
        labels: list[int],
        scores: list[float],
        maps: Any,
        masks: Any,
    ) -> None:
        for index, (path, label, score) in enumerate(zip(paths, labels, scores, strict=True)):
            kept = sum(1 for item in self.overlays if item[1] == label)
            limit = self.overlay_abnormal if label == 1 else self.overlay_normal
            if kept < limit:
                mask = masks[index].numpy() if masks is not None else None
                self.overlays.append((path, label, score, maps[index].numpy().astype(np.float16), mask))


def weights_fingerprint(module: torch.nn.Module) -> tuple[float, ...]:
    """Cheap fingerprint of a module's state (parameters and buffers).

    Args:
        module: The module.

    Returns:
        tuple[float, ...]: Per-tensor sum and absolute sum, in state-dict order.
    """
    values: list[float] = []
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if torch.is_tensor(tensor) and tensor.numel() and tensor.is_floating_point():
                flat = tensor.detach().double()
                values.extend((float(flat.sum()), float(flat.abs().sum())))
            elif torch.is_tensor(tensor) and tensor.numel():
                values.append(float(tensor.detach().double().sum()))
    return tuple(values)
