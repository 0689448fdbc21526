"""The ``slurm`` executor: one SLURM job per run, submitted through submitit, with a driver that can die.

``skipts-benchmark --config grid.yaml --executor slurm`` (the driver, on a login node) submits one
job per pending run; the job executes the run by its id from the results folder's config snapshot
(:func:`~.pipeline.run_by_id`), in its own child process under the run's time and memory limits,
and writes the run's record into the results folder (a file system shared by the nodes). The
driver records every job id in ``slurm_jobs.json``, watches the queue and prints progress.

The driver may die (logout, SIGKILL, a reboot of the login node): the jobs go on. Started again
with the same command, it attaches to the jobs of its runs still queued or running instead of
submitting them again, and picks up the runs that finished meanwhile. A job that ends without its
run's record (cancelled with ``scancel``, over its time limit, out of memory, preempted, its node
lost) is recorded as failed with SLURM's state and reason and the last lines of its log; the next
start runs it again (unless ``--no-retry-failed``).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .isolation import tail
from .job import execute_run, failed_row
from .runners import BaseRunner, eta, label, outcome, progress
from .slurm_jobs import JobState, SlurmJobs, SubmittedJob, active_jobs_by_name, now, query_states
from .store import ERROR_TXT, RUN_LOG, STATUS_OK, ResultStore

if TYPE_CHECKING:
    from .executors import SlurmSettings
    from .pipeline import BenchmarkJob, BenchmarkJobGenerator
    from .specs import BenchmarkConfig, RunSpec

SLURM_LOGS = "slurm"
"""Folder of the results folder holding the jobs' submission files and logs."""
PROGRESS_EVERY_S = 60.0
"""Seconds between two progress lines while nothing changes."""


class SlurmRunner(BaseRunner):
    """Execute each pending run as its own SLURM job and wait for all of them.

    Args:
        generator: The benchmark's jobs.
        settings: The jobs' resources and options (default: the config's ``executor.slurm``).
        retry_failed: Run again the runs recorded as failed (default).
        log: Function printing progress lines.
        command: Command line that started the benchmark.
        report_config: The config the results folder's summary covers.

    Raises:
        ValueError: If submitit or SLURM's ``sbatch`` is missing, or runs are not isolated.
    """

    def __init__(
        self,
        generator: BenchmarkJobGenerator,
        settings: SlurmSettings | None = None,
        retry_failed: bool = True,
        log: Callable[[str], None] | None = None,
        command: str | None = None,
        report_config: BenchmarkConfig | None = None,
    ) -> None:
        super().__init__(generator, retry_failed=retry_failed, log=log, command=command, report_config=report_config)
        self.settings = settings or generator.config.executor.slurm
        try:
            import submitit  # noqa: F401
        except ImportError as error:
            msg = "The slurm executor needs submitit: pip install 'anomalib-skipts[cluster]'."
            raise ValueError(msg) from error
        if shutil.which("sbatch") is None:
            msg = "The slurm executor needs SLURM's sbatch on PATH: start the benchmark on a login node of the cluster."
            raise ValueError(msg)
        if not generator.isolate:
            msg = "The slurm executor runs each run isolated in its job: drop --no-isolation / isolate: false."
            raise ValueError(msg)
        self.jobs = SlurmJobs(self.store.root)

    def prepare(self, jobs: list[BenchmarkJob]) -> None:
        """Record as failed the runs whose jobs ended without a record while no driver watched.

        Args:
            jobs: Every job of the benchmark.
        """
        submitted = self._submitted(jobs)
        unrecorded = {run_id: item for run_id, item in submitted.items() if not self._recorded(item)}
        states = query_states([item.job_id for item in unrecorded.values()])
        by_id = {job.run_spec.run_id: job for job in jobs}
        for run_id, item in unrecorded.items():
            state = states[item.job_id]
            if not state.active:
                row = self._outcome(by_id[run_id], item, state)
                self.log(f"{label(by_id[run_id])} {outcome(row)} (SLURM job {item.job_id})")

    def execute(self, pending: list[BenchmarkJob]) -> None:
        """Attach to the pending runs' jobs still in the queue, submit the others, wait for all.

        Args:
            pending: The jobs not finished yet, in execution order.
        """
        if not pending:
            return
        submitted = self._submitted(pending)
        states = query_states([item.job_id for item in submitted.values()])
        tracked: dict[str, tuple[BenchmarkJob, SubmittedJob]] = {}
        to_submit = []
        for job in pending:
            item = submitted.get(job.run_spec.run_id)
            if item is not None and states[item.job_id].active:
                tracked[job.run_spec.run_id] = (job, item)
                self.log(f"{label(job)} attached to SLURM job {item.job_id} ({states[item.job_id].state.lower()})")
            else:
                to_submit.append(job)
        if to_submit:  # jobs submitted by a driver that died before it could record them
            orphans = active_jobs_by_name(self._comment())
            for job in list(to_submit):
                job_id = orphans.get(_job_name(job.run_spec))
                if job_id is not None:
                    item = self._remember(job, job_id, now(), "", "")
                    tracked[job.run_spec.run_id] = (job, item)
                    to_submit.remove(job)
                    self.log(f"{label(job)} attached to SLURM job {job_id} (submitted before the last driver died)")
        if to_submit:
            executor = self._executor()
            for job in to_submit:
                item = self._submit(executor, job)
                tracked[job.run_spec.run_id] = (job, item)
                self.log(f"{label(job)} submitted as SLURM job {item.job_id}")
        self.log(
            f"{len(tracked) - len(to_submit)} job(s) attached, {len(to_submit)} submitted; "
            f"logs in {self.store.root / SLURM_LOGS}. The jobs go on if this driver stops: "
            "run the same command again to attach to them."
        )
        try:
            self._wait(tracked, len(pending))
        except KeyboardInterrupt:
            ids = " ".join(item.job_id for _, item in tracked.values())
            self.log(f"Driver stopped; the jobs go on. Run the same command to attach again, or cancel: scancel {ids}")
            raise

    def _wait(self, tracked: dict[str, tuple[BenchmarkJob, SubmittedJob]], total: int) -> None:
        counts = {"queued": 0, "running": 0, "done": 0, "failed": 0}
        shown: dict[str, int] = {}
        last = 0.0
        while True:
            states = query_states([item.job_id for _, item in tracked.values()])
            counts["queued"] = counts["running"] = 0
            for run_id, (job, item) in list(tracked.items()):
                state = states[item.job_id]
                if state.active:
                    counts["queued" if state.queued else "running"] += 1
                    continue
                row = self._outcome(job, item, state)
                del tracked[run_id]
                counts["done" if row.get("status") == STATUS_OK else "failed"] += 1
                self.log(f"{label(job)} {outcome(row)} (SLURM job {item.job_id})")
            if counts != shown or time.monotonic() - last >= PROGRESS_EVERY_S:
                left = [job.run_spec for job, _ in tracked.values()]
                at_once = max(1, counts["running"])
                self.log(progress(counts, total, eta(self.store, left, at_once) if left else "0:00:00"))
                shown, last = dict(counts), time.monotonic()
            if not tracked:
                return
            time.sleep(self.settings.poll_interval)

    def _executor(self) -> Any:
        import submitit

        executor = submitit.SlurmExecutor(folder=self.store.root / SLURM_LOGS, python=self.settings.python)
        config = self.config
        executor.update_parameters(**self.settings.submitit_parameters(config.run_timeout, config.run_memory_limit))
        return executor

    def _submit(self, executor: Any, job: BenchmarkJob) -> SubmittedJob:
        from .pipeline import run_by_id

        run = job.run_spec
        executor.update_parameters(job_name=_job_name(run), comment=self._comment())
        arguments: tuple[Any, ...] = (str(self.store.root.resolve()), run.run_id)
        if self.generator.execute is not execute_run:
            arguments = (*arguments, self.generator.execute)
        submitted_at = now()
        handle = executor.submit(run_by_id, *arguments)
        return self._remember(job, str(handle.job_id), submitted_at, str(handle.paths.stdout), str(handle.paths.stderr))

    def _remember(self, job: BenchmarkJob, job_id: str, submitted_at: str, stdout: str, stderr: str) -> SubmittedJob:
        """Record a run's job in ``slurm_jobs.json`` (job logs default to submitit's file names)."""
        from submitit.core.utils import JobPaths

        paths = JobPaths(self.store.root / SLURM_LOGS, job_id=job_id)
        item = SubmittedJob(
            run_id=job.run_spec.run_id,
            job_id=job_id,
            spec_hash=job.run_spec.fingerprint(),
            submitted_at=submitted_at,
            stdout=stdout or str(paths.stdout),
            stderr=stderr or str(paths.stderr),
        )
        self.jobs.add(item)
        return item

    def _comment(self) -> str:
        """Give the ``--comment`` of this results folder's jobs (finds jobs a dying driver could not record)."""
        return f"skipts-benchmark:{self.store.root.resolve()}"

    def _submitted(self, jobs: list[BenchmarkJob]) -> dict[str, SubmittedJob]:
        """Find the recorded jobs of these runs, submitted with the runs' current settings."""
        recorded = self.jobs.load()
        return {
            job.run_spec.run_id: recorded[job.run_spec.run_id]
            for job in jobs
            if job.run_spec.run_id in recorded and recorded[job.run_spec.run_id].spec_hash == job.run_spec.fingerprint()
        }

    def _recorded(self, item: SubmittedJob) -> bool:
        """Whether the run wrote its record after its job was submitted."""
        return recorded_since(self.store, item)

    def _outcome(self, job: BenchmarkJob, item: SubmittedJob, state: JobState) -> dict[str, Any]:
        """Give the row of a run whose job ended: its own record, or a failure saying what SLURM did to it.

        A job stopped by SLURM (cancelled, over its time limit, out of memory, preempted) may still
        have let the run record its own failure (its process was stopped first); SLURM's reason is
        then put in front of the run's error.
        """
        row = self.store.read_record(item.run_id) if self._recorded(item) else None
        if row is not None and (row.get("status") == STATUS_OK or state.state in ("COMPLETED", "UNKNOWN")):
            self.store.rebuild()
            return row
        return self._record_failure(job, item, state, None if row is None else str(row.get("error", "")))

    def _record_failure(
        self,
        job: BenchmarkJob,
        item: SubmittedJob,
        state: JobState,
        run_error: str | None = None,
    ) -> dict[str, Any]:
        lines = {
            "job output": tail(Path(item.stdout)),
            "job errors": tail(Path(item.stderr)),
            RUN_LOG: tail(self.store.run_dir(item.run_id) / RUN_LOG),
        }
        last = next((found[-3:] for found in (lines["job errors"], lines[RUN_LOG], lines["job output"]) if found), [])
        reason = state.describe(item.job_id)
        if run_error:
            reason += f"; the run: {run_error}"
        elif state.state == "COMPLETED":
            reason += " but the run left no record"
        error = reason + (f"; last log lines: {' | '.join(last)}" if last else "")
        row = failed_row(job.run_spec, error, started_at=item.submitted_at, slurm_job_id=item.job_id, duration_s=0.0)
        run_dir = self.store.run_dir(item.run_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        details = [f"{reason}.", ""]
        for name, found in lines.items():
            details += [f"Last lines of the {name}:", "", *found, ""]
        (run_dir / ERROR_TXT).write_text("\n".join(details), encoding="utf-8")
        self.store.record(row)
        return row


def _job_name(run: RunSpec) -> str:
    return f"skipts-{run.run_id}"


def recorded_since(store: ResultStore, item: SubmittedJob) -> bool:
    """Whether a run wrote its record, with the submitted settings, after its job was submitted.

    Args:
        store: The results folder.
        item: The run's job.

    Returns:
        bool: ``True`` when the job's outcome is in the run's record.
    """
    record = store.read_record(item.run_id)
    return (
        record is not None
        and str(record.get("spec_hash")) == item.spec_hash
        and str(record.get("finished_at", "")) >= item.submitted_at
    )


def run_states(store: ResultStore, runs: list[RunSpec], retry_failed: bool = True) -> dict[str, str]:
    """Say how each run of a benchmark stands: finished, queued, running, failed or to run.

    SLURM is asked only about runs with a recorded job (``slurm_jobs.json``).

    Args:
        store: The results folder.
        runs: The runs.
        retry_failed: Whether failed runs are run again (said in their state).

    Returns:
        dict[str, str]: A state in words per run id.
    """
    frame = store.load()
    recorded = SlurmJobs(store.root).load()
    jobs = {
        run.run_id: recorded[run.run_id]
        for run in runs
        if run.run_id in recorded and recorded[run.run_id].spec_hash == run.fingerprint()
    }
    waiting = {run_id: item for run_id, item in jobs.items() if not recorded_since(store, item)}
    states = query_states([item.job_id for item in waiting.values()])
    result = {}
    for run in runs:
        item = waiting.get(run.run_id)
        state = states.get(item.job_id) if item is not None else None
        rows = (
            frame[(frame["run_id"] == run.run_id) & (frame["spec_hash"].astype(str) == run.fingerprint())]
            if not frame.empty
            else frame
        )
        if state is not None and state.active:
            where = "queued" if state.queued else "running" if state.running else "unknown (no answer from SLURM)"
            result[run.run_id] = f"{where} (SLURM job {item.job_id})"
        elif not rows.empty and (rows["status"] == STATUS_OK).any():
            result[run.run_id] = "finished"
        elif not rows.empty or state is not None:
            error = str(rows["error"].iloc[-1]) if not rows.empty and "error" in rows else state.describe(item.job_id)
            if retry_failed:
                result[run.run_id] = f"failed (runs again): {error[:160]}"
            else:
                result[run.run_id] = f"finished, failed (not run again: --no-retry-failed): {error[:160]}"
        else:
            result[run.run_id] = "to run"
    return result
