"""Results folder of a benchmark: one record per run, ``runs.csv`` and the config snapshot.

Each run's row is written to its own record, ``runs/<run_id>/run.json``, through a temporary file
in the same folder and an atomic rename, so that any number of processes (isolated children,
parallel workers, cluster jobs) can record runs into one folder at the same time. ``runs.csv`` is
then rebuilt from all records, again through a temporary file: a reader never sees half a file,
and whichever rebuild comes last covers every record written before it.

The config snapshot (``config.yaml``) keeps the resolved config and the command that started the
benchmark; the report reads its layout from it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
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
        _write_atomically(path, json.dumps(row, indent=2, default=str))
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
        _write_atomically(self.path, table.to_csv(index=False))
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


def _newer(record: dict[str, Any], row: dict[str, Any] | None) -> bool:
    """Whether a record is not in ``runs.csv`` yet (a new run, other settings or a later finish)."""
    if row is None:
        return True
    return any(str(row.get(key)) != str(record.get(key)) for key in ("spec_hash", "finished_at"))


def _write_atomically(path: Path, text: str) -> None:
    """Write a file through a temporary file in the same folder and an atomic rename."""
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
    _write_atomically(path, yaml.safe_dump(json.loads(json.dumps(data, default=str)), sort_keys=False))
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
