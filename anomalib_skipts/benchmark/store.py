"""Results folder of a benchmark: one record per run, ``runs.csv`` and the config snapshot.

Each run's row is written to its own record, ``runs/<run_id>/run.json``, through a temporary file
in the same folder and an atomic rename, so that any number of processes (isolated children,
parallel workers, cluster jobs) can record runs into one folder at the same time. ``runs.csv`` is
then rebuilt from all records, again through a temporary file: a reader never sees half a file,
and whichever rebuild comes last covers every record written before it. Rebuilds (and the report)
hold an exclusive lock on ``.runs.lock`` (:meth:`ResultStore.lock`, ``fcntl.flock``), so that runs
finishing at the same moment in other processes or on other nodes never overwrite each other's rows.

One driver at a time executes a folder's runs: :class:`DriverLock` holds ``driver.lock`` while a
driver runs and names it (pid, host, command) to a second one, which stops with
:class:`DriverBusyError`. Reading the folder (``--report-only``, ``--dry-run``) needs no driver lock.

The config snapshot (``config.yaml``) keeps the resolved config and the command that started the
benchmark; the report reads its layout from it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import yaml

if TYPE_CHECKING:
    from .specs import BenchmarkConfig, RunSpec

RUNS_CSV = "runs.csv"
RUNS_DIR = "runs"
CONFIG_SNAPSHOT = "config.yaml"
RUN_JSON = "run.json"
RUN_LOG = "run.log"
ERROR_TXT = "error.txt"
RUNS_LOCK = ".runs.lock"
DRIVER_LOCK = "driver.lock"

STATUS_OK = "ok"
STATUS_FAILED = "failed"


class ResultStore:
    """The records of a results folder and the ``runs.csv`` rebuilt from them.

    Args:
        root: Results folder.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.path = self.root / RUNS_CSV

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder's exclusive lock (``.runs.lock``) for a read-modify-write of its shared files.

        The lock is taken with ``fcntl.flock`` and so excludes other processes (and other nodes where
        the shared file system supports it) and other threads of this process; it is re-entrant
        within one thread.

        Yields:
            None: While the lock is held.
        """
        with _folder_lock(self.root / RUNS_LOCK):
            yield

    def run_dir(self, run_id: str) -> Path:
        """Folder of a run's artefacts and record.

        Args:
            run_id: The run's id.

        Returns:
            Path: ``<root>/runs/<run_id>``.
        """
        return self.root / RUNS_DIR / run_id

    def load(self) -> pd.DataFrame:
        """Read all recorded runs (an empty frame when there are none).

        Returns:
            pd.DataFrame: One row per run.
        """
        if not self.path.is_file():
            return pd.DataFrame()
        return pd.read_csv(self.path, dtype={"spec_hash": str})

    def read_record(self, run_id: str) -> dict[str, Any] | None:
        """Read the record a run wrote (``runs/<run_id>/run.json``), if it is there and complete.

        Args:
            run_id: The run's id.

        Returns:
            dict[str, Any] | None: The row, or ``None``.
        """
        path = self.run_dir(run_id) / RUN_JSON
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        return record if isinstance(record, dict) and {"run_id", "spec_hash", "status"} <= set(record) else None

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
        """Write a run's record (replacing an earlier one of the same run), then rebuild ``runs.csv``.

        Args:
            row: The run's results (must contain ``run_id``).
        """
        path = self.run_dir(str(row["run_id"])) / RUN_JSON
        write_atomically(path, json.dumps(row, indent=2, default=str))
        self.rebuild(latest=row)

    def rebuild(self, latest: dict[str, Any] | None = None) -> pd.DataFrame:
        """Rebuild ``runs.csv`` from the rows already in it and every record in the folder.

        Rows are kept in the order they were recorded; a run recorded again moves to the end with
        its new values. Rows of ``runs.csv`` without a record (folders written before records
        existed) are kept.

        Args:
            latest: A row just recorded: it goes last whatever the file times say.

        Returns:
            pd.DataFrame: The rebuilt table.
        """
        with self.lock():
            return self._rebuild(latest)

    def _rebuild(self, latest: dict[str, Any] | None) -> pd.DataFrame:
        frame = self.load()
        rows = [] if frame.empty else frame.to_dict("records")
        known = {row["run_id"]: row for row in rows}
        records = self._records()
        if latest is not None:
            records[latest["run_id"]] = latest
        changed = [run_id for run_id, record in records.items() if _newer(record, known.get(run_id))]
        if latest is not None and latest["run_id"] not in changed:
            changed.append(latest["run_id"])
        if not changed:
            return frame
        last = None if latest is None else latest["run_id"]
        changed.sort(key=lambda run_id: (run_id == last, str(records[run_id].get("finished_at", ""))))
        new_rows = [records[run_id] for run_id in changed]
        table = pd.DataFrame([*(row for row in rows if row["run_id"] not in set(changed)), *new_rows])
        # Columns in order of first appearance, as when the rows are appended one by one.
        table = table.reindex(columns=list(dict.fromkeys([*frame.columns, *(key for row in new_rows for key in row)])))
        write_atomically(self.path, table.to_csv(index=False))
        return self.load()

    def _records(self) -> dict[str, dict[str, Any]]:
        """Every complete record of the folder, by run id."""
        records = {}
        for path in sorted((self.root / RUNS_DIR).glob(f"*/{RUN_JSON}")):
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):  # being replaced right now: the next rebuild reads it
                continue
            if isinstance(record, dict) and {"run_id", "spec_hash", "status"} <= set(record):
                records[record["run_id"]] = record
        return records


class DriverBusyError(RuntimeError):
    """Another driver is executing the runs of the same results folder."""


class DriverLock:
    """The lock a driver holds on its results folder while it executes runs (``driver.lock``).

    The lock is an exclusive ``fcntl.flock`` on the file, released by the system when the driver's
    process ends however it ends (a killed driver leaves no stale lock). The holder writes its pid,
    host, start time and command into the file so that a second driver can say who holds it.

    Args:
        root: Results folder.
        command: Command line of this driver, written for the others to see.

    Example:
        >>> with DriverLock("results/benchmark/smoke", "skipts-benchmark --config smoke.yaml"):  # doctest: +SKIP
        ...     pass
    """

    def __init__(self, root: str | Path, command: str | None = None) -> None:
        self.path = Path(root) / DRIVER_LOCK
        self.command = command
        self._file: Any = None

    def acquire(self) -> None:
        """Take the lock.

        Raises:
            DriverBusyError: If another driver holds it (the message names it).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip()
            file.close()
            raise DriverBusyError(self._busy_message(holder)) from None
        file.seek(0)
        file.truncate()
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": self.command,
        }
        file.write(json.dumps(holder))
        file.flush()
        self._file = file

    def release(self) -> None:
        """Give the lock back (the file stays: removing it would race with the next driver)."""
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> DriverLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _busy_message(self, holder: str) -> str:
        try:
            info = json.loads(holder)
            who = f"pid {info.get('pid')} on host {info.get('host')}, started {info.get('started_at')}"
            if info.get("command"):
                who += f": {info['command']}"
        except (json.JSONDecodeError, AttributeError):
            who = "a driver that has not written its name yet"
        return (
            f"Another skipts-benchmark driver is running on {self.path.parent} ({who}). "
            "Wait for it to end or stop it; --report-only and --dry-run work meanwhile."
        )


_THREAD_LOCKS: dict[Path, threading.RLock] = {}
_DEPTH = threading.local()
_GUARD = threading.Lock()


@contextlib.contextmanager
def _folder_lock(path: Path) -> Iterator[None]:
    """Exclusive ``flock`` on ``path`` across processes, threads of this process, re-entrant per thread."""
    key = path.resolve()
    with _GUARD:
        thread_lock = _THREAD_LOCKS.setdefault(key, threading.RLock())
    with thread_lock:
        depths = _DEPTH.__dict__.setdefault("depths", {})
        if depths.get(key, 0):
            depths[key] += 1
            try:
                yield
            finally:
                depths[key] -= 1
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as file:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX)
            depths[key] = 1
            try:
                yield
            finally:
                depths[key] = 0
                fcntl.flock(file.fileno(), fcntl.LOCK_UN)


def _newer(record: dict[str, Any], row: dict[str, Any] | None) -> bool:
    """Whether a record is not in ``runs.csv`` yet (a new run, other settings or a later finish)."""
    if row is None:
        return True
    return any(str(row.get(key)) != str(record.get(key)) for key in ("spec_hash", "finished_at"))


def write_atomically(path: Path, text: str) -> None:
    """Write a file through a temporary file in the same folder and an atomic rename.

    A reader sees the old content or the new one, never half of it.

    Args:
        path: The file.
        text: Its new content.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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
    write_atomically(path, yaml.safe_dump(json.loads(json.dumps(data, default=str)), sort_keys=False))
    return path


def read_config_snapshot(results_dir: str | Path) -> dict[str, Any]:
    """Read the config snapshot of a results folder (an empty mapping when there is none).

    Args:
        results_dir: Results folder.

    Returns:
        dict[str, Any]: The snapshot's content.
    """
    path = Path(results_dir) / CONFIG_SNAPSHOT
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
