r"""Compressed OpenVINO exports of Skip-TS: speed and accuracy of fp32, FP16 and INT8 (issue 10).

Skip-TS: M. Liu et al., IEEE Transactions on Instrumentation and Measurement, 2024. For each dataset,
one run trains Skip-TS under the ``cpu-quick`` protocol (128x128, random-initialised ResNet-18
teacher, 8 epochs, batch 16, seed 0; ``configs/benchmark/cpu_quick.yaml``), exports it through
anomalib's unmodified ``Engine.export`` as an OpenVINO IR in fp32, FP16, INT8_PTQ and INT8_ACQ
(image AUROC, ``max_drop`` 0.01), plus, as a diagnostic outside anomalib's export, an INT8 model
whose anomaly-map head NNCF leaves in float; it runs every IR in anomalib's ``OpenVINOInferencer``
on the CPU:

- image AUROC (Eq. 8 scores) on the test set, from the inferencer's ``pred_score``;
- the Spearman correlation of each model's scores with the fp32 IR's;
- images/s at batch 1 (raw image in, anomaly map and score out, as the inferencer runs it; the
  median of ``--rounds`` rounds, the models alternating).

The fp32 IR runs twice: at f32 inference precision, and at the CPU plugin's default precision
(bf16 on CPUs with bf16 units). Compressed IRs run at the plugin's default. Results go to
``results.json`` and ``results.md`` in the output folder; a rerun reuses the checkpoint trained there.

Example:
    .. code-block:: bash

        HF_HUB_OFFLINE=1 python -m anomalib_skipts.benchmark.compression --datasets phantom headct \
            --headct-root ../shared/data/headct --output results/compression
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import get_protocol
from .metrics import image_metrics

logger = logging.getLogger(__name__)

VARIANTS = (
    # name, compression type, OpenVINO plugin config
    ("fp32 (f32 precision)", None, {"INFERENCE_PRECISION_HINT": "f32"}),
    ("fp32 (plugin default)", None, {}),
    ("FP16", "FP16", {}),
    ("INT8_PTQ", "INT8_PTQ", {}),
    ("INT8_ACQ", "INT8_ACQ", {}),
    ("INT8_PTQ, head in float", "head_float", {}),
)
HEAD_OPERATIONS = ("MatMul", "ReduceSum", "ReduceL2", "Divide", "Multiply")
"""OpenVINO operation types of the anomaly-map head (Eq. 1 cosine, fused Eq. 7 products); the teacher
and the student (convolutions, folded batch norms, additions) have none of them."""


def quantize_head_in_float(fp32_path: Path, datamodule: Any, output: Path) -> Path:
    """INT8 post-training quantization as anomalib's ``INT8_PTQ`` does it, but with the head left in float.

    anomalib passes no options to NNCF, so this is not reachable through ``Engine.export``: it is
    measured here to show what quantizing the anomaly-map head costs.

    Args:
        fp32_path: The fp32 OpenVINO IR exported by anomalib.
        datamodule: Its validation images calibrate, as in anomalib.
        output: Folder of the quantized IR.

    Returns:
        The path of the quantized IR.
    """
    import nncf
    import openvino as ov

    calibration = nncf.Dataset(datamodule.val_dataloader(), lambda batch: batch["image"])
    model = nncf.quantize(
        ov.Core().read_model(str(fp32_path)), calibration, ignored_scope=nncf.IgnoredScope(types=list(HEAD_OPERATIONS))
    )
    output.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, output / "model.xml", compress_to_fp16=False)
    return output / "model.xml"


def progress(message: str) -> None:
    """Print a progress line with the time (long runs)."""
    print(f"[{datetime.datetime.now(datetime.UTC):%H:%M:%S}] {message}", flush=True)


def build_datamodule(name: str, root: Path, protocol: Any) -> Any:
    """Build the datamodule of one dataset under the protocol's batch sizes and seed.

    Args:
        name: ``phantom`` (generated into ``root`` when missing) or ``headct`` (read from ``root``).
        root: Dataset folder.
        protocol: The benchmark protocol.

    Returns:
        The datamodule.
    """
    from anomalib_skipts.data import HeadCT, HeadPhantom

    common = {
        "train_batch_size": protocol.train_batch_size,
        "eval_batch_size": protocol.eval_batch_size,
        "num_workers": protocol.num_workers,
    }
    if name == "phantom":
        return HeadPhantom(root=root, image_size=protocol.image_size[0], **common)
    if name == "headct":
        return HeadCT(root=root, split_seed=protocol.seeds[0], **common)
    msg = f"dataset {name!r} is not known: use 'phantom' or 'headct'."
    raise ValueError(msg)


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


def run_inferencer(inferencer: Any, images: Sequence[torch.Tensor]) -> np.ndarray:
    """Image scores of every image, one image per call (batch 1), on copies (inferencers may scale in place)."""
    return np.array(
        [float(np.asarray(inferencer.predict(image.clone()).pred_score).reshape(-1)[0]) for image in images]
    )


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


def benchmark_dataset(name: str, root: Path, output: Path, count: int, rounds: int) -> dict[str, Any]:
    """Train Skip-TS on one dataset (cpu-quick protocol), export every variant and measure it.

    Returns:
        Per-variant AUROC, Spearman correlation with fp32, images/s and IR size.
    """
    from anomalib.deploy import CompressionType, ExportType, OpenVINOInferencer
    from anomalib.engine import Engine
    from anomalib.metrics import AUROC
    from lightning.pytorch import seed_everything
    from scipy.stats import spearmanr

    from anomalib_skipts.models import SkipTS

    protocol = get_protocol("cpu-quick")
    seed_everything(protocol.seeds[0], workers=True)
    datamodule = build_datamodule(name, root, protocol)
    model = SkipTS(backbone=protocol.backbone, pre_trained=protocol.pre_trained, image_size=protocol.image_size)
    engine = Engine(
        default_root_dir=output / name / "train",
        max_epochs=protocol.max_epochs,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        logger=False,
    )
    checkpoints = sorted((output / name / "train").rglob("model.ckpt"), key=lambda path: path.stat().st_mtime)
    if checkpoints:  # a rerun measures the same trained model
        progress(f"{name}: reusing the trained model {checkpoints[-1]}")
        model = SkipTS.load_from_checkpoint(checkpoints[-1])
    else:
        progress(f"{name}: training Skip-TS ({protocol.max_epochs} epochs, {protocol.image_size}, {protocol.backbone})")
        engine.fit(model=model, datamodule=datamodule)
    torch_auroc = engine.test(model=model, datamodule=datamodule, verbose=False)[0]["image_AUROC"]
    images, labels = load_test_images(datamodule)

    paths: dict[str, Path] = {}
    export_seconds: dict[str, float] = {}
    for variant, compression, _ in VARIANTS:
        if compression is None and variant != VARIANTS[0][0]:
            paths[variant] = paths[VARIANTS[0][0]]
            continue
        progress(f"{name}: export {variant}")
        start = time.perf_counter()
        if compression == "head_float":
            paths[variant] = quantize_head_in_float(paths[VARIANTS[0][0]], datamodule, output / name / "head_float")
            export_seconds[variant] = time.perf_counter() - start
            continue
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
            export_root=output / name / variant.split()[0],
            input_size=protocol.image_size,
            **options,
        )
        export_seconds[variant] = time.perf_counter() - start

    inferencers = {
        variant: OpenVINOInferencer(path=paths[variant], device="CPU", config=config)
        for variant, _, config in VARIANTS
    }
    scores = {}
    for variant, inferencer in inferencers.items():
        progress(f"{name}: scoring the {len(images)} test images with {variant}")
        scores[variant] = run_inferencer(inferencer, images)
    progress(f"{name}: images/s at batch 1 ({rounds} rounds of {count} images)")
    speeds = throughput(inferencers, images[0], count, rounds)
    reference = scores[VARIANTS[0][0]]
    rows = {
        variant: {
            "image_auroc": image_metrics(labels, scores[variant]).auroc,
            "spearman_vs_fp32": float(spearmanr(scores[variant], reference).statistic),
            "images_per_s": speeds[variant],
            "ir_mb": paths[variant].with_suffix(".bin").stat().st_size / 2**20,
            "export_s": export_seconds.get(variant),
        }
        for variant in inferencers
    }
    return {
        "dataset": name,
        "root": str(root),
        "num_test": len(images),
        "num_abnormal": int(labels.sum()),
        "torch_image_auroc": float(torch_auroc),
        "variants": rows,
    }


def machine() -> str:
    """Describe the machine: the CPU model name as ``lscpu`` prints it, and the core count."""
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        cpu = "unknown CPU"
    import os

    return f"{cpu}, {os.cpu_count()} CPU cores"


def render_markdown(results: dict[str, Any]) -> str:
    """Render the results as a Markdown table, one row per dataset and variant."""
    lines = [
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']}; openvino {results['openvino']}, nncf {results['nncf']}; "
        f"load average at start {results['load_average']}; date {results['date']}",
        "",
        "| dataset | model | image AUROC | Spearman vs fp32 | images/s (batch 1) | IR weights MB |",
        "|---|---|---|---|---|---|",
    ]
    for dataset in results["datasets"]:
        for variant, row in dataset["variants"].items():
            lines.append(
                f"| {dataset['dataset']} ({dataset['num_test']} test images) | {variant} | {row['image_auroc']:.3f} | "
                f"{row['spearman_vs_fp32']:.3f} | {row['images_per_s']:.1f} | {row['ir_mb']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="anomalib_skipts.benchmark.compression")
    parser.add_argument("--datasets", nargs="+", default=["phantom", "headct"], choices=["phantom", "headct"])
    parser.add_argument("--phantom-root", type=Path, default=Path("datasets/head_phantom_128"))
    parser.add_argument("--headct-root", type=Path, default=Path("../shared/data/headct"))
    parser.add_argument("--output", type=Path, default=Path("results/compression"))
    parser.add_argument("--count", type=int, default=30, help="images per speed round")
    parser.add_argument("--rounds", type=int, default=5, help="speed rounds (median)")
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
    args.output.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "command": shlex.join(["python", "-m", "anomalib_skipts.benchmark.compression", *(argv or sys.argv[1:])]),
        "machine": machine(),
        "date": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d}",
        "openvino": openvino.__version__,
        "nncf": nncf.__version__,
        "load_average": [round(value, 1) for value in os.getloadavg()],
        "datasets": [],
    }
    roots = {"phantom": args.phantom_root, "headct": args.headct_root}
    for name in args.datasets:
        results["datasets"].append(benchmark_dataset(name, roots[name], args.output, args.count, args.rounds))
        (args.output / "results.json").write_text(json.dumps(results, indent=2))
    markdown = render_markdown(results)
    (args.output / "results.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
