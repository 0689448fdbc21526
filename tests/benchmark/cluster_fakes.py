"""Fake runs for the executor tests: module-level (a child process or a SLURM job imports them by name)."""

import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from anomalib_skipts.benchmark.specs import RunSpec

RELEASE = "release"
"""A run of :func:`gated_run` waits until this file exists in the results folder."""


def _row(run: RunSpec, **fields: Any) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "model": run.model.name,
        "dataset": run.dataset.name,
        "seed": run.seed,
        "status": "ok",
        "error": "",
        "spec_hash": run.fingerprint(),
        "duration_s": 1.0,
        "image_auroc": 0.5 + run.seed / 100,
        "image_f1": 0.5,
        "image_accuracy": 0.5,
        "train_time_s": 1.0,
        "throughput_ips": 10.0,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **fields,
    }


def chatty_run(run: RunSpec, run_dir: Path) -> dict[str, Any]:
    """Print 40 lines naming the run over about 2 s; the row keeps start and end times, pid and threads."""
    start = time.time()
    for index in range(40):
        print(f"{run.run_id} line {index}", flush=True)
        time.sleep(0.05)
    del run_dir
    import torch

    threads = {"torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "")}
    return _row(run, started=start, ended=time.time(), pid=os.getpid(), **threads)


def gated_run(run: RunSpec, run_dir: Path) -> dict[str, Any]:
    """Wait (up to 120 s) until the results folder holds the file ``release``, then finish."""
    release = run_dir.parents[1] / RELEASE
    deadline = time.monotonic() + 120
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return _row(run)


def record_row(root: str, row: dict[str, Any]) -> None:
    """Record a row into a results folder (a writer in another process)."""
    from anomalib_skipts.benchmark.store import ResultStore

    ResultStore(root).record(row)
