"""Where the runs of a benchmark execute: the ``executor:`` block of the YAML and the ``--executor`` flags.

Two executors exist, each one or more runners of :class:`~.pipeline.BenchmarkPipeline`:

- ``local`` (default): on this machine, each run in its own child process under the run's time and
  memory limits. One run at a time (runner ``serial``), or ``parallel: N`` runs at once (runner
  ``parallel``); with CUDA each of those runs is pinned to one GPU (``CUDA_VISIBLE_DEVICES``) and
  no GPU gets two runs at once unless ``runs_per_device`` says so.
- ``slurm``: one SLURM job per run, submitted through submitit (runner ``slurm``); the driver can
  die and be started again (see :mod:`.slurm`).

In the YAML (every key optional; command-line flags override)::

    executor:
      name: slurm              # local (default) or slurm
      parallel: 2              # local: runs at once (default 1)
      devices: [0, 1]          # local: GPUs the runs are pinned to (default: all visible ones)
      runs_per_device: 1       # local: runs sharing one GPU at once (default 1)
      slurm:
        partition: gpu
        time_limit: 4h         # per job; default: the run's run_timeout plus 10 minutes
        gpus: 1                # GPUs per job
        cpus: 8                # CPUs per job
        mem_gb: 32             # memory per job; default: the run's run_memory_limit plus 2 GB
        account: my-lab
        qos: normal
        sbatch: {constraint: a100, exclude: node07}   # any further sbatch options
        setup: ["module load cuda/12.4"]              # shell lines run before each run
        poll_interval: 30      # seconds between two looks at the queue
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt

EXECUTORS = ("local", "slurm")
JOB_TIME_MARGIN_S = 600.0
"""Added to a run's time limit for the SLURM job (start-up of the job, imports, writing results)."""
JOB_MEMORY_MARGIN_GB = 2.0
"""Added to a run's memory limit for the SLURM job (the job's own process next to the run's)."""


@dataclass(frozen=True)
class SlurmSettings:
    """Resources and options of the SLURM job of each run.

    Args:
        partition: Partition (``None``: the cluster's default).
        time_limit: Seconds a job may run (``None``: the run's ``run_timeout`` plus 10 minutes, or
            the partition's default without one).
        gpus: GPUs per job (``None``: none asked for).
        cpus: CPUs per job (``None``: the cluster's default).
        mem_gb: Memory per job in GB (``None``: the run's ``run_memory_limit`` plus 2 GB, or the
            cluster's default without one).
        account: Account charged.
        qos: Quality of service.
        sbatch: Further ``sbatch`` options, ``{option: value}`` (``{constraint: a100}`` gives
            ``--constraint=a100``; ``true`` gives a bare flag).
        setup: Shell lines run in each job before the run (``module load ...``, ``source venv``).
        python: Python command on the nodes (default: this interpreter).
        poll_interval: Seconds between two looks of the driver at the queue.
    """

    partition: str | None = None
    time_limit: float | None = None
    gpus: NonNegativeInt | None = None
    cpus: PositiveInt | None = None
    mem_gb: PositiveFloat | None = None
    account: str | None = None
    qos: str | None = None
    sbatch: dict[str, Any] = field(default_factory=dict)
    setup: tuple[str, ...] = ()
    python: str | None = None
    poll_interval: PositiveFloat = 15.0

    def job_time_s(self, run_timeout: float | None) -> float | None:
        """Time limit of a job in seconds: the configured one, else the run's limit plus a margin.

        Args:
            run_timeout: The run's own time limit (seconds), if any.

        Returns:
            float | None: Seconds (``None``: none asked for).
        """
        if self.time_limit is not None:
            return self.time_limit
        return None if run_timeout is None else run_timeout + JOB_TIME_MARGIN_S

    def job_memory_gb(self, run_memory_limit: float | None) -> float | None:
        """Memory of a job in GB: the configured one, else the run's limit plus a margin.

        Args:
            run_memory_limit: The run's own memory limit (GB), if any.

        Returns:
            float | None: GB (``None``: none asked for).
        """
        if self.mem_gb is not None:
            return self.mem_gb
        return None if run_memory_limit is None else run_memory_limit + JOB_MEMORY_MARGIN_GB

    def submitit_parameters(self, run_timeout: float | None, run_memory_limit: float | None) -> dict[str, Any]:
        """Parameters of ``submitit.SlurmExecutor.update_parameters`` for one run's job.

        Args:
            run_timeout: The run's time limit (seconds), if any.
            run_memory_limit: The run's memory limit (GB), if any.

        Returns:
            dict[str, Any]: submitit's parameter names and values (``time`` in minutes, ``mem`` in MB).
        """
        seconds = self.job_time_s(run_timeout)
        memory = self.job_memory_gb(run_memory_limit)
        parameters: dict[str, Any] = {
            "time": None if seconds is None else max(1, math.ceil(seconds / 60)),
            "partition": self.partition,
            "gpus_per_node": self.gpus or None,
            "cpus_per_task": self.cpus,
            "mem": None if memory is None else f"{math.ceil(memory * 1024)}M",
            "account": self.account,
            "qos": self.qos,
            "setup": list(self.setup) or None,
            "additional_parameters": dict(self.sbatch) or None,
        }
        return {key: value for key, value in parameters.items() if value is not None or key == "time"}


@dataclass(frozen=True)
class ExecutorSpec:
    """Where and how many runs execute at once.

    Args:
        name: ``local`` (this machine) or ``slurm`` (one SLURM job per run).
        parallel: ``local``: runs at once (each in its own process).
        devices: ``local``: GPU indices the runs are pinned to, one run per GPU at a time (``None``:
            every GPU this process sees when CUDA is used).
        runs_per_device: ``local``: runs that may share one GPU at once.
        slurm: ``slurm``: the jobs' resources and options.
    """

    name: str = "local"
    parallel: PositiveInt = 1
    devices: tuple[NonNegativeInt, ...] | None = None
    runs_per_device: PositiveInt = 1
    slurm: SlurmSettings = field(default_factory=SlurmSettings)

    def __post_init__(self) -> None:
        if self.name not in EXECUTORS:
            msg = f"Unknown executor {self.name!r}: choose one of {list(EXECUTORS)}."
            raise ValueError(msg)

    @property
    def runner(self) -> str:
        """Name of the runner of :class:`~.pipeline.BenchmarkPipeline` executing the runs.

        Returns:
            str: ``serial``, ``parallel`` or ``slurm``.
        """
        if self.name == "slurm":
            return "slurm"
        return "parallel" if self.parallel > 1 or self.devices is not None else "serial"

    def with_flags(
        self,
        name: str | None = None,
        parallel: int | None = None,
        devices: tuple[int, ...] | None = None,
        runs_per_device: int | None = None,
    ) -> ExecutorSpec:
        """Apply command-line flags (``None``: keep the config's value).

        With ``devices`` and no ``parallel``, as many runs execute at once as the devices take.

        Args:
            name: ``--executor``.
            parallel: ``--parallel``.
            devices: ``--devices``.
            runs_per_device: ``--runs-per-device``.

        Returns:
            ExecutorSpec: The settings with the flags applied.
        """
        changes: dict[str, Any] = {}
        if name is not None:
            changes["name"] = name
        if devices is not None:
            changes["devices"] = tuple(devices)
        if runs_per_device is not None:
            changes["runs_per_device"] = runs_per_device
        if parallel is not None:
            changes["parallel"] = parallel
        elif devices is not None:
            changes["parallel"] = len(devices) * (runs_per_device or self.runs_per_device)
        return dataclasses.replace(self, **changes)


def device_slots(
    parallel: int,
    devices: tuple[int, ...] | None,
    runs_per_device: int = 1,
    use_cuda: bool = False,
) -> list[int | None]:
    """Give each of ``parallel`` concurrent runs the device it may use (one list entry per run slot).

    Args:
        parallel: Runs at once.
        devices: GPUs asked for (``None``: every visible GPU when ``use_cuda``).
        runs_per_device: Runs that may share one GPU.
        use_cuda: Whether the runs use CUDA (without CUDA and ``devices``, runs are not pinned).

    Returns:
        list[int | None]: ``parallel`` entries; ``None``: not pinned.

    Raises:
        ValueError: If more runs would execute at once than the GPUs take.
    """
    if devices is None and use_cuda:
        devices = visible_gpus()
    if not devices:
        return [None] * parallel
    slots: list[int | None] = [device for _ in range(runs_per_device) for device in devices]
    if parallel > len(slots):
        msg = (
            f"{parallel} runs at once need {parallel} GPU slots, but {len(devices)} GPU(s) {list(devices)} "
            f"x {runs_per_device} run(s) per GPU give {len(slots)}: lower --parallel, give more --devices, "
            "or let runs share a GPU with --runs-per-device."
        )
        raise ValueError(msg)
    return slots[:parallel]


def visible_gpus() -> tuple[int, ...]:
    """GPU indices this process may use: ``CUDA_VISIBLE_DEVICES`` where set to indices, else all CUDA devices.

    Returns:
        tuple[int, ...]: The indices (empty without CUDA).
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        entries = [item.strip() for item in visible.split(",") if item.strip()]
        if all(item.isdigit() for item in entries):
            return tuple(int(item) for item in entries)
    import torch

    return tuple(range(torch.cuda.device_count())) if torch.cuda.is_available() else ()


def parse_devices(value: str) -> tuple[int, ...]:
    """Read ``--devices``: GPU indices separated by commas (``0,1``).

    Args:
        value: The flag's value.

    Returns:
        tuple[int, ...]: The indices.

    Raises:
        ValueError: If an entry is not a non-negative integer or one is given twice.
    """
    entries = [item.strip() for item in value.split(",") if item.strip()]
    if not entries or not all(item.isdigit() for item in entries):
        msg = f"--devices takes GPU indices separated by commas (e.g. 0,1), got {value!r}"
        raise ValueError(msg)
    devices = tuple(int(item) for item in entries)
    if len(set(devices)) != len(devices):
        msg = f"--devices names a GPU twice ({value!r}): use --runs-per-device to share a GPU."
        raise ValueError(msg)
    return devices
