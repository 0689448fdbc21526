"""One benchmark run: build, train through anomalib's ``Engine``, test, measure, keep the artefacts.

A run trains one model on one dataset with one seed through anomalib's ``Engine``, tests the model
as it is after the LAST epoch and measures it (Skip-TS, IEEE TIM 2024, Sec. IV protocol). The model
is built with ``post_processor=False, evaluator=False, visualizer=False`` so that the test loop
returns raw anomaly scores and maps (anomalib's post-processor would clamp normalised scores to
[0, 1], which ties the highest scores); every metric is computed here, from the same raw scores for
every model. Checkpoints are never written (``save_top_k=0``).

:func:`execute_run` does the run in the calling process and never raises for a failing run;
:func:`execute_isolated` runs it in its own child process under time and memory limits
(:mod:`.isolation`), so that a run that crashes, is killed or runs out of memory is recorded as
failed and the others go on. This module imports neither torch nor anomalib until a run starts, so
that a child process is light until it does its run (:mod:`.pipeline` holds anomalib's job classes).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import math
import os
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

from .adapters import build_datamodule, model_recipe
from .isolation import MB, RunLimits, fix_mmap_threshold, peak_rss_bytes, reset_peak_rss, run_in_child
from .store import ERROR_TXT, RUN_JSON, RUN_LOG, STATUS_FAILED, STATUS_OK

if TYPE_CHECKING:
    import torch
    from anomalib.data import AnomalibDataModule
    from anomalib.models import AnomalibModule

    from .specs import RunSpec

logger = logging.getLogger(__name__)

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

Execute = Callable[["RunSpec", Path], dict[str, Any]]
"""A function doing one run in the calling process and returning its row (:func:`execute_run`)."""


# ------------------------------------------------------------------------------------------------
# One run, in this process
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


def failed_row(run: RunSpec, error: str, **fields: Any) -> dict[str, Any]:
    """Build the row of a run that ended without writing its own (killed, cancelled, lost with its node).

    Args:
        run: The run.
        error: Why it failed, in words (cut to 500 characters, on one line).
        **fields: Further columns (``started_at``, ``duration_s``, ``exit_code`` ...).

    Returns:
        dict[str, Any]: The row, ``status="failed"``, finished now.
    """
    row = _base_row(run)
    row.update(fields)
    row.update(status=STATUS_FAILED, error=error.replace("\n", " ")[:500], finished_at=_now())
    return row


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

    from anomalib_skipts.patient import dataset_patient_metrics, tested_patients

    from .callbacks import LastEpochGuard, TestCollector
    from .cost import count_flops, count_parameters, describe_device, measure_throughput
    from .metrics import dice_at_threshold, image_metrics, pixel_aupro, pixel_auroc

    seed_everything(run.seed, workers=True, verbose=False)
    datamodule = build_datamodule(run)
    recipe = model_recipe(run)
    model = recipe.build()
    guard = LastEpochGuard()
    collector = TestCollector(run.protocol.overlay_images)
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
    tested = tested_patients(datamodule, collector.paths)
    patients = dataset_patient_metrics(datamodule, collector.paths, scores, labels, tested)
    network = model.model
    device = model.device
    batches = _preprocessed_test_batches(model, datamodule, run.protocol.throughput_images, device)
    params, trained = count_parameters(network, optimizers)
    flops = count_flops(network, batches[0][:1]) if batches else math.nan
    throughput = measure_throughput(network, batches)

    predictions = pd.DataFrame({"image_path": collector.paths, "label": labels, "score": scores})
    if tested is not None:  # volumes, and 2-D sets whose file names tell the patient
        predictions.insert(1, "patient_id", tested["patient_id"].tolist())
    predictions.to_csv(run_dir / "predictions.csv", index=False)
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
        "weights": recipe.weights,
        "init_args": json.dumps(recipe.plain_init_args(), sort_keys=True, default=str),
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


def format_duration(seconds: float) -> str:
    """Format seconds as ``H:MM:SS``.

    Args:
        seconds: The duration.

    Returns:
        str: The formatted duration.
    """
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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


# ------------------------------------------------------------------------------------------------
# One run, in its own process
# ------------------------------------------------------------------------------------------------


def execute_isolated(
    run: RunSpec,
    run_dir: Path,
    limits: RunLimits | None = None,
    execute: Execute = execute_run,
    log: Callable[[str], None] | None = None,
    device: int | None = None,
    threads: int | None = None,
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
        device: Accelerator index the child may see (``CUDA_VISIBLE_DEVICES``); ``None``: all.
        threads: CPU threads of the child's torch and OpenMP (runs sharing the machine); ``None``:
            torch's default (every core).

    Returns:
        dict[str, Any]: The run's row for ``runs.csv``.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_JSON).unlink(missing_ok=True)
    started_at = _now()

    def heartbeat(elapsed: float, rss: int) -> None:
        if log is not None:
            log(f"    {run.run_id} still running: {format_duration(elapsed)} elapsed, resident {rss / 1024**3:.2f} GB")

    limits = limits or RunLimits()
    outcome = run_in_child(_child_main, (execute, run, run_dir, device, threads), run_dir / RUN_LOG, limits, heartbeat)
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


def _child_main(
    execute: Execute, run: RunSpec, run_dir: Path, device: int | None = None, threads: int | None = None
) -> None:
    """Child side of :func:`execute_isolated`: run and write the row (``run.json``) for the parent."""
    if device is not None:  # before torch is imported by the run
        os.environ["CUDA_VISIBLE_DEVICES"] = str(device)
    if threads is not None:  # OpenMP / MKL read these at start-up; torch's intra-op pool is set directly
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(asctime)s %(name)s %(message)s")
    row = execute(run, run_dir)
    (run_dir / RUN_JSON).write_text(json.dumps(row, indent=2, default=str), encoding="utf-8")
