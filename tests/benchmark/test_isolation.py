"""Runs in child processes: a run that kills itself, exceeds a memory or a time limit is recorded
as failed with its reason, and the benchmark goes on with the next run."""

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from anomalib_skipts.benchmark.__main__ import main
from anomalib_skipts.benchmark.config import RunSpec, parse_duration
from anomalib_skipts.benchmark.isolation import RunLimits, describe_exit, fix_mmap_threshold
from anomalib_skipts.benchmark.job import execute_run


def _behave(run: RunSpec, run_dir: Path) -> dict[str, Any]:
    """Executed in the child: what a run does depends on its model's name (module level: picklable)."""
    name = run.model.name
    if name == "Killer":
        print("Killer: about to send SIGKILL to myself", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    if name == "Hog":
        print("Hog: allocating", flush=True)
        chunks = [np.ones(64 * 1024**2, dtype=np.uint8) for _ in range(40)]  # up to 2.5 GB, pages touched
        time.sleep(60)
        del chunks
    if name == "Sleeper":
        print("Sleeper: sleeping", flush=True)
        time.sleep(600)
    if name == "Crasher":
        raise SystemExit(3)
    if name == "Real":
        return execute_run(run, run_dir)
    return {
        "run_id": run.run_id,
        "model": name,
        "dataset": run.dataset.name,
        "seed": run.seed,
        "status": "ok",
        "error": "",
        "spec_hash": run.fingerprint(),
        "duration_s": 0.1,
        "image_auroc": 0.5,
        "image_f1": 0.5,
        "image_accuracy": 0.5,
        "train_time_s": 0.1,
        "throughput_ips": 1.0,
        "pid": os.getpid(),
    }


def _models(*names: str) -> list[dict[str, str]]:
    return [{"name": name, "class_path": "Padim"} for name in names]


def test_run_that_kills_itself_is_recorded_and_the_next_real_run_happens(make_config) -> None:
    from anomalib_skipts.benchmark.pipeline import BenchmarkRunner  # not at the top: children import this module

    config = make_config(models=_models("Killer", "Real"))
    lines: list[str] = []
    frame = BenchmarkRunner(config, execute=_behave, log=lines.append).run().set_index("model")
    killed = frame.loc["Killer"]
    assert killed["status"] == "failed"
    assert "SIGKILL" in killed["error"]
    assert "Killer: about to send SIGKILL to myself" in killed["error"]  # last log lines
    assert killed["exit_code"] == -signal.SIGKILL
    error_txt = (config.output_dir / "runs" / "Killer__Tiny__seed0" / "error.txt").read_text()
    assert "SIGKILL" in error_txt
    assert "about to send SIGKILL" in error_txt
    real = frame.loc["Real"]
    assert real["status"] == "ok", real["error"]
    assert 0.0 <= real["image_auroc"] <= 1.0
    assert real["peak_rss_mb"] > 100  # the child's own peak: torch and anomalib are loaded
    assert np.isnan(real["peak_cuda_mb"])  # CPU run
    assert (config.output_dir / "runs" / "Real__Tiny__seed0" / "predictions.csv").is_file()
    assert any("Killer" in line and "FAILED" in line for line in lines)
    assert any("Each run in its own process" in line for line in lines)


def test_memory_limit_kills_the_run_and_the_next_one_goes_on(make_config) -> None:
    from anomalib_skipts.benchmark.pipeline import BenchmarkRunner  # not at the top: children import this module

    config = make_config(models=_models("Hog", "Fine"))
    limits = RunLimits(memory_limit_gb=0.6, poll_interval_s=0.1)
    frame = BenchmarkRunner(config, execute=_behave, log=lambda _: None, limits=limits).run().set_index("model")
    hog = frame.loc["Hog"]
    assert hog["status"] == "failed"
    assert "exceeded the memory limit of 0.6 GB" in hog["error"]
    assert hog["peak_rss_mb"] > 0.6 * 1024
    assert "Hog: allocating" in hog["error"]
    assert frame.loc["Fine", "status"] == "ok"
    assert frame.loc["Fine", "pid"] != os.getpid()  # it ran in a child process
    assert len(pd.read_csv(config.output_dir / "runs.csv")) == 2


def test_time_limit_stops_the_run_and_the_next_one_goes_on(make_config) -> None:
    from anomalib_skipts.benchmark.pipeline import BenchmarkRunner  # not at the top: children import this module

    config = make_config(models=_models("Sleeper", "Crasher", "Fine"), run_timeout="6s")
    start = time.perf_counter()
    frame = BenchmarkRunner(config, execute=_behave, log=lambda _: None).run().set_index("model")
    assert time.perf_counter() - start < 60
    sleeper = frame.loc["Sleeper"]
    assert sleeper["status"] == "failed"
    assert "exceeded the time limit of 6 s" in sleeper["error"]
    assert "Sleeper: sleeping" in sleeper["error"]
    assert frame.loc["Crasher", "status"] == "failed"
    assert "exited with status 3" in frame.loc["Crasher", "error"]
    assert frame.loc["Fine", "status"] == "ok"


def test_limits_from_the_command_line(make_config, tmp_path: Path) -> None:
    import yaml

    from anomalib_skipts.benchmark.pipeline import BenchmarkRunner  # not at the top: children import this module

    config = make_config()
    path = tmp_path / "bench.yaml"
    data = {"name": "t", "output_dir": str(config.output_dir), "datasets": [{"name": "D", "class_path": "x.Y"}]}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(SystemExit):
        main(["--config", str(path), "--run-timeout", "soon", "--dry-run"])
    with pytest.raises(SystemExit):
        main(["--config", str(path), "--run-memory-limit", "-1", "--dry-run"])
    assert parse_duration("90m") == 5400
    assert parse_duration("2h") == 7200
    assert parse_duration(30) == 30
    assert parse_duration("none") is None
    with pytest.raises(ValueError, match="Time and memory limits need isolated runs"):
        BenchmarkRunner(make_config(isolate=False, run_memory_limit=4))


def test_exit_descriptions() -> None:
    assert describe_exit(-signal.SIGKILL).startswith("killed by signal SIGKILL (the kernel's out-of-memory killer")
    assert describe_exit(-signal.SIGSEGV) == "killed by signal SIGSEGV (segmentation fault in native code)"
    assert describe_exit(2) == "the run's process exited with status 2"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_mmap_threshold_is_fixed_in_each_run() -> None:
    # Each run calls it (runner.execute_run) so that PatchCore's coreset loop cannot fragment the heap.
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert fix_mmap_threshold() is True


def test_unpicklable_execute_is_refused_with_a_clear_error(make_config) -> None:
    from anomalib_skipts.benchmark.pipeline import BenchmarkRunner  # not at the top: children import this module

    def local(run: RunSpec, run_dir: Path) -> dict[str, Any]:
        return {}

    with pytest.raises(ValueError, match="module-level function, or isolate=False"):
        BenchmarkRunner(make_config(), execute=local)
