"""Side-by-side benchmark of Skip-TS and anomalib's models under the paper's protocol.

Skip-TS: M. Liu et al., IEEE Transactions on Instrumentation and Measurement, 2024. One command
(``skipts-benchmark`` or ``python -m anomalib_skipts.benchmark``) runs models x datasets x seeds
from a YAML config through anomalib's ``Engine``, evaluates the last epoch, and writes a per-run
CSV, a Markdown summary (Tables II-IV layout) and figures.

Attributes are imported lazily, so that the command line can configure the environment before
torch, anomalib and tqdm are imported.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "DEFAULT_MODELS": "config",
    "PROTOCOLS": "config",
    "BenchmarkConfig": "config",
    "DatasetSpec": "config",
    "ModelSpec": "config",
    "Protocol": "config",
    "RunSpec": "specs",
    "get_protocol": "config",
    "load_config": "config",
    "parse_config": "config",
    "ImageMetrics": "metrics",
    "image_metrics": "metrics",
    "pixel_auroc": "metrics",
    "plain_mean": "metrics",
    "weighted_mean": "metrics",
    "youden_threshold": "metrics",
    "count_flops": "cost",
    "count_parameters": "cost",
    "measure_throughput": "cost",
    "BaseRunner": "runners",
    "BenchmarkRunner": "pipeline",
    "SerialRunner": "runners",
    "ParallelRunner": "parallel",
    "SlurmRunner": "slurm",
    "ExecutorSpec": "executors",
    "SlurmSettings": "executors",
    "DriverLock": "store",
    "DriverBusyError": "store",
    "BenchmarkJob": "pipeline",
    "BenchmarkJobGenerator": "pipeline",
    "BenchmarkPipeline": "pipeline",
    "run_by_id": "pipeline",
    "write_config_snapshot": "store",
    "config_from_snapshot": "config",
    "execute_run": "job",
    "ResultStore": "store",
    "ModelRecipe": "adapters",
    "model_recipe": "adapters",
    "build_summary": "report",
    "write_report": "report",
    "LIMITATIONS": "anomalib_pipeline",
    "run_anomalib_benchmark": "anomalib_pipeline",
    "to_anomalib_benchmark": "anomalib_pipeline",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = sorted(_LAZY)
