"""anomalib-skipts: the Skip-TS medical anomaly detector as an anomalib model.

Skip-TS: M. Liu, Y. Jiao, J. Lu, H. Chen, "Anomaly Detection for Medical Images Using
Teacher-Student Model With Skip Connections and Multiscale Anomaly Consistency",
IEEE Transactions on Instrumentation and Measurement, 2024 (conference version: Skip-ST, ISCAS 2023).

Attributes are imported lazily so that ``import anomalib_skipts`` (run at interpreter start-up by
the package's ``.pth`` hook) does not import torch or anomalib.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "SkipTS": "anomalib_skipts.models",
    "SkipTSModel": "anomalib_skipts.models",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    msg = f"module 'anomalib_skipts' has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["SkipTS", "SkipTSModel", "__version__"]
