"""The ``local`` executor with several runs at once: ``skipts-benchmark --parallel N [--devices 0,1]``.

Each run still executes in its own child process under the run's time and memory limits (as with
the serial runner); up to ``N`` such processes run at once. With CUDA, each run is pinned to one
GPU through ``CUDA_VISIBLE_DEVICES`` and a GPU is given to the next run only when the run on it has
ended, so no GPU holds two runs at once unless ``--runs-per-device`` allows it. Each run writes its
own log (``runs/<run_id>/run.log``) and record; the driver's lines name the run they are about.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from .executors import device_slots
from .runners import BaseRunner, eta, label, outcome, progress
from .store import STATUS_OK

if TYPE_CHECKING:
    from .pipeline import BenchmarkJob, BenchmarkJobGenerator
    from .specs import BenchmarkConfig

PROGRESS_EVERY_S = 60.0
"""Seconds between two progress lines while no run ends."""


def threads_per_run(parallel: int) -> int | None:
    """CPU threads each of ``parallel`` runs gets: the machine's cores shared out, at least one.

    Without a limit every run's torch would start one thread per core, and ``N`` runs on ``C``
    cores would compete with ``N x C`` threads. A user's own ``OMP_NUM_THREADS`` is respected.

    Args:
        parallel: Runs at once.

    Returns:
        The threads per run, or ``None`` when ``OMP_NUM_THREADS`` is set (each run keeps it).
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // parallel)


class ParallelRunner(BaseRunner):
    """Run up to ``parallel`` pending jobs at once on this machine, each in its own process.

    Args:
        generator: The benchmark's jobs (isolated: each run in a child process).
        parallel: Runs at once (default: the config's ``executor.parallel``).
        devices: GPUs the runs are pinned to (default: the config's, else every visible GPU when the
            protocol's accelerator may use CUDA).
        runs_per_device: Runs sharing one GPU at once (default: the config's).
        retry_failed: Run again the runs recorded as failed (default).
        log: Function printing progress lines.
        command: Command line that started the benchmark.
        report_config: The config the results folder's summary covers.

    Raises:
        ValueError: Without isolation, or with more runs at once than the GPUs take.
    """

    def __init__(
        self,
        generator: BenchmarkJobGenerator,
        parallel: int | None = None,
        devices: tuple[int, ...] | None = None,
        runs_per_device: int | None = None,
        retry_failed: bool = True,
        log: Callable[[str], None] | None = None,
        command: str | None = None,
        report_config: BenchmarkConfig | None = None,
    ) -> None:
        super().__init__(generator, retry_failed=retry_failed, log=log, command=command, report_config=report_config)
        spec = generator.config.executor
        self.parallel = parallel or spec.parallel
        if not generator.isolate:
            msg = "Runs at once (--parallel) need isolated runs: drop --no-isolation / isolate: false."
            raise ValueError(msg)
        use_cuda = generator.config.protocol.accelerator != "cpu" and devices is None and spec.devices is None
        self.threads = threads_per_run(self.parallel)
        self.slots = device_slots(
            self.parallel,
            devices if devices is not None else spec.devices,
            runs_per_device or spec.runs_per_device,
            use_cuda=use_cuda and _cuda_available(),
        )

    def execute(self, pending: list[BenchmarkJob]) -> None:
        """Run the jobs, up to ``parallel`` at once, logging starts, ends and progress.

        Args:
            pending: The jobs not finished yet, in execution order.
        """
        if not pending:
            return
        free: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        for slot in self.slots:
            free.put(slot)
        pinned = any(slot is not None for slot in self.slots)
        self.log(
            f"{self.parallel} runs at once"
            + (f", pinned to GPUs {sorted({s for s in self.slots if s is not None})}" if pinned else "")
            + (f", {self.threads} CPU thread(s) each" if self.threads is not None else "")
        )
        lock = threading.Lock()
        counts = {"running": 0, "done": 0, "failed": 0, "to run": len(pending)}

        def work(job: BenchmarkJob) -> dict[str, Any]:
            device = free.get()
            with lock:
                counts["to run"] -= 1
                counts["running"] += 1
            where = f" on GPU {device}" if device is not None else ""
            self.log(f"{label(job)} started{where}")
            try:
                return job.run(task_id=device, log=self.log, threads=self.threads)
            finally:
                free.put(device)
                with lock:
                    counts["running"] -= 1

        remaining = {job.run_spec.run_id: job for job in pending}
        pool = ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="skipts-run")
        futures: dict[Future, BenchmarkJob] = {pool.submit(work, job): job for job in pending}
        try:
            self._watch(futures, remaining, counts, lock, len(pending))
        except KeyboardInterrupt:
            self.log("Interrupted: no further run starts; waiting for the runs already started to end.")
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _watch(
        self,
        futures: dict[Future, BenchmarkJob],
        remaining: dict[str, BenchmarkJob],
        counts: dict[str, int],
        lock: threading.Lock,
        total: int,
    ) -> None:
        """Log each run as it ends and a progress line after each end (or every minute)."""
        last = time.monotonic()
        while futures:
            finished, _ = wait(futures, timeout=PROGRESS_EVERY_S, return_when=FIRST_COMPLETED)
            for future in finished:
                job = futures.pop(future)
                remaining.pop(job.run_spec.run_id)
                try:
                    row = future.result()
                except Exception as error:  # a driver-side error ends this run only
                    row = {"status": "failed", "error": f"{type(error).__name__}: {error}", "duration_s": 0.0}
                with lock:
                    counts["done" if row.get("status") == STATUS_OK else "failed"] += 1
                self.log(f"{label(job)} {outcome(row)}")
            if finished or time.monotonic() - last >= PROGRESS_EVERY_S:
                last = time.monotonic()
                with lock:
                    snapshot = dict(counts)
                left = [job.run_spec for job in remaining.values()]
                self.log(progress(snapshot, total, eta(self.store, left, self.parallel)))


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
