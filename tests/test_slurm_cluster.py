"""The local SLURM cluster of the tests: batch jobs and multi-task steps run, the job counter counts."""

import subprocess
from pathlib import Path

from .slurm_cluster import SlurmCluster


def test_local_cluster_runs_batch_jobs_and_steps(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    before = slurm_cluster.submitted_jobs()
    output = tmp_path / "job.out"
    script = "srun --ntasks=2 bash -c 'echo task $SLURM_PROCID'"
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--wait", "--ntasks=2", f"--output={output}", "--wrap", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert submitted.stdout.strip().isdigit()
    assert sorted(output.read_text().split("\n")[:2]) == ["task 0", "task 1"]
    assert slurm_cluster.submitted_jobs() == before + 1
