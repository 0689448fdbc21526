"""Patient-level metrics in runs.csv: per patient for volumes, for every model alike; NaN without patients."""

import dataclasses
from pathlib import Path

import pandas as pd
import pytest

from anomalib_skipts.benchmark.pipeline import BenchmarkRunner
from anomalib_skipts.data.volume_phantom import generate_volume_phantom


@pytest.fixture(scope="module")
def volume_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_volume_phantom(tmp_path_factory.mktemp("bench_volumes"), num_normal=6, num_abnormal=3, num_slices=6)


def test_runs_csv_has_patient_metrics_beside_slice_metrics(make_config, volume_root: Path) -> None:
    volumes = {
        "name": "Volumes",
        "class_path": "anomalib_skipts.data.VolumeFolder",
        "init_args": {
            "name": "volumes",
            "root": str(volume_root),
            "normal_dir": "normal",
            "abnormal_dir": "abnormal",
            "mask_dir": "masks",
            "window": "brain",
            "num_test_normal": 3,
            "num_workers": 0,
        },
    }
    config = make_config(models=["Padim"], datasets=[volumes, dataclasses.asdict(make_config().datasets[0])])
    BenchmarkRunner(config, isolate=False, log=lambda _: None).run()
    runs = pd.read_csv(Path(config.output_dir) / "runs.csv").set_index("dataset")
    assert (runs["status"] == "ok").all(), runs.get("error")
    volume_run = runs.loc["Volumes"]
    assert volume_run["n_test_patients"] == 6  # 3 normal + 3 abnormal patients, one volume each
    for column in ("patient_auroc", "patient_f1", "patient_accuracy"):
        assert 0.0 <= volume_run[column] <= 1.0
    assert volume_run["n_test"] == 6 * 6  # every slice scored at slice level too
    assert pd.isna(runs.loc["Tiny", "patient_auroc"])  # a 2-D folder that names no patients
    # each slice's patient in the run's predictions, where the dataset names patients
    output = Path(config.output_dir)
    volume_predictions = pd.read_csv(next(output.rglob("*Volumes*/predictions.csv")))
    assert list(volume_predictions.columns[:2]) == ["image_path", "patient_id"]
    assert volume_predictions.groupby("patient_id").size().tolist() == [6] * 6
    assert "patient_id" not in pd.read_csv(next(output.rglob("*Tiny*/predictions.csv"))).columns
