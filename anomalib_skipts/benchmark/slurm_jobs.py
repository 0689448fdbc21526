"""SLURM jobs of a results folder: the record of submitted jobs (``slurm_jobs.json``) and their states.

The ``slurm`` executor writes the id of every job it submits to ``slurm_jobs.json`` in the results
folder (atomically, right after the submission), so that a driver started again finds the jobs of
the one before it. States are read from SLURM's own clients: ``squeue`` for the jobs still in the
queue, ``scontrol show job`` for jobs that ended recently (the controller keeps them for
``MinJobAge``), and ``sacct`` where the cluster keeps accounting; a job none of them knows any
more is reported as ``UNKNOWN``.
"""

from __future__ import annotations

import getpass
import json
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .store import write_atomically

SLURM_JOBS = "slurm_jobs.json"
QUEUED_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED"})
RUNNING_STATES = frozenset({"CONFIGURING", "RUNNING", "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"})
COMMAND_TIMEOUT_S = 60
UNREACHABLE = "UNREACHABLE"
"""State of every job while the SLURM controller does not answer (the jobs are then waited for)."""


@dataclass(frozen=True)
class SubmittedJob:
    """One run's SLURM job, as recorded in ``slurm_jobs.json``.

    Args:
        run_id: The run.
        job_id: SLURM's job id.
        spec_hash: The run's fingerprint when it was submitted.
        submitted_at: UTC time of the submission (ISO 8601).
        stdout: The job's output file.
        stderr: The job's error file.
    """

    run_id: str
    job_id: str
    spec_hash: str
    submitted_at: str
    stdout: str = ""
    stderr: str = ""


@dataclass(frozen=True)
class JobState:
    """What SLURM says about a job.

    Args:
        state: SLURM's state (``PENDING``, ``RUNNING``, ``COMPLETED``, ``CANCELLED``, ``TIMEOUT``,
            ``OUT_OF_MEMORY``, ``PREEMPTED``, ``NODE_FAIL``, ``FAILED`` ...; ``UNKNOWN`` when no
            client knows the job any more).
        reason: SLURM's reason field (why pending, or why it ended), if any.
        exit_code: ``<status>:<signal>`` of the job's batch script, if known.
    """

    state: str
    reason: str = ""
    exit_code: str = ""

    @property
    def queued(self) -> bool:
        """Waiting in the queue (or held, suspended, requeued)."""
        return self.state in QUEUED_STATES

    @property
    def running(self) -> bool:
        """Running on a node (or completing)."""
        return self.state in RUNNING_STATES

    @property
    def active(self) -> bool:
        """Not ended yet (or not known while the controller does not answer)."""
        return self.queued or self.running or self.state == UNREACHABLE

    def describe(self, job_id: str) -> str:
        """Say in words how the job stands or ended.

        Args:
            job_id: The job's id.

        Returns:
            str: e.g. ``SLURM job 12 CANCELLED (reason: None, exit code 0:15)``.
        """
        if self.state == "UNKNOWN":
            return f"SLURM job {job_id} is no longer known to SLURM ({self.reason or 'no state found'})"
        details = [f"reason: {self.reason}"] if self.reason else []
        details += [f"exit code {self.exit_code}"] if self.exit_code else []
        return f"SLURM job {job_id} {self.state}" + (f" ({', '.join(details)})" if details else "")


class SlurmJobs:
    """The record of the SLURM jobs of a results folder (``slurm_jobs.json``), by run id.

    Args:
        root: Results folder.
    """

    def __init__(self, root: str | Path) -> None:
        self.path = Path(root) / SLURM_JOBS

    def load(self) -> dict[str, SubmittedJob]:
        """Read the recorded jobs (empty when none were submitted).

        Returns:
            dict[str, SubmittedJob]: The latest job of each run.
        """
        if not self.path.is_file():
            return {}
        data = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        return {run_id: SubmittedJob(**entry) for run_id, entry in data.get("jobs", {}).items()}

    def add(self, job: SubmittedJob) -> None:
        """Record a submitted job (replacing an earlier job of the same run), atomically.

        Args:
            job: The job.
        """
        jobs = self.load()
        jobs[job.run_id] = job
        history = self._history()
        history.append(asdict(job))
        data = {"jobs": {run_id: asdict(item) for run_id, item in jobs.items()}, "history": history}
        write_atomically(self.path, json.dumps(data, indent=2))

    def history(self) -> list[SubmittedJob]:
        """Every job ever submitted for the folder, oldest first (retries included).

        Returns:
            list[SubmittedJob]: The jobs.
        """
        return [SubmittedJob(**entry) for entry in self._history()]

    def _history(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return list(json.loads(self.path.read_text(encoding="utf-8") or "{}").get("history", []))


def now() -> str:
    """Tell the current UTC time as recorded in rows and job records.

    Returns:
        str: ISO 8601, seconds.
    """
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def query_states(job_ids: list[str]) -> dict[str, JobState]:
    """Ask SLURM how the given jobs stand.

    Args:
        job_ids: The jobs.

    Returns:
        dict[str, JobState]: One state per job id.
    """
    if not job_ids:
        return {}
    if shutil.which("scontrol") is not None and _run(["scontrol", "ping"]) is None:
        # A controller that does not answer (restarting, overloaded) must not turn running jobs into failures.
        return {job_id: JobState(UNREACHABLE, "the SLURM controller does not answer") for job_id in job_ids}
    states = _squeue(job_ids)
    for job_id in job_ids:
        if job_id not in states or not states[job_id].active:
            ended = _scontrol(job_id) or _sacct(job_id)
            if ended is not None:
                states[job_id] = ended
            elif job_id not in states:
                states[job_id] = JobState("UNKNOWN", "neither squeue, scontrol nor sacct knows it")
    return states


def active_jobs_by_name(comment: str) -> dict[str, str]:
    """Find this user's jobs still queued or running with the given comment, by job name.

    Args:
        comment: The ``--comment`` the jobs were submitted with.

    Returns:
        dict[str, str]: Job name -> job id.
    """
    output = _run(["squeue", "-h", "-u", getpass.getuser(), "-o", "%i|%j|%k"]) or ""
    found = {}
    for line in output.splitlines():
        parts = line.strip().split("|", 2)
        if len(parts) == 3 and parts[2] == comment:
            found[parts[1]] = parts[0]
    return found


def cancel(job_ids: list[str]) -> None:
    """Cancel jobs (``scancel``).

    Args:
        job_ids: The jobs.
    """
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True, timeout=COMMAND_TIMEOUT_S, check=False)


def _run(command: list[str]) -> str | None:
    if shutil.which(command[0]) is None:
        return None
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
    except (subprocess.SubprocessError, OSError):
        return None
    return result.stdout if result.returncode == 0 else None


def _squeue(job_ids: list[str]) -> dict[str, JobState]:
    states = {}
    for start in range(0, len(job_ids), 500):
        chunk = ",".join(job_ids[start : start + 500])
        output = _run(["squeue", "-h", "-t", "all", "-j", chunk, "-o", "%i|%T|%r"])
        if output is None:  # an id the controller forgot makes squeue fail for the whole list: ask one by one
            one = (_run(["squeue", "-h", "-t", "all", "-j", item, "-o", "%i|%T|%r"]) for item in chunk.split(","))
            output = "".join(found or "" for found in one)
        for line in output.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 3 and parts[0]:
                states[parts[0]] = JobState(parts[1], "" if parts[2] == "None" else parts[2])
    return states


def _scontrol(job_id: str) -> JobState | None:
    output = _run(["scontrol", "-o", "show", "job", job_id])
    if not output:
        return None
    fields = dict(re.findall(r"(\w+)=(\S*)", output))
    if "JobState" not in fields:
        return None
    reason = fields.get("Reason", "")
    return JobState(fields["JobState"], "" if reason == "None" else reason, fields.get("ExitCode", ""))


def _sacct(job_id: str) -> JobState | None:
    output = _run(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "State,ExitCode,Reason"])
    if not output or not output.strip():
        return None
    state, exit_code, reason = ([*output.strip().splitlines()[0].split("|"), "", ""])[:3]
    return JobState(state.split()[0] if state else "UNKNOWN", "" if reason == "None" else reason, exit_code)
