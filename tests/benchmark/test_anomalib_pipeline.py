"""Translation to anomalib's own `anomalib benchmark` pipeline, and a run through it."""

import pandas as pd

from anomalib_skipts.benchmark.anomalib_pipeline import LIMITATIONS, run_anomalib_benchmark, to_anomalib_benchmark


def test_translation_keeps_folder_and_named_models_and_reports_the_rest(make_config, tmp_path) -> None:
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
    assert [item["class_path"] for item in data] == ["Folder", "Folder"]
    assert data[0]["init_args"]["val_split_mode"] == "same_as_test"
    assert data[1]["init_args"]["normal_dir"]  # HeadPhantom translated to its Folder layout
    assert (tmp_path / "ph").is_dir()  # ... and its data generated
    assert any("HeadCT is not in anomalib.data" in note for note in notes)
    assert any("Mine" in note for note in notes)
    assert len(LIMITATIONS) >= 5


def test_runs_through_anomalib_benchmark(make_config) -> None:
    # SkipTS through anomalib's own pipeline (found by name thanks to the package's import hook); the
    # smoke protocol's single epoch reaches the pipeline's trainer through PL_TRAINER_MAX_EPOCHS.
    config = make_config(models=["SkipTS"])
    results = run_anomalib_benchmark(config, timeout=300)
    frame = pd.read_csv(results)
    assert len(frame) == 1
    assert frame.loc[0, "model.class_path"] == "SkipTS"
    assert frame.loc[0, "model.init_args.image_size"] == "[64, 64]"
    assert 0 <= frame.loc[0, "image_AUROC"] <= 1
