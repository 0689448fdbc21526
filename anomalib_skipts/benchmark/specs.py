"""The benchmark's settings as typed values: protocol, models, datasets, runs, the whole config.

The protocol follows the Skip-TS paper (M. Liu et al., "Anomaly Detection for Medical Images Using
Teacher-Student Model With Skip Connections and Multiscale Anomaly Consistency", IEEE TIM 2024,
Sec. IV): every model sees the same image size, the same data split and the same seeds, is trained
for a fixed number of epochs and is evaluated after the LAST epoch (no early stopping, no
best-epoch picking). The YAML files that describe them are read by :mod:`.config`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonargparse.typing import NonNegativeInt, PositiveInt

from .executors import ExecutorSpec

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
        return build_spec(Protocol, {**dataclasses.asdict(self), **changes}, "protocol")


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
            protocol's ``vary_split_with_seed`` is on. ``auto`` (the default) takes the datamodule's
            own: ``split_seed`` for the project's datamodules, anomalib's ``seed`` for anomalib's.
            ``None``: the split never varies.
    """

    name: str
    class_path: str
    init_args: dict[str, Any] = field(default_factory=dict)
    seed_arg: str | None = "auto"


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
        executor: Where the runs execute (this machine, serially or in parallel, or SLURM jobs).
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
    executor: ExecutorSpec = field(default_factory=ExecutorSpec)

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


def build_spec(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """Instantiate a settings dataclass from plain values (lists -> tuples, one image side -> a square).

    Args:
        cls: ``Protocol``, ``ModelSpec`` or ``DatasetSpec``.
        values: Field values (already type-checked by :mod:`.config`).
        where: Name of the entry, for the error message.

    Returns:
        The instance.

    Raises:
        ValueError: If a field is missing or unknown.
    """
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
