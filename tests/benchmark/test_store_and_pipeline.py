"""Results folder written by many processes at once, one run started by id, and the runs.csv layout."""

import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from anomalib_skipts.benchmark.store import ResultStore, write_config_snapshot

# The columns of runs.csv for a finished isolated run, in order (what readers of the file rely on).
RUNS_CSV_COLUMNS = [
    "run_id", "model", "model_class", "group", "dataset", "seed", "status", "error", "protocol", "image_size",
    "requested_epochs", "spec_hash", "started_at", "image_auroc", "image_f1", "image_accuracy", "youden_threshold",
    "youden_tpr", "youden_fpr", "pixel_auroc", "pixel_aupro", "pixel_dice", "patient_auroc", "patient_f1",
    "patient_accuracy", "n_test_patients", "n_train", "n_test", "n_test_normal",
    "n_test_abnormal", "test_set_hash", "max_epochs", "epochs_trained", "train_time_s", "test_time_s",
    "throughput_ips", "params", "trained_params", "flops_per_image", "device", "torch_threads", "weights",
    "init_args", "duration_s", "cpu_time_s", "peak_rss_mb", "peak_cuda_mb", "finished_at", "exit_code",
]  # fmt: skip


def _write_rows(root: str, worker: int, count: int) -> None:
    """Record ``count`` rows from one process (module level: runs in spawned children)."""
    store = ResultStore(root)
    for index in range(count):
        store.record({"run_id": f"w{worker}_r{index}", "status": "ok", "spec_hash": f"{worker}{index}", "n": index})


def test_many_writers_lose_no_row(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_rows, args=(str(tmp_path), worker, 6)) for worker in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
        assert process.exitcode == 0
    store = ResultStore(tmp_path)
    frame = store.rebuild()  # what any runner does after its jobs: the table covers every record
    assert sorted(frame["run_id"]) == sorted(f"w{w}_r{r}" for w in range(4) for r in range(6))
    assert len(list((tmp_path / "runs").glob("*/run.json"))) == 24
    assert not list(tmp_path.rglob("*.tmp"))
    assert store.load().equals(frame)  # the file on disk is the rebuilt table


def test_a_run_recorded_again_replaces_its_row_and_moves_last(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    for run_id in ("a", "b", "c"):
        store.record({"run_id": run_id, "status": "failed", "spec_hash": "1", "finished_at": run_id})
    store.record({"run_id": "a", "status": "ok", "spec_hash": "1", "finished_at": "z", "extra": 1.5})
    frame = store.load()
    assert list(frame["run_id"]) == ["b", "c", "a"]
    assert list(frame["status"]) == ["failed", "failed", "ok"]
    assert list(frame.columns) == ["run_id", "status", "spec_hash", "finished_at", "extra"]


def test_one_run_by_id_from_the_snapshot(make_config) -> None:
    from anomalib_skipts.benchmark.pipeline import main, run_by_id

    config = make_config(models=["Padim", "Patchcore"], isolate=False)
    write_config_snapshot(config, "skipts-benchmark --config x.yaml")
    assert main(["--results", str(config.output_dir), "--run-id", "Padim__Tiny__seed0"]) == 0
    frame = ResultStore(config.output_dir).load()
    assert list(frame["run_id"]) == ["Padim__Tiny__seed0"]
    assert frame.loc[0, "status"] == "ok", frame.loc[0, "error"]
    assert frame.loc[0, "spec_hash"] == config.runs()[0].fingerprint()  # the same run as the config's
    with pytest.raises(ValueError, match="Patchcore__Tiny__seed0"):  # says which runs exist
        run_by_id(config.output_dir, "Nope__Tiny__seed0")


def test_runs_csv_columns_of_an_isolated_run(make_config) -> None:
    from anomalib_skipts.benchmark.pipeline import BenchmarkRunner

    config = make_config(models=["Padim"])
    frame = BenchmarkRunner(config, log=lambda _: None).run()
    assert list(frame.columns) == RUNS_CSV_COLUMNS
    row: dict[str, Any] = frame.iloc[0].to_dict()
    assert row["status"] == "ok", row["error"]
    assert row["exit_code"] == 0
