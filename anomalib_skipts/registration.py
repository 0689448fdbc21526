"""Make anomalib see ``SkipTS`` as one of its own models.

anomalib finds models in two ways: ``get_model("SkipTS")`` / ``list_models()`` look at the
*direct* subclasses of ``AnomalibModule`` that are already imported, and
``get_model({"class_path": "SkipTS"})`` looks the name up as an attribute of the
``anomalib.models`` module. The anomalib CLI (through jsonargparse) needs the class imported too.

So the package must be imported whenever ``anomalib.models`` is. The wheel installs a one-line
``anomalib_skipts.pth`` file into ``site-packages``; Python runs it at start-up and it calls
:func:`install_import_hook`, which only appends a tiny finder to ``sys.meta_path``. That finder does
nothing until some code imports ``anomalib.models``; then, right after anomalib's own module has
finished executing, it imports :mod:`anomalib_skipts.models` (which subclasses ``AnomalibModule``)
and sets ``anomalib.models.SkipTS``. A Python process that never imports anomalib pays for one
``sys.meta_path`` entry and imports neither torch nor anomalib.

Without the ``.pth`` file (a source checkout on ``PYTHONPATH``), ``import anomalib_skipts.models``
performs the same registration explicitly.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
from types import ModuleType

logger = logging.getLogger(__name__)

TARGET_MODULE = "anomalib.models"


def register(models_module: ModuleType) -> None:
    """Expose ``SkipTS`` on anomalib's model module.

    Args:
        models_module: The imported ``anomalib.models`` module.
    """
    package = sys.modules.get("anomalib_skipts.models")
    if package is not None and not hasattr(package, "SkipTS"):
        return  # the package is being imported right now and registers itself when it is done
    from anomalib_skipts.models import SkipTS

    models_module.SkipTS = SkipTS  # type: ignore[attr-defined]
    names = getattr(models_module, "__all__", None)
    if isinstance(names, list) and "SkipTS" not in names:
        names.append("SkipTS")


class _RegisteringLoader(importlib.abc.Loader):
    """Delegate to anomalib's own loader, then register Skip-TS."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        try:
            register(module)
        except Exception:  # a broken plug-in must never break anomalib itself
            logger.exception("anomalib-skipts could not register SkipTS with anomalib.models")


class _AnomalibModelsFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder that reacts only to the first import of ``anomalib.models``."""

    def find_spec(
        self,
        fullname: str,
        path: object = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        del path, target
        if fullname != TARGET_MODULE:
            return None
        sys.meta_path.remove(self)  # one-shot: let the regular finders locate the module
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _RegisteringLoader(spec.loader)
        return spec


def install_import_hook() -> None:
    """Register Skip-TS as soon as ``anomalib.models`` gets imported (idempotent, import-free)."""
    if TARGET_MODULE in sys.modules:
        register(sys.modules[TARGET_MODULE])
        return
    if not any(isinstance(finder, _AnomalibModelsFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AnomalibModelsFinder())
