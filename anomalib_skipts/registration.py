"""Make anomalib see ``SkipTS`` and the medical datamodules as its own.

anomalib finds models in two ways: ``get_model("SkipTS")`` / ``list_models()`` look at the
*direct* subclasses of ``AnomalibModule`` that are already imported, and
``get_model({"class_path": "SkipTS"})`` looks the name up as an attribute of the
``anomalib.models`` module. Datamodules are found one way only: ``anomalib.data.get_datamodule``
(used by ``anomalib benchmark`` and the tiled ensemble) looks the last part of ``class_path`` up as
an attribute of ``anomalib.data``. The anomalib CLI (through jsonargparse) needs the classes imported.

So the package must be imported whenever ``anomalib.models`` or ``anomalib.data`` is. The wheel
installs a one-line ``anomalib_skipts.pth`` file into ``site-packages``; Python runs it at start-up
and it calls :func:`install_import_hook`, which only appends a tiny finder to ``sys.meta_path``.
That finder does nothing until some code imports one of the two modules; then, right after
anomalib's own module has finished executing, it imports :mod:`anomalib_skipts.models` (and sets
``anomalib.models.SkipTS``) or :mod:`anomalib_skipts.data` (and sets each datamodule of
:data:`anomalib_skipts.data.ANOMALIB_DATAMODULES` on ``anomalib.data``, never replacing one of
anomalib's own: the project's ``BMAD`` is registered as ``MedicalBMAD``). A Python process that
never imports anomalib pays for one ``sys.meta_path`` entry and imports neither torch nor anomalib.

Without the ``.pth`` file (a source checkout on ``PYTHONPATH``), ``import anomalib_skipts.models``
and ``import anomalib_skipts.data`` perform the same registrations explicitly.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
from types import ModuleType

logger = logging.getLogger(__name__)


def _expose(module: ModuleType, classes: dict[str, type]) -> None:
    """Set each class on one of anomalib's modules (and its ``__all__``), never replacing anomalib's own.

    Args:
        module: ``anomalib.models`` or ``anomalib.data``.
        classes: Name on the module -> class.
    """
    names = getattr(module, "__all__", None)
    for name, cls in classes.items():
        if getattr(module, name, cls) is not cls:
            message = "%s.%s exists already; the project's class is not registered under that name"
            logger.warning(message, module.__name__, name)
            continue
        setattr(module, name, cls)
        if isinstance(names, list) and name not in names:
            names.append(name)


def _being_imported(package: str, last_name: str) -> bool:
    """Say whether one of the project's packages is being imported right now (it registers itself when done)."""
    module = sys.modules.get(package)
    return module is not None and not hasattr(module, last_name)


def register(models_module: ModuleType) -> None:
    """Expose ``SkipTS`` on anomalib's model module.

    Args:
        models_module: The imported ``anomalib.models`` module.
    """
    if _being_imported("anomalib_skipts.models", "SkipTS"):
        return
    from anomalib_skipts.models import SkipTS

    _expose(models_module, {"SkipTS": SkipTS})


def register_datamodules(data_module: ModuleType) -> None:
    """Expose the project's datamodules on anomalib's data module, under names it does not use.

    Args:
        data_module: The imported ``anomalib.data`` module.
    """
    if _being_imported("anomalib_skipts.data", "ANOMALIB_DATAMODULES"):
        return
    from anomalib_skipts.data import ANOMALIB_DATAMODULES

    _expose(data_module, ANOMALIB_DATAMODULES)


TARGETS = {"anomalib.models": register, "anomalib.data": register_datamodules}
"""anomalib's modules the hook waits for, and what registers the project's classes on each."""


class _RegisteringLoader(importlib.abc.Loader):
    """Delegate to anomalib's own loader, then register the project's classes on the module."""

    def __init__(self, loader: importlib.abc.Loader, name: str) -> None:
        self._loader = loader
        self._name = name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        try:
            TARGETS[self._name](module)
        except Exception:  # a broken plug-in must never break anomalib itself
            logger.exception("anomalib-skipts could not register its classes with %s", self._name)


class _AnomalibFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder that reacts only to the first imports of the modules in :data:`TARGETS`."""

    def __init__(self, waiting: set[str]) -> None:
        self.waiting = waiting

    def find_spec(
        self,
        fullname: str,
        path: object = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        del path, target
        if fullname not in self.waiting:
            return None
        self.waiting.discard(fullname)  # one-shot per module: let the regular finders locate it
        if not self.waiting:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _RegisteringLoader(spec.loader, fullname)
        return spec


def install_import_hook() -> None:
    """Register the project's classes as soon as anomalib's modules get imported (idempotent, import-free)."""
    waiting = set(TARGETS)
    for name in list(waiting):
        if name in sys.modules:
            TARGETS[name](sys.modules[name])
            waiting.discard(name)
    if not waiting or any(isinstance(finder, _AnomalibFinder) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, _AnomalibFinder(waiting))
