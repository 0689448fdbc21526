r"""Compressed OpenVINO exports of Skip-TS and anomalib's Reverse Distillation: does INT8 decide like fp32.

Skip-TS: M. Liu et al., IEEE Transactions on Instrumentation and Measurement, 2024. For each dataset
and model (Skip-TS and anomalib's ``ReverseDistillation``, side by side), one run trains the model
under the ``cpu-quick`` protocol (128x128, random-initialised ResNet-18 teacher / encoder, 8 epochs,
batch 16, seed 0; ``configs/benchmark/cpu_quick.yaml``), exports it through anomalib's
``Engine.export`` as an OpenVINO IR in fp32, FP16, INT8_PTQ and INT8_ACQ (image AUROC, ``max_drop``
0.01) and runs every IR in anomalib's ``OpenVINOInferencer`` on the CPU. Skip-TS's own export keeps
its anomaly-map head in float in INT8 (``anomalib_skipts.models.skip_ts.export``); Reverse
Distillation gets anomalib's plain INT8. Measured per IR:

- image AUROC (the inferencer's ``pred_score``) on the test set;
- the Spearman correlation of its scores with the fp32 IR's (f32 precision);
- the share of test images whose normal/abnormal decision (the exported model's ``pred_label``, at
  the threshold exported with it) is the fp32 IR's;
- images/s at batch 1 (raw image in, anomaly map and score out, as the inferencer runs it; the
  median of ``--rounds`` rounds, the IRs of one model alternating) and the speed-up over the fp32 IR.

The fp32 IR runs twice: at f32 inference precision (the reference), and at the CPU plugin's default
precision (bf16 on CPUs with bf16 units). Compressed IRs run at the plugin's default. Results go to
``results.json`` and ``results.md`` in the output folder; a rerun reuses the checkpoints trained there.

Example:
    .. code-block:: bash

        HF_HUB_OFFLINE=1 python tools/compression.py --datasets phantom headct \
            --headct-root ../shared/data/headct --output results/compression
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomalib_skipts.benchmark.adapters import build_datamodule, build_model
from anomalib_skipts.benchmark.config import get_protocol
from anomalib_skipts.benchmark.cost import machine_description
from anomalib_skipts.benchmark.metrics import image_metrics
from anomalib_skipts.benchmark.specs import DatasetSpec, ModelSpec, Protocol, RunSpec

logger = logging.getLogger(__name__)

MODELS = ("SkipTS", "ReverseDistillation")
VARIANTS = (
    # name, compression type, OpenVINO plugin config
    ("fp32 (f32 precision)", None, {"INFERENCE_PRECISION_HINT": "f32"}),
    ("fp32 (plugin default)", None, {}),
    ("FP16", "FP16", {}),
    ("INT8_PTQ", "INT8_PTQ", {}),
    ("INT8_ACQ", "INT8_ACQ", {}),
)
REFERENCE = VARIANTS[0][0]


def progress(message: str) -> None:
    """Print a progress line with the time (long runs)."""
    print(f"[{datetime.datetime.now(datetime.UTC):%H:%M:%S}] {message}", flush=True)


DATASETS = {"phantom": "anomalib_skipts.data.HeadPhantom", "headct": "anomalib_skipts.data.HeadCT"}


def run_spec(model_name: str, dataset: str, root: Path, protocol: Protocol) -> RunSpec:
    """Describe one model on one dataset as a benchmark run, so that it is built as the benchmark builds it.

    Args:
        model_name: ``SkipTS`` or ``ReverseDistillation``.
        dataset: ``phantom`` (generated into ``root`` when missing) or ``headct`` (read from ``root``).
        root: Dataset folder.
        protocol: The benchmark protocol (backbone, weights, input size, batch sizes, seed).

    Returns:
        The run (its first seed).

    Raises:
        ValueError: If the model or the dataset is not one of this study's.
    """
    if model_name not in MODELS:
        msg = f"model {model_name!r} is not known: use one of {', '.join(MODELS)}."
        raise ValueError(msg)
    if dataset not in DATASETS:
        msg = f"dataset {dataset!r} is not known: use {' or '.join(map(repr, DATASETS))}."
        raise ValueError(msg)
    init_args: dict[str, Any] = {"root": str(root)}
    if dataset == "phantom":  # half of its test images set the threshold exported with the model (from_test)
        init_args |= {"image_size": protocol.image_size[0], "val_split_mode": "from_test"}
    else:  # HeadCT's own: the whole test split also validates (same_as_test)
        init_args["split_seed"] = protocol.seeds[0]
    return RunSpec(
        model=ModelSpec(name=model_name, class_path=model_name),
        dataset=DatasetSpec(name=dataset, class_path=DATASETS[dataset], init_args=init_args),
        seed=protocol.seeds[0],
        protocol=protocol,
    )


def load_test_images(datamodule: Any) -> tuple[list[torch.Tensor], np.ndarray]:
    """Raw test images (before pre-processing, as exported models take them) and their labels.

    The images are clipped to [0, 1]: the dataset's resizing can leave values a few 1e-7 above 1, and
    anomalib's ``OpenVINOInferencer`` then takes the image for an 8-bit one and divides it by 255 (in
    place, in the caller's tensor), which scores a black image (measured on HeadCT: 49 of 140 test
    images, image AUROC 0.565 instead of the model's 0.604).
    """
    images, labels = [], []
    for batch in datamodule.test_dataloader():
        images.extend(image.float().clamp(0.0, 1.0) for image in batch.image)
        labels.extend(int(label) for label in batch.gt_label)
    return images, np.array(labels)


def predict_each(inferencer: Any, images: Sequence[torch.Tensor]) -> list[Any]:
    """Predictions of every image, one image per call (batch 1), on copies (inferencers may scale in place)."""
    return [inferencer.predict(image.clone()) for image in images]


def field(predictions: Sequence[Any], name: str) -> np.ndarray:
    """One field (``pred_score``, ``pred_label``) of each prediction, as a float array."""
    return np.array([float(np.asarray(getattr(prediction, name)).reshape(-1)[0]) for prediction in predictions])


def run_inferencer(inferencer: Any, images: Sequence[torch.Tensor]) -> np.ndarray:
    """Image scores of every image, one image per call (batch 1), on copies (inferencers may scale in place)."""
    return field(predict_each(inferencer, images), "pred_score")


def throughput(inferencers: dict[str, Any], image: torch.Tensor, count: int, rounds: int) -> dict[str, float]:
    """Images/s at batch 1 of each inferencer: median over rounds, the inferencers alternating."""
    samples: dict[str, list[float]] = {name: [] for name in inferencers}
    for inferencer in inferencers.values():  # warm-up
        for _ in range(3):
            inferencer.predict(image)
    for _ in range(rounds):
        for name, inferencer in inferencers.items():
            start = time.perf_counter()
            for _ in range(count):
                inferencer.predict(image)
            samples[name].append(count / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in samples.items()}


def train_or_reuse(run: RunSpec, datamodule: Any, folder: Path) -> tuple[Any, Any]:
    """Train the run's model under its protocol, or load the checkpoint an earlier run trained in ``folder``.

    Returns:
        The trained model and its engine.
    """
    from anomalib.engine import Engine

    model_name, protocol = run.model.name, run.protocol
    model = build_model(run, raw_scores=False)  # exported with its threshold, tested by Engine.test
    engine = Engine(
        default_root_dir=folder,
        max_epochs=protocol.max_epochs,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        logger=False,
    )
    checkpoints = sorted(folder.rglob("model.ckpt"), key=lambda path: path.stat().st_mtime)
    if checkpoints:  # a rerun measures the same trained model
        progress(f"{model_name}: reusing the trained model {checkpoints[-1]}")
        return type(model).load_from_checkpoint(checkpoints[-1]), engine
    progress(f"{model_name}: training ({protocol.max_epochs} epochs, {protocol.image_size}, {protocol.backbone})")
    engine.fit(model=model, datamodule=datamodule)
    return model, engine


def export_variants(
    model: Any,
    engine: Any,
    datamodule: Any,
    image_size: Any,
    folder: Path,
    variants: Sequence[tuple[str, str | None, dict[str, str]]] = VARIANTS,
) -> dict[str, Path]:
    """Export the trained model as one OpenVINO IR per compression through anomalib's ``Engine.export``.

    Returns:
        The IR of each variant (both fp32 variants share one).
    """
    from anomalib.deploy import CompressionType, ExportType
    from anomalib.metrics import AUROC

    paths: dict[str, Path] = {}
    for variant, compression, _ in variants:
        if compression is None and variant != REFERENCE:
            paths[variant] = paths[REFERENCE]
            continue
        progress(f"export {variant}")
        options: dict[str, Any] = {}
        if compression is not None:
            options["compression_type"] = CompressionType[compression]
        if compression in {"INT8_PTQ", "INT8_ACQ"}:
            options["datamodule"] = datamodule
        if compression == "INT8_ACQ":
            options |= {"metric": AUROC(fields=["pred_score", "gt_label"]), "max_drop": 0.01}
        paths[variant] = engine.export(
            model=model,
            export_type=ExportType.OPENVINO,
            export_root=folder / variant.split()[0],
            input_size=image_size,
            **options,
        )
    return paths


def measure_variants(
    paths: dict[str, Path],
    images: list[torch.Tensor],
    labels: np.ndarray,
    count: int,
    rounds: int,
    variants: Sequence[tuple[str, str | None, dict[str, str]]] = VARIANTS,
) -> dict[str, dict[str, Any]]:
    """Score, decide and time every IR in anomalib's ``OpenVINOInferencer``, against the fp32 IR.

    Returns:
        Per variant: image AUROC, Spearman of its scores with fp32's, share of decisions equal to
        fp32's, images/s at batch 1, speed-up over fp32 and IR weights size.
    """
    from anomalib.deploy import OpenVINOInferencer
    from scipy.stats import spearmanr

    inferencers = {
        variant: OpenVINOInferencer(path=paths[variant], device="CPU", config=config) for variant, _, config in variants
    }
    scores, decisions = {}, {}
    for variant, inferencer in inferencers.items():
        progress(f"scoring the {len(images)} test images with {variant}")
        predictions = predict_each(inferencer, images)
        scores[variant], decisions[variant] = field(predictions, "pred_score"), field(predictions, "pred_label")
    progress(f"images/s at batch 1 ({rounds} rounds of {count} images)")
    speeds = throughput(inferencers, images[0], count, rounds)
    return {
        variant: {
            "image_auroc": image_metrics(labels, scores[variant]).auroc,
            "spearman_vs_fp32": float(spearmanr(scores[variant], scores[REFERENCE]).statistic),
            "decisions_unchanged": float(np.mean(decisions[variant] == decisions[REFERENCE])),
            "images_per_s": speeds[variant],
            "speedup_vs_fp32": speeds[variant] / speeds[REFERENCE],
            "ir_mb": paths[variant].with_suffix(".bin").stat().st_size / 2**20,
        }
        for variant in inferencers
    }


def benchmark_dataset(
    name: str,
    root: Path,
    output: Path,
    count: int,
    rounds: int,
    variants: Sequence[tuple[str, str | None, dict[str, str]]] = VARIANTS,
) -> dict[str, Any]:
    """Train Skip-TS and Reverse Distillation on one dataset (cpu-quick), export every variant and measure it.

    Returns:
        The dataset's test-set sizes and, per model, the torch model's AUROC and the per-variant rows.
    """
    from lightning.pytorch import seed_everything

    protocol = get_protocol("cpu-quick")
    datamodule = build_datamodule(run_spec(MODELS[0], name, root, protocol))
    result: dict[str, Any] = {"dataset": name, "root": str(root), "models": {}}
    for model_name in MODELS:
        seed_everything(protocol.seeds[0], workers=True)
        folder = output / name / model_name
        model, engine = train_or_reuse(run_spec(model_name, name, root, protocol), datamodule, folder / "train")
        torch_auroc = engine.test(model=model, datamodule=datamodule, verbose=False)[0]["image_AUROC"]
        images, labels = load_test_images(datamodule)
        paths = export_variants(model, engine, datamodule, protocol.image_size, folder, variants)
        result |= {"num_test": len(images), "num_abnormal": int(labels.sum())}
        result["models"][model_name] = {
            "torch_image_auroc": float(torch_auroc),
            "variants": measure_variants(paths, images, labels, count, rounds, variants),
        }
    return result


def render_markdown(results: dict[str, Any]) -> str:
    """Render the results as a Markdown table, one row per dataset, model and variant."""
    lines = [
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']}; openvino {results['openvino']}, nncf {results['nncf']}; "
        f"load average at start {results['load_average']}; date {results['date']}",
        "",
        "| dataset | model | IR | image AUROC | Spearman vs fp32 | decisions as fp32 | images/s (batch 1) "
        "| speed-up vs fp32 | IR weights MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset in results["datasets"]:
        for model, measured in dataset["models"].items():
            for variant, row in measured["variants"].items():
                lines.append(
                    f"| {dataset['dataset']} ({dataset['num_test']} test images) | {model} | {variant} "
                    f"| {row['image_auroc']:.3f} | {row['spearman_vs_fp32']:.3f} "
                    f"| {100 * row['decisions_unchanged']:.1f}% | {row['images_per_s']:.1f} "
                    f"| {row['speedup_vs_fp32']:.2f}x | {row['ir_mb']:.1f} |"
                )
    return "\n".join(lines) + "\n"


def selected_variants(compressions: Sequence[str]) -> tuple[tuple[str, str | None, dict[str, str]], ...]:
    """Select the variants to measure: both fp32 ones (the reference) and the chosen compressions."""
    return tuple(variant for variant in VARIANTS if variant[1] is None or variant[1] in compressions)


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="tools/compression.py")
    parser.add_argument("--datasets", nargs="+", default=["phantom", "headct"], choices=["phantom", "headct"])
    parser.add_argument("--phantom-root", type=Path, default=Path("datasets/head_phantom_128"))
    parser.add_argument("--headct-root", type=Path, default=Path("../shared/data/headct"))
    parser.add_argument("--output", type=Path, default=Path("results/compression"))
    parser.add_argument("--count", type=int, default=30, help="images per speed round")
    parser.add_argument("--rounds", type=int, default=5, help="speed rounds (median)")
    parser.add_argument(
        "--compressions",
        nargs="+",
        default=["FP16", "INT8_PTQ", "INT8_ACQ"],
        choices=["FP16", "INT8_PTQ", "INT8_ACQ"],
        help="compressed IRs measured beside fp32 (INT8_ACQ, which re-scores the validation set many times, is slow)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write ``results.json`` and ``results.md``.

    Returns:
        The exit status.
    """
    import os

    import nncf
    import openvino

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("anomalib_skipts").setLevel(logging.INFO)  # Skip-TS's export says what it kept in float
    args.output.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "command": shlex.join(["python", "tools/compression.py", *(argv or sys.argv[1:])]),
        "machine": machine_description(torch.device("cpu"))["description"],
        "date": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d}",
        "openvino": openvino.__version__,
        "nncf": nncf.__version__,
        "load_average": [round(value, 1) for value in os.getloadavg()],
        "datasets": [],
    }
    roots = {"phantom": args.phantom_root, "headct": args.headct_root}
    for name in args.datasets:
        variants = selected_variants(args.compressions)
        results["datasets"].append(benchmark_dataset(name, roots[name], args.output, args.count, args.rounds, variants))
        (args.output / "results.json").write_text(json.dumps(results, indent=2))
    markdown = render_markdown(results)
    (args.output / "results.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
