"""Benchmark figures: ROC curves, score distributions and anomaly-map overlays.

Mirrors the figures of Skip-TS (IEEE TIM 2024): ROC curves of all models per dataset (Fig. 6),
distributions of Skip-TS's anomaly scores for normal and abnormal images, and anomaly maps laid
over test images (Fig. 9). Figures are drawn with ``matplotlib.figure.Figure`` (no pyplot state).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image
from scipy.stats import gaussian_kde
from sklearn.metrics import roc_auc_score, roc_curve

from ..specs import slugify
from ..store import RUNS_DIR, STATUS_OK

PLOTS_DIR = "plots"
PREDICTIONS_CSV = "predictions.csv"
MAPS_NPZ = "anomaly_maps.npz"


def make_plots(
    results_dir: str | Path,
    frame: pd.DataFrame,
    models: Sequence[str],
    datasets: Sequence[str],
    kde_models: Sequence[str],
) -> list[Path]:
    """Draw every figure of a results folder.

    Args:
        results_dir: Results folder (``runs.csv``, ``runs/<run_id>/...``).
        frame: The per-run table.
        models: Model names, in display order.
        datasets: Dataset names, in display order.
        kde_models: Models whose score distributions are drawn.

    Returns:
        list[Path]: The PNG files written.
    """
    results_dir = Path(results_dir)
    out = results_dir / PLOTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    ok = frame[frame["status"] == STATUS_OK] if not frame.empty else frame
    written: list[Path] = []
    for dataset in datasets:
        rows = ok[ok["dataset"] == dataset]
        if rows.empty:
            continue
        slug = slugify(dataset)
        curves = {
            model: _load_predictions(results_dir, rows[rows["model"] == model])
            for model in models
            if (rows["model"] == model).any()
        }
        written.append(plot_roc(curves, f"ROC curves: {dataset}", out / f"roc_{slug}.png"))
        for model in kde_models:
            model_rows = rows[rows["model"] == model].sort_values("seed")
            if model_rows.empty:
                continue
            predictions = _load_predictions(results_dir, model_rows)
            if not predictions:  # runs recorded without their predictions.csv
                continue
            kept = {seed for seed, _, _ in predictions}
            thresholds = model_rows.loc[model_rows["seed"].isin(kept), "youden_threshold"].tolist()
            path = out / f"kde_{slug}_{slugify(model)}.png"
            written.append(plot_score_kde(predictions, thresholds, f"{model} scores: {dataset}", path))
        overlay = plot_overlays(results_dir, rows, models, f"Anomaly maps: {dataset}", out / f"overlays_{slug}.png")
        if overlay is not None:
            written.append(overlay)
    return written


def plot_roc(curves: dict[str, list[tuple[int, np.ndarray, np.ndarray]]], title: str, path: Path) -> Path:
    """ROC curves of several models on one dataset, one PNG.

    Each seed is drawn thin; the bold curve is the mean TPR over seeds on a common FPR grid.

    Args:
        curves: Model name -> list of ``(seed, labels, scores)``.
        title: Figure title.
        path: Output PNG.

    Returns:
        Path: ``path``.
    """
    figure = Figure(figsize=(5.5, 5))
    axis = figure.add_subplot()
    grid = np.linspace(0, 1, 201)
    colors = _colors(len(curves))
    for color, (model, runs) in zip(colors, curves.items(), strict=True):
        tprs, aurocs = [], []
        for _, labels, scores in runs:
            if len(np.unique(labels)) != 2:
                continue
            fpr, tpr, _ = roc_curve(labels, scores)
            axis.plot(fpr, tpr, color=color, alpha=0.25, linewidth=0.8)
            tprs.append(np.interp(grid, fpr, tpr))
            aurocs.append(roc_auc_score(labels, scores))
        if not tprs:
            continue
        mean_tpr = np.mean(tprs, axis=0)
        mean_tpr[0] = 0.0
        spread = f" ± {np.std(aurocs, ddof=1):.3f}" if len(aurocs) > 1 else ""
        label = f"{model} (AUROC {np.mean(aurocs):.3f}{spread}, {len(aurocs)} seed{'s' * (len(aurocs) > 1)})"
        axis.plot(grid, mean_tpr, color=color, linewidth=2, label=label)
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8)
    axis.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False-positive rate", ylabel="True-positive rate", title=title)
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path


def plot_score_kde(
    runs: list[tuple[int, np.ndarray, np.ndarray]],
    thresholds: Sequence[float],
    title: str,
    path: Path,
) -> Path:
    """Kernel density estimates of the anomaly scores of normal and abnormal test images.

    One panel per seed (scores of different seeds live on different scales), with the run's Youden
    threshold as a dashed line.

    Args:
        runs: ``(seed, labels, scores)`` per seed.
        thresholds: Youden threshold per seed.
        title: Figure title.
        path: Output PNG.

    Returns:
        Path: ``path``.
    """
    figure = Figure(figsize=(4 * len(runs), 3.4))
    axes = figure.subplots(1, len(runs), squeeze=False)[0]
    for axis, (seed, labels, scores), threshold in zip(axes, runs, thresholds, strict=True):
        low, high = float(scores.min()), float(scores.max())
        pad = 0.1 * (high - low) or 1.0
        grid = np.linspace(low - pad, high + pad, 300)
        for label, name, color in ((0, "normal", "tab:blue"), (1, "abnormal", "tab:red")):
            values = scores[labels == label]
            if values.size == 0:
                continue
            axis.hist(values, bins=20, range=(grid[0], grid[-1]), density=True, alpha=0.2, color=color)
            if values.size > 1 and np.ptp(values) > 0:
                axis.plot(grid, gaussian_kde(values)(grid), color=color, label=f"{name} (n={values.size})")
            else:
                axis.axvline(values[0], color=color, label=f"{name} (n={values.size})")
        if math.isfinite(threshold):
            axis.axvline(threshold, color="black", linestyle="--", linewidth=1, label="Youden threshold")
        axis.set(title=f"seed {seed}", xlabel="anomaly score", ylabel="density")
        axis.legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path


def plot_overlays(
    results_dir: Path,
    rows: pd.DataFrame,
    models: Sequence[str],
    title: str,
    path: Path,
) -> Path | None:
    """Anomaly maps of every model laid over the same few test images (lowest seed of each model).

    Each model's maps are min-max scaled over the images shown, so that the colours compare images
    within a model; the raw image score is printed in each panel. Where the test set has masks,
    the ground-truth region is outlined (white contour) on the image and on every map.

    Args:
        results_dir: Results folder.
        rows: Finished runs of one dataset.
        models: Model names, in display order.
        title: Figure title.
        path: Output PNG.

    Returns:
        Path | None: ``path``, or ``None`` when no run kept anomaly maps.
    """
    maps: dict[str, dict[str, tuple[int, float, np.ndarray]]] = {}
    outlines: dict[str, np.ndarray] = {}
    for model in models:
        model_rows = rows[rows["model"] == model].sort_values("seed")
        if model_rows.empty:
            continue
        file = results_dir / RUNS_DIR / str(model_rows.iloc[0]["run_id"]) / MAPS_NPZ
        if not file.is_file():
            continue
        with np.load(file) as data:
            maps[model] = {
                str(p): (int(lab), float(s), m.astype(np.float32))
                for p, lab, s, m in zip(data["paths"], data["labels"], data["scores"], data["maps"], strict=True)
            }
            if "masks" in data:
                for image_path, mask in zip(data["paths"], data["masks"], strict=True):
                    outlines.setdefault(str(image_path), mask.astype(bool))
    if not maps:
        return None
    first = next(iter(maps.values()))
    paths = [p for p in first if all(p in model_maps for model_maps in maps.values())]
    paths.sort(key=lambda p: (-first[p][0], p))
    if not paths:
        return None
    figure = Figure(figsize=(2.2 * (len(maps) + 1), 2.3 * len(paths)))
    axes = figure.subplots(len(paths), len(maps) + 1, squeeze=False)
    for column, (model, model_maps) in enumerate(maps.items(), start=1):
        stack = np.stack([model_maps[p][2] for p in paths])
        low, high = float(stack.min()), float(stack.max())
        for row, image_path in enumerate(paths):
            label, score, amap = model_maps[image_path]
            image = _load_image(image_path, amap.shape)
            axis = axes[row][column]
            axis.imshow(image, cmap="gray")
            axis.imshow((amap - low) / (high - low or 1.0), cmap="jet", alpha=0.45, vmin=0, vmax=1)
            _outline(axis, outlines.get(image_path), amap.shape)
            axis.set_title(f"{model}\nscore {score:.3g}", fontsize=7)
    for row, image_path in enumerate(paths):
        label = first[image_path][0]
        axis = axes[row][0]
        axis.imshow(_load_image(image_path, first[image_path][2].shape), cmap="gray")
        _outline(axis, outlines.get(image_path), first[image_path][2].shape)
        axis.set_title(f"{'abnormal' if label else 'normal'}\n{Path(image_path).name}", fontsize=7)
    for axis in axes.flat:
        axis.set_axis_off()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def _outline(axis: Any, mask: np.ndarray | None, shape: tuple[int, ...]) -> None:
    """Draw the contour of a ground-truth mask (nothing for a missing, empty or differently sized one)."""
    if mask is None or mask.shape != tuple(shape[-2:]) or not mask.any() or mask.all():
        return
    axis.contour(mask.astype(np.float32), levels=[0.5], colors="white", linewidths=0.9)


def _load_predictions(results_dir: Path, rows: pd.DataFrame) -> list[tuple[int, np.ndarray, np.ndarray]]:
    runs = []
    for _, row in rows.sort_values("seed").iterrows():
        file = results_dir / RUNS_DIR / str(row["run_id"]) / PREDICTIONS_CSV
        if file.is_file():
            predictions = pd.read_csv(file)
            runs.append((int(row["seed"]), predictions["label"].to_numpy(int), predictions["score"].to_numpy(float)))
    return runs


def _load_image(path: str, shape: tuple[int, ...]) -> np.ndarray:
    height, width = shape[-2:]
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L").resize((width, height), Image.Resampling.BILINEAR))
    except OSError:  # image moved since the run: show the map alone
        return np.zeros((height, width), dtype=np.uint8)


def _colors(count: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(index % 10) for index in range(count)]
