"""Run a benchmark config through anomalib's own ``anomalib benchmark`` pipeline, where it allows.

anomalib 2.7's pipeline (``anomalib.pipelines.Benchmark``) trains each model with
``Engine.fit`` and reports ``Engine.test`` metrics for a grid of models, datamodules and seeds. It
is a useful cross-check of the Skip-TS benchmark (IEEE TIM 2024 protocol) but it cannot express the
whole protocol; :data:`LIMITATIONS` lists what it cannot do, and :func:`to_anomalib_benchmark`
translates what it can, reporting what it had to leave out.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from .adapters import datamodule_init_args, model_recipe, resolve_datamodule_class
from .specs import BenchmarkConfig, RunSpec

PIPELINE_DIR = "anomalib_pipeline"

LIMITATIONS: tuple[str, ...] = (
    "Datamodules: only classes on `anomalib.data` (`get_datamodule` looks the last part of the class path up "
    "there): anomalib's own and the project's, which the package registers there (HeadCT, MedicalFolder, "
    "HeadPhantom, VolumeFolder...; the project's BMAD as `MedicalBMAD`, beside anomalib's own `BMAD`). "
    "Other datamodules cannot be used.",
    "Models: names known to `anomalib.models.get_model` only (SkipTS is, through the package's import hook); "
    "init_args must be plain YAML, so the shared input size cannot be given to models without an "
    "`image_size` argument: they use their default pre-processor (256x256 for PaDiM, PatchCore, STFPM, RD).",
    "Epochs: the job builds `Engine(accelerator, devices, default_root_dir)` only; the epoch count is passed "
    "through Lightning's `PL_TRAINER_MAX_EPOCHS` environment variable, one value for all models "
    "(models' own `trainer_arguments`, e.g. PaDiM's single epoch, still win).",
    "Metrics: anomalib's default evaluator (image/pixel AUROC and F1 at the F1-adaptive threshold on "
    "normalised scores); no Youden threshold, no accuracy, no FLOPs or parameter counts, and no throughput "
    "(removed upstream, anomalib issue 2054).",
    "Robustness: not restartable (results are written once, after all jobs), and a model that fails while "
    "being built (STFPM without ImageNet weights) aborts the whole grid because jobs are built outside the "
    "runner's try block.",
    "Last epoch: satisfied (`engine.test(model, datamodule)` tests the current weights).",
    "Seeds: under a plain `anomalib benchmark` each model is built before its job seeds the run "
    "(`BenchmarkJobGenerator` calls `get_model` before `BenchmarkJob.run` calls `seed_everything`), so what a "
    "model draws at construction (Skip-TS's student, RD's decoder, PaDiM's random feature subset) does not "
    "follow the seed. `--anomalib-pipeline` seeds just before each model is built as well.",
    "Mixed models: anomalib 2.7 collects the results in a table only when every row has the same keys, so a "
    "grid whose models have different init_args (SkipTS's image_size, PaDiM without it) fails at the end "
    "under `anomalib benchmark`. `--anomalib-pipeline` runs anomalib's CLI with rows of any keys collected "
    "(missing values empty).",
)


def to_anomalib_benchmark(config: BenchmarkConfig) -> tuple[dict[str, Any], list[str]]:
    """Translate a benchmark config into an ``anomalib benchmark`` config.

    Args:
        config: The benchmark.

    Returns:
        tuple[dict[str, Any], list[str]]: The pipeline config, and one note per model or dataset
        that had to be left out (with the reason).
    """
    import anomalib.data

    notes: list[str] = []
    probe_dataset = config.datasets[0]
    models = []
    for model in config.models:
        if "." in model.class_path:
            notes.append(f"model {model.name}: dotted class paths are rejected by get_model; left out")
            continue
        run = RunSpec(model=model, dataset=probe_dataset, seed=config.seeds[0], protocol=config.protocol)
        try:
            recipe = model_recipe(run)
        except (ValueError, ImportError) as error:
            notes.append(f"model {model.name}: {error}; left out")
            continue
        model_class = recipe.model_class
        init_args = {
            key: _plain(value)
            for key, value in recipe.init_args.items()
            if key not in {"pre_processor", "post_processor", "evaluator", "visualizer"}
        }
        if recipe.encoder is not None:  # the benchmark swaps RD's encoder after building it; a YAML config cannot
            init_args["pre_trained"] = True
            notes.append(
                f"model {model.name}: gets timm's default weights for {init_args['backbone']} instead of "
                f"{recipe.encoder} (the pipeline cannot replace its encoder)"
            )
        models.append({"class_path": model_class.__name__, "init_args": init_args})
    datasets = []
    for dataset in config.datasets:
        run = RunSpec(model=config.models[0], dataset=dataset, seed=config.seeds[0], protocol=config.protocol)
        datamodule_class = resolve_datamodule_class(dataset.class_path)
        name = next((name for name, value in vars(anomalib.data).items() if value is datamodule_class), None)
        if name is None:
            notes.append(f"dataset {dataset.name}: {datamodule_class.__name__} is not in anomalib.data; left out")
            continue
        init_args = datamodule_init_args(run, datamodule_class)
        datasets.append({"class_path": name, "init_args": _absolute(_plain(init_args))})
    accelerator = config.protocol.accelerator
    if accelerator not in {"cpu", "cuda"}:
        import torch

        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    pipeline = {
        "accelerator": accelerator,
        "benchmark": {
            "seed": {"grid": list(config.seeds)},
            "model": {"grid": models},
            "data": {"grid": datasets},
        },
    }
    return pipeline, notes


def run_anomalib_benchmark(config: BenchmarkConfig, timeout: float | None = None) -> Path:
    """Write the translated config and run it with the ``anomalib benchmark`` command.

    The pipeline runs in a subprocess (it redirects all logging to a file) with its working
    directory in ``<output_dir>/anomalib_pipeline``, where it writes ``runs/benchmark/<date>/results.csv``.

    Args:
        config: The benchmark.
        timeout: Seconds before the subprocess is stopped (``None``: no limit).

    Returns:
        Path: The ``results.csv`` written by anomalib.

    Raises:
        RuntimeError: If nothing could be translated or anomalib wrote no results.
    """
    pipeline, notes = to_anomalib_benchmark(config)
    if not pipeline["benchmark"]["model"]["grid"] or not pipeline["benchmark"]["data"]["grid"]:
        msg = "Nothing to run through anomalib's pipeline: " + "; ".join(notes)
        raise RuntimeError(msg)
    workdir = (config.output_dir / PIPELINE_DIR).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "benchmark.yaml"
    config_path.write_text(yaml.safe_dump(pipeline, sort_keys=False), encoding="utf-8")
    (workdir / "notes.txt").write_text("\n".join(notes) + "\n", encoding="utf-8")
    before = set(workdir.glob("runs/benchmark/*/results.csv"))
    env = {**os.environ, "PL_TRAINER_MAX_EPOCHS": str(config.protocol.max_epochs)}
    cli = "from anomalib_skipts.benchmark.anomalib_pipeline import anomalib_cli; anomalib_cli()"
    command = [sys.executable, "-c", cli, "benchmark", "--config", config_path.name]
    subprocess.run(command, cwd=workdir, env=env, check=False, timeout=timeout)
    written = sorted(set(workdir.glob("runs/benchmark/*/results.csv")) - before)
    if not written:
        msg = f"anomalib's benchmark pipeline wrote no results; see {workdir / 'runs' / 'pipeline.log'}"
        raise RuntimeError(msg)
    return written[-1]


def anomalib_cli() -> None:
    """Run the ``anomalib`` command line with the project's classes registered and its benchmark fixed.

    The project's model and datamodules are registered even without the ``.pth`` hook (a source
    checkout); :func:`fix_anomalib_benchmark` is applied.
    """
    from anomalib.cli.cli import main

    import anomalib_skipts.data
    import anomalib_skipts.models  # noqa: F401

    fix_anomalib_benchmark()
    main()


def fix_anomalib_benchmark() -> None:
    """Make anomalib 2.7's benchmark pipeline seed model construction and collect rows of any keys.

    Its job generator builds each model before the job seeds the run; here the seed is also set
    just before the model is built, so that what a model draws at construction follows the run's
    seed. ``BenchmarkJob.collect`` gets rows with different keys (models with different
    ``init_args``) into one table, missing values empty, instead of failing.
    """
    import pandas as pd
    from anomalib.pipelines.benchmark import generator
    from anomalib.pipelines.benchmark.job import BenchmarkJob
    from lightning import seed_everything

    grid = generator.get_iterator_from_grid_dict

    def seeded_grid(args: dict[str, Any]) -> Iterator[dict[str, Any]]:
        for container in grid(args):
            seed_everything(container["seed"], verbose=False)  # the generator builds the model right after this
            yield container

    generator.get_iterator_from_grid_dict = seeded_grid
    BenchmarkJob.collect = staticmethod(pd.DataFrame)  # type: ignore[method-assign]


def _absolute(init_args: dict[str, Any]) -> dict[str, Any]:
    """Make a relative ``root`` absolute: the pipeline runs in its own working directory."""
    if init_args.get("root") is not None:
        init_args["root"] = str(Path(init_args["root"]).resolve())
    return init_args


def _plain(value: Any) -> Any:
    """YAML-safe copy of a value (enums -> values, paths -> strings, tuples -> lists)."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, Enum):
        return _plain(value.value)
    if isinstance(value, Path):
        return str(value)
    return value
