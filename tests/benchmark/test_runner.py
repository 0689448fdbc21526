"""The loop without training: resume, failure isolation, progress lines and ETA, result store."""

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from anomalib_skipts.benchmark.config import RunSpec
from anomalib_skipts.benchmark.job import execute_run
from anomalib_skipts.benchmark.pipeline import BenchmarkRunner
from anomalib_skipts.benchmark.store import ResultStore


def _fake_row(run: RunSpec, status: str = "ok") -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "model": run.model.name,
        "dataset": run.dataset.name,
        "seed": run.seed,
        "status": status,
        "error": "" if status == "ok" else "boom",
        "spec_hash": run.fingerprint(),
        "duration_s": 2.0,
        "image_auroc": 0.5,
        "image_f1": 0.5,
        "image_accuracy": 0.5,
        "train_time_s": 1.0,
        "throughput_ips": 10.0,
    }


class _Recorder:
    """Fake ``execute``: records the runs it is asked to do; fails the ones named in ``fail``."""

    def __init__(self, fail: set[str] | None = None) -> None:
        self.calls: list[str] = []
        self.fail = fail or set()

    def __call__(self, run: RunSpec, run_dir: Path) -> dict[str, Any]:
        self.calls.append(run.run_id)
        return _fake_row(run, "failed" if run.model.name in self.fail else "ok")


def test_each_run_is_recorded_immediately_and_restart_skips_finished(make_config) -> None:
    config = make_config(models=["Padim", "Patchcore"], seeds=[0, 1])
    seen_rows: list[int] = []
    store = ResultStore(config.output_dir)

    def execute(run: RunSpec, run_dir: Path) -> dict[str, Any]:
        seen_rows.append(len(store.load()))  # rows already on disk when this run starts
        return _fake_row(run)

    BenchmarkRunner(config, isolate=False, execute=execute, log=lambda _: None).run()
    assert seen_rows == [0, 1, 2, 3]
    assert len(store.load()) == 4

    again = _Recorder()
    lines: list[str] = []
    BenchmarkRunner(config, isolate=False, execute=again, log=lines.append).run()
    assert again.calls == []
    assert sum("already finished: skipped" in line for line in lines) == 4


def test_restart_reruns_changed_and_failed_runs(make_config) -> None:
    config = make_config(models=["Padim", "Patchcore"])
    BenchmarkRunner(config, isolate=False, execute=_Recorder(fail={"Patchcore"}), log=lambda _: None).run()
    frame = ResultStore(config.output_dir).load()
    assert dict(zip(frame["model"], frame["status"], strict=True)) == {"Padim": "ok", "Patchcore": "failed"}

    retry = _Recorder()
    BenchmarkRunner(config, isolate=False, execute=retry, log=lambda _: None).run()
    assert retry.calls == ["Patchcore__Tiny__seed0"]  # failed runs are retried, finished ones not
    assert len(ResultStore(config.output_dir).load()) == 2  # the failed row was replaced

    no_retry = _Recorder()
    BenchmarkRunner(config, isolate=False, execute=no_retry, retry_failed=False, log=lambda _: None).run()
    assert no_retry.calls == []

    changed = make_config(models=["Padim", "Patchcore"], protocol={"name": "smoke", "max_epochs": 2})
    rerun = _Recorder()
    BenchmarkRunner(changed, isolate=False, execute=rerun, log=lambda _: None).run()
    assert rerun.calls == ["Padim__Tiny__seed0", "Patchcore__Tiny__seed0"]  # settings changed


def test_progress_lines_and_eta(make_config) -> None:
    config = make_config(models=["Padim", "Patchcore"], seeds=[0, 1])
    lines: list[str] = []
    BenchmarkRunner(config, isolate=False, execute=_Recorder(), log=lines.append).run()
    progress = [line for line in lines if "ETA" in line]
    assert progress[0].startswith("[run 1/4] model=Padim dataset=Tiny seed=0")
    assert "ETA unknown" in progress[0]
    assert progress[-1].startswith("[run 4/4] model=Patchcore dataset=Tiny seed=1")
    assert progress[-1].endswith("ETA 0:00:02")  # one run left, 2 s per recorded Patchcore run
    assert progress[1].endswith("ETA 0:00:06")  # three runs left at 2 s each


def test_failing_run_is_recorded_with_its_error_and_the_rest_go_on(make_config) -> None:
    # A real run that fails while building its model (unknown backbone), then the loop goes on
    # (the following run is faked here; test_cli_and_report runs real ones after a failure).
    config = make_config(
        models=[{"name": "Broken", "class_path": "Padim", "init_args": {"backbone": "no_such_backbone"}}, "Padim"],
        seeds=[0, 1],
    )
    fake = _Recorder()

    def execute(run: RunSpec, run_dir: Path) -> dict[str, Any]:
        return execute_run(run, run_dir) if run.model.name == "Broken" else fake(run, run_dir)

    frame = BenchmarkRunner(config, isolate=False, execute=execute, log=lambda _: None).run()
    rows = frame.set_index("run_id")
    for seed in (0, 1):
        broken = rows.loc[f"Broken__Tiny__seed{seed}"]
        assert broken["status"] == "failed"
        assert "no_such_backbone" in broken["error"]
        assert (config.output_dir / "runs" / f"Broken__Tiny__seed{seed}" / "error.txt").is_file()
    assert fake.calls == ["Padim__Tiny__seed0", "Padim__Tiny__seed1"]
    assert (rows.loc[fake.calls, "status"] == "ok").all()


def test_unknown_model_fails_cleanly(make_config) -> None:
    config = make_config(models=["NoSuchModel"])
    row = execute_run(config.runs()[0], config.output_dir / "runs" / "x")
    assert row["status"] == "failed"
    assert "NoSuchModel" in row["error"]


def test_result_store_replaces_rows_atomically(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.record({"run_id": "a", "status": "failed", "spec_hash": "1"})
    store.record({"run_id": "b", "status": "ok", "spec_hash": "2", "extra": 3})
    store.record({"run_id": "a", "status": "ok", "spec_hash": "1"})
    frame = pd.read_csv(tmp_path / "runs.csv")
    assert sorted(frame["run_id"]) == ["a", "b"]
    assert frame.set_index("run_id").loc["a", "status"] == "ok"
    assert not list(tmp_path.glob("*.tmp"))


def test_keyboard_interrupt_is_not_swallowed(make_config, monkeypatch: pytest.MonkeyPatch) -> None:
    from anomalib_skipts.benchmark import job

    def interrupt(run: RunSpec, run_dir: Path) -> dict[str, Any]:
        raise KeyboardInterrupt

    monkeypatch.setattr(job, "_train_and_test", interrupt)
    config = make_config()
    with pytest.raises(KeyboardInterrupt):
        execute_run(config.runs()[0], config.output_dir / "runs" / "x")
