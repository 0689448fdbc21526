"""The command end to end on tiny data, the summary tables (averages, Table IV layout) and figures."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from anomalib_skipts.benchmark.__main__ import main
from anomalib_skipts.benchmark.config import parse_config
from anomalib_skipts.benchmark.report import aggregate, build_summary
from anomalib_skipts.benchmark.store import write_config_snapshot


def _write_yaml(make_config, tmp_path: Path, **overrides) -> Path:
    config = make_config(**overrides)
    data = {
        "name": config.name,
        "output_dir": str(config.output_dir),
        "protocol": {"name": "smoke", "overlay_images": 2, "throughput_images": 4},
        "models": overrides.get("models", ["Padim"]),
        "datasets": [{"name": d.name, "class_path": d.class_path, "init_args": d.init_args} for d in config.datasets],
        "seeds": list(config.seeds),
    }
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_command_end_to_end_and_restart(make_config, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    models = ["SkipTS", "Padim", {"name": "Broken", "class_path": "Padim", "init_args": {"backbone": "nope"}}]
    path = _write_yaml(make_config, tmp_path, models=models)
    out = tmp_path / "results"
    # In-process (--no-isolation) to keep the test short; test_isolation runs real runs in children.
    assert main(["--config", str(path), "--no-isolation"]) == 0
    log = capsys.readouterr().out
    assert "[run 1/3] model=SkipTS dataset=Tiny seed=0" in log
    assert "ETA" in log
    frame = pd.read_csv(out / "runs.csv")
    assert dict(zip(frame["model"], frame["status"], strict=True)) == {
        "SkipTS": "ok",
        "Padim": "ok",
        "Broken": "failed",
    }
    summary = (out / "summary.md").read_text()
    headings = ("Image AUROC", "Image F1 at the Youden threshold", "Image accuracy", "Pixel AUROC", "Cost")
    for heading in (*headings, "Pixel AUPRO, FPR limit 0.3", "Dice at 0.8 on the per-image min-max"):
        assert heading in summary
    ok = frame[frame["status"] == "ok"]
    for column in ("pixel_auroc", "pixel_aupro", "pixel_dice"):
        assert ok[column].between(0, 1).all(), column  # the tiny dataset has masks
    assert (ok["peak_rss_mb"] > 100).all()  # measured in each run's own process
    assert set(ok["weights"]) == {"random-init"}  # smoke protocol: resnet18, pre_trained false
    assert "peak RSS (GB)" in summary
    assert "`random-init`" in summary
    with np.load(out / "runs" / "Padim__Tiny__seed0" / "anomaly_maps.npz") as maps:
        assert maps["masks"].shape == maps["maps"].shape
        assert maps["masks"][maps["labels"] == 1].any()
    assert "| Broken__Tiny__seed0 |" in summary
    for name in ("roc_Tiny.png", "kde_Tiny_SkipTS.png", "overlays_Tiny.png"):
        assert (out / "plots" / name).stat().st_size > 1000
        assert f"plots/{name}" in summary

    finished = frame.set_index("run_id")["finished_at"]
    assert main(["--config", str(path), "--strict", "--no-isolation"]) == 1  # Broken is retried, fails again
    log = capsys.readouterr().out
    assert log.count("already finished: skipped") == 2
    again = pd.read_csv(out / "runs.csv").set_index("run_id")["finished_at"]
    assert again["SkipTS__Tiny__seed0"] == finished["SkipTS__Tiny__seed0"]

    assert main(["--config", str(path), "--dry-run", "--no-retry-failed"]) == 0
    assert capsys.readouterr().out.count(": finished") == 3
    (out / "summary.md").unlink()
    assert main(["--config", str(path), "--report-only"]) == 0
    rebuilt = (out / "summary.md").read_text()
    assert f"Command: `skipts-benchmark --config {path} --strict --no-isolation`" in rebuilt  # recorded with the runs


def test_python_dash_m_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "anomalib_skipts.benchmark", "--list-protocols"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert "cpu-quick" in result.stdout
    assert "paper" in result.stdout


def _runs(rows: list[tuple[str, str, int, float, int]]) -> pd.DataFrame:
    records = []
    for model, dataset, seed, auroc, n_test in rows:
        records.append(
            {
                "run_id": f"{model}__{dataset}__seed{seed}",
                "model": model,
                "dataset": dataset,
                "seed": seed,
                "status": "ok",
                "error": "",
                "image_auroc": auroc,
                "image_f1": auroc,
                "image_accuracy": auroc,
                "pixel_auroc": float("nan"),
                "n_train": 10,
                "n_test": n_test,
                "n_test_normal": n_test // 2,
                "n_test_abnormal": n_test - n_test // 2,
                "test_set_hash": dataset,
                "max_epochs": 1,
                "epochs_trained": 1,
                "train_time_s": 1.0,
                "throughput_ips": 5.0,
                "params": 1e6,
                "trained_params": 0,
                "flops_per_image": 1e9,
                "device": "cpu: test",
            }
        )
    return pd.DataFrame.from_records(records)


def test_summary_averages_over_seeds_and_weighted_by_test_size(tmp_path: Path) -> None:
    frame = _runs(
        [
            ("A", "Small", 0, 0.9, 100),
            ("A", "Large", 0, 0.5, 300),
            ("A", "Small", 1, 0.7, 100),
            ("A", "Large", 1, 0.7, 300),
            ("B", "Small", 0, 0.6, 100),  # B misses Large: no average for B
        ]
    )
    table = aggregate(frame, ["A", "B"], ["Small", "Large"], "image_auroc").set_index(["model", "column"])
    assert table.loc[("A", "Small"), "mean"] == pytest.approx(0.8)
    assert table.loc[("A", "Small"), "std"] == pytest.approx(0.1414, abs=1e-4)
    assert table.loc[("A", "Average"), "mean"] == pytest.approx(0.7)  # seeds: 0.7 and 0.7
    # seed 0: (0.9 * 100 + 0.5 * 300) / 400 = 0.6; seed 1: 0.7 -> mean 0.65
    assert table.loc[("A", "Weighted average"), "mean"] == pytest.approx(0.65)
    assert table.loc[("B", "Average"), "n"] == 0


def test_summary_table_iv_layout(tmp_path: Path) -> None:
    config = parse_config(
        {
            "name": "abl",
            "output_dir": str(tmp_path),
            "models": [
                {"name": "KD", "class_path": "Stfpm", "group": "Distillation paradigm and skip connections"},
                {"name": "ST0", "class_path": "SkipTS", "group": "Distillation paradigm and skip connections"},
                {"name": "Full", "class_path": "SkipTS", "group": "Our method"},
            ],
            "datasets": [{"name": "Small", "class_path": "anomalib.data.Folder"}],
            "seeds": [0],
        }
    )
    tmp_path.mkdir(exist_ok=True)
    write_config_snapshot(config)
    frame = _runs([("ST0", "Small", 0, 0.8, 10), ("Full", "Small", 0, 0.9, 10)])
    failed = {"run_id": "KD__Small__seed0", "model": "KD", "dataset": "Small", "seed": 0, "status": "failed"}
    frame = pd.concat([frame, pd.DataFrame([{**failed, "error": "no weights"}])], ignore_index=True)
    frame.to_csv(tmp_path / "runs.csv", index=False)
    text = build_summary(tmp_path)
    assert "## Ablation (Table IV layout)" in text
    section = text.split("## Ablation (Table IV layout)")[1]
    assert section.index("**Distillation paradigm and skip connections**") < section.index("| ST0 |")
    assert section.index("| ST0 |") < section.index("**Our method**") < section.index("| Full |")
    assert "| KD | — | — | — |" in section
    assert "| KD__Small__seed0 | no weights |" in text
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert set(summary["column"]) == {"Small", "Average", "Weighted average"}


def test_rerun_of_one_model_keeps_every_finished_model_in_the_summary(make_config, tmp_path: Path) -> None:
    models = ["SkipTS", "Padim", "Patchcore"]
    path = _write_yaml(make_config, tmp_path, models=models)
    out = tmp_path / "results"
    out.mkdir()
    config = parse_config(yaml.safe_load(path.read_text()))
    runs = {run.model.name: run for run in config.runs()}
    # SkipTS and Patchcore finished earlier; a Patchcore row of other settings (another epoch count) is stale.
    frame = _runs([("SkipTS", "Tiny", 0, 0.61, 8), ("Patchcore", "Tiny", 0, 0.73, 8), ("Patchcore", "Tiny", 0, 0.2, 8)])
    frame["spec_hash"] = [runs["SkipTS"].fingerprint(), runs["Patchcore"].fingerprint(), "0123456789abcdef"]
    frame.loc[2, "run_id"] = "Patchcore__Tiny__seed0_old"
    frame.to_csv(out / "runs.csv", index=False)

    assert main(["--config", str(path), "--models", "Padim", "--no-isolation"]) == 0
    recorded = pd.read_csv(out / "runs.csv")
    assert sorted(recorded["model"]) == ["Padim", "Patchcore", "Patchcore", "SkipTS"]  # only Padim was run
    summary = (out / "summary.md").read_text()
    auroc = summary.split("## Image AUROC")[1].split("##")[0]
    for model, value in (("SkipTS", "61.0"), ("Patchcore", "73.0")):
        assert f"| {model} | {value} (n=1)" in auroc
    assert "| Padim |" in auroc
    assert "20.0" not in auroc  # the stale row is not averaged in
    assert "Not included: 1 recorded run(s) made with other settings or models" in summary
    assert set(pd.read_csv(out / "summary.csv")["model"]) == {"SkipTS", "Padim", "Patchcore"}

    (out / "summary.md").unlink()
    assert main(["--config", str(path), "--report-only", "--models", "SkipTS"]) == 0
    assert (out / "summary.md").read_text().split("## Image AUROC")[1].split("##")[0] == auroc


def test_overlay_outlines_the_ground_truth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from anomalib_skipts.benchmark.report.plots import plot_overlays

    mask = np.zeros((16, 16), dtype=bool)
    mask[4:9, 5:11] = True
    run_dir = tmp_path / "runs" / "A__D__seed0"
    run_dir.mkdir(parents=True)
    arrays = {
        "paths": np.asarray(["missing_abnormal.png", "missing_normal.png"]),
        "labels": np.asarray([1, 0]),
        "scores": np.asarray([2.0, 0.5]),
        "maps": np.stack([mask.astype(np.float16), np.zeros((16, 16), np.float16)]),
    }
    np.savez_compressed(run_dir / "anomaly_maps.npz", **arrays, masks=np.stack([mask, np.zeros_like(mask)]))
    rows = pd.DataFrame([{"model": "A", "seed": 0, "run_id": "A__D__seed0"}])
    drawn: list[int] = []
    from matplotlib.axes import Axes

    original = Axes.contour

    def contour(self, *args, **kwargs):
        drawn.append(int(np.asarray(args[0]).sum()))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "contour", contour)
    assert plot_overlays(tmp_path, rows, ["A"], "t", tmp_path / "o.png") == tmp_path / "o.png"
    assert drawn == [mask.sum(), mask.sum()]  # on the model's map and on the image, abnormal row only
    (run_dir / "anomaly_maps.npz").unlink()
    np.savez_compressed(run_dir / "anomaly_maps.npz", **arrays)  # older runs without masks still plot
    assert plot_overlays(tmp_path, rows, ["A"], "t", tmp_path / "o2.png") is not None
