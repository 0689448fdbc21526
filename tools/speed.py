r"""Speed benchmark of Skip-TS against anomalib's Reverse Distillation.

Skip-TS: M. Liu et al., IEEE Transactions on Instrumentation and Measurement, 2024. One run on one
machine and one input size measures, alternating the models in rounds and taking medians:

- training throughput (images/s over full epochs on the head-phantom training set, through anomalib's
  ``Engine``): Reverse Distillation, Skip-TS with the teacher-feature cache (first epoch and steady
  state) and Skip-TS without it;
- inference throughput of ``model.model`` (eager torch, eval mode, ``torch.inference_mode``) at
  batch 1 and batch 16, plus, as a diagnostic, RD given Skip-TS's inference engineering (folded
  batch norms, channels-last layout) to separate the architecture's share of the ratio;
- the exported Skip-TS pipeline (``to_onnx`` / ``to_openvino``) through ONNX Runtime and OpenVINO
  on CPU against eager ``model.forward`` at batch 1;
- parameters and FLOPs per image (``FlopCounterMode``) beside the paper's Table III;
- a per-stage time breakdown (teacher, student, anomaly map, loss, backward + optimizer) taken
  with forward hooks during the same measurements, to explain the ratios.

Results go to ``results.json`` and ``results.md`` in the output folder.

Example:
    .. code-block:: bash

        python tools/speed.py --backbone wide_resnet50_2 --image-size 256 \
            --repeats 3 --output results/speed
        python tools/speed.py --quick --output /tmp/speed
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import logging
import os
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from anomalib_skipts.benchmark.adapters import build_datamodule, build_model
from anomalib_skipts.benchmark.cost import count_flops, count_parameters, machine_description, measure_throughput
from anomalib_skipts.benchmark.specs import DatasetSpec, ModelSpec, Protocol, RunSpec

if TYPE_CHECKING:
    from anomalib.models.components import AnomalibModule

    from anomalib_skipts.data import HeadPhantom

logger = logging.getLogger(__name__)

RD = "RD"
SKIPTS = "SkipTS"
SKIPTS_CACHE = "SkipTS-cache"
SKIPTS_NOCACHE = "SkipTS-nocache"
RD_TUNED = "RD-tuned"
TRAINING_ORDER = (RD, SKIPTS_CACHE, SKIPTS_NOCACHE)
INFERENCE_ORDER = (RD, SKIPTS, RD_TUNED)
COST_ORDER = (RD, SKIPTS)
INFERENCE_BATCH_SIZES = (1, 16)
RUNTIMES = ("eager", "onnxruntime", "openvino_default", "openvino_f32")

# Liu et al., IEEE TIM 2024, Table III (WideResNet50-2 teacher, 256x256 input).
TABLE_III = {
    SKIPTS: {"flops": 2.98e10, "params": 1.33e8},
    "RDAD": {"flops": 3.72e10, "params": 1.93e8},
}
TARGETS = {
    "inference_batch_1": 1.2,
    "inference_batch_16": 1.2,
    "training_cache_steady_vs_rd": 1.8,
    "openvino_default_vs_eager": 1.5,
    "openvino_f32_vs_eager": 1.5,
}
TARGET_TEXT = {
    "inference_batch_1": "Skip-TS inference >= 1.2x RD (batch 1)",
    "inference_batch_16": "Skip-TS inference >= 1.2x RD (batch 16)",
    "training_cache_steady_vs_rd": "Skip-TS cached training epoch >= 1.8x RD's",
    "openvino_default_vs_eager": "OpenVINO CPU (default precision) >= 1.5x eager torch",
    "openvino_f32_vs_eager": "OpenVINO CPU (f32) >= 1.5x eager torch",
}

FULL = {
    "backbone": "wide_resnet50_2",
    "image_size": 256,
    "repeats": 3,
    "epochs": 2,
    "num_train": 60,
    "batch_size": 16,
    "batch1_images": 4,
    "batch16_batches": 1,
    "export_images": 4,
}
QUICK = {
    "backbone": "resnet18",
    "image_size": 64,
    "repeats": 2,
    "epochs": 2,
    "num_train": 8,
    "batch_size": 4,
    "batch1_images": 2,
    "batch16_batches": 1,
    "export_images": 2,
}


def progress(message: str) -> None:
    """Print one progress line (``[speed] ...``) at once."""
    print(f"[speed] {message}", flush=True)


# --------------------------------------------------------------------------------------------------
# Per-stage timing through forward hooks
# --------------------------------------------------------------------------------------------------


class StageTimer:
    """Wall time and call counts of named sub-modules, taken with forward pre-/post-hooks.

    The hooks leave the models' own code paths unchanged: a stage is timed whenever its module runs,
    whoever calls it (the model's ``forward``, the teacher-feature cache, Lightning). Re-entrant calls
    of one module are counted once.

    Args:
        stages: Stage name -> modules whose forward time counts for that stage.
    """

    def __init__(self, stages: dict[str, Sequence[nn.Module]]) -> None:
        self.names = tuple(stages)
        self.seconds: dict[str, float] = dict.fromkeys(self.names, 0.0)
        self.calls: dict[str, int] = dict.fromkeys(self.names, 0)
        self.images: dict[str, int] = dict.fromkeys(self.names, 0)
        self._handles: list[Any] = []
        self._starts: dict[int, list[float]] = {}
        for name, modules in stages.items():
            for module in modules:
                self._handles.append(module.register_forward_pre_hook(self._pre_hook(name, module)))
                self._handles.append(module.register_forward_hook(self._post_hook(name, module)))

    def _pre_hook(self, name: str, module: nn.Module) -> Callable[..., None]:
        def hook(_module: nn.Module, inputs: tuple) -> None:
            starts = self._starts.setdefault(id(module), [])
            starts.append(time.perf_counter())
            if len(starts) == 1:
                self.calls[name] += 1
                first = inputs[0] if inputs else None
                if isinstance(first, list | tuple) and first:
                    first = first[0]
                if isinstance(first, torch.Tensor) and first.dim() > 0:
                    self.images[name] += int(first.shape[0])

        return hook

    def _post_hook(self, name: str, module: nn.Module) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: tuple, _output: object) -> None:
            starts = self._starts[id(module)]
            start = starts.pop()
            if not starts:
                self.seconds[name] += time.perf_counter() - start

        return hook

    def reset(self) -> None:
        """Zero the counters."""
        self.seconds = dict.fromkeys(self.names, 0.0)
        self.calls = dict.fromkeys(self.names, 0)
        self.images = dict.fromkeys(self.names, 0)

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Return the counters: ``{"seconds": {...}, "calls": {...}, "images": {...}}``."""
        return {"seconds": dict(self.seconds), "calls": dict(self.calls), "images": dict(self.images)}

    def remove(self) -> None:
        """Detach the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def stage_modules(model: AnomalibModule) -> dict[str, list[nn.Module]]:
    """Name the stages of Skip-TS or Reverse Distillation comparably.

    ``teacher`` is the frozen encoder (Skip-TS ``teacher``, RD ``encoder``), ``student`` the trained
    decoder (RD: bottleneck + decoder), ``anomaly_map`` the map generator of the inference path, and
    ``loss`` the training loss module.

    Returns:
        Stage name -> modules.

    Raises:
        TypeError: For a model that is neither.
    """
    inner = model.model
    if hasattr(inner, "teacher") and hasattr(inner, "student"):
        student = [inner.student]
        if not inner.training:  # inference runs the batch-norm-folded copy of the student
            with torch.no_grad():
                folded = inner.inference_student()
            student += [folded] if folded is not inner.student else []
        teacher = [inner.teacher]
        running = inner.inference_teacher()  # the batch-norm-folded copy that runs, when folding is on
        teacher += [running] if running is not inner.teacher else []
    elif hasattr(inner, "encoder") and hasattr(inner, "decoder"):
        student = [inner.bottleneck, inner.decoder]
        teacher = [inner.encoder]
    else:
        msg = f"{type(model).__name__} is neither Skip-TS nor Reverse Distillation"
        raise TypeError(msg)
    return {
        "teacher": teacher,
        "student": student,
        "anomaly_map": [inner.anomaly_map_generator],
        "loss": [model.loss],
    }


@contextmanager
def timed_stages(model: AnomalibModule) -> Iterator[StageTimer]:
    """Attach a :class:`StageTimer` to a model for the duration of the block."""
    timer = StageTimer(stage_modules(model))
    try:
        yield timer
    finally:
        timer.remove()


# --------------------------------------------------------------------------------------------------
# Models and data
# --------------------------------------------------------------------------------------------------


def speed_run(model: ModelSpec, image_size: int, batch_size: int = 16, seed: int = 0, **data: Any) -> RunSpec:
    """Describe one model of the study as a benchmark run on the head phantom, built as the benchmark builds it.

    Args:
        model: The model (its ``class_path`` and ``init_args``); the backbone comes from ``data``'s protocol.
        image_size: Square input side (the model's and the generated phantom's).
        batch_size: Training and evaluation batch size.
        seed: The run's seed.
        **data: ``HeadPhantom`` arguments (``root``, ``num_train``...) and ``backbone``.

    Returns:
        The run: random-initialised backbone (speed does not depend on the weights), CPU-style loaders.
    """
    protocol = Protocol(
        name="speed",
        image_size=(image_size, image_size),
        backbone=data.pop("backbone", None),
        pre_trained=False,
        train_batch_size=batch_size,
        eval_batch_size=batch_size,
        num_workers=0,
    )
    # anomalib's validation split (half of the 4 + 4 test images): what the timings were measured with
    phantom = {"num_test_normal": 4, "num_test_abnormal": 4, "image_size": image_size, "val_split_mode": "from_test"}
    dataset = DatasetSpec(name="phantom", class_path="anomalib_skipts.data.HeadPhantom", init_args=phantom | data)
    return RunSpec(model=model, dataset=dataset, seed=seed, protocol=protocol)


def build_models(
    backbone: str, image_size: int, seed: int = 0, skipts_options: dict[str, Any] | None = None
) -> dict[str, AnomalibModule]:
    """Reverse Distillation and Skip-TS (with and without teacher cache), same backbone and input size.

    All are built by the benchmark's adapters with ``pre_trained=False`` (no ImageNet download);
    speed does not depend on the weights.

    Args:
        backbone: Backbone of both models.
        image_size: Square input side.
        seed: Seed of the initialisation.
        skipts_options: Further ``SkipTS`` arguments for both Skip-TS models, e.g.
            ``{"upsample_kernel_size": 2}`` (the authors' code) or ``{"channels_last": False}``.

    Returns:
        Name -> model, in :data:`TRAINING_ORDER`.
    """
    options = skipts_options or {}
    specs = {
        RD: ModelSpec(name=RD, class_path="ReverseDistillation"),
        SKIPTS_CACHE: ModelSpec(name=SKIPTS_CACHE, class_path="SkipTS", init_args={"teacher_cache": True, **options}),
        SKIPTS_NOCACHE: ModelSpec(
            name=SKIPTS_NOCACHE, class_path="SkipTS", init_args={"teacher_cache": False, **options}
        ),
    }
    torch.manual_seed(seed)
    return {
        name: build_model(speed_run(spec, image_size, seed=seed, backbone=backbone), raw_scores=False)
        for name, spec in specs.items()
    }


def with_inference_engineering(model: AnomalibModule) -> SimpleNamespace:
    """Copy an RD model's torch model with Skip-TS's inference engineering: folded batch norms, channels-last.

    A diagnostic for the inference comparison only (the copy cannot be trained): the ratio of
    Skip-TS to this copy is what the architecture alone gives, without the engineering.

    Returns:
        ``model`` (the modified copy of ``model.model``, eval mode) and ``loss`` (the original's), as
        :func:`measure_inference` and :func:`stage_modules` read them.
    """
    from anomalib_skipts.models.skip_ts.batch_norm_folding import fold_batch_norm

    tuned = copy.deepcopy(model.model).eval()
    fold_batch_norm(tuned)
    return SimpleNamespace(model=tuned.to(memory_format=torch.channels_last), loss=model.loss)


def build_phantom(root: Path, image_size: int, num_train: int, batch_size: int) -> HeadPhantom:
    """Build and set up the head-phantom datamodule (generated under ``root`` if missing).

    Returns:
        The datamodule.
    """
    model = ModelSpec(name=RD, class_path="ReverseDistillation")  # unused: the run's data only
    run = speed_run(model, image_size, batch_size, root=str(root), num_train=num_train)
    datamodule = build_datamodule(run)
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


def raw_images(datamodule: HeadPhantom, count: int) -> torch.Tensor:
    """Return the first ``count`` training images as loaded (before pre-processing), cycling if too few.

    Returns:
        Tensor ``(count, 3, H, W)`` in ``[0, 1]``.
    """
    dataset = datamodule.train_data
    return torch.stack([dataset[index % len(dataset)].image for index in range(count)]).float()


# --------------------------------------------------------------------------------------------------
# Training throughput
# --------------------------------------------------------------------------------------------------


def _epoch_timer_callback(stage_timer: StageTimer) -> Any:
    """Build a Lightning callback recording, per epoch, wall time, step time, images and stage times."""
    from lightning.pytorch import Callback

    class EpochTimer(Callback):
        def __init__(self) -> None:
            self.epochs: list[dict[str, Any]] = []
            self._start = 0.0
            self._cpu_start = 0.0
            self._batch_start = 0.0
            self._steps = 0.0
            self._images = 0

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            stage_timer.reset()
            self._steps = 0.0
            self._images = 0
            self._start = time.perf_counter()
            self._cpu_start = time.process_time()

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            self._batch_start = time.perf_counter()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            self._steps += time.perf_counter() - self._batch_start
            self._images += len(batch.image)

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            seconds = time.perf_counter() - self._start
            cpu_seconds = time.process_time() - self._cpu_start
            stages = stage_timer.snapshot()
            self.epochs.append(
                {
                    "epoch": len(self.epochs) + 1,
                    "seconds": seconds,
                    "cpu_seconds": cpu_seconds,
                    "step_seconds": self._steps,
                    "images": self._images,
                    "images_per_s": self._images / seconds,
                    "teacher_calls": stages["calls"]["teacher"],
                    "teacher_images": stages["images"]["teacher"],
                    "stage_seconds": stages["seconds"],
                }
            )

    return EpochTimer()


def train_epochs(model: AnomalibModule, datamodule: HeadPhantom, epochs: int, root: Path) -> list[dict[str, Any]]:
    """Fit a model for ``epochs`` epochs through anomalib's ``Engine`` and time every epoch.

    No validation and no checkpoint files: only the training loop is timed (data loading included).

    Returns:
        One record per epoch (see the ``EpochTimer`` callback).
    """
    from anomalib.callbacks.checkpoint import ModelCheckpoint
    from anomalib.engine import Engine

    with timed_stages(model) as stage_timer:
        timer = _epoch_timer_callback(stage_timer)
        engine = Engine(
            default_root_dir=root,
            max_epochs=epochs,
            accelerator="gpu" if model.device.type == "cuda" else "cpu",
            devices=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            callbacks=[timer, ModelCheckpoint(dirpath=root, save_top_k=0, save_last=False)],
        )
        engine.fit(model=model, datamodule=datamodule)
    return timer.epochs


def warm_up_training(model: AnomalibModule, images: torch.Tensor) -> None:
    """One untimed training step (forward, loss, backward) outside Lightning: first-use costs out of round 1."""
    model.model.train()
    images = model.pre_processor.transform(images) if model.pre_processor else images
    loss = model.loss(*model.model(images.to(model.device)))
    loss.backward()
    model.zero_grad(set_to_none=True)


def measure_training(
    models: dict[str, AnomalibModule], datamodule: HeadPhantom, repeats: int, epochs: int, root: Path
) -> dict[str, Any]:
    """Training throughput, alternating the models in rounds (RD, Skip-TS cache, Skip-TS no cache).

    Skip-TS with cache trains ``epochs`` epochs per round (epoch 1 fills the cache; epochs >= 2 are the
    steady state). RD and Skip-TS without cache do the same work in every epoch: they train
    ``epochs - 1`` epochs per round, all counted as steady state (the model instances persist across
    rounds and were warmed up before round 1).

    Returns:
        ``{"rounds": [...], "summary": {...}}`` with medians over rounds.
    """
    rounds: list[dict[str, Any]] = []
    for index in range(repeats):
        record: dict[str, Any] = {"round": index + 1}
        for name in TRAINING_ORDER:
            count = epochs if name == SKIPTS_CACHE else max(1, epochs - 1)
            progress(f"round {index + 1}/{repeats}: {name} training, {count} epoch(s)")
            record[name] = train_epochs(models[name], datamodule, count, root / f"{name}_round{index + 1}")
            line = ", ".join(f"epoch {e['epoch']} {e['images_per_s']:.3f} img/s" for e in record[name])
            progress(f"round {index + 1}/{repeats}: {name} {line}")
        rounds.append(record)
    return {"rounds": rounds, "summary": summarize_training(rounds)}


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def summarize_training(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds of images/s (each round's steady epochs pooled by their total time).

    Images per wall-clock second is the measure; images per CPU-second of the process (all its
    threads) is given beside it, as a check that is less sensitive to other jobs sharing the cores.

    Returns:
        Per model: ``epoch1_images_per_s`` (Skip-TS cache: the cache-filling epoch),
        ``steady_images_per_s``, ``steady_images_per_cpu_s``, per-round values and per-image stage
        seconds of the steady epochs.
    """
    summary: dict[str, Any] = {}
    for name in TRAINING_ORDER:
        first, steady, steady_cpu, stage_rows, step_share = [], [], [], [], []
        for record in rounds:
            epochs = record[name]
            kept = epochs[1:] if name == SKIPTS_CACHE else epochs
            first.append(epochs[0]["images_per_s"])
            images = sum(e["images"] for e in kept)
            seconds = sum(e["seconds"] for e in kept)
            steady.append(images / seconds)
            steady_cpu.append(images / sum(e["cpu_seconds"] for e in kept))
            step_share.append(sum(e["step_seconds"] for e in kept) / seconds)
            stage_rows.append(
                {stage: sum(e["stage_seconds"][stage] for e in kept) / images for stage in kept[0]["stage_seconds"]}
                | {
                    "data_loading": (seconds - sum(e["step_seconds"] for e in kept)) / images,
                    "backward_optimizer_other": sum(e["step_seconds"] - sum(e["stage_seconds"].values()) for e in kept)
                    / images,
                    "epoch": seconds / images,
                }
            )
        summary[name] = {
            "epoch1_images_per_s": _median(first),
            "steady_images_per_s": _median(steady),
            "steady_images_per_s_per_round": steady,
            "steady_images_per_cpu_s": _median(steady_cpu),
            "steady_images_per_cpu_s_per_round": steady_cpu,
            "epoch1_images_per_s_per_round": first,
            "step_time_share": _median(step_share),
            "seconds_per_image_by_stage": {
                stage: _median([row[stage] for row in stage_rows]) for stage in stage_rows[0]
            },
        }
    return summary


# --------------------------------------------------------------------------------------------------
# Inference throughput
# --------------------------------------------------------------------------------------------------


def measure_inference(
    models: dict[str, AnomalibModule],
    images: torch.Tensor,
    repeats: int,
    batch1_images: int,
    batch16_batches: int,
    warmup: int = 1,
) -> dict[str, Any]:
    """Eager inference throughput of ``model.model`` at batch 1 and 16, alternating the models.

    Args:
        models: ``{"RD": ..., "SkipTS": ...}``.
        images: Pre-processed images on the models' device, at least 16.
        repeats: Number of alternating repeats (the median is reported).
        batch1_images: Timed batch-1 calls per model per repeat.
        batch16_batches: Timed batch-16 calls per model per repeat.
        warmup: Untimed calls per model and batch size before the first repeat.

    Returns:
        ``{"repeats": [...], "summary": {"batch_1": {...}, "batch_16": {...}}, "seconds_per_image_by_stage": ...}``.
    """
    batches = {1: [images[i : i + 1] for i in range(batch1_images)], 16: [images[:16]] * batch16_batches}
    for name in INFERENCE_ORDER:
        models[name].model.eval()
        for size in INFERENCE_BATCH_SIZES:
            progress(f"inference warm-up: {name} batch {size}")
            measure_throughput(models[name].model, batches[size][:1] * warmup, warmup=0)
    records: list[dict[str, Any]] = []
    stage_rows: dict[str, dict[int, list[dict[str, float]]]] = {name: {1: [], 16: []} for name in INFERENCE_ORDER}
    for index in range(repeats):
        record: dict[str, Any] = {"repeat": index + 1}
        for size in INFERENCE_BATCH_SIZES:
            for name in INFERENCE_ORDER:
                with timed_stages(models[name]) as timer:
                    start, cpu_start = time.perf_counter(), time.process_time()
                    value = measure_throughput(models[name].model, batches[size], warmup=0)
                    total, cpu_total = time.perf_counter() - start, time.process_time() - cpu_start
                count = sum(len(batch) for batch in batches[size])
                record[f"{name}_batch_{size}_cpu"] = count / cpu_total
                seconds = {stage: s / count for stage, s in timer.seconds.items() if stage != "loss"}
                seconds["other"] = total / count - sum(seconds.values())
                stage_rows[name][size].append(seconds)
                record[f"{name}_batch_{size}"] = value
                progress(f"repeat {index + 1}/{repeats}: {name} inference batch {size}: {value:.3f} img/s")
        records.append(record)
    summary = {
        f"batch_{size}{suffix}": {
            name: _median([r[f"{name}_batch_{size}{suffix}"] for r in records]) for name in INFERENCE_ORDER
        }
        for size in INFERENCE_BATCH_SIZES
        for suffix in ("", "_cpu")
    }
    stages = {
        name: {
            f"batch_{size}": {stage: _median([row[stage] for row in rows]) for stage in rows[0]}
            for size, rows in by_size.items()
        }
        for name, by_size in stage_rows.items()
    }
    return {"repeats": records, "summary": summary, "seconds_per_image_by_stage": stages}


# --------------------------------------------------------------------------------------------------
# Export: ONNX Runtime and OpenVINO vs eager torch
# --------------------------------------------------------------------------------------------------


class RuntimeModule(nn.Module):
    """Wrap a numpy runtime (ONNX Runtime, OpenVINO) as a module, to time it like eager torch.

    Args:
        run: numpy batch -> outputs.
    """

    def __init__(self, run: Callable[[np.ndarray], Any]) -> None:
        super().__init__()
        self.run = run

    def forward(self, images: torch.Tensor) -> Any:
        """Run the wrapped runtime on a CPU batch.

        Returns:
            The runtime's outputs.
        """
        return self.run(images.numpy())


def _output_arrays(outputs: Any, names: Sequence[str]) -> dict[str, np.ndarray]:
    if hasattr(outputs, "_asdict"):
        return {k: v.detach().cpu().numpy() for k, v in outputs._asdict().items() if v is not None}
    return dict(zip(names, (np.asarray(o) for o in outputs), strict=False))


def _max_abs_diff(reference: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> dict[str, float | None]:
    """Largest absolute difference per output over the entries finite in both (``None`` if none)."""
    result: dict[str, float | None] = {}
    for key in ("anomaly_map", "pred_score"):
        if key not in reference or key not in other:
            continue
        a = reference[key].reshape(-1).astype(np.float64)
        b = other[key].reshape(-1).astype(np.float64)
        finite = np.isfinite(a) & np.isfinite(b)
        result[key] = float(np.abs(a[finite] - b[finite]).max()) if finite.any() else None
    return result


def measure_export(
    model: AnomalibModule,
    raw: torch.Tensor,
    root: Path,
    repeats: int,
    images: int,
    warmup: int = 1,
    threads: int | None = None,
    openvino_from_onnx: bool = False,
) -> dict[str, Any]:
    """Export Skip-TS (static input size) and time ONNX Runtime and OpenVINO against eager torch at batch 1.

    The exported graph is ``model.forward``: pre-processing, model and post-processing; eager torch
    runs the same ``model.forward``. OpenVINO runs twice: at its default CPU inference precision and
    with ``INFERENCE_PRECISION_HINT=f32``.

    Args:
        model: Skip-TS (moved to CPU).
        raw: Raw images ``(N, 3, H, W)`` in ``[0, 1]`` on CPU.
        root: Export folder.
        repeats: Alternating repeats (median reported).
        images: Timed batch-1 calls per runtime per repeat.
        warmup: Untimed calls per runtime before the first repeat.
        threads: Intra-op threads of ONNX Runtime and OpenVINO (``None``: their defaults).
        openvino_from_onnx: Convert the ONNX file to OpenVINO IR (``convert_model`` + ``save_model``
            without fp16 compression, as ``to_openvino`` does after its own ONNX export) instead of
            calling ``to_openvino``: one export instead of two, for quick runs.

    Returns:
        Paths, runtime settings, output differences against eager and throughputs.
    """
    import onnxruntime as ort
    import openvino as ov

    model = model.cpu().eval()
    height, width = raw.shape[-2:]
    progress("export: to_onnx")
    onnx_path = model.to_onnx(root / "onnx", input_size=(height, width))
    if openvino_from_onnx:
        progress("export: ONNX -> OpenVINO IR")
        openvino_path = root / "openvino" / "model.xml"
        ov.save_model(ov.convert_model(onnx_path), openvino_path, compress_to_fp16=False)
    else:
        progress("export: to_openvino")
        openvino_path = model.to_openvino(root / "openvino", input_size=(height, width))

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    onnx_names = [output.name for output in session.get_outputs()]
    core = ov.Core()
    config = {} if threads is None else {"INFERENCE_NUM_THREADS": threads}
    compiled_default = core.compile_model(str(openvino_path), "CPU", config)
    compiled_f32 = core.compile_model(str(openvino_path), "CPU", config | {"INFERENCE_PRECISION_HINT": "f32"})
    ov_names = [output.get_any_name() for output in compiled_default.outputs]

    def ov_run(compiled: Any) -> Callable[[np.ndarray], Any]:
        request = compiled.create_infer_request()

        def run(array: np.ndarray) -> Any:
            request.infer({0: array})
            return [request.get_output_tensor(i).data.copy() for i in range(len(compiled.outputs))]

        return run

    runtimes: dict[str, nn.Module] = {
        "eager": model,
        "onnxruntime": RuntimeModule(lambda array: session.run(None, {input_name: array})),
        "openvino_default": RuntimeModule(ov_run(compiled_default)),
        "openvino_f32": RuntimeModule(ov_run(compiled_f32)),
    }
    names = {"eager": [], "onnxruntime": onnx_names, "openvino_default": ov_names, "openvino_f32": ov_names}
    batches = [raw[i % len(raw)].unsqueeze(0).contiguous() for i in range(images)]
    with torch.inference_mode():
        outputs = {name: _output_arrays(runtime(batches[0]), names[name]) for name, runtime in runtimes.items()}
    for name, runtime in runtimes.items():
        progress(f"export warm-up: {name}")
        measure_throughput(runtime, batches[:1] * warmup, warmup=0)
    records: list[dict[str, float]] = []
    for index in range(repeats):
        record: dict[str, float] = {"repeat": index + 1}
        for name, runtime in runtimes.items():
            record[name] = measure_throughput(runtime, batches, warmup=0)
            progress(f"repeat {index + 1}/{repeats}: exported pipeline, {name} batch 1: {record[name]:.3f} img/s")
        records.append(record)

    def prop(compiled: Any, key: str) -> str:
        try:
            value = compiled.get_property(key)
        except RuntimeError:  # property unknown to this OpenVINO version
            return "unknown"
        return value.get_type_name() if hasattr(value, "get_type_name") else str(value)

    return {
        "onnx_path": str(onnx_path),
        "openvino_path": str(openvino_path),
        "openvino_export": "convert_model(onnx)" if openvino_from_onnx else "to_openvino",
        "onnxruntime_version": ort.__version__,
        "onnxruntime_threads": session.get_session_options().intra_op_num_threads,
        "openvino_version": ov.get_version(),
        "openvino_cpu": _ov_device_name(core),
        "openvino_default_precision": prop(compiled_default, "INFERENCE_PRECISION_HINT"),
        "openvino_f32_precision": prop(compiled_f32, "INFERENCE_PRECISION_HINT"),
        "openvino_performance_hint": prop(compiled_default, "PERFORMANCE_HINT"),
        "openvino_threads": prop(compiled_default, "INFERENCE_NUM_THREADS"),
        "torch_threads": torch.get_num_threads(),
        "max_abs_diff_vs_eager": {name: _max_abs_diff(outputs["eager"], outputs[name]) for name in RUNTIMES[1:]},
        "repeats": records,
        "summary": {name: _median([r[name] for r in records]) for name in RUNTIMES},
    }


def _ov_device_name(core: Any) -> str:
    try:
        return str(core.get_property("CPU", "FULL_DEVICE_NAME"))
    except RuntimeError:
        return "unknown"


# --------------------------------------------------------------------------------------------------
# Parameters and FLOPs
# --------------------------------------------------------------------------------------------------


def measure_cost(models: dict[str, AnomalibModule], image: torch.Tensor) -> dict[str, dict[str, float]]:
    """Parameters (total, trained by the model's own optimizer) and FLOPs per image of ``model.model``.

    FLOPs: one eval-mode forward pass at batch 1 under ``FlopCounterMode`` (torch's convention, one
    multiply-add = 2 FLOPs; the anomaly map is included, element-wise operations are not counted).

    Args:
        models: ``{"RD": ..., "SkipTS": ...}``.
        image: One pre-processed image ``(1, 3, H, W)`` on the models' device.

    Returns:
        Name -> ``{"params_total", "params_trainable", "flops_per_image"}``.
    """
    cost: dict[str, dict[str, float]] = {}
    for name in COST_ORDER:
        model = models[name]
        optimizer = model.configure_optimizers()
        optimizers = optimizer if isinstance(optimizer, list | tuple) else [optimizer]
        total, trainable = count_parameters(model.model, optimizers)
        cost[name] = {
            "params_total": total,
            "params_trainable": trainable,
            "flops_per_image": count_flops(model.model, image),
        }
    return cost


# --------------------------------------------------------------------------------------------------
# Ratios, targets and report
# --------------------------------------------------------------------------------------------------


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator and np.isfinite(denominator) else float("nan")


def compute_ratios(results: dict[str, Any]) -> dict[str, float]:
    """Speed ratios (higher = the first-named faster) from the raw medians.

    Returns:
        Ratio name -> value.
    """
    ratios: dict[str, float] = {}
    training = results.get("training", {}).get("summary")
    if training:
        rd = training[RD]["steady_images_per_s"]
        ratios["training_cache_steady_vs_rd"] = _ratio(training[SKIPTS_CACHE]["steady_images_per_s"], rd)
        ratios["training_cache_steady_vs_rd_cpu"] = _ratio(
            training[SKIPTS_CACHE]["steady_images_per_cpu_s"], training[RD]["steady_images_per_cpu_s"]
        )
        ratios["training_cache_epoch1_vs_rd"] = _ratio(training[SKIPTS_CACHE]["epoch1_images_per_s"], rd)
        ratios["training_nocache_vs_rd"] = _ratio(training[SKIPTS_NOCACHE]["steady_images_per_s"], rd)
        ratios["training_cache_steady_vs_nocache"] = _ratio(
            training[SKIPTS_CACHE]["steady_images_per_s"], training[SKIPTS_NOCACHE]["steady_images_per_s"]
        )
    inference = results.get("inference", {}).get("summary")
    if inference:
        for size in INFERENCE_BATCH_SIZES:
            key = f"batch_{size}"
            ratios[f"inference_{key}"] = _ratio(inference[key][SKIPTS], inference[key][RD])
            ratios[f"inference_{key}_cpu"] = _ratio(inference[f"{key}_cpu"][SKIPTS], inference[f"{key}_cpu"][RD])
            for measure in (key, f"{key}_cpu"):
                if RD_TUNED in inference[measure]:
                    ratios[f"inference_{measure}_vs_rd_tuned"] = _ratio(
                        inference[measure][SKIPTS], inference[measure][RD_TUNED]
                    )
    export = results.get("export", {}).get("summary")
    if export:
        for name in RUNTIMES[1:]:
            ratios[f"{name}_vs_eager"] = _ratio(export[name], export["eager"])
    cost = results.get("cost")
    if cost:
        ratios["flops_rd_vs_skipts"] = _ratio(cost[RD]["flops_per_image"], cost[SKIPTS]["flops_per_image"])
        ratios["params_rd_vs_skipts"] = _ratio(cost[RD]["params_total"], cost[SKIPTS]["params_total"])
    return ratios


def check_targets(ratios: dict[str, float]) -> list[dict[str, Any]]:
    """Compare the ratios with the issue's targets.

    Returns:
        One row per target: name, text, ratio, target, met, and the shortfall in percent of the target.
    """
    rows = []
    for key, target in TARGETS.items():
        if key not in ratios:
            continue
        ratio = ratios[key]
        met = bool(np.isfinite(ratio) and ratio >= target)
        rows.append(
            {
                "name": key,
                "text": TARGET_TEXT[key],
                "ratio": ratio,
                "target": target,
                "met": met,
                "shortfall_percent": 0.0 if met else 100.0 * (1.0 - ratio / target),
            }
        )
    return rows


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}g}"


def render_markdown(results: dict[str, Any]) -> str:
    """Render the results as Markdown tables (throughput, ratios vs targets, cost vs Table III, stages).

    Returns:
        Markdown text.
    """
    lines = [
        f"Command: `{results['command']}`",
        "",
        f"Machine: {results['machine']['description']}; date {results['machine']['date']}.",
        "",
    ]
    options = results["settings"].get("skipts_options")
    if options:
        lines += ["Skip-TS options: " + ", ".join(f"`{k}={v}`" for k, v in options.items()) + ".", ""]
    training = results.get("training", {}).get("summary")
    ratios = results["ratios"]
    if training:
        rd = training[RD]["steady_images_per_s"]
        rows = [
            ("RD", training[RD], "steady"),
            ("Skip-TS, cache, epoch 1 (fills the cache)", training[SKIPTS_CACHE], "epoch1"),
            ("Skip-TS, cache, epochs >= 2", training[SKIPTS_CACHE], "steady"),
            ("Skip-TS, no cache", training[SKIPTS_NOCACHE], "steady"),
        ]
        lines += [
            "| training, images/s over an epoch (data loading included) | median | vs RD | per round "
            "| images per CPU-second (median) |",
            "|---|---|---|---|---|",
        ]
        for label, row, kind in rows:
            cpu = _fmt(row["steady_images_per_cpu_s"]) if kind == "steady" else "-"
            lines.append(
                f"| {label} | {_fmt(row[f'{kind}_images_per_s'])} | {_fmt(_ratio(row[f'{kind}_images_per_s'], rd))} | "
                f"{', '.join(_fmt(v) for v in row[f'{kind}_images_per_s_per_round'])} | {cpu} |"
            )
        lines.append("")
    inference = results.get("inference", {}).get("summary")
    if inference:
        lines += [
            "| inference, eager `model.model` (images/s) | RD | Skip-TS | Skip-TS / RD | Skip-TS / RD per CPU-second "
            "| RD, folded BN + channels-last (diagnostic) | Skip-TS / that |",
            "|---|---|---|---|---|---|---|",
        ]
        for size in INFERENCE_BATCH_SIZES:
            key = f"batch_{size}"
            lines.append(
                f"| batch {size} | {_fmt(inference[key][RD])} | {_fmt(inference[key][SKIPTS])} | "
                f"{_fmt(ratios.get(f'inference_{key}'))} | {_fmt(ratios.get(f'inference_{key}_cpu'))} | "
                f"{_fmt(inference[key].get(RD_TUNED))} | {_fmt(ratios.get(f'inference_{key}_vs_rd_tuned'))} |"
            )
        lines.append("")
    export = results.get("export")
    if export:
        labels = {
            "eager": "eager torch `model.forward`",
            "onnxruntime": "ONNX Runtime (CPUExecutionProvider)",
            "openvino_default": f"OpenVINO CPU, default precision ({export['openvino_default_precision']})",
            "openvino_f32": f"OpenVINO CPU, INFERENCE_PRECISION_HINT=f32 ({export['openvino_f32_precision']})",
        }
        lines += [
            "| exported Skip-TS pipeline, batch 1 (images/s) | median | vs eager | max abs diff of anomaly map |",
            "|---|---|---|---|",
        ]
        for name in RUNTIMES:
            diff = export["max_abs_diff_vs_eager"].get(name, {}).get("anomaly_map") if name != "eager" else None
            lines.append(
                f"| {labels[name]} | {_fmt(export['summary'][name])} | "
                f"{'1' if name == 'eager' else _fmt(ratios.get(f'{name}_vs_eager'))} | "
                f"{'-' if name == 'eager' else _fmt(diff, 2)} |"
            )
        lines.append("")
    cost = results.get("cost")
    if cost:
        lines += [
            "| cost (`model.model`, eval, batch 1) | RD (measured) | Skip-TS (measured) | "
            "RDAD (Table III) | Skip-TS (Table III) |",
            "|---|---|---|---|---|",
            f"| FLOPs per image | {cost[RD]['flops_per_image']:.3g} | {cost[SKIPTS]['flops_per_image']:.3g} | "
            f"{TABLE_III['RDAD']['flops']:.3g} | {TABLE_III[SKIPTS]['flops']:.3g} |",
            f"| parameters, total | {cost[RD]['params_total']:.3g} | {cost[SKIPTS]['params_total']:.3g} | "
            f"{TABLE_III['RDAD']['params']:.3g} | {TABLE_III[SKIPTS]['params']:.3g} |",
            f"| parameters, trained | {cost[RD]['params_trainable']:.3g} | {cost[SKIPTS]['params_trainable']:.3g} "
            "| | |",
            "",
        ]
    if results["targets"]:
        lines += ["| target | measured | target | met | shortfall |", "|---|---|---|---|---|"]
        for row in results["targets"]:
            shortfall = "-" if row["met"] else f"{row['shortfall_percent']:.0f}% below"
            lines.append(
                f"| {row['text']} | {_fmt(row['ratio'])}x | {row['target']}x | "
                f"{'yes' if row['met'] else 'no'} | {shortfall} |"
            )
        lines.append("")
        other = {k: v for k, v in ratios.items() if k not in TARGETS}
        lines += ["Other ratios: " + ", ".join(f"{k} = {_fmt(v)}" for k, v in other.items()), ""]
    if training:
        stages = ["teacher", "student", "loss", "backward_optimizer_other", "data_loading", "epoch"]
        lines += [
            "| training, ms per image, steady epochs | " + " | ".join(stages) + " |",
            "|---|" + "---|" * len(stages),
        ]
        for name in TRAINING_ORDER:
            row = training[name]["seconds_per_image_by_stage"]
            lines.append(f"| {name} | " + " | ".join(_fmt(1e3 * row[s]) for s in stages) + " |")
        lines.append("")
    if inference:
        stages = ["teacher", "student", "anomaly_map", "other"]
        lines += [
            "| inference, ms per image | " + " | ".join(stages) + " |",
            "|---|" + "---|" * len(stages),
        ]
        by_stage = results["inference"]["seconds_per_image_by_stage"]
        for size in INFERENCE_BATCH_SIZES:
            for name in INFERENCE_ORDER:
                row = by_stage[name][f"batch_{size}"]
                lines.append(f"| {name}, batch {size} | " + " | ".join(_fmt(1e3 * row[s]) for s in stages) + " |")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Command-line options (unset ones take the full or ``--quick`` defaults).

    Returns:
        The parser.
    """
    parser = argparse.ArgumentParser(
        prog="python tools/speed.py",
        description="Speed of Skip-TS vs anomalib's Reverse Distillation: training, inference, export, FLOPs.",
    )
    parser.add_argument("--backbone", help=f"Backbone of both models (default {FULL['backbone']}).")
    parser.add_argument("--image-size", type=int, help=f"Square input side (default {FULL['image_size']}).")
    parser.add_argument("--repeats", type=int, help=f"Alternating rounds / repeats (default {FULL['repeats']}).")
    parser.add_argument(
        "--epochs",
        type=int,
        help=f"Epochs per round, Skip-TS with cache (>= 2; RD, no-cache: one fewer; default {FULL['epochs']}).",
    )
    parser.add_argument(
        "--train-rounds", type=int, help="Alternating training rounds, if fewer than --repeats (training is slow)."
    )
    parser.add_argument("--num-train", type=int, help=f"Phantom training images (default {FULL['num_train']}).")
    parser.add_argument("--batch-size", type=int, help=f"Training batch size (default {FULL['batch_size']}).")
    parser.add_argument("--batch1-images", type=int, help="Timed batch-1 inference calls per model and repeat.")
    parser.add_argument("--batch16-batches", type=int, help="Timed batch-16 inference calls per model and repeat.")
    parser.add_argument("--export-images", type=int, help="Timed batch-1 calls per runtime and repeat (export).")
    parser.add_argument("--output", default="results/speed", help="Output folder (default results/speed).")
    parser.add_argument("--data-root", help="Phantom dataset folder (default <output>/head_phantom_<size>).")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="Device of the torch models.")
    parser.add_argument(
        "--threads", type=int, help="Intra-op threads of torch, ONNX Runtime and OpenVINO (default: their own)."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the models' initialisation.")
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=("training", "inference", "export", "cost"),
        help="Parts not to measure.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="Tiny settings (resnet18, 64x64) for tests; OpenVINO IR converted from the ONNX file (one export).",
    )
    parser.add_argument(
        "--skipts-option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="A SkipTS argument for both Skip-TS models, value in YAML, e.g. upsample_kernel_size=2 or "
        "channels_last=false (repeatable; default: the paper's settings).",
    )
    parser.add_argument("--date", help="Date written in the report (default today).")
    return parser


def parse_skipts_options(options: Sequence[str]) -> dict[str, Any]:
    """Parse ``NAME=VALUE`` pairs (values in YAML) and check the names against ``SkipTS``'s arguments.

    Returns:
        Name -> value.

    Raises:
        SystemExit: Naming a malformed pair or an unknown argument, with the allowed names.
    """
    import inspect

    import yaml

    from anomalib_skipts.models import SkipTS

    fixed = {"backbone", "pre_trained", "image_size", "teacher_cache"}  # set by the script itself
    allowed = sorted(set(inspect.signature(SkipTS).parameters) - fixed)
    parsed: dict[str, Any] = {}
    for option in options:
        name, separator, value = option.partition("=")
        if not separator or name not in allowed:
            msg = f"--skipts-option {option!r}: use NAME=VALUE with NAME one of {', '.join(allowed)}."
            raise SystemExit(msg)
        parsed[name] = yaml.safe_load(value)
    return parsed


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    defaults = QUICK if args.quick else FULL
    settings = {key: getattr(args, key) if getattr(args, key) is not None else value for key, value in defaults.items()}
    settings["train_rounds"] = args.train_rounds or settings["repeats"]
    if settings["epochs"] < 2:
        msg = f"--epochs={settings['epochs']} is not allowed: use >= 2 (epoch 1 fills the Skip-TS cache)."
        raise SystemExit(msg)
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    """Run the speed benchmark and write ``results.json`` and ``results.md``.

    Args:
        argv: Arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        Exit status.
    """
    args = build_parser().parse_args(argv)
    settings = _settings(args)
    skipts_options = parse_skipts_options(args.skipts_option)
    os.environ.setdefault("TQDM_DISABLE", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    for noise in (
        "many workers",
        "save_top_k",
        "ModelCheckpoint",
        "in eval mode",
        "no logger",
        "infer the `batch_size`",
    ):
        warnings.filterwarnings("ignore", message=f".*{noise}")  # Lightning's notes on a deliberately bare fit
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "anomalib"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ("onnxscript", "torch.onnx"):  # exporter diagnostics (opset down-conversion attempts)
        logging.getLogger(name).setLevel(logging.ERROR)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        msg = "--device cuda: no CUDA device on this machine."
        raise SystemExit(msg)
    device = torch.device(args.device)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    size = settings["image_size"]
    command = shlex.join(["python", "tools/speed.py", *(sys.argv[1:] if argv is None else argv)])
    results: dict[str, Any] = {
        "command": command,
        "settings": settings
        | {
            "device": args.device,
            "seed": args.seed,
            "quick": args.quick,
            "threads": args.threads,
            "skipts_options": skipts_options,
        },
        "machine": machine_description(device) | {"date": args.date or datetime.date.today().isoformat()},
        "table_iii": TABLE_III,
    }
    started = time.perf_counter()
    progress(f"{settings['backbone']} at {size}x{size} on {results['machine']['description']}")

    data_root = Path(args.data_root) if args.data_root else output / f"head_phantom_{size}"
    datamodule = build_phantom(data_root, size, settings["num_train"], settings["batch_size"])
    models = build_models(settings["backbone"], size, seed=args.seed, skipts_options=skipts_options)
    for model in models.values():
        model.to(device)
    raw = raw_images(datamodule, max(16, settings["batch_size"]))
    processed = models[SKIPTS_CACHE].pre_processor.transform(raw).to(device)
    inference_models = {RD: models[RD], SKIPTS: models[SKIPTS_CACHE]}

    phases: dict[str, float] = {"setup": time.perf_counter() - started}
    results["phase_seconds"] = phases
    if "cost" not in args.skip:
        progress("parameters and FLOPs")
        start = time.perf_counter()
        results["cost"] = measure_cost(inference_models, processed[:1])
        phases["cost"] = time.perf_counter() - start
    if "training" not in args.skip:
        start = time.perf_counter()
        for name in TRAINING_ORDER:
            progress(f"training warm-up: {name}")
            warm_up_training(models[name], raw[:2].to(device))
        results["training"] = measure_training(
            models, datamodule, settings["train_rounds"], settings["epochs"], output / "engine"
        )
        phases["training"] = time.perf_counter() - start
    if "inference" not in args.skip:
        start = time.perf_counter()
        results["inference"] = measure_inference(
            inference_models | {RD_TUNED: with_inference_engineering(models[RD])},
            processed,
            settings["repeats"],
            settings["batch1_images"],
            settings["batch16_batches"],
        )
        phases["inference"] = time.perf_counter() - start
    if "export" not in args.skip:
        start = time.perf_counter()
        results["export"] = measure_export(
            models[SKIPTS_CACHE],
            raw.cpu(),
            output / "export",
            settings["repeats"],
            settings["export_images"],
            threads=args.threads,
            openvino_from_onnx=args.quick,
        )
        phases["export"] = time.perf_counter() - start

    results["ratios"] = compute_ratios(results)
    results["targets"] = check_targets(results["ratios"])
    results["machine"]["load_average_end"] = os.getloadavg()
    results["wall_seconds"] = time.perf_counter() - started
    (output / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    markdown = render_markdown(results)
    (output / "results.md").write_text(markdown + "\n", encoding="utf-8")
    print(markdown, flush=True)
    progress(f"done in {results['wall_seconds']:.0f} s: {output / 'results.json'}, {output / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
