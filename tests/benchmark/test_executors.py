"""Executors of the benchmark without a cluster: the executor block, the flags, GPU slots, locks, --parallel."""

import multiprocessing
import os
import socket
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from anomalib_skipts.benchmark.__main__ import main
from anomalib_skipts.benchmark.config import load_config, parse_config
from anomalib_skipts.benchmark.executors import ExecutorSpec, SlurmSettings, device_slots, parse_devices
from anomalib_skipts.benchmark.parallel import ParallelRunner, threads_per_run
from anomalib_skipts.benchmark.pipeline import BenchmarkJobGenerator, BenchmarkPipeline, allocated_cpus
from anomalib_skipts.benchmark.slurm import run_states
from anomalib_skipts.benchmark.slurm_jobs import query_states
from anomalib_skipts.benchmark.store import DriverBusyError, DriverLock, ResultStore

from .cluster_fakes import chatty_run, record_row

DATASETS = [{"name": "Tiny", "class_path": "anomalib.data.Folder"}]


def _write(tmp_path: Path, **data: object) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"datasets": DATASETS, "output_dir": str(tmp_path / "out"), **data}))
    return path


def test_executor_block_is_parsed_and_kept_in_the_snapshot(tmp_path: Path) -> None:
    block = {
        "name": "slurm",
        "slurm": {
            "partition": "gpu",
            "time_limit": "90m",
            "gpus": 1,
            "cpus": 8,
            "account": "lab",
            "qos": "long",
            "sbatch": {"constraint": "a100", "exclusive": True},
            "setup": ["module load cuda"],
            "poll_interval": 5,
        },
    }
    config = load_config(_write(tmp_path, executor=block, run_memory_limit=12))
    slurm = config.executor.slurm
    assert config.executor.name == "slurm"
    assert config.executor.runner == "slurm"
    assert (slurm.partition, slurm.time_limit, slurm.gpus, slurm.cpus) == ("gpu", 5400.0, 1, 8)
    assert slurm.sbatch == {"constraint": "a100", "exclusive": True}
    parameters = slurm.submitit_parameters(config.run_timeout, config.run_memory_limit)
    assert parameters == {
        "time": 90,
        "partition": "gpu",
        "gpus_per_node": 1,
        "cpus_per_task": 8,
        "mem": f"{14 * 1024}M",  # the run's 12 GB limit plus the job's margin
        "account": "lab",
        "qos": "long",
        "setup": ["module load cuda"],
        "additional_parameters": {"constraint": "a100", "exclusive": True},
    }
    from anomalib_skipts.benchmark.config import config_from_snapshot
    from anomalib_skipts.benchmark.store import read_config_snapshot, write_config_snapshot

    write_config_snapshot(config)
    assert config_from_snapshot(read_config_snapshot(config.output_dir)).executor == config.executor


def test_run_limits_map_to_the_job_limits() -> None:
    settings = SlurmSettings()
    assert settings.submitit_parameters(None, None) == {"time": None}  # no --time: the partition's default
    parameters = settings.submitit_parameters(3600.0, 8.0)
    assert parameters["time"] == 70  # the run's hour plus 10 minutes for the job
    assert parameters["mem"] == f"{10 * 1024}M"
    assert SlurmSettings(time_limit=120.0, mem_gb=3.5).submitit_parameters(3600.0, 8.0) == {
        "time": 2,
        "mem": f"{int(3.5 * 1024)}M",
    }


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"nme": "slurm"}, "Unknown key(s) ['nme']"),
        ({"name": "pbs"}, "'name' must be 'local' or 'slurm'"),
        ({"parallel": 0}, '"parallel"'),
        ({"slurm": {"gpus": "two"}}, '"gpus"'),
        ({"slurm": {"time_limit": "soon"}}, '"time_limit"'),
        ({"slurm": {"cpu": 4}}, "Unknown key(s) ['cpu']"),
    ],
)
def test_executor_block_errors_name_key_and_file(tmp_path: Path, block: dict, message: str) -> None:
    path = _write(tmp_path, executor=block)
    with pytest.raises(ValueError, match="executor") as error:
        load_config(path)
    assert message in str(error.value)
    assert str(path) in str(error.value)


def test_flags_override_the_executor_block(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = parse_config({"datasets": DATASETS, "executor": {"name": "slurm"}}).executor
    assert spec.with_flags(name="local").runner == "serial"
    assert spec.with_flags(name="local", parallel=2).runner == "parallel"
    pinned = ExecutorSpec().with_flags(devices=(0, 1))
    assert (pinned.runner, pinned.parallel) == ("parallel", 2)  # one run per GPU
    assert ExecutorSpec().with_flags(devices=(0, 1), runs_per_device=2).parallel == 4
    assert BenchmarkPipeline(parse_config({"datasets": DATASETS, "executor": {"parallel": 3}})).runner == "parallel"
    assert BenchmarkPipeline(parse_config({"datasets": DATASETS, "executor": {"name": "slurm"}})).runner == "slurm"
    assert BenchmarkPipeline(parse_config({"datasets": DATASETS})).runner == "serial"
    assert parse_devices("0, 2") == (0, 2)
    for bad in ("", "a,b", "0,0"):
        with pytest.raises(ValueError, match="--devices"):
            parse_devices(bad)
    path = _write(tmp_path)
    with pytest.raises(SystemExit):
        main(["--config", str(path), "--parallel", "0", "--dry-run"])
    assert "--parallel must be a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--config", str(path), "--executor", "slurm", "--parallel", "2", "--dry-run"])
    assert "for the local executor" in capsys.readouterr().err


def test_gpu_slots_never_put_two_runs_on_one_gpu_unless_asked() -> None:
    assert device_slots(2, (0, 1)) == [0, 1]
    assert device_slots(1, (3, 5)) == [3]
    assert device_slots(4, (0, 1), runs_per_device=2) == [0, 1, 0, 1]
    assert device_slots(3, None) == [None, None, None]  # CPU: not pinned
    with pytest.raises(ValueError, match="--runs-per-device"):
        device_slots(3, (0, 1))
    os.environ["CUDA_VISIBLE_DEVICES"], saved = "2,3", os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        assert device_slots(2, None, use_cuda=True) == [2, 3]  # the GPUs this process was given
        with pytest.raises(ValueError, match="2 GPU"):
            device_slots(3, None, use_cuda=True)
    finally:
        if saved is None:
            del os.environ["CUDA_VISIBLE_DEVICES"]
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved


def test_second_driver_gets_an_error_naming_the_first(make_config, tmp_path: Path, caplog) -> None:
    config = make_config()
    with DriverLock(config.output_dir, "skipts-benchmark --config first.yaml"):
        with pytest.raises(DriverBusyError) as error:
            DriverLock(config.output_dir).acquire()
        message = str(error.value)
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in message
        assert "skipts-benchmark --config first.yaml" in message
        runner = ParallelRunner(BenchmarkJobGenerator(config, execute=chatty_run), parallel=2, log=lambda _: None)
        with pytest.raises(DriverBusyError):
            runner.run()
        path = tmp_path / "grid.yaml"
        path.write_text(yaml.safe_dump({**_yaml_of(make_config), "output_dir": str(config.output_dir)}))
        assert main(["--config", str(path), "--no-isolation"]) == 2
        assert f"Another skipts-benchmark driver is running on {config.output_dir} (pid {os.getpid()}" in caplog.text
        assert not (config.output_dir / "runs.csv").exists()  # nothing ran
    DriverLock(config.output_dir).acquire()  # free again once released


def _yaml_of(make_config) -> dict:
    config = make_config()
    dataset = config.datasets[0]
    return {
        "protocol": {"name": "smoke", "overlay_images": 2, "throughput_images": 4},
        "models": ["Padim"],
        "datasets": [{"name": dataset.name, "class_path": dataset.class_path, "init_args": dict(dataset.init_args)}],
        "seeds": [0],
    }


def test_rebuilds_wait_for_the_folder_lock(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.record({"run_id": "a", "spec_hash": "1", "status": "ok", "finished_at": "2026-01-01T00:00:00+00:00"})
    row = {"run_id": "b", "spec_hash": "2", "status": "ok", "finished_at": "2026-01-01T00:00:01+00:00"}
    context = multiprocessing.get_context("spawn")
    with store.lock(), store.lock():  # re-entrant in one thread
        writer = context.Process(target=record_row, args=(str(tmp_path), row))
        writer.start()
        record = tmp_path / "runs" / "b" / "run.json"
        deadline = time.monotonic() + 60
        while not record.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert record.exists()  # the writer has written its record ...
        time.sleep(1.0)
        assert writer.is_alive()  # ... and waits to rebuild runs.csv
        assert list(store.load()["run_id"]) == ["a"]
    writer.join(60)
    assert writer.exitcode == 0
    assert list(store.load()["run_id"]) == ["a", "b"]


def test_parallel_two_runs_a_four_run_grid_with_separate_records(make_config) -> None:
    config = make_config(models=["Padim", "Stfpm"], seeds=[0, 1])
    lines: list[str] = []
    ParallelRunner(BenchmarkJobGenerator(config, execute=chatty_run), parallel=2, log=lines.append).run()
    frame = pd.read_csv(config.output_dir / "runs.csv").set_index("run_id")
    runs = {run.run_id: run for run in config.runs()}
    assert set(frame.index) == set(runs)
    for run_id, run in runs.items():
        row = frame.loc[run_id]
        assert (row["status"], row["model"], row["seed"]) == ("ok", run.model.name, run.seed)
        assert row["spec_hash"] == run.fingerprint()
        log = (config.output_dir / "runs" / run_id / "run.log").read_text().split("\n")
        own = [line for line in log if " line " in line]
        assert own == [f"{run_id} line {index}" for index in range(40)]  # only its own lines, in order
    assert frame["pid"].nunique() == 4  # each run in its own process
    events = sorted([(start, 1) for start in frame["started"]] + [(end, -1) for end in frame["ended"]])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak == 2  # two at once, never more
    assert any("Progress: 0 running, 4 done, 0 failed, 0 to run of 4" in line for line in lines)


def test_parallel_runs_share_the_cores_and_keep_a_users_thread_setting(make_config, monkeypatch) -> None:
    # Two runs at once on C cores: C // 2 torch threads each, not C each (2 x C threads competing).
    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    config = make_config(models=["Padim", "Stfpm"])
    lines: list[str] = []
    ParallelRunner(BenchmarkJobGenerator(config, execute=chatty_run), parallel=2, log=lines.append).run()
    frame = pd.read_csv(config.output_dir / "runs.csv")
    assert frame["torch_threads"].tolist() == [max(1, cores // 2)] * 2
    assert any(f"{max(1, cores // 2)} CPU thread(s) each" in line for line in lines)
    assert frame["omp_num_threads"].tolist() == [max(1, cores // 2)] * 2  # OpenMP / MKL too
    # A user's own OMP_NUM_THREADS is theirs: the runs keep it.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads_per_run(2) is None
    assert threads_per_run(1) is None


def test_a_slurm_job_runs_with_the_cpus_it_was_given(monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    assert allocated_cpus() == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's own setting wins
    assert allocated_cpus() is None
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")  # outside a job: torch's default
    assert allocated_cpus() is None


def test_dry_run_states_of_a_local_folder(make_config) -> None:
    config = make_config(models=["Padim", "Stfpm", "SkipTS"])
    padim, stfpm, skipts = config.runs()
    store = ResultStore(config.output_dir)
    for run, status in ((padim, "ok"), (stfpm, "failed")):
        store.record({"run_id": run.run_id, "spec_hash": run.fingerprint(), "status": status, "error": "boom"})
    states = run_states(store, config.runs())
    assert states == {padim.run_id: "finished", stfpm.run_id: "failed (runs again): boom", skipts.run_id: "to run"}
    kept = run_states(store, config.runs(), retry_failed=False)[stfpm.run_id]
    assert kept == "finished, failed (not run again: --no-retry-failed): boom"


def test_jobs_are_waited_for_while_the_controller_does_not_answer(tmp_path: Path, monkeypatch) -> None:
    for name in ("scontrol", "squeue", "sacct"):  # SLURM clients of a cluster whose controller is down
        script = tmp_path / name
        script.write_text("#!/bin/sh\necho 'Unable to contact slurm controller' >&2\nexit 1\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    states = query_states(["12", "13"])
    assert set(states) == {"12", "13"}
    assert all(state.state == "UNREACHABLE" and state.active for state in states.values())
