"""The one place that knows each model's quirks: how a protocol becomes a model and a datamodule.

The protocol gives every model the same backbone, weights flag, input size and pre-processor; the
models take them in different ways. Each quirk is one entry of :data:`ADAPTERS`:

- anomalib's Reverse Distillation picks its decoder by the exact architecture name, so a timm tag
  (``wide_resnet50_2.tv_in1k``) cannot be passed; it is built with the untagged name and random
  weights, and its encoder is then rebuilt with the tagged weights (the same teacher as the others);
- anomalib's PaDiM looks its default feature count up by the untagged name, so a tagged backbone
  gets that count explicitly;
- Skip-TS resolves an untagged backbone to a tagged one itself (the ``weights`` column says which).

:func:`model_recipe` computes a run's class, constructor arguments, post-build fix and weights label
once; :func:`build_datamodule` does the same for the dataset.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from anomalib.data import AnomalibDataModule
    from anomalib.models import AnomalibModule

    from .specs import RunSpec


@dataclass(frozen=True)
class ModelAdapter:
    """How one model class takes the protocol's settings.

    Attributes:
        architecture_name_only: The model takes an untagged architecture name only; a tagged
            pretrained backbone is given to it by rebuilding its encoder after construction.
        features_by_architecture: The model looks its feature count up by the untagged name; a
            tagged backbone gets ``n_features`` from that table.
        resolve_backbone: Maps an untagged backbone to the tagged weights the model loads itself.
    """

    architecture_name_only: bool = False
    features_by_architecture: bool = False
    resolve_backbone: Callable[[str], str] | None = None


def _padim_features(backbone: str) -> int | None:
    from anomalib.models.image.padim import torch_model

    return getattr(torch_model, "_N_FEATURES_DEFAULTS", {}).get(backbone.partition(".")[0])


def _skipts_backbone(backbone: str) -> str:
    from anomalib_skipts.models.skip_ts.torch_model import resolve_backbone

    return resolve_backbone(backbone)


ADAPTERS: dict[str, ModelAdapter] = {
    "ReverseDistillation": ModelAdapter(architecture_name_only=True),
    "Padim": ModelAdapter(features_by_architecture=True),
    "SkipTS": ModelAdapter(resolve_backbone=_skipts_backbone),
}
"""Quirks by model class name; a model not listed takes the protocol's settings as they are."""

_NO_QUIRKS = ModelAdapter()
_OFF = ("post_processor", "evaluator", "visualizer")


def import_dotted(class_path: str) -> type:
    """Import ``package.module.Name`` and return ``Name``.

    Args:
        class_path: Dotted class path.

    Returns:
        type: The class.
    """
    module_name, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module_name), name)


def resolve_model_class(class_path: str) -> type[AnomalibModule]:
    """Find a model class by anomalib name (``Padim``, ``reverse_distillation``, ``SkipTS``) or path.

    Args:
        class_path: Model name or dotted class path.

    Returns:
        type[AnomalibModule]: The class.

    Raises:
        ValueError: If no such model exists.
    """
    if "." in class_path:
        return import_dotted(class_path)
    import anomalib.models
    from anomalib.models import _get_model_class_by_name
    from anomalib.models.components.base import AnomalibModule

    with contextlib.suppress(ImportError):  # registers SkipTS on anomalib.models (also done by the .pth hook)
        importlib.import_module("anomalib_skipts.models")
    candidate = getattr(anomalib.models, class_path, None)
    if isinstance(candidate, type) and issubclass(candidate, AnomalibModule):
        return candidate
    try:  # anomalib's own lookup: snake_case or any case of a model's name
        return _get_model_class_by_name(class_path)
    except Exception:  # anomalib's UnknownModelError does not list the known names
        msg = f"Unknown model {class_path!r}; anomalib knows {sorted(anomalib.models.list_models(case='pascal'))}"
        raise ValueError(msg) from None


@dataclass(frozen=True)
class ModelRecipe:
    """Everything needed to build a run's model, computed once.

    Attributes:
        model_class: The model class.
        init_args: Constructor arguments (protocol settings filled in, post-processing off).
        encoder: Tagged backbone whose pretrained weights replace the encoder after construction.
        weights: Which backbone / teacher weights the model gets (the ``weights`` column).
        by_name: Build through ``anomalib.models.get_model`` (a model named the anomalib way).
    """

    model_class: type[AnomalibModule]
    init_args: dict[str, Any] = field(default_factory=dict)
    encoder: str | None = None
    weights: str = ""
    by_name: bool = False

    def build(self) -> AnomalibModule:
        """Instantiate the model and apply its post-build fix.

        Returns:
            AnomalibModule: The model.
        """
        if self.by_name:
            from anomalib.models import get_model

            model = get_model(self.model_class.__name__, **self.init_args)
        else:
            model = self.model_class(**self.init_args)
        if self.encoder is not None:
            from anomalib.models.components import TimmFeatureExtractor

            layers = list(model.model.encoder.layers)
            model.model.encoder = TimmFeatureExtractor(backbone=self.encoder, pre_trained=True, layers=layers)
        return model

    def plain_init_args(self) -> dict[str, Any]:
        """Return the constructor arguments that are plain values (what the ``init_args`` column records).

        Returns:
            dict[str, Any]: The arguments without objects such as the pre-processor.
        """
        plain = str | int | float | bool | list | tuple | dict
        return {key: value for key, value in self.init_args.items() if value is None or isinstance(value, plain)}


def model_recipe(run: RunSpec, raw_scores: bool = True) -> ModelRecipe:
    """Work out how a run's model is built from its ``init_args`` and the protocol.

    The protocol's backbone, ``pre_trained`` flag and image size fill the arguments the model has
    and the config does not set; the pre-processor is the model's own
    ``configure_pre_processor(image_size=...)``; post-processor, evaluator and visualizer are off
    (raw scores, metrics computed by the benchmark) unless ``raw_scores`` is off.

    Args:
        run: The run.
        raw_scores: Turn the model's post-processor, evaluator and visualizer off. ``False`` keeps
            the model's own, for studies that export it with its threshold or test it with
            ``Engine.test`` (``tools/compression.py``).

    Returns:
        ModelRecipe: Class, arguments, post-build fix and weights label.
    """
    from anomalib.models.components.base import AnomalibModule

    model_class = resolve_model_class(run.model.class_path)
    adapter = ADAPTERS.get(model_class.__name__, _NO_QUIRKS)
    parameters = inspect.signature(model_class).parameters
    protocol = run.protocol
    kwargs = dict(run.model.init_args)
    encoder = _encoder_swap(run, adapter)
    if protocol.backbone is not None and "backbone" in parameters and "backbone" not in kwargs:
        kwargs["backbone"] = protocol.backbone
        if adapter.architecture_name_only:
            kwargs["backbone"] = protocol.backbone.partition(".")[0]
            if encoder is not None:
                kwargs["pre_trained"] = False  # built random, then given the tagged encoder
    if adapter.features_by_architecture and "." in str(kwargs.get("backbone", "")):
        kwargs.setdefault("n_features", _padim_features(kwargs["backbone"]))
    if "pre_trained" in parameters:
        kwargs.setdefault("pre_trained", protocol.pre_trained)
    if "image_size" in parameters:
        kwargs.setdefault("image_size", protocol.image_size)
    if "pre_processor" not in kwargs:
        kwargs["pre_processor"] = _pre_processor(model_class, protocol.image_size)
    if raw_scores:
        kwargs.update(dict.fromkeys(_OFF, False))
    return ModelRecipe(
        model_class=model_class,
        init_args=kwargs,
        encoder=encoder,
        weights=encoder or backbone_weights(model_class, kwargs),
        by_name="." not in run.model.class_path and model_class in AnomalibModule.__subclasses__(),
    )


def _encoder_swap(run: RunSpec, adapter: ModelAdapter) -> str | None:
    """Return the tagged backbone that replaces an architecture-name-only model's encoder, if any.

    Applies when the protocol's backbone has a timm tag, the model's ``init_args`` set no backbone
    and pretrained weights are wanted.
    """
    backbone = run.protocol.backbone
    init_args = run.model.init_args
    if not adapter.architecture_name_only or backbone is None or "." not in backbone:
        return None
    if "backbone" in init_args or not init_args.get("pre_trained", run.protocol.pre_trained):
        return None
    return backbone


def backbone_weights(model_class: type[AnomalibModule], kwargs: dict[str, Any]) -> str:
    """Say which backbone / teacher weights a model gets from its constructor arguments.

    Args:
        model_class: The model class.
        kwargs: Its constructor arguments.

    Returns:
        str: ``<architecture>.<timm tag>`` of the pretrained weights (the tag timm or the model
        resolves an untagged name to), ``random-init`` when ``pre_trained`` is off, or an empty
        string for a model without a ``backbone`` argument. STFPM always loads pretrained weights
        for its teacher (its student is random), so its entry is the teacher's.
    """
    parameters = inspect.signature(model_class).parameters
    if "backbone" not in parameters:
        return ""
    backbone = kwargs.get("backbone", parameters["backbone"].default)
    if not isinstance(backbone, str):
        return type(backbone).__name__
    pre_trained = kwargs.get("pre_trained", parameters["pre_trained"].default if "pre_trained" in parameters else True)
    if not pre_trained:
        return "random-init"
    if "." in backbone:
        return backbone
    resolve = ADAPTERS.get(model_class.__name__, _NO_QUIRKS).resolve_backbone
    if resolve is not None:
        return str(resolve(backbone))
    import timm.models

    config = timm.models.get_pretrained_cfg(backbone)
    return f"{backbone}.{config.tag}" if config is not None and config.tag else backbone


def _pre_processor(model_class: type[AnomalibModule], image_size: tuple[int, int]) -> Any:
    from anomalib.models.components.base import AnomalibModule

    configure = inspect.getattr_static(model_class, "configure_pre_processor", None)
    if isinstance(configure, staticmethod | classmethod):
        return model_class.configure_pre_processor(image_size=image_size)
    return AnomalibModule.configure_pre_processor(image_size=image_size)


def model_init_args(run: RunSpec, model_class: type[AnomalibModule] | None = None) -> dict[str, Any]:
    """Return the constructor arguments of a run's model (see :func:`model_recipe`).

    Args:
        run: The run.
        model_class: Unused (the class follows from the run); kept for callers that pass it.

    Returns:
        dict[str, Any]: Keyword arguments.
    """
    del model_class
    return model_recipe(run).init_args


def build_model(run: RunSpec, raw_scores: bool = True) -> AnomalibModule:
    """Instantiate a run's model.

    Args:
        run: The run.
        raw_scores: See :func:`model_recipe`.

    Returns:
        AnomalibModule: The model.
    """
    return model_recipe(run, raw_scores).build()


def run_weights(run: RunSpec, model_class: type[AnomalibModule] | None = None) -> str:
    """Say which backbone / teacher weights a run's model gets (the ``weights`` column).

    Args:
        run: The run.
        model_class: Unused (the class follows from the run); kept for callers that pass it.

    Returns:
        str: See :func:`backbone_weights`; the swapped-in encoder's tag for Reverse Distillation.
    """
    del model_class
    return model_recipe(run).weights


# ------------------------------------------------------------------------------------------------
# Datamodules
# ------------------------------------------------------------------------------------------------


def resolve_datamodule_class(class_path: str) -> type[AnomalibDataModule]:
    """Find a datamodule class by dotted path, or by name in ``anomalib.data`` / ``anomalib_skipts.data``.

    Args:
        class_path: Dotted class path or class name.

    Returns:
        type[AnomalibDataModule]: The class.

    Raises:
        ValueError: If no such class exists.
    """
    if "." in class_path:
        return import_dotted(class_path)
    for module_name in ("anomalib.data", "anomalib_skipts.data"):
        with contextlib.suppress(ImportError):
            candidate = getattr(importlib.import_module(module_name), class_path, None)
            if isinstance(candidate, type):
                return candidate
    msg = f"Unknown datamodule {class_path!r}: give a dotted class path."
    raise ValueError(msg)


def datamodule_init_args(run: RunSpec, datamodule_class: type[AnomalibDataModule]) -> dict[str, Any]:
    """Build the constructor arguments of a run's datamodule: its ``init_args`` plus the protocol's.

    Batch sizes and workers come from the protocol. The validation split is set to
    ``same_as_test`` (unless configured): anomalib's ``from_test`` default would move half of the
    test images into validation, and the benchmark evaluates on the whole test split.

    Args:
        run: The run.
        datamodule_class: The datamodule class.

    Returns:
        dict[str, Any]: Keyword arguments for ``datamodule_class``.
    """
    parameters = inspect.signature(datamodule_class).parameters
    protocol = run.protocol
    kwargs = dict(run.dataset.init_args)
    defaults = {
        "train_batch_size": protocol.train_batch_size,
        "eval_batch_size": protocol.eval_batch_size,
        "num_workers": protocol.num_workers,
        "val_split_mode": "same_as_test",
    }
    accepts_any = any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values())
    for key, value in defaults.items():
        if key in parameters or accepts_any:
            kwargs.setdefault(key, value)
    seed_arg = split_seed_arg(datamodule_class) if run.dataset.seed_arg == "auto" else run.dataset.seed_arg
    if protocol.vary_split_with_seed and seed_arg:
        kwargs[seed_arg] = run.seed
    return kwargs


def split_seed_arg(datamodule_class: type[AnomalibDataModule]) -> str | None:
    """Name the argument that seeds a datamodule's train/test split (a dataset's ``seed_arg: auto``).

    Args:
        datamodule_class: The datamodule class.

    Returns:
        str | None: The class's ``split_seed_arg`` (``split_seed`` for the project's datamodules), else
        anomalib's ``seed`` where the constructor has one, else ``None``.
    """
    declared = getattr(datamodule_class, "split_seed_arg", None)
    if declared is not None:
        return declared
    return "seed" if "seed" in inspect.signature(datamodule_class).parameters else None


def build_datamodule(run: RunSpec) -> AnomalibDataModule:
    """Instantiate a run's datamodule.

    Args:
        run: The run.

    Returns:
        AnomalibDataModule: The datamodule.
    """
    datamodule_class = resolve_datamodule_class(run.dataset.class_path)
    return datamodule_class(**datamodule_init_args(run, datamodule_class))
