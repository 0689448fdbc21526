"""The benchmark loop: models x datasets x seeds through anomalib's ``Engine``.

Implements the evaluation protocol of Skip-TS (IEEE TIM 2024, Sec. IV): identical image size,
splits and seeds for every model, a fixed number of epochs and evaluation of the model as it is
after the LAST epoch. Each finished run is written to ``runs.csv`` at once; a restart skips the
runs already finished with the same settings; a failing run is recorded with its error and the
others go on. Each run is executed in its own child process (:mod:`.isolation`) under optional
time and memory limits, so that a run that crashes, is killed or runs out of memory is recorded as
failed (with the signal, its peak memory and the last lines of its log) and the benchmark goes on.

Per run, the model is built with ``post_processor=False, evaluator=False, visualizer=False`` so
that the test loop returns raw anomaly scores and maps (anomalib's post-processor would clamp
normalised scores to [0, 1], which ties the highest scores); every metric is then computed here,
from the same raw scores for every model. Checkpoints are never written (``save_top_k=0``) and a
guard callback fails the run if the weights tested differ from the weights at the end of training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import importlib
import inspect
import json
import logging
import math
import pickle
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml

from .config import BenchmarkConfig, RunSpec
from .isolation import MB, RunLimits, fix_mmap_threshold, peak_rss_bytes, reset_peak_rss, run_in_child

if TYPE_CHECKING:
    import torch
    from anomalib.data import AnomalibDataModule
    from anomalib.models import AnomalibModule

logger = logging.getLogger(__name__)

RUNS_CSV = "runs.csv"
RUNS_DIR = "runs"
CONFIG_SNAPSHOT = "config.yaml"
RUN_JSON = "run.json"
RUN_LOG = "run.log"
ERROR_TXT = "error.txt"

STATUS_OK = "ok"
STATUS_FAILED = "failed"

_QUIET_LOGGERS = (
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",
    "lightning_fabric",
    "pytorch_lightning",
    "lightning_utilities",
    "anomalib",
    "timm",
    "httpx",
    "huggingface_hub",
)


# ------------------------------------------------------------------------------------------------
# Result store
# ------------------------------------------------------------------------------------------------


class ResultStore:
    """The per-run CSV of a results folder, rewritten atomically after every run.

    Args:
        root: Results folder.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.path = self.root / RUNS_CSV

    def load(self) -> pd.DataFrame:
        """Read all recorded runs (an empty frame when there are none).

        Returns:
            pd.DataFrame: One row per run.
        """
        if not self.path.is_file():
            return pd.DataFrame()
        return pd.read_csv(self.path)

    def finished(self, run: RunSpec, retry_failed: bool = True) -> bool:
        """Whether a run is already recorded with the same settings.

        Args:
            run: The run.
            retry_failed: Treat failed runs as not finished (they are run again).

        Returns:
            bool: ``True`` if the run can be skipped.
        """
        frame = self.load()
        if frame.empty:
            return False
        rows = frame[(frame["run_id"] == run.run_id) & (frame["spec_hash"].astype(str) == run.fingerprint())]
        if rows.empty:
            return False
        return (rows["status"] == STATUS_OK).any() or not retry_failed

    def record(self, row: dict[str, Any]) -> None:
        """Add a run's row, replacing an earlier row of the same run.

        Args:
            row: The run's results (must contain ``run_id``).
        """
        frame = self.load()
        if not frame.empty:
            frame = frame[frame["run_id"] != row["run_id"]]
        new = pd.DataFrame([row])
        frame = new if frame.empty else pd.concat([frame, new], ignore_index=True)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".csv.tmp")
        frame.to_csv(tmp, index=False)
        tmp.replace(self.path)


# ------------------------------------------------------------------------------------------------
# Building models and datamodules
# ------------------------------------------------------------------------------------------------


def _import_dotted(class_path: str) -> type:
    """Import ``package.module.Name`` and return ``Name``."""
    module_name, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module_name), name)


def resolve_model_class(class_path: str) -> type[AnomalibModule]:
    """Find a model class by anomalib name (``Padim``, ``reverse_distillation``, ``SkipTS``) or path.

    Args:
        class_path: Model name or dotted class path.

    Returns:
        type[AnomalibModule]: The class.

    Raises:
        ValueError: If no such model exists.
    """
    from anomalib.models import AnomalibModule

    if "." in class_path:
        return _import_dotted(class_path)
    import anomalib.models

    with contextlib.suppress(ImportError):  # registers SkipTS on anomalib.models (also done by the .pth hook)
        importlib.import_module("anomalib_skipts.models")
    candidate = getattr(anomalib.models, class_path, None)
    if isinstance(candidate, type) and issubclass(candidate, AnomalibModule):
        return candidate
    wanted = class_path.replace("_", "").lower()
    for model_class in AnomalibModule.__subclasses__():
        if model_class.__name__.lower() == wanted:
            return model_class
    msg = f"Unknown model {class_path!r}; anomalib knows {sorted(anomalib.models.list_models(case='pascal'))}"
    raise ValueError(msg)


def model_init_args(run: RunSpec, model_class: type[AnomalibModule]) -> dict[str, Any]:
    """Build the constructor arguments of a run's model: its ``init_args`` completed by the protocol.

    The protocol's backbone, ``pre_trained`` flag and image size fill the arguments the model has
    and the config does not set; the pre-processor is the model's own
    ``configure_pre_processor(image_size=...)``; post-processor, evaluator and visualizer are off
    (raw scores, metrics computed by the benchmark).

    Args:
        run: The run.
        model_class: The model class.

    Returns:
        dict[str, Any]: Keyword arguments for ``model_class``.
    """
    parameters = inspect.signature(model_class).parameters
    protocol = run.protocol
    kwargs = dict(run.model.init_args)
    if protocol.backbone is not None and "backbone" in parameters and "backbone" not in kwargs:
        kwargs["backbone"] = protocol.backbone
        if model_class.__name__ in _ARCHITECTURE_NAME_ONLY:
            kwargs["backbone"] = protocol.backbone.partition(".")[0]
            if encoder_swap(run, model_class) is not None:
                kwargs["pre_trained"] = False  # built random, then given the tagged encoder (build_model)
    if model_class.__name__ == "Padim" and "." in str(kwargs.get("backbone", "")):
        # PaDiM looks its default feature count up by the untagged architecture name.
        kwargs.setdefault("n_features", _padim_features(kwargs["backbone"]))
    if "pre_trained" in parameters:
        kwargs.setdefault("pre_trained", protocol.pre_trained)
    if "image_size" in parameters:
        kwargs.setdefault("image_size", protocol.image_size)
    if "pre_processor" not in kwargs:
        kwargs["pre_processor"] = _pre_processor(model_class, protocol.image_size)
    kwargs.update(post_processor=False, evaluator=False, visualizer=False)
    return kwargs


_ARCHITECTURE_NAME_ONLY = frozenset({"ReverseDistillation"})
"""Models that take an architecture name only: anomalib's RD picks its decoder and bottleneck by the
exact name, so a timm tag cannot be passed; :func:`build_model` gives it the tagged encoder instead."""


def encoder_swap(run: RunSpec, model_class: type[AnomalibModule]) -> str | None:
    """Return the tagged backbone that replaces an architecture-name-only model's encoder, if any.

    Applies when the protocol's backbone has a timm tag, the model's ``init_args`` set no backbone
    and pretrained weights are wanted: anomalib's RD is then built with random weights and its
    encoder (``model.encoder``, a ``TimmFeatureExtractor``) is rebuilt with the tagged weights, so
    that it gets the same teacher weights as every other model.

    Args:
        run: The run.
        model_class: The model class.

    Returns:
        str | None: The tagged backbone, or ``None``.
    """
    backbone = run.protocol.backbone
    init_args = run.model.init_args
    if model_class.__name__ not in _ARCHITECTURE_NAME_ONLY or backbone is None or "." not in backbone:
        return None
    if "backbone" in init_args or not init_args.get("pre_trained", run.protocol.pre_trained):
        return None
    return backbone


def _swap_encoder(model: AnomalibModule, backbone: str) -> None:
    from anomalib.models.components import TimmFeatureExtractor

    encoder = model.model.encoder
    model.model.encoder = TimmFeatureExtractor(backbone=backbone, pre_trained=True, layers=list(encoder.layers))


def _padim_features(backbone: str) -> int | None:
    from anomalib.models.image.padim import torch_model

    return getattr(torch_model, "_N_FEATURES_DEFAULTS", {}).get(backbone.partition(".")[0])


def backbone_weights(model_class: type[AnomalibModule], kwargs: dict[str, Any]) -> str:
    """Say which backbone / teacher weights a model gets from its constructor arguments.

    Args:
        model_class: The model class.
        kwargs: Its constructor arguments (:func:`model_init_args`).

    Returns:
        str: ``<architecture>.<timm tag>`` of the pretrained weights (the tag timm or the model
        resolves an untagged name to), ``random-init`` when ``pre_trained`` is off, or an empty
        string for a model without a ``backbone`` argument. STFPM always loads pretrained weights
        for its teacher (its student is random), so its entry is the teacher's.
    """
    parameters = inspect.signature(model_class).parameters
    if "backbone" not in parameters:
        return ""
    backbone = kwargs.get("backbone", parameters["backbone"].default)
    if not isinstance(backbone, str):
        return type(backbone).__name__
    pre_trained = kwargs.get("pre_trained", parameters["pre_trained"].default if "pre_trained" in parameters else True)
    if not pre_trained:
        return "random-init"
    if "." in backbone:
        return backbone
    if model_class.__name__ == "SkipTS":  # Skip-TS resolves an untagged name itself (to tv_in1k)
        with contextlib.suppress(ImportError):
            module = importlib.import_module(model_class.__module__.rsplit(".", 1)[0] + ".torch_model")
            resolve = getattr(module, "resolve_backbone", None)
            if callable(resolve):
                return str(resolve(backbone))
    import timm.models

    config = timm.models.get_pretrained_cfg(backbone)
    return f"{backbone}.{config.tag}" if config is not None and config.tag else backbone


def build_model(run: RunSpec) -> AnomalibModule:
    """Instantiate a run's model (anomalib names through ``anomalib.models.get_model``).

    Args:
        run: The run.

    Returns:
        AnomalibModule: The model.
    """
    from anomalib.models import AnomalibModule, get_model

    model_class = resolve_model_class(run.model.class_path)
    kwargs = model_init_args(run, model_class)
    if "." not in run.model.class_path and model_class in AnomalibModule.__subclasses__():
        model = get_model(model_class.__name__, **kwargs)
    else:
        model = model_class(**kwargs)
    swap = encoder_swap(run, model_class)
    if swap is not None:
        _swap_encoder(model, swap)
    return model


def run_weights(run: RunSpec, model_class: type[AnomalibModule]) -> str:
    """Say which backbone / teacher weights a run's model gets (the ``weights`` column).

    Args:
        run: The run.
        model_class: The model class.

    Returns:
        str: See :func:`backbone_weights`; the swapped-in encoder's tag for RD (:func:`encoder_swap`).
    """
    return encoder_swap(run, model_class) or backbone_weights(model_class, model_init_args(run, model_class))


def resolve_datamodule_class(class_path: str) -> type[AnomalibDataModule]:
    """Find a datamodule class by dotted path, or by name in ``anomalib.data`` / ``anomalib_skipts.data``.

    Args:
        class_path: Dotted class path or class name.

    Returns:
        type[AnomalibDataModule]: The class.

    Raises:
        ValueError: If no such class exists.
    """
    if "." in class_path:
        return _import_dotted(class_path)
    for module_name in ("anomalib.data", "anomalib_skipts.data"):
        with contextlib.suppress(ImportError):
            candidate = getattr(importlib.import_module(module_name), class_path, None)
            if isinstance(candidate, type):
                return candidate
    msg = f"Unknown datamodule {class_path!r}: give a dotted class path."
    raise ValueError(msg)


def datamodule_init_args(run: RunSpec, datamodule_class: type[AnomalibDataModule]) -> dict[str, Any]:
    """Build the constructor arguments of a run's datamodule: its ``init_args`` plus the protocol's.

    Batch sizes and workers come from the protocol. The validation split is set to
    ``same_as_test`` (unless configured): anomalib's ``from_test`` default would move half of the
    test images into validation, and the benchmark evaluates on the whole test split.

    Args:
        run: The run.
        datamodule_class: The datamodule class.

    Returns:
        dict[str, Any]: Keyword arguments for ``datamodule_class``.
    """
    parameters = inspect.signature(datamodule_class).parameters
    protocol = run.protocol
    kwargs = dict(run.dataset.init_args)
    defaults = {
        "train_batch_size": protocol.train_batch_size,
        "eval_batch_size": protocol.eval_batch_size,
        "num_workers": protocol.num_workers,
        "val_split_mode": "same_as_test",
    }
    for key, value in defaults.items():
        if key in parameters:
            kwargs.setdefault(key, value)
    if protocol.vary_split_with_seed and run.dataset.seed_arg:
        kwargs[run.dataset.seed_arg] = run.seed
    return kwargs


def build_datamodule(run: RunSpec) -> AnomalibDataModule:
    """Instantiate a run's datamodule.

    Args:
        run: The run.

    Returns:
        AnomalibDataModule: The datamodule.
    """
    datamodule_class = resolve_datamodule_class(run.dataset.class_path)
    return datamodule_class(**datamodule_init_args(run, datamodule_class))


def _pre_processor(model_class: type[AnomalibModule], image_size: tuple[int, int]) -> Any:
    from anomalib.models import AnomalibModule

    configure = inspect.getattr_static(model_class, "configure_pre_processor", None)
    if isinstance(configure, staticmethod | classmethod):
        return model_class.configure_pre_processor(image_size=image_size)
    return AnomalibModule.configure_pre_processor(image_size=image_size)


# ------------------------------------------------------------------------------------------------
# Callbacks
# ------------------------------------------------------------------------------------------------


def _callbacks() -> tuple[type, type]:
    """Define the callbacks lazily (Lightning is imported only when runs are executed)."""
    from lightning.pytorch import Callback
    from lightning.pytorch.callbacks import EarlyStopping

    class LastEpochGuard(Callback):
        """Enforce last-epoch evaluation: no early stopping, and the tested weights are the trained ones."""

        def __init__(self) -> None:
            self.fingerprint: tuple[float, ...] | None = None
            self.epochs_trained: int | None = None
            self.max_epochs: int | None = None

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            del pl_module
            stoppers = [type(cb).__name__ for cb in trainer.callbacks if isinstance(cb, EarlyStopping)]
            if stoppers:
                msg = f"Early stopping is not allowed by the benchmark protocol: {stoppers}"
                raise RuntimeError(msg)

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self.fingerprint = weights_fingerprint(pl_module)
            self.epochs_trained = int(trainer.current_epoch)
            self.max_epochs = trainer.max_epochs

        def on_test_start(self, trainer: Any, pl_module: Any) -> None:
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
            del trainer, pl_module, batch_idx, dataloader_idx
            import torch

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

    return LastEpochGuard, TestCollector


def weights_fingerprint(module: torch.nn.Module) -> tuple[float, ...]:
    """Cheap fingerprint of a module's state (parameters and buffers).

    Args:
        module: The module.

    Returns:
        tuple[float, ...]: Per-tensor sum and absolute sum, in state-dict order.
    """
    import torch

    values: list[float] = []
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if torch.is_tensor(tensor) and tensor.numel() and tensor.is_floating_point():
                flat = tensor.detach().double()
                values.extend((float(flat.sum()), float(flat.abs().sum())))
            elif torch.is_tensor(tensor) and tensor.numel():
                values.append(float(tensor.detach().double().sum()))
    return tuple(values)


# ------------------------------------------------------------------------------------------------
# One run
# ------------------------------------------------------------------------------------------------


def execute_run(run: RunSpec, run_dir: Path) -> dict[str, Any]:
    """Train and test one model on one dataset with one seed, and measure it.

    Never raises (except ``KeyboardInterrupt``): an error is returned as a row with
    ``status="failed"`` and its message, and the traceback is written to ``error.txt``.

    Args:
        run: The run.
        run_dir: Folder for the run's artifacts (predictions, anomaly maps, metadata).

    Returns:
        dict[str, Any]: The run's row for ``runs.csv``.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ERROR_TXT).unlink(missing_ok=True)
    row = _base_row(run)
    fix_mmap_threshold()  # no heap fragmentation by large temporaries (PatchCore's coreset: isolation.py)
    reset_peak_rss()
    _reset_cuda_peak()
    start = time.perf_counter()
    start_cpu = time.process_time()  # CPU time of all threads: independent of other load on the machine
    try:
        with _quiet():
            row.update(_train_and_test(run, run_dir))
        row["status"] = STATUS_OK
    except Exception as error:
        row["status"] = STATUS_FAILED
        row["error"] = f"{type(error).__name__}: {error}".replace("\n", " ")[:500]
        (run_dir / ERROR_TXT).write_text(traceback.format_exc(), encoding="utf-8")
    finally:
        gc.collect()
    row["duration_s"] = round(time.perf_counter() - start, 3)
    row["cpu_time_s"] = round(time.process_time() - start_cpu, 3)
    row["peak_rss_mb"] = round(peak_rss_bytes() / MB, 1)
    row["peak_cuda_mb"] = _cuda_peak_mb()
    row["finished_at"] = _now()
    (run_dir / RUN_JSON).write_text(json.dumps(row, indent=2, default=str), encoding="utf-8")
    return row


def execute_isolated(
    run: RunSpec,
    run_dir: Path,
    limits: RunLimits | None = None,
    execute: Callable[[RunSpec, Path], dict[str, Any]] = execute_run,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run ``execute(run, run_dir)`` in a child process under time and memory limits.

    A run that ends normally returns the row its child wrote. A run whose process crashes, is
    killed (a signal, the out-of-memory killer) or goes over a limit gets a failed row whose
    ``error`` says why, with its peak memory and the last lines of its log; the full log tail is
    in ``error.txt`` and the child's whole output in ``run.log``.

    Args:
        run: The run.
        run_dir: Folder for the run's artifacts.
        limits: Time and memory limits (default: none).
        execute: Module-level function executing the run in the child (default :func:`execute_run`).
        log: Receives "still running" progress lines.

    Returns:
        dict[str, Any]: The run's row for ``runs.csv``.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_JSON).unlink(missing_ok=True)
    started_at = _now()

    def heartbeat(elapsed: float, rss: int) -> None:
        if log is not None:
            log(f"    {run.run_id} still running: {_format_duration(elapsed)} elapsed, resident {rss / 1024**3:.2f} GB")

    limits = limits or RunLimits()
    outcome = run_in_child(_child_main, (execute, run, run_dir), run_dir / RUN_LOG, limits, heartbeat)
    result = run_dir / RUN_JSON
    if result.is_file():  # the run wrote its row: it finished (a crash while the process exits costs nothing)
        row = json.loads(result.read_text(encoding="utf-8"))
        row.setdefault("peak_rss_mb", round(outcome.peak_rss_bytes / MB, 1))
        row["exit_code"] = outcome.exitcode
        return row
    reason = outcome.reason or "the run's process exited without writing its result"
    peak = f"peak resident memory {outcome.peak_rss_bytes / 1024**3:.2f} GB"
    last = " | ".join(outcome.log_tail[-3:])
    row = _base_row(run)
    row.update(
        started_at=started_at,
        status=STATUS_FAILED,
        error=(f"{reason}; {peak}" + (f"; last log lines: {last}" if last else "")).replace("\n", " ")[:500],
        exit_code=outcome.exitcode,
        duration_s=round(outcome.elapsed_s, 3),
        peak_rss_mb=round(outcome.peak_rss_bytes / MB, 1),
        finished_at=_now(),
    )
    details = [f"{reason}; {peak} after {outcome.elapsed_s:.1f} s.", "", f"Last lines of {RUN_LOG}:", ""]
    (run_dir / ERROR_TXT).write_text("\n".join([*details, *outcome.log_tail, ""]), encoding="utf-8")
    (run_dir / RUN_JSON).write_text(json.dumps(row, indent=2, default=str), encoding="utf-8")
    return row


def _child_main(execute: Callable[[RunSpec, Path], dict[str, Any]], run: RunSpec, run_dir: Path) -> None:
    """Child side of :func:`execute_isolated`: run and write the row (``run.json``) for the parent."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(asctime)s %(name)s %(message)s")
    row = execute(run, run_dir)
    (run_dir / RUN_JSON).write_text(json.dumps(row, indent=2, default=str), encoding="utf-8")


def _reset_cuda_peak() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


def _cuda_peak_mb() -> float:
    """Peak CUDA memory allocated by tensors during the run (NaN when CUDA was not used)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return math.nan
    return round(torch.cuda.max_memory_allocated() / MB, 1)


def _base_row(run: RunSpec) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "model": run.model.name,
        "model_class": run.model.class_path,
        "group": run.model.group or "",
        "dataset": run.dataset.name,
        "seed": run.seed,
        "status": "",
        "error": "",
        "protocol": run.protocol.name,
        "image_size": "x".join(str(side) for side in run.protocol.image_size),
        "requested_epochs": run.max_epochs,
        "spec_hash": run.fingerprint(),
        "started_at": _now(),
    }


def _train_and_test(run: RunSpec, run_dir: Path) -> dict[str, Any]:
    import torch
    from anomalib.callbacks import ModelCheckpoint
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from anomalib_skipts.patient import dataset_patient_metrics

    from .cost import count_flops, count_parameters, describe_device, measure_throughput
    from .metrics import dice_at_threshold, image_metrics, pixel_aupro, pixel_auroc

    guard_class, collector_class = _callbacks()
    seed_everything(run.seed, workers=True, verbose=False)
    datamodule = build_datamodule(run)
    model = build_model(run)
    model_class = resolve_model_class(run.model.class_path)
    init_args = {k: v for k, v in model_init_args(run, model_class).items() if _is_plain(v)}
    guard = guard_class()
    collector = collector_class(run.protocol.overlay_images)
    with tempfile.TemporaryDirectory(prefix="skipts-benchmark-") as workdir:
        engine = Engine(
            # save_top_k=0: no checkpoint is ever written, so none can be picked as "best".
            callbacks=[ModelCheckpoint(dirpath=Path(workdir) / "weights", save_top_k=0), guard, collector],
            logger=False,
            default_root_dir=workdir,
            accelerator=run.protocol.accelerator,
            devices=1,
            max_epochs=run.max_epochs,
            limit_val_batches=1.0 if run.protocol.run_validation else 0,
            num_sanity_val_steps=0,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        fit_start = time.perf_counter()
        engine.fit(model=model, datamodule=datamodule)
        train_time = time.perf_counter() - fit_start
        optimizers = list(engine.trainer.optimizers)
        test_start = time.perf_counter()
        # No ckpt_path and the model object given: Lightning tests the current (last-epoch) weights.
        engine.test(model=model, datamodule=datamodule, verbose=False)
        test_time = time.perf_counter() - test_start

    labels = np.asarray(collector.labels, dtype=int)
    scores = np.asarray(collector.scores, dtype=float)
    metrics = image_metrics(labels, scores)
    patients = dataset_patient_metrics(datamodule, collector.paths, scores, labels)
    network = model.model
    device = model.device
    batches = _preprocessed_test_batches(model, datamodule, run.protocol.throughput_images, device)
    params, trained = count_parameters(network, optimizers)
    flops = count_flops(network, batches[0][:1]) if batches else math.nan
    throughput = measure_throughput(network, batches)

    pd.DataFrame({"image_path": collector.paths, "label": labels, "score": scores}).to_csv(
        run_dir / "predictions.csv",
        index=False,
    )
    if collector.overlays:
        arrays = {
            "paths": np.asarray([item[0] for item in collector.overlays]),
            "labels": np.asarray([item[1] for item in collector.overlays]),
            "scores": np.asarray([item[2] for item in collector.overlays]),
            "maps": np.stack([item[3] for item in collector.overlays]),
        }
        if all(item[4] is not None for item in collector.overlays):
            arrays["masks"] = np.stack([item[4] for item in collector.overlays])
        np.savez_compressed(run_dir / "anomaly_maps.npz", **arrays)
    pairs = sorted(zip(collector.paths, labels.tolist(), strict=True))
    listing = "\n".join(f"{path}\t{label}" for path, label in pairs)
    result = {
        "image_auroc": metrics.auroc,
        "image_f1": metrics.f1,
        "image_accuracy": metrics.accuracy,
        "youden_threshold": metrics.threshold,
        "youden_tpr": metrics.tpr,
        "youden_fpr": metrics.fpr,
        "pixel_auroc": pixel_auroc(collector.masks, collector.mask_maps),
        "pixel_aupro": pixel_aupro(collector.masks, collector.mask_maps),
        "pixel_dice": dice_at_threshold(collector.masks, collector.mask_maps),
        "patient_auroc": patients.auroc,
        "patient_f1": patients.f1,
        "patient_accuracy": patients.accuracy,
        "n_test_patients": patients.n_patients,
        "n_train": len(datamodule.train_data),
        "n_test": len(labels),
        "n_test_normal": int((labels == 0).sum()),
        "n_test_abnormal": int((labels == 1).sum()),
        "test_set_hash": hashlib.sha256(listing.encode()).hexdigest()[:16],
        "max_epochs": guard.max_epochs,
        "epochs_trained": guard.epochs_trained,
        "train_time_s": round(train_time, 3),
        "test_time_s": round(test_time, 3),
        "throughput_ips": throughput,
        "params": params,
        "trained_params": trained,
        "flops_per_image": flops,
        "device": describe_device(device),
        "torch_threads": torch.get_num_threads(),
        "weights": run_weights(run, model_class),
        "init_args": json.dumps(init_args, sort_keys=True, default=str),
    }
    del engine, model, datamodule, network, batches, optimizers
    return result


def _preprocessed_test_batches(
    model: AnomalibModule,
    datamodule: AnomalibDataModule,
    max_images: int,
    device: torch.device,
) -> list[torch.Tensor]:
    """Test images as the network sees them (after the model's pre-processor), for cost measurements."""
    import torch

    transform = getattr(model.pre_processor, "transform", None) if model.pre_processor else None
    batches: list[torch.Tensor] = []
    count = 0
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            images = batch.image.to(device)
            batches.append(transform(images) if transform is not None else images)
            count += images.shape[0]
            if count >= max_images:
                break
    return batches


def _is_plain(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool | list | tuple | dict)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence Lightning / anomalib info logs and warnings for the duration of a run."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Lightning's packages set their loggers' levels when first imported: import them first.
        import anomalib.engine  # noqa: F401
        import lightning.pytorch  # noqa: F401

        saved = {name: logging.getLogger(name).level for name in _QUIET_LOGGERS}
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        try:
            yield
        finally:
            for name, level in saved.items():
                logging.getLogger(name).setLevel(level)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------


class BenchmarkRunner:
    """Run a benchmark config: every run once, restartable, with progress and ETA.

    Args:
        config: The benchmark.
        retry_failed: Run again the runs recorded as failed (default). With ``False`` a restart skips
            them too.
        execute: Function running one run (for tests); defaults to :func:`execute_run`. With
            isolation it must be a module-level function (it is sent to the child by reference).
        log: Function printing progress lines; defaults to the module logger.
        command: Command line that started the benchmark, kept in the config snapshot for the report.
        report_config: The config the results folder's summary covers, written to its snapshot
            (default ``config``); the command line passes the config before ``--models`` /
            ``--datasets`` selected some of it, so that the summary keeps every model.
        isolate: Run each run in a child process (default: the config's ``isolate``).
        limits: Time and memory limits per run (default: the config's ``run_timeout`` and
            ``run_memory_limit``); used only with isolation.

    Example:
        >>> from anomalib_skipts.benchmark import BenchmarkRunner, load_config
        >>> runner = BenchmarkRunner(load_config("configs/benchmark/smoke.yaml"))  # doctest: +SKIP
        >>> frame = runner.run()  # doctest: +SKIP
    """

    def __init__(
        self,
        config: BenchmarkConfig,
        retry_failed: bool = True,
        execute: Callable[[RunSpec, Path], dict[str, Any]] = execute_run,
        log: Callable[[str], None] | None = None,
        command: str | None = None,
        report_config: BenchmarkConfig | None = None,
        isolate: bool | None = None,
        limits: RunLimits | None = None,
    ) -> None:
        self.config = config
        self.report_config = report_config or config
        self.command = command
        self.retry_failed = retry_failed
        self.execute = execute
        self.log = log or logger.info
        self.store = ResultStore(config.output_dir)
        self.isolate = config.isolate if isolate is None else isolate
        self.limits = limits or RunLimits(timeout_s=config.run_timeout, memory_limit_gb=config.run_memory_limit)
        if not self.isolate and (self.limits.timeout_s is not None or self.limits.memory_limit_gb is not None):
            msg = "Time and memory limits need isolated runs (isolate: true / no --no-isolation)."
            raise ValueError(msg)
        if self.isolate:
            try:
                pickle.dumps(execute)
            except (pickle.PicklingError, AttributeError, TypeError) as error:
                msg = (
                    f"execute={execute!r} cannot be sent to a child process ({error}): give a module-level "
                    "function, or isolate=False to run in this process."
                )
                raise ValueError(msg) from error

    def run(self) -> pd.DataFrame:
        """Execute every run not finished yet.

        Returns:
            pd.DataFrame: All recorded runs of the results folder.
        """
        runs = self.config.runs()
        total = len(runs)
        self.config.output_dir.mkdir(parents=True, exist_ok=True)
        write_config_snapshot(self.report_config, self.command)
        pending = [run for run in runs if not self.store.finished(run, self.retry_failed)]
        self.log(
            f"Benchmark {self.config.name!r}: {total} runs ({len(self.config.models)} models x "
            f"{len(self.config.datasets)} datasets x {len(self.config.seeds)} seeds), "
            f"{total - len(pending)} already finished, results in {self.config.output_dir}",
        )
        if self.isolate:
            self.log(f"Each run in its own process; limits per run: {_describe_limits(self.limits)}")
        done_now = 0
        for index, run in enumerate(runs, start=1):
            if run not in pending:
                self.log(
                    f"[run {index}/{total}] model={run.model.name} dataset={run.dataset.name} "
                    f"seed={run.seed} already finished: skipped"
                )
                continue
            eta = self._eta(pending[done_now:])
            self.log(
                f"[run {index}/{total}] model={run.model.name} dataset={run.dataset.name} seed={run.seed} "
                f"({done_now + 1}/{len(pending)} to run) ETA {eta}",
            )
            run_dir = self.config.output_dir / RUNS_DIR / run.run_id
            if self.isolate:
                row = execute_isolated(run, run_dir, self.limits, self.execute, self.log)
            else:
                row = self.execute(run, run_dir)
            self.store.record(row)
            done_now += 1
            self.log(f"[run {index}/{total}] {_outcome(row)}")
        frame = self.store.load()
        failed = int((frame["status"] != STATUS_OK).sum()) if not frame.empty else 0
        self.log(f"Benchmark {self.config.name!r} finished: {len(frame) - failed} ok, {failed} failed.")
        return frame

    def _eta(self, remaining: list[RunSpec]) -> str:
        """Estimated time left: per-model mean duration of recorded runs, else the overall mean."""
        frame = self.store.load()
        if frame.empty or "duration_s" not in frame:
            return "unknown (no run finished yet)"
        durations = frame[frame["status"] == STATUS_OK]
        if durations.empty:
            durations = frame
        per_model = durations.groupby("model")["duration_s"].mean().to_dict()
        overall = float(durations["duration_s"].mean())
        seconds = sum(per_model.get(run.model.name, overall) for run in remaining)
        return _format_duration(seconds)


def write_config_snapshot(config: BenchmarkConfig, command: str | None = None) -> Path:
    """Write the resolved config next to the results (read by the report).

    Args:
        config: The benchmark.
        command: Command line that started the benchmark.

    Returns:
        Path: The snapshot file.
    """
    data = dataclasses.asdict(config)
    data["output_dir"] = str(config.output_dir)
    data["source"] = str(config.source) if config.source else None
    data["command"] = command
    path = config.output_dir / CONFIG_SNAPSHOT
    path.write_text(yaml.safe_dump(json.loads(json.dumps(data, default=str)), sort_keys=False), encoding="utf-8")
    return path


def _outcome(row: dict[str, Any]) -> str:
    if row.get("status") != STATUS_OK:
        return f"FAILED after {row.get('duration_s', 0):.1f}s: {row.get('error', '')}"
    memory = f", peak resident {row['peak_rss_mb'] / 1024:.2f} GB" if _finite(row.get("peak_rss_mb")) else ""
    return (
        f"done in {row['duration_s']:.1f}s: image AUROC {row['image_auroc']:.3f}, "
        f"F1 {row['image_f1']:.3f}, accuracy {row['image_accuracy']:.3f} "
        f"(train {row['train_time_s']:.1f}s, {row['throughput_ips']:.1f} img/s{memory})"
    )


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _describe_limits(limits: RunLimits) -> str:
    time_limit = _format_duration(limits.timeout_s) if limits.timeout_s is not None else "none"
    memory = f"{limits.memory_limit_gb:g} GB" if limits.memory_limit_gb is not None else "none"
    return f"time {time_limit}, memory {memory}"


def _format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}"
