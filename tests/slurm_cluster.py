"""A real single-node SLURM cluster for tests: ``munged``, ``slurmctld`` and ``slurmd`` in a temporary folder.

Everything the cluster needs lives in one temporary folder: its own munge key and socket, a minimal
``slurm.conf`` (no cgroups: ``proctrack/linuxproc`` and ``task/none``; no accounting database), the
controller's state and the node's spool. The node is this machine with its real CPUs and memory
(``slurmd -C``). The daemons run as root in the foreground as children of the test process and are
stopped afterwards. ``SLURM_CONF`` points the clients (``sbatch``, ``squeue``, ``srun``, submitit) at it.

Tests using :func:`slurm_cluster` are skipped, saying why, when the SLURM or munge binaries are
missing (Debian: ``apt-get install slurmd slurmctld slurm-client munge``) or the user is not root.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel", "srun")
PARTITION = "debug"
START_TIMEOUT_S = 60.0


def missing_requirement() -> str | None:
    """Say why a local SLURM cluster cannot be started here (``None`` when it can).

    Returns:
        str | None: The reason, or ``None``.
    """
    missing = [name for name in BINARIES if shutil.which(name) is None]
    if missing:
        return (
            f"SLURM/munge binaries missing ({', '.join(missing)}): "
            "apt-get install slurmd slurmctld slurm-client munge (.ci/run does this)"
        )
    if os.geteuid() != 0:
        return "a local SLURM cluster needs root (munged, slurmctld and slurmd run as root)"
    return None


class SlurmCluster:
    """A single-node SLURM cluster on this machine, configured in ``root``.

    Args:
        root: Folder for the key, sockets, configuration, state and logs (short path: unix sockets).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.node = socket.gethostname().split(".")[0]
        self.conf = root / "slurm.conf"
        self.munge_socket = root / "munge.socket"
        self.processes: dict[str, subprocess.Popen] = {}
        self.cpus, self.memory_mb = _node_resources()

    @property
    def env(self) -> dict[str, str]:
        """Environment for SLURM clients (``SLURM_CONF`` set)."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self) -> None:
        """Start munged, slurmctld and slurmd; return when the node is idle.

        Raises:
            RuntimeError: If a daemon exits or the node does not become idle in time (with its log).
        """
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self._spawn(
            "munged",
            [
                "munged",
                "--foreground",
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--log-file={self.root / 'munged.log'}",
                f"--pid-file={self.root / 'munged.pid'}",
                f"--seed-file={self.root / 'munged.seed'}",
            ],
        )
        self._wait(lambda: self.munge_socket.exists(), "munged socket")
        self.conf.write_text(self._slurm_conf(), encoding="utf-8")
        self._spawn("slurmctld", ["slurmctld", "-D", "-c", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf), "-N", self.node])
        self._wait(lambda: self.node_state() == "idle", "node idle in sinfo")

    def stop(self) -> None:
        """Cancel every job, then stop slurmd, slurmctld and munged (SIGTERM, then SIGKILL)."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                subprocess.run(["scancel", "--full", "-p", PARTITION], env=self.env, timeout=10, check=False)
                deadline = time.monotonic() + 20
                while self.squeue() and time.monotonic() < deadline:
                    time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            process = self.processes.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def node_state(self) -> str:
        """The node's state as ``sinfo`` shows it (``idle``, ``alloc``, ``mix``, ``down*`` ...; empty if unknown).

        Returns:
            str: The state.
        """
        result = subprocess.run(
            ["sinfo", "-h", "-N", "-n", self.node, "-o", "%T"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return result.stdout.strip() if result.returncode == 0 else ""

    def squeue(self) -> list[str]:
        """Ids of the jobs the controller still lists as pending or running.

        Returns:
            list[str]: Job ids.
        """
        result = subprocess.run(
            ["squeue", "-h", "-o", "%i"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return result.stdout.split()

    def submitted_jobs(self) -> int:
        """How many jobs the controller has accepted since it started (its job id counter).

        Returns:
            int: Number of job submissions (an array counts once per array, as in SLURM).
        """
        result = subprocess.run(
            ["scontrol", "show", "config"], env=self.env, capture_output=True, text=True, timeout=10, check=True
        )
        first = int(re.search(r"^FirstJobId\s*=\s*(\d+)", result.stdout, re.MULTILINE).group(1))
        ids = self.job_ids()
        return max(ids) - first + 1 if ids else 0

    def job_ids(self) -> list[int]:
        """Ids of all jobs the controller knows (pending, running and recently ended).

        Returns:
            list[int]: Job ids (array tasks as their own ids).
        """
        result = subprocess.run(
            ["scontrol", "-o", "show", "jobs"], env=self.env, capture_output=True, text=True, timeout=10, check=True
        )
        return sorted(int(match) for match in re.findall(r"(?:^|\s)JobId=(\d+)", result.stdout))

    def log_tail(self, lines: int = 30) -> str:
        """Last lines of the daemons' logs (for failure messages).

        Args:
            lines: Lines per log.

        Returns:
            str: The tails.
        """
        parts = []
        for name in ("munged", "slurmctld", "slurmd"):
            path = self.root / f"{name}.log"
            if path.is_file():
                text = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path}\n" + "\n".join(text))
        return "\n".join(parts)

    def _spawn(self, name: str, command: list[str]) -> None:
        with (self.root / f"{name}.out").open("w") as output:
            self.processes[name] = subprocess.Popen(
                command,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )

    def _wait(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    output = (self.root / f"{name}.out").read_text(errors="replace")
                    msg = f"{name} exited with status {process.returncode}:\n{output}\n{self.log_tail()}"
                    raise RuntimeError(msg)
            if condition():
                return
            time.sleep(0.3)
        msg = f"Timed out after {START_TIMEOUT_S:.0f} s waiting for {what}.\n{self.log_tail()}"
        raise RuntimeError(msg)

    def _slurm_conf(self) -> str:
        root = self.root
        ctld_port, slurmd_port = _free_port(), _free_port()
        return f"""\
ClusterName=skipts-test
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "slurmctld.pid"}
SlurmdPidFile={root / "slurmd.pid"}
SlurmctldLogFile={root / "slurmctld.log"}
SlurmdLogFile={root / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1024
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=3600
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""


def _node_resources() -> tuple[int, int]:
    """CPUs and memory (MB) of this machine as slurmd sees them (``slurmd -C``)."""
    result = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30, check=True)
    cpus = int(re.search(r"CPUs=(\d+)", result.stdout).group(1))
    memory = int(re.search(r"RealMemory=(\d+)", result.stdout).group(1))
    return cpus, memory


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_cluster() -> Iterator[SlurmCluster]:
    """Start a cluster in a fresh temporary folder, point ``SLURM_CONF`` at it, stop it afterwards.

    Yields:
        SlurmCluster: The running cluster.
    """
    root = Path(tempfile.mkdtemp(prefix="skipts-slurm-"))
    cluster = SlurmCluster(root)
    saved = os.environ.get("SLURM_CONF")
    try:
        cluster.start()
        os.environ["SLURM_CONF"] = str(cluster.conf)
        yield cluster
    finally:
        cluster.stop()
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running single-node SLURM cluster for the test session (skipped where it cannot run)."""
    reason = missing_requirement()
    if reason is not None:
        pytest.skip(reason)
    with running_cluster() as cluster:
        yield cluster
