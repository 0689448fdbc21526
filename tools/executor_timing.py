"""Time the executors' smoke grid with ``local``, ``local --parallel 2`` and ``slurm``, in one session.

Runs ``skipts-benchmark --config configs/benchmark/cluster_smoke.yaml`` three times, each into its
own results folder, after one warm-up run that generates the dataset; the ``slurm`` run uses the
single-node cluster of the tests (``tests/slurm_cluster.py``: ``munged``, ``slurmctld`` and
``slurmd`` on this machine, root only), started before the timings. Prints, per executor, the wall
time of the whole command, the sum of the runs' own durations, the torch threads of each run and
each run's image AUROC, as JSON.

Example:
    .. code-block:: bash

        python tools/executor_timing.py --output /tmp/executor_timing
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/benchmark/cluster_smoke.yaml"
EXECUTORS = (("local", []), ("local --parallel 2", ["--parallel", "2"]), ("slurm", ["--executor", "slurm"]))


def time_executor(command: list[str], folder: Path) -> dict[str, object]:
    """Run one benchmark command and summarise its results folder."""
    load = os.getloadavg()[0]
    start = time.perf_counter()
    process = subprocess.run([*command, "--output", str(folder)], capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - start
    if process.returncode != 0:
        msg = f"{' '.join(command)} failed ({process.returncode}):\n{process.stdout[-2000:]}\n{process.stderr[-2000:]}"
        raise RuntimeError(msg)
    frame = pd.read_csv(folder / "runs.csv").set_index("run_id").sort_index()
    return {
        "wall_s": round(wall, 1),
        "sum_of_run_durations_s": round(float(frame["duration_s"].sum()), 1),
        "load_average_before": round(load, 2),
        "torch_threads": frame["torch_threads"].to_dict(),
        "image_auroc": frame["image_auroc"].round(3).to_dict(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Time the three executors; print and write ``timings.json`` in the output folder."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="tools/executor_timing.py")
    parser.add_argument("--output", type=Path, default=Path("results/executor_timing"))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from tests.slurm_cluster import missing_requirement, running_cluster

    reason = missing_requirement()
    if reason is not None:
        print(f"cannot start the local SLURM cluster: {reason}", file=sys.stderr)
        return 2
    shutil.rmtree(args.output, ignore_errors=True)
    args.output.mkdir(parents=True)
    benchmark = [str(Path(sys.executable).parent / "skipts-benchmark"), "--config", CONFIG]
    time_executor([*benchmark, "--models", "Padim", "--seeds", "0"], args.output / "warm_up")  # data generated
    results: dict[str, object] = {}
    with running_cluster():
        for name, flags in EXECUTORS:
            results[name] = time_executor([*benchmark, *flags], args.output / name.replace(" ", "_"))
            print(name, results[name], flush=True)
    (args.output / "timings.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
