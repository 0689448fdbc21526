"""Benchmark configuration: YAML files -> typed dataclasses, named protocols.

The protocol follows the Skip-TS paper (M. Liu et al., "Anomaly Detection for Medical Images Using
Teacher-Student Model With Skip Connections and Multiscale Anomaly Consistency", IEEE TIM 2024,
Sec. IV): every model sees the same image size, the same data split and the same seeds, is trained
for a fixed number of epochs and is evaluated after the LAST epoch (no early stopping, no
best-epoch picking).

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
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import operator
import re
import types as types_module
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentError, ArgumentParser
from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt, restricted_string_type

DEFAULT_MODELS: tuple[str, ...] = ("SkipTS", "Padim", "Patchcore", "Stfpm", "ReverseDistillation")
"""Models run when a config names none: Skip-TS and anomalib's built-in baselines of Table II."""


@dataclass(frozen=True)
class Protocol:
    """Settings shared by every run of a benchmark, so that all models are compared alike.

    Args:
        name: Protocol name (``paper``, ``cpu-quick``, ``smoke`` or ``custom``).
        image_size: Input size ``(height, width)`` given to every model's pre-processor.
        backbone: Backbone given to every model whose constructor has a ``backbone`` argument
            (unless the model's ``init_args`` set one), a timm name with an optional pretrained tag
            (``wide_resnet50_2.tv_in1k``). ``None`` keeps each model's default. The weights each
            run got are recorded in its ``weights`` column.
        pre_trained: Value given to every model's ``pre_trained`` argument, where it has one.
            ``False`` gives random-initialised backbones (no ImageNet weights).
        max_epochs: Training epochs for models trained by gradient descent. Models whose
            ``trainer_arguments`` fix the epochs (PaDiM and PatchCore: one pass) keep their own value,
            and the value used is recorded per run.
        seeds: Default seeds (one run per seed).
        train_batch_size: Training batch size given to every datamodule.
        eval_batch_size: Evaluation batch size given to every datamodule.
        num_workers: Data-loader workers given to every datamodule.
        accelerator: Lightning accelerator (``auto``, ``cpu``, ``gpu``).
        run_validation: Run Lightning's validation loop during training. Off by default: the
            benchmark computes every metric itself from the raw test scores after the last epoch, so
            validation would only cost time.
        vary_split_with_seed: Pass the run's seed to each datamodule's ``seed_arg`` so that the
            split changes with the seed. Off by default: the split is fixed by the dataset's
            ``init_args`` and only the training seed changes.
        throughput_images: At most this many test images are timed for the throughput figure.
        overlay_images: Test images per run whose anomaly maps are kept for the overlay plots.
    """

    name: str = "custom"
    image_size: tuple[int, int] = (256, 256)
    backbone: str | None = "wide_resnet50_2"
    pre_trained: bool = True
    max_epochs: PositiveInt = 200
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    train_batch_size: PositiveInt = 16
    eval_batch_size: PositiveInt = 16
    num_workers: NonNegativeInt = 4
    accelerator: str = "auto"
    run_validation: bool = False
    vary_split_with_seed: bool = False
    throughput_images: PositiveInt = 64
    overlay_images: NonNegativeInt = 4

    def replace(self, **changes: Any) -> Protocol:
        """Return a copy with some fields changed (values are type-normalised).

        Args:
            **changes: Field names and new values.

        Returns:
            Protocol: The updated protocol.
        """
        return _build(Protocol, {**dataclasses.asdict(self), **_checked(changes, "protocol", "protocol")}, "protocol")


PROTOCOLS: dict[str, Protocol] = {
    # The paper's protocol (Sec. IV-B): 256x256, WideResNet50-2 teacher with torchvision's ImageNet
    # weights (timm tag tv_in1k, as in the authors' code) for every model with a backbone,
    # batch size 16, 200 epochs, last epoch, five seeds.
    "paper": Protocol(name="paper", backbone="wide_resnet50_2.tv_in1k"),
    # Small enough for HeadCT + BrainMRI x five models x three seeds in under an hour on 2 CPU cores.
    # Random-initialised backbones: ImageNet weights cannot be downloaded on the machines it targets.
    "cpu-quick": Protocol(
        name="cpu-quick",
        image_size=(128, 128),
        backbone="resnet18",
        pre_trained=False,
        max_epochs=8,
        seeds=(0, 1, 2),
        num_workers=0,
        accelerator="cpu",
        throughput_images=32,
    ),
    # A few seconds per run: for CI and for checking a config end to end.
    "smoke": Protocol(
        name="smoke",
        image_size=(64, 64),
        backbone="resnet18",
        pre_trained=False,
        max_epochs=1,
        seeds=(0,),
        train_batch_size=4,
        eval_batch_size=4,
        num_workers=0,
        accelerator="cpu",
        throughput_images=8,
        overlay_images=2,
    ),
}


@dataclass(frozen=True)
class ModelSpec:
    """One model of the benchmark.

    Args:
        name: Label used in tables, file names and run ids (unique within a config).
        class_path: An anomalib model name (``Padim``, ``SkipTS``; resolved with
            ``anomalib.models.get_model``) or a dotted class path.
        init_args: Constructor arguments. Protocol settings (backbone, pre_trained, image size)
            fill only the arguments that are not given here.
        max_epochs: Epochs for this model; ``None`` uses the protocol's.
        group: Section of the ablation table (Table IV) this model belongs to.
    """

    name: str
    class_path: str
    init_args: dict[str, Any] = field(default_factory=dict)
    max_epochs: PositiveInt | None = None
    group: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of the benchmark: any ``AnomalibDataModule`` in anomalib's class_path style.

    Args:
        name: Label used in tables, file names and run ids (unique within a config).
        class_path: Dotted path of the datamodule class (``anomalib_skipts.data.HeadCT``,
            ``anomalib.data.Folder``); a bare name is looked up in ``anomalib.data`` and then in
            ``anomalib_skipts.data``.
        init_args: Constructor arguments. Batch sizes and workers come from the protocol unless
            given here.
        seed_arg: Name of the datamodule argument that seeds its split; used only when the
            protocol's ``vary_split_with_seed`` is on.
    """

    name: str
    class_path: str
    init_args: dict[str, Any] = field(default_factory=dict)
    seed_arg: str | None = "seed"


@dataclass(frozen=True)
class RunSpec:
    """One run: a model trained and tested on a dataset with a seed under a protocol."""

    model: ModelSpec
    dataset: DatasetSpec
    seed: int
    protocol: Protocol

    @property
    def run_id(self) -> str:
        """Unique, file-name safe identifier of the run."""
        return f"{slugify(self.model.name)}__{slugify(self.dataset.name)}__seed{self.seed}"

    @property
    def max_epochs(self) -> int:
        """Epochs requested for this run (the model's own value, else the protocol's)."""
        return self.model.max_epochs if self.model.max_epochs is not None else self.protocol.max_epochs

    def fingerprint(self) -> str:
        """Hash of everything that determines the run's result.

        A finished run is skipped on restart only if its fingerprint is unchanged, so editing a
        config re-runs exactly the runs it affects.

        Returns:
            str: 16 hexadecimal characters.
        """
        protocol = dataclasses.asdict(self.protocol)
        for key in ("name", "throughput_images", "overlay_images"):  # do not change the scores
            protocol.pop(key)
        payload = {
            "model": dataclasses.asdict(self.model) | {"group": None},
            "dataset": dataclasses.asdict(self.dataset),
            "seed": self.seed,
            "protocol": protocol,
            "max_epochs": self.max_epochs,
        }
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class BenchmarkConfig:
    """A whole benchmark: models x datasets x seeds under one protocol.

    Args:
        name: Benchmark name (shown in the report).
        output_dir: Results folder (per-run CSV, summary, plots).
        protocol: Shared settings.
        models: Models to run.
        datasets: Datasets to run them on.
        seeds: Seeds; one run per model, dataset and seed.
        kde_models: Names of the models whose score distributions are plotted.
        run_timeout: Seconds a run may take before it is stopped and recorded as failed (``None``: no limit).
        run_memory_limit: GB of resident memory a run's process tree may use before it is killed and
            recorded as failed (``None``: no limit).
        isolate: Run each run in its own child process (a crash, an out-of-memory kill or a limit
            then ends that run only). ``False`` runs in-process (no limits; for debugging).
        source: The YAML file the config was read from.
    """

    name: str
    output_dir: Path
    protocol: Protocol
    models: tuple[ModelSpec, ...]
    datasets: tuple[DatasetSpec, ...]
    seeds: tuple[int, ...]
    kde_models: tuple[str, ...] = ()
    source: Path | None = None
    run_timeout: float | None = None
    run_memory_limit: float | None = None
    isolate: bool = True

    def runs(self) -> list[RunSpec]:
        """Expand the grid into runs.

        Seeds are the outer loop and models the inner one, so every model has finished a run early
        on (a per-model ETA is then available) and a partial benchmark already covers every model.

        Returns:
            list[RunSpec]: The runs, in execution order.
        """
        return [
            RunSpec(model=model, dataset=dataset, seed=seed, protocol=self.protocol)
            for seed in self.seeds
            for dataset in self.datasets
            for model in self.models
        ]

    def select(
        self,
        models: Sequence[str] | None = None,
        datasets: Sequence[str] | None = None,
        seeds: Sequence[int] | None = None,
    ) -> BenchmarkConfig:
        """Restrict the benchmark to some models, datasets or seeds.

        Args:
            models: Model names to keep (``None``: all).
            datasets: Dataset names to keep (``None``: all).
            seeds: Seeds to run instead of the configured ones (``None``: unchanged).

        Returns:
            BenchmarkConfig: The restricted config.

        Raises:
            ValueError: If a name is not in the config.
        """
        kept_models = _keep(self.models, models, "model")
        kept_datasets = _keep(self.datasets, datasets, "dataset")
        return dataclasses.replace(
            self,
            models=kept_models,
            datasets=kept_datasets,
            seeds=tuple(int(seed) for seed in seeds) if seeds is not None else self.seeds,
        )


def get_protocol(name: str) -> Protocol:
    """Return a named protocol.

    Args:
        name: ``paper``, ``cpu-quick`` or ``smoke`` (``_`` and ``-`` are interchangeable).

    Returns:
        Protocol: The protocol.

    Raises:
        KeyError: If the name is unknown.
    """
    key = name.replace("_", "-").lower()
    if key not in PROTOCOLS:
        msg = f"Unknown protocol {name!r}; known protocols: {sorted(PROTOCOLS)}"
        raise KeyError(msg)
    return PROTOCOLS[key]


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
        config = dataclasses.replace(config, protocol=config.protocol.replace(max_epochs=max_epochs))
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
    protocol = _build(Protocol, {**dataclasses.asdict(Protocol()), **data["protocol"]}, where="protocol")
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
    return _build(ModelSpec, {"name": class_path.rsplit(".", 1)[-1], **values, "class_path": class_path}, "model")


def _parse_dataset(item: Mapping[str, Any], where: str) -> DatasetSpec:
    values = _checked(item, "dataset", where)
    if not values.get("class_path"):
        msg = f"A dataset entry needs a 'class_path' ({where}): {dict(item)!r}"
        raise ValueError(msg)
    return _build(DatasetSpec, {"name": values["class_path"].rsplit(".", 1)[-1], **values}, "dataset")


def _build(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """Instantiate a config dataclass (lists -> tuples, a single image side -> a square size)."""
    values = dict(values)
    if cls is Protocol:
        size = values["image_size"]
        values["image_size"] = (int(size), int(size)) if isinstance(size, int) else tuple(int(v) for v in size)
        values["seeds"] = tuple(int(v) for v in values["seeds"])
    if "init_args" in values:
        values["init_args"] = dict(values["init_args"] or {})
    try:
        return cls(**values)
    except TypeError as error:
        msg = f"Invalid {where} entry {dict(values)!r}: {error}"
        raise ValueError(msg) from error


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


def _keep(specs: tuple[Any, ...], names: Sequence[str] | None, kind: str) -> tuple[Any, ...]:
    if names is None:
        return specs
    known = {spec.name for spec in specs}
    missing = sorted(set(names) - known)
    if missing:
        msg = f"Unknown {kind}(s) {missing}; the config has {sorted(known)}"
        raise ValueError(msg)
    return tuple(spec for spec in specs if spec.name in set(names))


def slugify(text: str) -> str:
    """Turn a model or dataset name into a file-name safe token (``"M1+M2"`` -> ``"M1-M2"``).

    Args:
        text: The name.

    Returns:
        str: Letters, digits, ``.``, ``_`` and single ``-`` only.
    """
    return re.sub(r"[^A-Za-z0-9._]+", "-", text).strip("-") or "x"
