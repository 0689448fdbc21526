"""The slurm executor against a real single-node SLURM cluster (the ``slurm_cluster`` fixture).

One grid of 2 models x 2 seeds (32x32 images, one epoch, random-initialised resnet18) is run once
with the local executor and once through SLURM, the SLURM driver being killed with SIGKILL right
after it submitted its jobs and started again; the tests share both grids.
"""

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from anomalib_skipts.benchmark.__main__ import LOGGER_NAME, main
from anomalib_skipts.benchmark.pipeline import BenchmarkJobGenerator
from anomalib_skipts.benchmark.slurm import SlurmRunner, run_states
from anomalib_skipts.benchmark.slurm_jobs import SlurmJobs
from anomalib_skipts.benchmark.store import ResultStore, write_config_snapshot

from ..slurm_cluster import SlurmCluster
from .cluster_fakes import RELEASE, gated_run

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 300


def _grid(folder_root: Path, output: Path, **executor: object) -> dict:
    return {
        "name": "cluster",
        "output_dir": str(output),
        "protocol": {
            "name": "smoke",
            "image_size": 32,
            "max_epochs": 1,
            "num_workers": 0,
            "accelerator": "cpu",
            "overlay_images": 2,
            "throughput_images": 4,
        },
        "models": ["SkipTS", "Padim"],
        "seeds": [0, 1],
        "datasets": [
            {
                "name": "Tiny",
                "class_path": "anomalib.data.Folder",
                "init_args": {
                    "name": "tiny",
                    "root": str(folder_root),
                    "normal_dir": "train/good",
                    "abnormal_dir": "test/bad",
                    "normal_test_dir": "test/good",
                    "mask_dir": "mask/bad",
                },
            },
        ],
        **({"executor": executor} if executor else {}),
    }


@contextlib.contextmanager
def _logged() -> Iterator[list[str]]:
    """Collect the lines the command line logs meanwhile."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger(LOGGER_NAME)
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


def _until(condition, what: str, timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def local_grid(folder_root: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    root = tmp_path_factory.mktemp("local_grid")
    path = root / "grid.yaml"
    path.write_text(yaml.safe_dump(_grid(folder_root, root / "results")))
    assert main(["--config", str(path)]) == 0
    return pd.read_csv(root / "results" / "runs.csv").set_index("run_id")


@pytest.fixture(scope="module")
def slurm_grid(
    slurm_cluster: SlurmCluster,
    folder_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> SimpleNamespace:
    """The grid through SLURM: the driver is killed with SIGKILL once it has submitted, then started again."""
    root = tmp_path_factory.mktemp("slurm_grid")
    out = root / "results"
    path = root / "grid.yaml"
    path.write_text(yaml.safe_dump(_grid(folder_root, out, slurm={"cpus": 1, "poll_interval": 1})))
    command = [sys.executable, "-m", "anomalib_skipts.benchmark", "--config", str(path), "--executor", "slurm"]
    before = slurm_cluster.submitted_jobs()
    with (root / "driver1.log").open("w") as log:
        first = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        _until(lambda: len(SlurmJobs(out).load()) == 4 or first.poll() is not None, "4 submitted jobs")
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    submitted_by_first = slurm_cluster.submitted_jobs() - before
    active_after_kill = slurm_cluster.squeue()
    with _logged() as dry_run:  # in this process: no second start of Python on the two cores
        assert main(["--config", str(path), "--executor", "slurm", "--dry-run"]) == 0

    with (root / "driver2.log").open("w") as log:
        second = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        # While its jobs run: a report from the login node, and a third driver refused.
        _until(lambda: (out / "runs.csv").is_file() or second.poll() is not None, "a first finished run")
        jobs_running_at_report = bool(slurm_cluster.squeue())
        with _logged() as report:
            report_returncode = main(["--config", str(path), "--report-only"])
        with _logged() as third:
            third_returncode = main(["--config", str(path), "--executor", "slurm"])
        second.wait(TIMEOUT_S)
    return SimpleNamespace(
        frame=pd.read_csv(out / "runs.csv").set_index("run_id"),
        out=out,
        submitted_by_first=submitted_by_first,
        submitted=slurm_cluster.submitted_jobs() - before,
        active_after_kill=active_after_kill,
        dry_run="\n".join(dry_run),
        first_log=(root / "driver1.log").read_text(),
        second_log=(root / "driver2.log").read_text(),
        second_pid=second.pid,
        second_returncode=second.returncode,
        jobs_running_at_report=jobs_running_at_report,
        report="\n".join(report),
        report_returncode=report_returncode,
        third="\n".join(third),
        third_returncode=third_returncode,
    )


@pytest.mark.slow
def test_killed_driver_rerun_attaches_without_submitting_again(slurm_grid: SimpleNamespace) -> None:
    grid = slurm_grid
    assert grid.submitted_by_first == 4, grid.first_log
    assert grid.active_after_kill  # the jobs outlived their driver
    assert grid.dry_run.count("(SLURM job ") >= 1, grid.dry_run  # queued / running jobs shown with their id
    assert grid.dry_run.count("[run ") == 4
    assert grid.second_returncode == 0, grid.second_log
    assert grid.submitted == 4, grid.second_log  # no run submitted twice
    assert "submitted as SLURM job" not in grid.second_log
    assert "attached to SLURM job" in grid.second_log
    assert "Progress: " in grid.second_log
    assert " done, " in grid.second_log
    assert (grid.frame["status"] == "ok").all(), grid.frame.get("error")
    assert len(grid.frame) == 4
    history = SlurmJobs(grid.out).history()
    assert len(history) == len({item.job_id for item in history}) == 4


@pytest.mark.slow
def test_report_only_works_and_a_second_driver_is_refused_while_jobs_run(slurm_grid: SimpleNamespace) -> None:
    grid = slurm_grid
    assert grid.jobs_running_at_report
    assert grid.report_returncode == 0, grid.report
    assert (grid.out / "summary.md").is_file()
    assert grid.third_returncode == 2
    assert f"Another skipts-benchmark driver is running on {grid.out} (pid {grid.second_pid}" in grid.third


@pytest.mark.slow
def test_slurm_grid_gives_the_same_runs_and_scores_as_local(
    slurm_grid: SimpleNamespace, local_grid: pd.DataFrame
) -> None:
    slurm = slurm_grid.frame
    assert sorted(slurm.index) == sorted(local_grid.index)
    assert (local_grid["status"] == "ok").all()
    for column in ("spec_hash", "image_auroc", "image_f1"):
        assert slurm[column].to_dict() == local_grid.loc[slurm.index, column].to_dict(), column


def test_slurm_runs_use_the_cpus_their_job_asked_for(slurm_grid: SimpleNamespace) -> None:
    # cpus: 1 per job; without cgroups each job sees both cores, and torch would start two threads.
    assert slurm_grid.frame["torch_threads"].tolist() == [1] * len(slurm_grid.frame)


@pytest.mark.slow
def test_cancelled_job_is_recorded_failed_and_retried(slurm_cluster: SlurmCluster, make_config, tmp_path: Path) -> None:
    data = {"slurm": {"cpus": 1, "poll_interval": 0.5, "sbatch": {"chdir": str(REPO)}}}
    config = make_config(seeds=[0, 1], executor={"name": "slurm", **data})
    out = config.output_dir
    lines: list[str] = []
    runner = SlurmRunner(BenchmarkJobGenerator(config, execute=gated_run), log=lines.append)
    driver = threading.Thread(target=runner.run)
    driver.start()
    _until(lambda: len(SlurmJobs(out).load()) == 2, "2 submitted jobs")
    victim = SlurmJobs(out).load()["Padim__Tiny__seed1"].job_id
    subprocess.run(["scancel", victim], check=True, timeout=30)
    _until(lambda: any(f"SLURM job {victim} CANCELLED" in line for line in lines), "the cancellation recorded")
    (out / RELEASE).touch()
    driver.join(TIMEOUT_S)
    assert not driver.is_alive()
    frame = pd.read_csv(out / "runs.csv").set_index("run_id")
    assert frame.loc["Padim__Tiny__seed0", "status"] == "ok"
    assert frame.loc["Padim__Tiny__seed1", "status"] == "failed"
    assert f"SLURM job {victim} CANCELLED" in frame.loc["Padim__Tiny__seed1", "error"]
    assert "CANCELLED" in (out / "runs" / "Padim__Tiny__seed1" / "error.txt").read_text()
    states = run_states(ResultStore(out), config.runs())
    assert states["Padim__Tiny__seed0"] == "finished"
    assert states["Padim__Tiny__seed1"].startswith("failed (runs again)")

    before = slurm_cluster.submitted_jobs()
    again: list[str] = []
    SlurmRunner(BenchmarkJobGenerator(config, execute=gated_run), log=again.append).run()
    assert slurm_cluster.submitted_jobs() == before + 1  # only the cancelled run
    frame = pd.read_csv(out / "runs.csv").set_index("run_id")
    assert (frame["status"] == "ok").all()
    assert any("already finished: skipped" in line and "seed=0" in line for line in again)


@pytest.mark.slow
def test_job_a_dying_driver_could_not_record_is_attached(
    slurm_cluster: SlurmCluster, make_config, tmp_path: Path
) -> None:
    config = make_config(executor={"name": "slurm", "slurm": {"poll_interval": 0.5}})
    out = config.output_dir
    (run,) = config.runs()
    write_config_snapshot(config)
    (out / RELEASE).touch()
    # What a driver killed between sbatch and writing slurm_jobs.json leaves: a job of the run, unrecorded.
    code = (
        "from anomalib_skipts.benchmark.pipeline import run_by_id; "
        "from tests.benchmark.cluster_fakes import gated_run; "
        f"run_by_id({str(out.resolve())!r}, {run.run_id!r}, gated_run)"
    )
    submitted = subprocess.run(
        [
            *("sbatch", "--parsable", "--hold", f"--job-name=skipts-{run.run_id}", f"--chdir={REPO}"),
            f"--comment=skipts-benchmark:{out.resolve()}",
            f"--output={tmp_path / 'orphan.out'}",
            f"--wrap={sys.executable} -c {shlex.quote(code)}",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    orphan = submitted.stdout.strip()
    before = slurm_cluster.submitted_jobs()
    lines: list[str] = []
    runner = SlurmRunner(BenchmarkJobGenerator(config, execute=gated_run), log=lines.append)
    driver = threading.Thread(target=runner.run)
    driver.start()
    _until(lambda: any(f"attached to SLURM job {orphan}" in line for line in lines), "the driver to attach")
    subprocess.run(["scontrol", "release", orphan], check=True, timeout=30)
    driver.join(TIMEOUT_S)
    assert not driver.is_alive()
    assert slurm_cluster.submitted_jobs() == before  # nothing submitted again
    assert pd.read_csv(out / "runs.csv").set_index("run_id").loc[run.run_id, "status"] == "ok"
    assert SlurmJobs(out).load()[run.run_id].job_id == orphan
