"""Run one benchmark run in a child process, under a time and a memory limit.

A benchmark of models x datasets x seeds (Skip-TS, IEEE TIM 2024, Sec. IV protocol) runs for hours;
one baseline that crashes, is killed by the kernel's out-of-memory killer or never ends must cost
that run only. Each run is therefore started in a fresh ``spawn`` child process (no state shared
with the parent, CUDA initialised in the child only, so the device is released when it exits). The
parent watches it: the resident memory of the child and its own children (data-loader workers) is
polled, the child is killed when it goes over the memory limit or the time limit, and what happened
(exit status or signal, peak memory, last lines of its log) is returned for the run's row.

Each run also fixes glibc's ``malloc`` mmap threshold (:func:`fix_mmap_threshold`). By default
glibc raises that threshold (up to 32 MB) each time a large block is freed; after that, loops that
allocate and free the same large temporary while keeping small tensors alive (anomalib's
k-center-greedy coreset selection of PatchCore: one ``N x d`` difference per selected point)
fragment the heap and never give the memory back. On a BUSI-sized dataset at 128x128 this took a
PatchCore run past 8 GB of resident memory within two minutes (24 GB when left alone) while a
fixed 1 MB threshold keeps it flat.

The memory limit is enforced by polling (``psutil``), not by ``RLIMIT_AS``: PyTorch and CUDA
reserve far more virtual address space than they use, so an address-space limit would fail
healthy runs. A run that allocates faster than the poll interval can still be killed by the
kernel first; it is then reported as killed by ``SIGKILL``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import multiprocessing
import os
import resource
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

GB = 1024**3
MB = 1024**2
MMAP_THRESHOLD = 1024**2
"""Allocations from this size on are served by ``mmap`` and returned to the system when freed."""
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


@dataclass(frozen=True)
class RunLimits:
    """Limits and monitoring of a child run.

    Attributes:
        timeout_s: Wall-clock seconds before the child is stopped (``None``: no limit).
        memory_limit_gb: Resident memory (GB, child and its children together) before the child
            is killed (``None``: no limit).
        poll_interval_s: Seconds between two memory polls.
        heartbeat_s: Seconds between two "still running" progress calls.
        kill_grace_s: Seconds between ``SIGTERM`` and ``SIGKILL`` when the time limit stops a child.
    """

    timeout_s: float | None = None
    memory_limit_gb: float | None = None
    poll_interval_s: float = 0.25
    heartbeat_s: float = 60.0
    kill_grace_s: float = 10.0


@dataclass(frozen=True)
class ChildOutcome:
    """What happened to a child run.

    Attributes:
        exitcode: The child's exit status; negative: killed by that signal.
        reason: Why it failed, in words (empty when it exited with status 0).
        peak_rss_bytes: Largest resident memory seen (child and its children together).
        elapsed_s: Wall-clock seconds from start to exit.
        log_tail: Last lines of the child's log.
    """

    exitcode: int
    reason: str
    peak_rss_bytes: int
    elapsed_s: float
    log_tail: list[str]


def run_in_child(
    target: Callable[..., Any],
    args: tuple[Any, ...],
    log_path: Path,
    limits: RunLimits | None = None,
    on_heartbeat: Callable[[float, int], None] | None = None,
) -> ChildOutcome:
    """Call ``target(*args)`` in a spawned child process whose stdout and stderr go to ``log_path``.

    Args:
        target: A module-level function (it is pickled by reference).
        args: Its arguments (picklable).
        log_path: File receiving the child's output (overwritten).
        limits: Time and memory limits (default: none).
        on_heartbeat: Called every ``limits.heartbeat_s`` with the elapsed seconds and current RSS bytes.

    Returns:
        ChildOutcome: Exit status, failure reason, peak memory, log tail.
    """
    limits = limits or RunLimits()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text("", encoding="utf-8")
    context = multiprocessing.get_context("spawn")
    process = context.Process(target=_child_entry, args=(str(log_path), target, args), daemon=False)
    start = time.perf_counter()
    process.start()
    peak = 0
    reason = ""
    next_beat = start + limits.heartbeat_s
    try:
        while True:
            process.join(limits.poll_interval_s)
            if process.exitcode is not None:
                break
            rss, hwm = _tree_rss(process.pid)
            peak = max(peak, rss, hwm)
            elapsed = time.perf_counter() - start
            if limits.memory_limit_gb is not None and rss > limits.memory_limit_gb * GB:
                reason = (
                    f"exceeded the memory limit of {limits.memory_limit_gb:g} GB (resident {rss / GB:.2f} GB): killed"
                )
                _kill_tree(process, grace_s=0.0)
            elif limits.timeout_s is not None and elapsed > limits.timeout_s:
                reason = f"exceeded the time limit of {_seconds(limits.timeout_s)}: stopped"
                _kill_tree(process, grace_s=limits.kill_grace_s)
            elif on_heartbeat is not None and time.perf_counter() >= next_beat:
                on_heartbeat(elapsed, rss)
                next_beat += limits.heartbeat_s
            if reason:
                break
    finally:
        if process.exitcode is None:  # the parent is interrupted (Ctrl-C): take the child down too
            _kill_tree(process, grace_s=0.0)
    exitcode = int(process.exitcode) if process.exitcode is not None else -signal.SIGKILL
    elapsed = time.perf_counter() - start
    if not reason and exitcode != 0:
        reason = describe_exit(exitcode)
    return ChildOutcome(
        exitcode=exitcode,
        reason=reason,
        peak_rss_bytes=peak,
        elapsed_s=elapsed,
        log_tail=tail(log_path),
    )


def describe_exit(exitcode: int) -> str:
    """Say in words how a child process ended.

    Args:
        exitcode: ``multiprocessing`` exit code (negative: the signal that killed it).

    Returns:
        str: e.g. ``"killed by signal SIGKILL (out of memory, or killed from outside)"``.
    """
    if exitcode >= 0:
        return f"the run's process exited with status {exitcode}"
    number = -exitcode
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    hint = {
        "SIGKILL": " (the kernel's out-of-memory killer, or killed from outside)",
        "SIGSEGV": " (segmentation fault in native code)",
        "SIGABRT": " (aborted by native code)",
        "SIGBUS": " (bus error: shared memory of data-loader workers exhausted?)",
    }.get(name, "")
    return f"killed by signal {name}{hint}"


def tail(path: Path, lines: int = 40) -> list[str]:
    """Last non-empty lines of a text file (an empty list when it does not exist).

    Args:
        path: The file.
        lines: How many lines.

    Returns:
        list[str]: The lines, oldest first.
    """
    if not path.is_file():
        return []
    with path.open("rb") as file:
        file.seek(0, os.SEEK_END)
        size = file.tell()
        file.seek(max(0, size - 64 * 1024))
        text = file.read().decode("utf-8", errors="replace")
    kept = [line.rstrip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return kept[-lines:]


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's ``malloc`` mmap threshold, which turns off its dynamic adjustment.

    Large blocks (``threshold`` bytes and more) are then always ``mmap``-ed and given back to the
    system when freed, so that freed large temporaries cannot fragment the heap (see the module
    docstring). Same effect as starting Python with ``MALLOC_MMAP_THRESHOLD_=<threshold>``.

    Args:
        threshold: Bytes.

    Returns:
        bool: ``True`` if set (glibc), ``False`` elsewhere (other C libraries: nothing done).
    """
    name = ctypes.util.find_library("c")
    if not sys.platform.startswith("linux") or name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(threshold)))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


def reset_peak_rss() -> None:
    """Reset the process's peak resident memory (Linux ``VmHWM``), where the system allows it."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")


def peak_rss_bytes() -> int:
    """Peak resident memory of this process since start or since :func:`reset_peak_rss`.

    Returns:
        int: Bytes (Linux ``VmHWM``; elsewhere ``getrusage``'s ``ru_maxrss``).
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)


def _child_entry(log_path: str, target: Callable[..., Any], args: tuple[Any, ...]) -> None:
    """Child side: send stdout and stderr to the log file (line-buffered), then run the target."""
    log = open(log_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (kept open for the child's life)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    target(*args)
    log.flush()


def _tree_rss(pid: int) -> tuple[int, int]:
    """Measure the RSS of a process and its descendants, and the process's own peak RSS (Linux)."""
    try:
        parent = psutil.Process(pid)
        processes = [parent, *parent.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    hwm = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    return total, hwm


def _kill_tree(process: multiprocessing.process.BaseProcess, grace_s: float) -> None:
    """Stop a child and its descendants: ``SIGTERM`` then, after ``grace_s``, ``SIGKILL``.

    The child itself is signalled and reaped through ``multiprocessing`` (reaping it elsewhere
    would hide its exit status); its descendants through ``psutil``.
    """
    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    if grace_s > 0:
        for child in descendants:
            with contextlib.suppress(psutil.Error):
                child.terminate()
        process.terminate()
        process.join(grace_s)
    for child in descendants:
        with contextlib.suppress(psutil.Error):
            child.kill()
    if process.exitcode is None:
        process.kill()
    process.join()
    psutil.wait_procs(descendants, timeout=5)


def _seconds(value: float) -> str:
    return f"{value:g} s" if value < 120 else f"{value / 60:.3g} min"
