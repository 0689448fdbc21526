"""Benchmark configuration files: YAML -> the typed settings of :mod:`.specs`.

Keys and value types are checked with jsonargparse (anomalib's own config machinery): a wrong key
or value is reported with the key, the expected type and the file and entry it is in.

A benchmark YAML looks like this (every key except ``datasets`` is optional)::

    name: cpu_quick
    output_dir: results/benchmark/cpu_quick
    protocol: cpu-quick          # a named protocol, or a mapping {name: cpu-quick, max_epochs: 3, ...}
    seeds: [0, 1, 2]             # default: the protocol's seeds
    models:                      # default: SkipTS, Padim, Patchcore, Stfpm, ReverseDistillation
      - Padim                    # an anomalib model name ...
      - name: Skip-ST0           # ... or a mapping
        class_path: SkipTS
        init_args: {num_skips: 0}
        max_epochs: 200          # overrides the protocol's epochs for this model
        group: Skip connections  # Table IV section (ablation layout)
    datasets:
      - name: HeadCT
        class_path: anomalib_skipts.data.HeadCT
        init_args: {root: ../shared/data/headct}
    kde_models: [SkipTS]         # models whose score distributions are plotted
    run_timeout: 2h              # per-run time limit (seconds, or with s / m / h); default: none
    run_memory_limit: 16         # per-run memory limit in GB (resident memory of the run's process)
    isolate: true                # each run in its own child process (default)
    executor:                    # where the runs execute (see executors.py); flags override
      name: local                # local (default) or slurm
      parallel: 1                # local: runs at once
      slurm: {partition: gpu, gpus: 1, cpus: 8, time_limit: 4h}
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import operator
import re
import types as types_module
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentError, ArgumentParser
from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt, restricted_string_type

from .executors import ExecutorSpec, SlurmSettings
from .specs import (
    DEFAULT_MODELS,
    PROTOCOLS,
    BenchmarkConfig,
    DatasetSpec,
    ModelSpec,
    Protocol,
    RunSpec,
    build_spec,
    get_protocol,
    slugify,
)

__all__ = [
    "DEFAULT_MODELS",
    "PROTOCOLS",
    "BenchmarkConfig",
    "DatasetSpec",
    "ModelSpec",
    "Protocol",
    "RunSpec",
    "config_from_snapshot",
    "get_protocol",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_positive",
    "slugify",
]


def load_config(
    path: str | Path,
    protocol: str | None = None,
    output_dir: str | Path | None = None,
    max_epochs: int | None = None,
) -> BenchmarkConfig:
    """Read a benchmark YAML file.

    Args:
        path: YAML file.
        protocol: Named protocol replacing the file's (its overrides are kept).
        output_dir: Results folder replacing the file's.
        max_epochs: Epochs replacing the protocol's (per-model values are kept).

    Returns:
        BenchmarkConfig: The parsed config.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"No benchmark config {path}: give a YAML file (see configs/benchmark/)."
        raise ValueError(msg)
    with path.open(encoding="utf-8") as file:
        data = yaml.safe_load(file) or {}
    if protocol is not None:
        raw = data.get("protocol")
        data["protocol"] = {**(raw if isinstance(raw, Mapping) else {}), "name": protocol}
    config = parse_config(data, source=path)
    if output_dir is not None:
        config = dataclasses.replace(config, output_dir=Path(output_dir))
    if max_epochs is not None:
        epochs = _checked({"max_epochs": max_epochs}, "protocol", "--max-epochs")
        config = dataclasses.replace(config, protocol=config.protocol.replace(**epochs))
    return config


def parse_config(data: Mapping[str, Any], source: Path | None = None) -> BenchmarkConfig:
    """Build a config from a mapping (the content of a benchmark YAML file).

    Args:
        data: The mapping.
        source: File the mapping was read from, if any.

    Returns:
        BenchmarkConfig: The parsed config.

    Raises:
        ValueError: On unknown keys, duplicate names or a config without datasets.
    """
    where = f"benchmark config {source}" if source else "benchmark config"
    data = _checked(data, "config", where)
    name = str(data.get("name") or (source.stem if source else "benchmark"))
    protocol = _parse_protocol(data.get("protocol") or "paper", where)
    models = tuple(
        _parse_model(item, f"{where}, models[{index}]")
        for index, item in enumerate(data.get("models") or DEFAULT_MODELS)
    )
    if not data.get("datasets"):
        msg = "A benchmark config needs at least one entry under 'datasets'."
        raise ValueError(msg)
    datasets = tuple(_parse_dataset(item, f"{where}, datasets[{index}]") for index, item in enumerate(data["datasets"]))
    for kind, specs in (("model", models), ("dataset", datasets)):
        names = [spec.name for spec in specs]
        duplicates = sorted({item for item in names if names.count(item) > 1})
        if duplicates:
            msg = f"Duplicate {kind} names {duplicates}: give each entry a unique 'name'."
            raise ValueError(msg)
    seeds = tuple(int(seed) for seed in data.get("seeds") or protocol.seeds)
    if len(set(seeds)) != len(seeds):
        msg = f"Duplicate seeds in {list(seeds)}."
        raise ValueError(msg)
    kde = data.get("kde_models")
    kde_models = (
        tuple(str(item) for item in kde)
        if kde is not None
        else tuple(model.name for model in models if model.class_path.rsplit(".", 1)[-1] == "SkipTS")
    )
    unknown = sorted(set(kde_models) - {model.name for model in models})
    if unknown:
        msg = f"kde_models {unknown} are not model names of the config."
        raise ValueError(msg)
    output_dir = Path(data.get("output_dir") or Path("results") / "benchmark" / name)
    return BenchmarkConfig(
        name=name,
        output_dir=output_dir,
        protocol=protocol,
        models=models,
        datasets=datasets,
        seeds=seeds,
        kde_models=kde_models,
        source=source,
        run_timeout=parse_duration(data.get("run_timeout"), "run_timeout"),
        run_memory_limit=data.get("run_memory_limit"),
        isolate=data.get("isolate") is not False,
        executor=_parse_executor(data.get("executor") or {}, where),
    )


def config_from_snapshot(data: Mapping[str, Any], output_dir: str | Path | None = None) -> BenchmarkConfig:
    """Rebuild a config from the snapshot written next to its results (``config.yaml``).

    Args:
        data: The snapshot's content.
        output_dir: Results folder replacing the snapshot's (the folder was moved or mounted elsewhere).

    Returns:
        BenchmarkConfig: The config, with the same runs and fingerprints as when it was written.
    """
    values = {key: value for key, value in data.items() if key not in {"command", "source", "protocol"}}
    source = Path(data["source"]) if data.get("source") else None
    config = parse_config({**values, "protocol": "paper"}, source=source)
    protocol = build_spec(Protocol, {**dataclasses.asdict(Protocol()), **data["protocol"]}, where="protocol")
    return dataclasses.replace(config, protocol=protocol, output_dir=Path(output_dir or config.output_dir))


def parse_duration(value: float | str | None, where: str = "duration") -> float | None:
    """Read a duration in seconds: a number, or a string with unit ``s``, ``m`` or ``h`` (``"90m"``).

    Args:
        value: The value (``None`` or ``"none"``: no limit).
        where: Name of the setting, for the error message.

    Returns:
        float | None: Seconds.

    Raises:
        ValueError: If the value is not a positive duration.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in {"", "none"}):
        return None
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", value.lower())
        if not match:
            msg = f"{where} must be seconds or a duration like '90s', '30m', '2h'; got {value!r}"
            raise ValueError(msg)
        value = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    return parse_positive(value, where)


def parse_positive(value: Any, where: str) -> float | None:
    """Read a positive number (``None`` stays ``None``).

    Args:
        value: The value.
        where: Name of the setting, for the error message.

    Returns:
        float | None: The number.

    Raises:
        ValueError: If the value is not a positive number.
    """
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError) as error:
        msg = f"{where} must be a positive number, got {value!r}"
        raise ValueError(msg) from error
    if not number > 0:
        msg = f"{where} must be a positive number, got {value!r}"
        raise ValueError(msg)
    return number


def _parse_executor(item: Mapping[str, Any], where: str) -> ExecutorSpec:
    where = f"{where}, executor"
    values = _checked(item, "executor", where)
    if values.get("name") is not None and values["name"] not in ("local", "slurm"):
        msg = f"Invalid value in {where}: 'name' must be 'local' or 'slurm', got {values['name']!r}"
        raise ValueError(msg)
    slurm = _checked(values.pop("slurm", None) or {}, "slurm", f"{where}, slurm")
    if "time_limit" in slurm:
        slurm["time_limit"] = parse_duration(slurm["time_limit"], f"{where}, slurm, time_limit")
    if slurm.get("setup") is not None:
        slurm["setup"] = tuple(slurm["setup"])
    settings = SlurmSettings(**{key: value for key, value in slurm.items() if value is not None})
    if values.get("devices") is not None:
        values["devices"] = tuple(values["devices"])
    return ExecutorSpec(**{key: value for key, value in values.items() if value is not None}, slurm=settings)


def _parse_protocol(item: str | Mapping[str, Any], where: str) -> Protocol:
    if isinstance(item, str):
        return get_protocol(item)
    overrides = _checked(item, "protocol", f"{where}, protocol")
    base_name = overrides.pop("name", None)
    base = get_protocol(base_name) if base_name else Protocol()
    if base_name is None:
        overrides["name"] = "custom"
    return base.replace(**overrides)


def _parse_model(item: str | Mapping[str, Any], where: str) -> ModelSpec:
    if isinstance(item, str):
        return ModelSpec(name=item.rsplit(".", 1)[-1], class_path=item)
    values = _checked(item, "model", where)
    class_path = values.get("class_path") or values.get("name")
    if not class_path:
        msg = f"A model entry needs 'class_path' or 'name' ({where}): {dict(item)!r}"
        raise ValueError(msg)
    return build_spec(ModelSpec, {"name": class_path.rsplit(".", 1)[-1], **values, "class_path": class_path}, "model")


def _parse_dataset(item: Mapping[str, Any], where: str) -> DatasetSpec:
    values = _checked(item, "dataset", where)
    if not values.get("class_path"):
        msg = f"A dataset entry needs a 'class_path' ({where}): {dict(item)!r}"
        raise ValueError(msg)
    spec = build_spec(DatasetSpec, {"name": values["class_path"].rsplit(".", 1)[-1], **values}, "dataset")
    if spec.seed_arg == "auto":  # named in the config (and the run fingerprints) as if written out
        from .adapters import resolve_datamodule_class, split_seed_arg

        # a class that cannot be imported yet is resolved (and reported) when its runs start
        with contextlib.suppress(ImportError, ValueError, AttributeError):
            spec = dataclasses.replace(spec, seed_arg=split_seed_arg(resolve_datamodule_class(spec.class_path)))
    return spec


Duration = restricted_string_type("Duration", r"(?i)^\s*([0-9]*\.?[0-9]+\s*[smh]?|none)\s*$")
"""Seconds with an optional unit ``s``, ``m`` or ``h`` (``"90m"``), or ``"none"``."""

_CONFIG_TYPES: dict[str, Any] = {
    "name": str,
    "output_dir": str,
    "protocol": str | dict[str, Any],
    "seeds": list[int],
    "models": list[str | dict[str, Any]],
    "datasets": list[dict[str, Any]],
    "kde_models": list[str],
    "run_timeout": PositiveFloat | Duration,
    "run_memory_limit": PositiveFloat,
    "isolate": bool,
    "executor": dict[str, Any],
}


def _field_types(cls: type) -> dict[str, Any]:
    """Annotated types of a config dataclass, without ``None`` (a null value means the default)."""
    types = {}
    for name, hint in typing.get_type_hints(cls).items():
        kept = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        types[name] = functools.reduce(operator.or_, kept) if isinstance(hint, types_module.UnionType) else hint
    return types


_TYPES: dict[str, dict[str, Any]] = {
    "config": _CONFIG_TYPES,
    # The dataclasses' own annotations, so that a new field is declared once; an image size may be one side.
    "protocol": _field_types(Protocol) | {"image_size": PositiveInt | tuple[PositiveInt, PositiveInt]},
    "model": _field_types(ModelSpec),
    "dataset": _field_types(DatasetSpec),
    "executor": _field_types(ExecutorSpec) | {"devices": list[NonNegativeInt], "slurm": dict[str, Any]},
    "slurm": _field_types(SlurmSettings)
    | {"time_limit": PositiveFloat | Duration, "setup": list[str], "sbatch": dict[str, str | int | float | bool]},
}
_NULLABLE = {
    kind: {name for name, hint in typing.get_type_hints(cls).items() if type(None) in typing.get_args(hint)}
    for kind, cls in (("protocol", Protocol), ("model", ModelSpec), ("dataset", DatasetSpec))
}
"""Fields whose ``null`` means something (no backbone override, the protocol's epochs, ...); elsewhere
``null`` means the default."""


@functools.cache
def _parser(kind: str) -> ArgumentParser:
    """Build the jsonargparse parser (anomalib's config machinery) of one part of the YAML, every key optional."""
    parser = ArgumentParser(exit_on_error=False, default_meta=False)
    for key, kind_type in _TYPES[kind].items():
        parser.add_argument(f"--{key}", type=kind_type)
    return parser


def _checked(data: Any, kind: str, where: str) -> dict[str, Any]:
    """Check a mapping's keys and value types with jsonargparse; return the typed values of its keys.

    Raises:
        ValueError: Naming the key, the expected type and where it is (file and entry).
    """
    if not isinstance(data, Mapping):
        msg = f"{where} must be a mapping, got {data!r}"
        raise ValueError(msg)
    unknown = sorted(set(data) - set(_TYPES[kind]))
    if unknown:
        msg = f"Unknown key(s) {unknown} in {where}; known keys: {sorted(_TYPES[kind])}"
        raise ValueError(msg)
    given = {key: value for key, value in data.items() if value is not None}  # null: the default
    try:
        values = json.loads(json.dumps(_parser(kind).parse_object(given).as_dict()))  # plain ints, lists
    except ArgumentError as error:
        msg = " ".join(f"Invalid value in {where}: {error}".split())
        raise ValueError(msg) from None
    return {key: values.get(key) for key in data if key in given or key in _NULLABLE.get(kind, ())}
