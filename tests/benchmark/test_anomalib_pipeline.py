"""Translation to anomalib's own `anomalib benchmark` pipeline, and a run through it."""

from pathlib import Path

import pandas as pd
from anomalib.data import Folder

from anomalib_skipts.benchmark.anomalib_pipeline import LIMITATIONS, run_anomalib_benchmark, to_anomalib_benchmark


class OwnFolder(Folder):
    """A datamodule of some other package: anomalib's get_datamodule cannot find it."""


def test_translation_keeps_registered_datamodules_and_named_models_and_reports_the_rest(make_config, tmp_path) -> None:
    datasets = [
        make_config().datasets[0].__dict__,
        {"name": "CT", "class_path": "anomalib_skipts.data.HeadCT", "init_args": {"root": "missing"}},
        {
            "name": "Phantom",
            "class_path": "anomalib_skipts.data.HeadPhantom",
            "init_args": {
                "root": str(tmp_path / "ph"),
                "num_train": 2,
                "num_test_normal": 1,
                "num_test_abnormal": 1,
                "image_size": 32,
            },
        },
        {"name": "Liver", "class_path": "anomalib_skipts.data.BMAD", "init_args": {"category": "Liver"}},
        {"name": "Own", "class_path": f"{__name__}.OwnFolder", "init_args": {"name": "own", "root": "x"}},
    ]
    models = ["Padim", "SkipTS", {"name": "Mine", "class_path": "my.package.Model"}]
    config = make_config(models=models, datasets=datasets, seeds=[0, 1])
    pipeline, notes = to_anomalib_benchmark(config)
    grid = pipeline["benchmark"]
    assert grid["seed"] == {"grid": [0, 1]}
    assert [model["class_path"] for model in grid["model"]["grid"]] == ["Padim", "SkipTS"]
    padim = grid["model"]["grid"][0]["init_args"]
    assert padim == {"backbone": "resnet18", "pre_trained": False}
    assert grid["model"]["grid"][1]["init_args"]["image_size"] == [64, 64]
    data = grid["data"]["grid"]
    # the project's datamodules by the names they are registered under on anomalib.data
    assert [item["class_path"] for item in data] == ["Folder", "HeadCT", "HeadPhantom", "MedicalBMAD"]
    assert data[0]["init_args"]["val_split_mode"] == "same_as_test"
    assert data[1]["init_args"]["root"] == str(Path("missing").resolve())  # the pipeline has its own cwd
    assert data[2]["init_args"]["image_size"] == 32
    assert data[3]["init_args"]["category"] == "Liver"
    assert any("OwnFolder is not in anomalib.data" in note for note in notes)
    assert not any("HeadCT" in note or "BMAD" in note for note in notes)
    assert any("Mine" in note for note in notes)
    assert len(LIMITATIONS) >= 5


def test_runs_through_anomalib_benchmark(make_config, tmp_path) -> None:
    # SkipTS on the head phantom through anomalib's own pipeline (both found by name on anomalib.models
    # and anomalib.data thanks to the package's registration); the smoke protocol's single epoch
    # reaches the pipeline's trainer through PL_TRAINER_MAX_EPOCHS.
    phantom = {"num_train": 8, "num_test_normal": 4, "num_test_abnormal": 4, "image_size": 64}
    dataset = {"name": "Phantom", "class_path": "anomalib_skipts.data.HeadPhantom", "init_args": phantom}
    dataset["init_args"]["root"] = str(tmp_path / "phantom")
    # PaDiM has no image_size argument: anomalib 2.7 alone cannot collect rows with different keys
    config = make_config(models=["SkipTS", "Padim"], datasets=[dataset])
    results = run_anomalib_benchmark(config, timeout=300)
    frame = pd.read_csv(results)
    assert len(frame) == 2
    assert frame.loc[1, "model.class_path"] == "Padim"
    assert pd.isna(frame.loc[1, "model.init_args.image_size"])
    assert frame.loc[0, "data.class_path"] == "HeadPhantom"
    assert frame.loc[0, "model.class_path"] == "SkipTS"
    assert frame.loc[0, "model.init_args.image_size"] == "[64, 64]"
    assert 0 <= frame.loc[0, "image_AUROC"] <= 1


def test_fixed_pipeline_builds_models_under_the_runs_seed_and_collects_rows_of_any_keys(monkeypatch) -> None:
    import torch
    from anomalib.pipelines.benchmark import generator
    from anomalib.pipelines.benchmark.generator import BenchmarkJobGenerator
    from anomalib.pipelines.benchmark.job import BenchmarkJob

    from anomalib_skipts.benchmark.anomalib_pipeline import fix_anomalib_benchmark

    monkeypatch.setattr(generator, "get_iterator_from_grid_dict", generator.get_iterator_from_grid_dict)
    monkeypatch.setattr(BenchmarkJob, "collect", BenchmarkJob.collect)  # both restored after the test
    fix_anomalib_benchmark()
    args = {
        "seed": {"grid": [3]},
        "model": {"class_path": "SkipTS", "init_args": {"backbone": "resnet18", "pre_trained": False}},
        "data": {"class_path": "Folder", "init_args": {"name": "x", "root": ".", "normal_dir": "."}},
    }

    def student_weights() -> torch.Tensor:
        job = next(iter(BenchmarkJobGenerator("cpu").generate_jobs(args, None)))
        return next(job.model.model.student.parameters()).detach().clone()

    first = student_weights()
    torch.rand(1000)  # whatever ran before must not matter
    assert torch.equal(first, student_weights())
    frame = BenchmarkJob.collect([{"model": "SkipTS", "size": 64}, {"model": "Padim"}])
    assert frame["model"].tolist() == ["SkipTS", "Padim"]
    assert frame.loc[0, "size"] == 64
    assert pd.isna(frame.loc[1, "size"])
