"""Runners of the benchmark: which pending runs to execute, where, and the progress they show.

Every runner is an anomalib pipeline ``Runner`` fed by a :class:`~.pipeline.BenchmarkJobGenerator`.
:class:`BaseRunner` does what all of them share (config snapshot, skipping the runs already
finished with the same settings, the plan and the final count); a subclass only decides how the
pending jobs are executed (:meth:`BaseRunner.execute`). Each job records its own row, so runners
that execute jobs in other processes or on other machines need no channel back for results.

- :class:`SerialRunner`: one run after the other, each in its own child process under the
  config's time and memory limits, with an ETA from the durations already recorded.
- :class:`~.parallel.ParallelRunner`: several runs at once on this machine, one per GPU.
- :class:`~.slurm.SlurmRunner`: one SLURM job per run; a driver that dies can be started again.

A runner holds the results folder's driver lock (:class:`~.store.DriverLock`) while it runs, so
that two drivers never execute the runs of one folder at the same time.

:class:`~.pipeline.BenchmarkPipeline` picks a runner by name; :class:`~.pipeline.BenchmarkRunner` is
the serial runner built straight from a config.
"""

from __future__ import annotations

import logging
import math
from abc import abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pandas as pd
from anomalib.pipelines.components import Runner

from .job import format_duration
from .store import STATUS_OK, DriverLock, ResultStore, write_config_snapshot

if TYPE_CHECKING:
    from .isolation import RunLimits
    from .pipeline import BenchmarkJob, BenchmarkJobGenerator
    from .specs import BenchmarkConfig, RunSpec

logger = logging.getLogger(__name__)


class BaseRunner(Runner):
    """Execute the jobs of a benchmark that are not finished yet.

    Args:
        generator: The benchmark's jobs.
        retry_failed: Run again the runs recorded as failed (default). With ``False`` a restart skips
            them too.
        log: Function printing progress lines; defaults to the module logger.
        command: Command line that started the benchmark, kept in the config snapshot for the report.
        report_config: The config the results folder's summary covers, written to its snapshot
            (default: the generator's); the command line passes the config before ``--models`` /
            ``--datasets`` selected some of it, so that the summary keeps every model.
    """

    generator: BenchmarkJobGenerator

    def __init__(
        self,
        generator: BenchmarkJobGenerator,
        retry_failed: bool = True,
        log: Callable[[str], None] | None = None,
        command: str | None = None,
        report_config: BenchmarkConfig | None = None,
    ) -> None:
        super().__init__(generator)
        self.retry_failed = retry_failed
        self.log = log or logger.info
        self.command = command
        self.report_config = report_config or generator.config

    @property
    def config(self) -> BenchmarkConfig:
        """The benchmark (its selected runs)."""
        return self.generator.config

    @property
    def store(self) -> ResultStore:
        """The results folder."""
        return self.generator.store

    def run(self, args: dict | None = None, prev_stage_results: Any = None) -> pd.DataFrame:
        """Execute every run not finished yet, holding the folder's driver lock.

        Args:
            args: Passed to the generator (unused by it).
            prev_stage_results: Unused.

        Returns:
            pd.DataFrame: All recorded runs of the results folder.

        Raises:
            DriverBusyError: If another driver is executing the runs of the same folder.
        """
        del prev_stage_results
        self.config.output_dir.mkdir(parents=True, exist_ok=True)
        with DriverLock(self.config.output_dir, self.command):
            return self._run(args)

    def prepare(self, jobs: list[BenchmarkJob]) -> None:
        """Bring the folder's records up to date before the pending runs are chosen (default: nothing).

        Args:
            jobs: Every job of the benchmark.
        """
        del jobs

    def _run(self, args: dict | None) -> pd.DataFrame:
        config = self.config
        write_config_snapshot(self.report_config, self.command)
        jobs = list(self.generator(args))
        self.store.rebuild()  # records written while no driver was there (runs finished elsewhere)
        self.prepare(jobs)
        pending = [job for job in jobs if not self.store.finished(job.run_spec, self.retry_failed)]
        to_run = {job.run_spec.run_id for job in pending}
        self.log(
            f"Benchmark {config.name!r}: {len(jobs)} runs ({len(config.models)} models x "
            f"{len(config.datasets)} datasets x {len(config.seeds)} seeds), "
            f"{len(jobs) - len(pending)} already finished, results in {config.output_dir}",
        )
        if self.generator.isolate:
            self.log(f"Each run in its own process; limits per run: {describe_limits(self.generator.limits)}")
        for job in jobs:
            if job.run_spec.run_id not in to_run:
                self.log(f"{label(job)} already finished: skipped")
        self.execute(pending)
        frame = self.store.rebuild()
        failed = int((frame["status"] != STATUS_OK).sum()) if not frame.empty else 0
        self.log(f"Benchmark {config.name!r} finished: {len(frame) - failed} ok, {failed} failed.")
        return frame

    @abstractmethod
    def execute(self, pending: list[BenchmarkJob]) -> None:
        """Run every pending job once (each job records its own row).

        Args:
            pending: The jobs not finished yet, in execution order.
        """


class SerialRunner(BaseRunner):
    """Run the pending jobs one after the other, with an ETA before each."""

    def execute(self, pending: list[BenchmarkJob]) -> None:
        """Run the jobs in order, logging the plan, progress and outcome of each.

        Args:
            pending: The jobs not finished yet.
        """
        for done, job in enumerate(pending):
            remaining = [item.run_spec for item in pending[done:]]
            self.log(f"{label(job)} ({done + 1}/{len(pending)} to run) ETA {eta(self.store, remaining)}")
            row = job.run(log=self.log)
            self.log(f"[run {job.index}/{job.total}] {outcome(row)}")


def eta(store: ResultStore, remaining: list[RunSpec], at_once: int = 1) -> str:
    """Estimate the time left: per-model mean duration of recorded runs, else the overall mean.

    Args:
        store: The results folder.
        remaining: Runs still to do.
        at_once: Runs executing at the same time (the estimate is divided by it).

    Returns:
        str: ``H:MM:SS``, or why there is no estimate yet.
    """
    seconds = eta_seconds(store, remaining)
    if seconds is None:
        return "unknown (no run finished yet)"
    return format_duration(seconds / max(1, min(at_once, len(remaining) or 1)))


def eta_seconds(store: ResultStore, remaining: list[RunSpec]) -> float | None:
    """Seconds the remaining runs take one after the other, from the durations already recorded.

    Args:
        store: The results folder.
        remaining: Runs still to do.

    Returns:
        float | None: Seconds (``None`` before any run is recorded).
    """
    frame = store.load()
    if frame.empty or "duration_s" not in frame:
        return None
    durations = frame[frame["status"] == STATUS_OK]
    if durations.empty:
        durations = frame
    per_model = durations.groupby("model")["duration_s"].mean().to_dict()
    overall = float(durations["duration_s"].mean())
    return float(sum(per_model.get(run.model.name, overall) for run in remaining))


def progress(counts: dict[str, int], total: int, eta_text: str) -> str:
    """One progress line: how many runs are in which state, and the time left.

    Args:
        counts: Runs per state (``queued``, ``running``, ``done``, ``failed``, ``to run``...).
        total: Runs this driver executes.
        eta_text: The estimate of the time left.

    Returns:
        str: e.g. ``Progress: 1 queued, 2 running, 3 done, 0 failed of 6; ETA 0:04:10``.
    """
    parts = ", ".join(f"{count} {state}" for state, count in counts.items())
    return f"Progress: {parts} of {total}; ETA {eta_text}"


def outcome(row: dict[str, Any]) -> str:
    """Say in one line how a run ended.

    Args:
        row: The run's row.

    Returns:
        str: Duration and main metrics, or the error.
    """
    if row.get("status") != STATUS_OK:
        return f"FAILED after {row.get('duration_s', 0):.1f}s: {row.get('error', '')}"
    memory = f", peak resident {row['peak_rss_mb'] / 1024:.2f} GB" if _finite(row.get("peak_rss_mb")) else ""
    return (
        f"done in {row['duration_s']:.1f}s: image AUROC {row['image_auroc']:.3f}, "
        f"F1 {row['image_f1']:.3f}, accuracy {row['image_accuracy']:.3f} "
        f"(train {row['train_time_s']:.1f}s, {row['throughput_ips']:.1f} img/s{memory})"
    )


def describe_limits(limits: RunLimits) -> str:
    """Say the time and memory limits of a run in words.

    Args:
        limits: The limits.

    Returns:
        str: e.g. ``time 2:00:00, memory 16 GB``.
    """
    time_limit = format_duration(limits.timeout_s) if limits.timeout_s is not None else "none"
    memory = f"{limits.memory_limit_gb:g} GB" if limits.memory_limit_gb is not None else "none"
    return f"time {time_limit}, memory {memory}"


def label(job: BenchmarkJob) -> str:
    """Name a job in progress lines.

    Args:
        job: The job.

    Returns:
        str: ``[run i/n] model=... dataset=... seed=...``.
    """
    run = job.run_spec
    return f"[run {job.index}/{job.total}] model={run.model.name} dataset={run.dataset.name} seed={run.seed}"


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
