"""Computational cost of a model: parameters, FLOPs per image and inference throughput.

Skip-TS (IEEE TIM 2024, Table III) reports FLOPs and parameter counts. Here FLOPs are measured,
not estimated by hand: ``torch.utils.flop_counter.FlopCounterMode`` counts the floating-point
operations of the operators actually executed by one forward pass (torch's convention: one
multiply-add = 2 FLOPs; element-wise operations and pooling are not counted).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(module: nn.Module, optimizers: Iterable[torch.optim.Optimizer] = ()) -> tuple[int, int]:
    """Count the parameters of a network (frozen teachers included) and those it trains.

    Buffers (PaDiM's Gaussian statistics, PatchCore's memory bank) are not parameters and are not
    counted. The trained part is what the optimizers update (PaDiM and PatchCore have none), which
    is more telling than ``requires_grad`` (PaDiM's backbone keeps ``requires_grad=True``).

    Args:
        module: The network.
        optimizers: The optimizers used to train it.

    Returns:
        tuple[int, int]: ``(total, trained)``.
    """
    total = sum(parameter.numel() for parameter in module.parameters())
    trained = {
        id(parameter): parameter.numel()
        for optimizer in optimizers
        for group in optimizer.param_groups
        for parameter in group["params"]
    }
    return total, sum(trained.values())


@torch.inference_mode()
def count_flops(module: nn.Module, images: torch.Tensor) -> float:
    """FLOPs of one inference forward pass, per image.

    The module is put in eval mode (inference path: for most anomalib models this includes the
    anomaly-map computation) and run once on ``images`` under ``FlopCounterMode``.

    Args:
        module: The network (an anomalib ``AnomalibModule.model``).
        images: A pre-processed batch ``(N, C, H, W)``.

    Returns:
        float: Total counted FLOPs divided by ``N``.
    """
    module.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        module(images)
    return counter.get_total_flops() / images.shape[0]


@torch.inference_mode()
def measure_throughput(module: nn.Module, batches: Iterable[torch.Tensor], warmup: int = 1) -> float:
    """Inference throughput of a network in images per second.

    Data loading and pre-processing are excluded: only ``module(batch)`` is timed (on CUDA the
    device is synchronised around each batch). The first ``warmup`` batches are run but not timed
    (unless there would be nothing left to time).

    Args:
        module: The network, run in eval mode.
        batches: Pre-processed batches on the module's device.
        warmup: Number of untimed batches.

    Returns:
        float: Images per second (NaN when there is no batch).
    """
    module.eval()
    batches = list(batches)
    if not batches:
        return float("nan")
    if len(batches) <= warmup:
        warmup = 0 if len(batches) == 1 else len(batches) - 1
    for batch in batches[:warmup]:
        module(batch)
    images = 0
    elapsed = 0.0
    for batch in batches[warmup:]:
        _synchronize(batch.device)
        start = time.perf_counter()
        module(batch)
        _synchronize(batch.device)
        elapsed += time.perf_counter() - start
        images += batch.shape[0]
    return images / elapsed if elapsed > 0 else float("nan")


def describe_device(device: torch.device) -> str:
    """Human-readable description of the device a run used.

    Args:
        device: The model's device.

    Returns:
        str: e.g. ``"cpu: AMD EPYC 7B13 (2 threads)"`` or ``"cuda:0: NVIDIA H100 80GB HBM3"``.
    """
    if device.type == "cuda":
        return f"{device}: {torch.cuda.get_device_name(device)}"
    return f"{device.type}: {_cpu_name()} ({torch.get_num_threads()} threads)"


def machine_description(device: torch.device) -> dict[str, Any]:
    """Describe where a measurement ran: CPU, cores, threads, GPU, library versions, load average.

    Args:
        device: The device measured on.

    Returns:
        A JSON-serialisable dict with a one-line ``description``.
    """
    import anomalib
    import lightning

    cuda = torch.cuda.is_available()
    info = {
        "device": describe_device(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "anomalib": anomalib.__version__,
        "lightning": lightning.__version__,
        "load_average_start": os.getloadavg(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    gpu = info["gpu"] or "no GPU"
    info["description"] = (
        f"{info['device']}, {info['cpu_count']} CPU cores, {gpu}; torch {info['torch']}, anomalib {info['anomalib']}"
    )
    if info["omp_wait_policy"]:
        info["description"] += f"; OMP_WAIT_POLICY={info['omp_wait_policy']}"
    return info


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
