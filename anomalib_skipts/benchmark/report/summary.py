"""Summary of a results folder: per-run CSV -> Markdown tables (Skip-TS Tables II-IV layout).

Skip-TS (IEEE TIM 2024) reports image AUROC per dataset with plain and dataset-size-weighted
averages (Table II, Fig. 5), F1 / accuracy at the Youden threshold (Fig. 7), cost (Table III) and
an ablation table (Table IV). Here every cell is the mean +- sample standard deviation over seeds.
The weight of a dataset is the number of test images it was evaluated on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..metrics import plain_mean, weighted_mean
from ..specs import BenchmarkConfig, RunSpec
from ..store import RUNS_CSV, STATUS_OK, ResultStore, read_config_snapshot, write_atomically

SUMMARY_MD = "summary.md"
SUMMARY_CSV = "summary.csv"

METRICS: dict[str, str] = {
    "image_auroc": "Image AUROC (%)",
    "image_f1": "Image F1 at the Youden threshold (%)",
    "image_accuracy": "Image accuracy at the Youden threshold (%)",
    "pixel_auroc": "Pixel AUROC (%)",
    "pixel_aupro": "Pixel AUPRO, FPR limit 0.3 (%)",
    "pixel_dice": "Dice at 0.8 on the per-image min-max normalised anomaly map (%)",
    "patient_auroc": "Patient AUROC (%)",
    "patient_f1": "Patient F1 at the Youden threshold (%)",
    "patient_accuracy": "Patient accuracy at the Youden threshold (%)",
}


@dataclass
class ReportLayout:
    """What the report shows, in which order (read from the results folder's config snapshot).

    Attributes:
        name: Benchmark name.
        models: Model names in display order.
        datasets: Dataset names in display order.
        groups: Model name -> ablation section (Table IV); empty for a plain benchmark.
        kde_models: Models whose score distributions are plotted.
        protocol: Protocol settings.
        seeds: Configured seeds.
        command: Command line that produced the runs (if recorded).
    """

    name: str
    models: list[str]
    datasets: list[str]
    groups: dict[str, str] = field(default_factory=dict)
    kde_models: list[str] = field(default_factory=list)
    protocol: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)
    command: str | None = None

    @classmethod
    def from_results(cls, results_dir: Path, frame: pd.DataFrame) -> ReportLayout:
        """Read the layout from ``config.yaml`` in a results folder, else infer it from the runs.

        Args:
            results_dir: Results folder.
            frame: The per-run table.

        Returns:
            ReportLayout: The layout.
        """
        data = read_config_snapshot(results_dir)
        if data:
            return cls(
                name=data["name"],
                models=[model["name"] for model in data["models"]],
                datasets=[dataset["name"] for dataset in data["datasets"]],
                groups={model["name"]: model["group"] for model in data["models"] if model.get("group")},
                kde_models=list(data.get("kde_models") or []),
                protocol=dict(data.get("protocol") or {}),
                seeds=list(data.get("seeds") or []),
                command=data.get("command"),
            )
        return cls(
            name=results_dir.name,
            models=list(dict.fromkeys(frame.get("model", []))),
            datasets=list(dict.fromkeys(frame.get("dataset", []))),
            seeds=sorted(set(frame.get("seed", []))),
        )


def recorded_command(results_dir: str | Path) -> str | None:
    """Return the command line recorded with the runs of a results folder, if any.

    Args:
        results_dir: Results folder.

    Returns:
        str | None: The command.
    """
    return read_config_snapshot(results_dir).get("command")


def aggregate(frame: pd.DataFrame, models: Sequence[str], datasets: Sequence[str], metric: str) -> pd.DataFrame:
    """Mean and standard deviation over seeds per model and dataset, plus the two averages.

    The averages over datasets are computed per seed (plainly, and weighted by the number of test
    images of each dataset) and then summarised over seeds; a seed counts only if the model finished
    it on every dataset, so that every average covers the same datasets.

    Args:
        frame: Finished runs.
        models: Model names (rows).
        datasets: Dataset names.
        metric: Column to aggregate.

    Returns:
        pd.DataFrame: One row per model and column group; columns ``model``, ``column``, ``mean``,
        ``std``, ``n`` where ``column`` is a dataset name, ``Average`` or ``Weighted average``.
    """
    records = []
    sizes = dataset_sizes(frame)
    for model in models:
        rows = frame[frame["model"] == model]
        for dataset in datasets:
            values = rows.loc[rows["dataset"] == dataset, metric].astype(float).dropna()
            records.append(_record(model, dataset, values.to_numpy()))
        plain, weighted = [], []
        for _, seed_rows in rows.groupby("seed"):
            per_dataset = seed_rows.groupby("dataset")[metric].mean()
            if not all(dataset in per_dataset and math.isfinite(per_dataset[dataset]) for dataset in datasets):
                continue
            values = [per_dataset[dataset] for dataset in datasets]
            plain.append(plain_mean(values))
            weighted.append(weighted_mean(values, [sizes.get(dataset, math.nan) for dataset in datasets]))
        records.append(_record(model, "Average", np.asarray(plain)))
        records.append(_record(model, "Weighted average", np.asarray(weighted)))
    return pd.DataFrame.from_records(records)


def dataset_sizes(frame: pd.DataFrame) -> dict[str, int]:
    """Count the test images of each dataset (the weights of the weighted average).

    Args:
        frame: Finished runs.

    Returns:
        dict[str, int]: Dataset name -> most frequent ``n_test`` among its runs.
    """
    if frame.empty or "n_test" not in frame:
        return {}
    return {
        str(dataset): int(sizes.mode().iloc[0]) for dataset, sizes in frame.groupby("dataset")["n_test"] if len(sizes)
    }


def matching_runs(frame: pd.DataFrame, config: BenchmarkConfig) -> pd.DataFrame:
    """Select the recorded runs made with a config's settings (every model, dataset and seed it names).

    A row matches when its model and dataset are in the config and its ``spec_hash`` is the
    fingerprint the config gives that model, dataset and seed; rows left over from other settings
    (another protocol, changed ``init_args``) or from models removed from the config do not.

    Args:
        frame: The per-run table.
        config: The benchmark config (all its models, whatever a command line selected).

    Returns:
        pd.DataFrame: The matching rows.
    """
    if frame.empty or "spec_hash" not in frame:
        return frame
    models = {model.name: model for model in config.models}
    datasets = {dataset.name: dataset for dataset in config.datasets}

    def matches(row: pd.Series) -> bool:
        model, dataset = models.get(row["model"]), datasets.get(row["dataset"])
        if model is None or dataset is None or pd.isna(row["seed"]):
            return False
        run = RunSpec(model=model, dataset=dataset, seed=int(row["seed"]), protocol=config.protocol)
        return str(row["spec_hash"]) == run.fingerprint()

    return frame[frame.apply(matches, axis=1)]


def build_summary(
    results_dir: str | Path,
    plots: Sequence[Path] = (),
    command: str | None = None,
    config: BenchmarkConfig | None = None,
) -> str:
    """Write ``summary.md`` and ``summary.csv`` for a results folder.

    Args:
        results_dir: Results folder with ``runs.csv``.
        plots: Figures to list in the summary.
        command: Command line shown in the summary; default: the one recorded with the runs.
        config: When given, the summary covers exactly the recorded runs that match it
            (:func:`matching_runs`), whichever command produced them; otherwise every recorded run.

    Returns:
        str: The Markdown text.
    """
    results_dir = Path(results_dir)
    frame = _load_runs(results_dir, config)
    layout = ReportLayout.from_results(results_dir, frame)
    ok = frame[frame["status"] == STATUS_OK]
    models = [model for model in layout.models if model in set(frame["model"])]
    datasets = [dataset for dataset in layout.datasets if dataset in set(frame["dataset"])]
    sizes = dataset_sizes(ok)

    lines = [f"# Benchmark `{layout.name}`", ""]
    lines += _header(frame, ok, layout, command or layout.command)
    left_out = len(pd.read_csv(results_dir / RUNS_CSV)) - len(frame)
    if left_out:
        lines[-1:-1] = [f"- Not included: {left_out} recorded run(s) made with other settings or models"]
    tables = []
    for metric, title in METRICS.items():
        if metric not in ok or ok[metric].astype(float).notna().sum() == 0:
            continue
        table = aggregate(ok, models, datasets, metric)
        table.insert(0, "metric", metric)
        tables.append(table)
        lines += [f"## {title}", "", "Mean ± std over seeds (n = finished seeds; — = no finished run).", ""]
        lines += _metric_table(table, models, datasets, sizes)
        lines.append("")
        if metric == "image_auroc" and layout.groups:
            lines += ["## Ablation (Table IV layout): image AUROC (%)", ""]
            lines += _ablation_table(table, layout)
            lines.append("")
    lines += ["## Cost", "", *_cost_table(ok, models, datasets), ""]
    lines += ["## Protocol checks", "", *_protocol_checks(ok, datasets), ""]
    failed = frame[frame["status"] != STATUS_OK]
    if not failed.empty:
        lines += ["## Failed runs", "", "| run | error |", "|---|---|"]
        lines += [f"| {row.run_id} | {_cell(row.error)} |" for row in failed.itertuples()]
        lines.append("")
    if plots:
        lines += ["## Figures", ""]
        lines += [f"- [{Path(plot).name}]({Path(plot).relative_to(results_dir).as_posix()})" for plot in plots]
        lines.append("")
    text = "\n".join(lines)
    write_atomically(results_dir / SUMMARY_MD, text)
    if tables:
        write_atomically(results_dir / SUMMARY_CSV, pd.concat(tables, ignore_index=True).to_csv(index=False))
    return text


def write_report(
    results_dir: str | Path,
    command: str | None = None,
    config: BenchmarkConfig | None = None,
) -> tuple[Path, list[Path]]:
    """Draw the figures and write the summary of a results folder.

    The folder's lock (:meth:`~..store.ResultStore.lock`) is held meanwhile, so that runs finishing
    in other processes wait for the report instead of changing ``runs.csv`` under it.

    Args:
        results_dir: Results folder with ``runs.csv``.
        command: Command line that produced the results.
        config: When given, report the recorded runs matching it (see :func:`build_summary`).

    Returns:
        tuple[Path, list[Path]]: The summary file and the figures.
    """
    from .plots import make_plots

    results_dir = Path(results_dir)
    with ResultStore(results_dir).lock():
        frame = _load_runs(results_dir, config)
        layout = ReportLayout.from_results(results_dir, frame)
        plots = make_plots(results_dir, frame, layout.models, layout.datasets, layout.kde_models)
        build_summary(results_dir, plots, command, config)
    return results_dir / SUMMARY_MD, plots


def _load_runs(results_dir: Path, config: BenchmarkConfig | None) -> pd.DataFrame:
    frame = pd.read_csv(results_dir / RUNS_CSV)
    return frame if config is None else matching_runs(frame, config)


# ------------------------------------------------------------------------------------------------
# Markdown pieces
# ------------------------------------------------------------------------------------------------


def _header(frame: pd.DataFrame, ok: pd.DataFrame, layout: ReportLayout, command: str | None) -> list[str]:
    protocol = layout.protocol
    devices = sorted(set(ok["device"].dropna().astype(str))) if "device" in ok else []
    lines = [
        f"- Generated: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Runs: {len(ok)} finished, {len(frame) - len(ok)} failed (of {len(frame)} recorded)",
    ]
    if command:
        lines.append(f"- Command: `{command}`")
    if protocol:
        size = "x".join(str(side) for side in protocol.get("image_size", []))
        lines.append(
            f"- Protocol `{protocol.get('name')}`: image size {size}, backbone {protocol.get('backbone')} "
            f"(where the model has one), pre_trained={protocol.get('pre_trained')}, "
            f"{protocol.get('max_epochs')} epochs unless a model sets its own, last epoch evaluated, "
            f"batch size {protocol.get('train_batch_size')}, seeds {layout.seeds}",
        )
    if devices:
        lines.append(f"- Device: {', '.join(devices)}")
    if "duration_s" in frame:
        wall = frame["duration_s"].astype(float).sum()
        text = f"- Time in runs: {wall / 60:.1f} min wall clock"
        if "cpu_time_s" in frame and frame["cpu_time_s"].notna().all():
            text += f", {frame['cpu_time_s'].astype(float).sum() / 60:.1f} min CPU time (all threads)"
        lines.append(text)
    lines.append("")
    return lines


def _metric_table(table: pd.DataFrame, models: Sequence[str], datasets: Sequence[str], sizes: dict) -> list[str]:
    columns = [*datasets, "Average", "Weighted average"]
    header = [f"{dataset} (n={sizes[dataset]})" if dataset in sizes else dataset for dataset in datasets]
    lines = ["| model | " + " | ".join([*header, "Average", "Weighted average"]) + " |"]
    lines.append("|---" * (len(columns) + 1) + "|")
    for model in models:
        cells = [_format(table, model, column) for column in columns]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


def _ablation_table(table: pd.DataFrame, layout: ReportLayout) -> list[str]:
    datasets = [dataset for dataset in layout.datasets if (table["column"] == dataset).any()]
    columns = [*datasets, "Average", "Weighted average"]
    lines = ["| variant | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    sections = list(dict.fromkeys(layout.groups.values()))
    for section in sections:
        lines.append(f"| **{section}** |" + " |" * len(columns))
        for model in layout.models:
            if layout.groups.get(model) == section and (table["model"] == model).any():
                lines.append(f"| {model} | " + " | ".join(_format(table, model, column) for column in columns) + " |")
    return lines


def _cost_table(ok: pd.DataFrame, models: Sequence[str], datasets: Sequence[str]) -> list[str]:
    header = ["model", "params", "trained params", "GFLOPs / image", "epochs"]
    header += [f"train time {dataset} (s)" for dataset in datasets]
    header += ["throughput (img/s)"]
    titles = {"peak_rss_mb": "peak RSS (GB)", "peak_cuda_mb": "peak CUDA (GB)", "weights": "weights"}
    extra = [column for column in titles if column in ok and ok[column].notna().any()]
    header += [titles[column] for column in extra]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for model in models:
        rows = ok[ok["model"] == model]
        if rows.empty:
            continue
        cells = [
            model,
            _si(rows["params"].median()),
            _si(rows["trained_params"].median()),
            f"{rows['flops_per_image'].median() / 1e9:.3g}",
            "/".join(str(int(value)) for value in sorted(set(rows["epochs_trained"].dropna()))),
        ]
        for dataset in datasets:
            times = rows.loc[rows["dataset"] == dataset, "train_time_s"].astype(float)
            cells.append(_mean_std(times.to_numpy(), scale=1.0, digits=1) if len(times) else "—")
        cells.append(_mean_std(rows["throughput_ips"].astype(float).to_numpy(), scale=1.0, digits=1))
        for column in extra:
            if column == "weights":
                cells.append(", ".join(f"`{value}`" for value in sorted(set(rows[column].dropna().astype(str)))) or "—")
            else:  # the largest peak over the model's runs
                peak = rows[column].astype(float).max()
                cells.append(f"{peak / 1024:.2f}" if math.isfinite(peak) else "—")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Params: all network parameters (frozen teacher / backbone included); trained params: those "
        "updated by the optimizer. FLOPs: torch's `FlopCounterMode` on one inference forward pass "
        "(1 multiply-add = 2 FLOPs). Throughput: network forward on pre-processed test batches, "
        "data loading excluded. Peak RSS: largest resident memory of the run's process over the "
        "model's runs; peak CUDA: `torch.cuda.max_memory_allocated`. Weights: the backbone / teacher "
        "weights the model got (`<architecture>.<timm tag>`, or `random-init`).",
    ]
    return lines


def _protocol_checks(ok: pd.DataFrame, datasets: Sequence[str]) -> list[str]:
    if ok.empty:
        return ["No finished run."]
    lines = []
    for dataset in datasets:
        rows = ok[ok["dataset"] == dataset]
        hashes = set(rows["test_set_hash"].astype(str))
        verdict = "the same test set for every run" if len(hashes) == 1 else f"{len(hashes)} different test sets!"
        lines.append(f"- {dataset}: {verdict} ({_sizes(rows)})")
    short = ok[ok["epochs_trained"].astype(float) != ok["max_epochs"].astype(float)]
    if short.empty:
        lines.append("- Every run trained for all its epochs and was evaluated after the last one.")
    else:
        lines.append(f"- Runs stopped before their last epoch: {', '.join(short['run_id'])}")
    return lines


def _sizes(rows: pd.DataFrame) -> str:
    first = rows.iloc[0]
    return (
        f"train {int(first['n_train'])}, test {int(first['n_test_normal'])} normal + "
        f"{int(first['n_test_abnormal'])} abnormal"
    )


def _format(table: pd.DataFrame, model: str, column: str) -> str:
    match = table[(table["model"] == model) & (table["column"] == column)]
    if match.empty or int(match.iloc[0]["n"]) == 0:
        return "—"
    record = match.iloc[0]
    std = "" if int(record["n"]) < 2 else f" ± {100 * record['std']:.1f}"
    return f"{100 * record['mean']:.1f}{std} (n={int(record['n'])})"


def _record(model: str, column: str, values: np.ndarray) -> dict[str, Any]:
    values = values[np.isfinite(values)] if values.size else values
    return {
        "model": model,
        "column": column,
        "mean": float(values.mean()) if values.size else math.nan,
        "std": float(values.std(ddof=1)) if values.size > 1 else math.nan,
        "n": int(values.size),
    }


def _mean_std(values: np.ndarray, scale: float, digits: int) -> str:
    values = values[np.isfinite(values)]
    if not values.size:
        return "—"
    if values.size == 1:
        return f"{scale * values[0]:.{digits}f}"
    return f"{scale * values.mean():.{digits}f} ± {scale * values.std(ddof=1):.{digits}f}"


def _si(value: float) -> str:
    if not math.isfinite(value):
        return "—"
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.2f}{suffix}"
    return f"{int(value)}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
