"""The benchmark as a pipeline of anomalib's framework: jobs, their generator and the pipeline.

:class:`BenchmarkJob` is one run (an anomalib pipeline ``Job``): it executes the run of :mod:`.job`,
isolated in a child process by default, and records its row in the results folder (:mod:`.store`).
:class:`BenchmarkJobGenerator` yields one job per run of a config; the runners of :mod:`.runners`
execute them; :class:`BenchmarkPipeline` ties config, generator and runner together.

On a cluster node one run is started by its id, from the config snapshot of the results folder::

    python -m anomalib_skipts.benchmark.pipeline --results results/benchmark/smoke --run-id Padim__HeadPhantom__seed0
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from anomalib.pipelines.components import Job, JobGenerator, Pipeline, Runner

from .isolation import RunLimits
from .job import Execute, execute_isolated, execute_run
from .parallel import ParallelRunner
from .runners import BaseRunner, SerialRunner
from .slurm import SlurmRunner
from .store import ResultStore, read_config_snapshot

if TYPE_CHECKING:
    from .specs import BenchmarkConfig, RunSpec


# ------------------------------------------------------------------------------------------------
# The job and its generator (anomalib's pipeline framework)
# ------------------------------------------------------------------------------------------------


@dataclass
class BenchmarkJob(Job):
    """One run of the benchmark: executes it (isolated by default) and records its row.

    Jobs are plain data (picklable): a runner may run them in this process, send them to a pool of
    workers, or start them on other machines by id (see the module docstring).

    Args:
        run_spec: The run.
        store: Results folder the row is recorded in.
        index: Position of the run in the whole grid (1-based), for progress lines.
        total: Number of runs in the grid.
        isolate: Run in a child process (a crash or a limit then ends this run only).
        limits: Time and memory limits of the child process.
        execute: Module-level function doing the run (default :func:`execute_run`).
    """

    run_spec: RunSpec
    store: ResultStore
    index: int = 1
    total: int = 1
    isolate: bool = True
    limits: RunLimits | None = None
    execute: Execute = execute_run

    name = "benchmark"

    @property
    def run_dir(self) -> Path:
        """Folder of the run's artefacts and record."""
        return self.store.run_dir(self.run_spec.run_id)

    def run(
        self, task_id: int | None = None, log: Callable[[str], None] | None = None, threads: int | None = None
    ) -> dict[str, Any]:
        """Execute the run and record its row in the store.

        Args:
            task_id: Accelerator index the run may use (isolated runs only); ``None``: all devices.
            log: Receives "still running" lines of an isolated run.
            threads: CPU threads of the run (isolated runs only); ``None``: torch's default.

        Returns:
            dict[str, Any]: The run's row, as recorded.
        """
        if self.isolate:
            row = execute_isolated(
                self.run_spec, self.run_dir, self.limits, self.execute, log, device=task_id, threads=threads
            )
        else:
            row = self.execute(self.run_spec, self.run_dir)
        self.store.record(row)
        return row

    @staticmethod
    def collect(results: list[dict[str, Any]]) -> pd.DataFrame:
        """Put the rows of the jobs run together in a table.

        Args:
            results: Rows returned by :meth:`run`.

        Returns:
            pd.DataFrame: One row per run.
        """
        return pd.DataFrame(results)

    @staticmethod
    def save(results: pd.DataFrame) -> None:
        """Do nothing: every job has recorded its own row already (``runs.csv`` is rebuilt from them).

        Args:
            results: The collected rows.
        """
        del results


class BenchmarkJobGenerator(JobGenerator):
    """One :class:`BenchmarkJob` per run of a benchmark config, in execution order.

    Args:
        config: The benchmark.
        execute: Module-level function doing one run (default :func:`execute_run`).
        isolate: Run each run in a child process (default: the config's ``isolate``).
        limits: Time and memory limits per run (default: the config's ``run_timeout`` and
            ``run_memory_limit``); used only with isolation.

    Raises:
        ValueError: If limits are asked for without isolation, or ``execute`` cannot be sent to a
            child process.
    """

    def __init__(
        self,
        config: BenchmarkConfig,
        execute: Execute = execute_run,
        isolate: bool | None = None,
        limits: RunLimits | None = None,
    ) -> None:
        import pickle

        self.config = config
        self.execute = execute
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

    @property
    def job_class(self) -> type[BenchmarkJob]:
        """The job class generated."""
        return BenchmarkJob

    def generate_jobs(
        self,
        args: dict | None = None,
        prev_stage_result: Any = None,
    ) -> Generator[BenchmarkJob, None, None]:
        """Yield one job per run of the config (seeds outermost, models innermost).

        Args:
            args: Unused (the config is given to the constructor).
            prev_stage_result: Unused.

        Yields:
            BenchmarkJob: The jobs.
        """
        del args, prev_stage_result
        runs = self.config.runs()
        for index, run in enumerate(runs, start=1):
            yield BenchmarkJob(
                run_spec=run,
                store=self.store,
                index=index,
                total=len(runs),
                isolate=self.isolate,
                limits=self.limits,
                execute=self.execute,
            )


class BenchmarkPipeline(Pipeline):
    """A benchmark config run by one of the runners of :mod:`.runners`.

    Args:
        config: The benchmark.
        runner: Name of the runner in :attr:`RUNNERS` (default: the one of the config's ``executor``:
            ``serial``, ``parallel`` or ``slurm``).
        **runner_args: Arguments of the runner (``retry_failed``, ``log``, ``command``, ``report_config``).

    Example:
        >>> from anomalib_skipts.benchmark import load_config
        >>> from anomalib_skipts.benchmark.pipeline import BenchmarkPipeline
        >>> frame = BenchmarkPipeline(load_config("configs/benchmark/smoke.yaml")).run()  # doctest: +SKIP
    """

    RUNNERS: dict[str, type[BaseRunner]] = {  # noqa: RUF012
        "serial": SerialRunner,
        "parallel": ParallelRunner,
        "slurm": SlurmRunner,
    }
    """Runner names -> runner classes (other runners register here)."""

    def __init__(self, config: BenchmarkConfig, runner: str | None = None, **runner_args: Any) -> None:
        runner = runner or config.executor.runner
        if runner not in self.RUNNERS:
            msg = f"Unknown runner {runner!r}; known runners: {sorted(self.RUNNERS)}"
            raise ValueError(msg)
        self.config = config
        self.runner = runner
        self.runner_args = runner_args

    def _setup_runners(self, args: dict) -> list[Runner]:
        del args
        return [self.RUNNERS[self.runner](BenchmarkJobGenerator(self.config), **self.runner_args)]

    def run(self, args: Any = None) -> pd.DataFrame:
        """Execute the runs not finished yet (anomalib's log redirection and YAML reading are not used).

        Args:
            args: Unused (the config is given to the constructor).

        Returns:
            pd.DataFrame: All recorded runs of the results folder.
        """
        (runner,) = self._setup_runners({})
        return runner.run(args)


class BenchmarkRunner(SerialRunner):
    """Run a benchmark config serially: every run once, restartable, with progress and ETA.

    Args:
        config: The benchmark.
        retry_failed: Run again the runs recorded as failed (default).
        execute: Function running one run (for tests); defaults to :func:`~.job.execute_run`. With
            isolation it must be a module-level function (it is sent to the child by reference).
        log: Function printing progress lines; defaults to the module logger.
        command: Command line that started the benchmark, kept in the config snapshot.
        report_config: The config the results folder's summary covers (default ``config``).
        isolate: Run each run in a child process (default: the config's ``isolate``).
        limits: Time and memory limits per run (default: the config's); used only with isolation.

    Example:
        >>> from anomalib_skipts.benchmark import BenchmarkRunner, load_config
        >>> runner = BenchmarkRunner(load_config("configs/benchmark/smoke.yaml"))  # doctest: +SKIP
        >>> frame = runner.run()  # doctest: +SKIP
    """

    def __init__(
        self,
        config: BenchmarkConfig,
        retry_failed: bool = True,
        execute: Execute = execute_run,
        log: Callable[[str], None] | None = None,
        command: str | None = None,
        report_config: BenchmarkConfig | None = None,
        isolate: bool | None = None,
        limits: RunLimits | None = None,
    ) -> None:
        generator = BenchmarkJobGenerator(config, execute=execute, isolate=isolate, limits=limits)
        super().__init__(generator, retry_failed=retry_failed, log=log, command=command, report_config=report_config)


def run_by_id(results_dir: str | Path, run_id: str, execute: Execute = execute_run) -> dict[str, Any]:
    """Execute one run of a results folder by its id, from the folder's config snapshot.

    This is what a SLURM job of the ``slurm`` executor does; the run's torch and OpenMP threads are
    those the job was given (:func:`allocated_cpus`).

    Args:
        results_dir: Results folder holding ``config.yaml`` (written when the benchmark started).
        run_id: The run's id (``<model>__<dataset>__seed<seed>``).
        execute: Module-level function doing the run (default :func:`execute_run`).

    Returns:
        dict[str, Any]: The run's row, as recorded.

    Raises:
        ValueError: If the folder has no snapshot or the snapshot no such run.
    """
    from .config import config_from_snapshot

    snapshot = read_config_snapshot(results_dir)
    if not snapshot:
        msg = f"No config snapshot in {results_dir}: start the benchmark there first (skipts-benchmark --config ...)."
        raise ValueError(msg)
    config = config_from_snapshot(snapshot, output_dir=results_dir)
    generator = BenchmarkJobGenerator(config, execute=execute)
    jobs = {job.run_spec.run_id: job for job in generator()}
    if run_id not in jobs:
        msg = f"No run {run_id!r} in {results_dir}; its runs are: {sorted(jobs)}"
        raise ValueError(msg)
    return jobs[run_id].run(threads=allocated_cpus())


def allocated_cpus() -> int | None:
    """CPUs SLURM gave this task (``SLURM_CPUS_PER_TASK``), for the run's torch and OpenMP threads.

    Without cgroups a job's processes see every core of the node; a run then uses only what its
    job asked for (``cpus`` of the executor's ``slurm`` block) instead of competing with the node's
    other jobs. ``OMP_NUM_THREADS`` set by the user wins.

    Returns:
        The CPU count, or ``None`` outside a SLURM job with ``--cpus-per-task`` or with
        ``OMP_NUM_THREADS`` set.
    """
    value = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if os.environ.get("OMP_NUM_THREADS") or not value.isdigit() or int(value) < 1:
        return None
    return int(value)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line running one run of a results folder by id (for cluster nodes).

    Args:
        argv: Arguments without the program name.

    Returns:
        int: 0 when the run was recorded (also when it failed: see its row), 2 on a bad id or folder.
    """
    parser = argparse.ArgumentParser(prog="python -m anomalib_skipts.benchmark.pipeline", description=main.__doc__)
    parser.add_argument("--results", required=True, help="Results folder with the config snapshot.")
    parser.add_argument("--run-id", required=True, help="Id of the run to execute.")
    args = parser.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        row = run_by_id(args.results, args.run_id)
    except ValueError as error:
        parser.error(str(error))
    print(f"{row['run_id']}: {row['status']} {row.get('error', '')}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
