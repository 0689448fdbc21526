"""Models of anomalib-skipts; importing this registers ``SkipTS`` on ``anomalib.models``."""

from importlib import import_module

from anomalib_skipts.registration import register

from .skip_ts import SkipTS, SkipTSLoss, SkipTSModel, TeacherWeightsError

# ``import_module`` returns the module object even while the import hook is finishing it.
register(import_module("anomalib.models"))

__all__ = ["SkipTS", "SkipTSLoss", "SkipTSModel", "TeacherWeightsError"]
