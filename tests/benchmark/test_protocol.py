"""The protocol on real (tiny) runs: last-epoch evaluation, seeds, identical conditions, costs."""

import json

import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping

from anomalib_skipts.benchmark.adapters import build_model, model_init_args
from anomalib_skipts.benchmark.callbacks import LastEpochGuard, weights_fingerprint
from anomalib_skipts.benchmark.job import execute_run


def _predictions(run_dir) -> pd.DataFrame:
    return pd.read_csv(run_dir / "predictions.csv")


def test_trained_for_all_epochs_and_evaluated_after_the_last(make_config, tmp_path) -> None:
    config = make_config(models=["SkipTS", "Padim"], protocol={"name": "smoke", "max_epochs": 2})
    rows = {run.model.name: execute_run(run, tmp_path / run.run_id) for run in config.runs()}
    skipts = rows["SkipTS"]
    assert skipts["status"] == "ok", skipts["error"]
    assert skipts["max_epochs"] == skipts["epochs_trained"] == 2
    # PaDiM's own trainer_arguments fix one epoch (a single pass over the data): recorded as used.
    assert rows["Padim"]["requested_epochs"] == 2
    assert rows["Padim"]["max_epochs"] == rows["Padim"]["epochs_trained"] == 1
    assert not list(tmp_path.rglob("*.ckpt"))  # no checkpoint written, so none can be picked
    # Same split, same test set, same image size for both models.
    assert skipts["test_set_hash"] == rows["Padim"]["test_set_hash"]
    assert skipts["n_test"] == 8
    assert skipts["n_test_normal"] == skipts["n_test_abnormal"] == 4
    assert json.loads(skipts["init_args"])["image_size"] == [64, 64]
    assert json.loads(skipts["init_args"])["pre_trained"] is False
    # Costs are measured for every run.
    padim = rows["Padim"]
    assert padim["params"] > 1e6  # resnet18 layers 1-3
    assert padim["trained_params"] == 0  # PaDiM has no optimizer
    assert 0 < skipts["trained_params"] < skipts["params"]  # the student only; the teacher is frozen
    assert padim["flops_per_image"] > 1e7
    assert skipts["flops_per_image"] > padim["flops_per_image"]  # teacher + student decoder
    assert padim["throughput_ips"] > 0
    assert padim["train_time_s"] > 0
    assert padim["device"].startswith("cpu")
    assert 0 <= padim["pixel_auroc"] <= 1  # the tiny dataset has masks


def test_guard_rejects_early_stopping_and_swapped_weights() -> None:
    guard_class = LastEpochGuard
    guard = guard_class()
    module = torch.nn.Linear(2, 2)

    class Trainer:
        def __init__(self) -> None:
            self.callbacks = [EarlyStopping(monitor="loss")]
            self.current_epoch = 3
            self.max_epochs = 3

    with pytest.raises(RuntimeError, match="Early stopping"):
        guard.on_fit_start(Trainer(), module)
    with pytest.raises(RuntimeError, match="without having been trained"):
        guard.on_test_start(Trainer(), module)
    guard.on_train_end(Trainer(), module)
    assert guard.epochs_trained == 3
    guard.on_test_start(Trainer(), module)  # unchanged weights: fine
    with torch.no_grad():
        module.weight.add_(1.0)  # e.g. a "best" checkpoint loaded before testing
    with pytest.raises(RuntimeError, match="after the last epoch"):
        guard.on_test_start(Trainer(), module)
    assert weights_fingerprint(module) != guard.fingerprint


def test_same_seed_same_result_other_seed_other_result(make_config, tmp_path) -> None:
    config = make_config(models=["SkipTS"], seeds=[0, 1])
    first, second = config.runs()
    a = execute_run(first, tmp_path / "a")
    b = execute_run(first, tmp_path / "b")
    c = execute_run(second, tmp_path / "c")
    assert a["status"] == b["status"] == c["status"] == "ok"
    pd.testing.assert_frame_equal(_predictions(tmp_path / "a"), _predictions(tmp_path / "b"))
    assert not _predictions(tmp_path / "a")["score"].equals(_predictions(tmp_path / "c")["score"])
    assert a["test_set_hash"] == c["test_set_hash"]  # the split stays fixed across seeds


def test_split_follows_seed_only_when_asked(make_config) -> None:
    fixed = make_config(
        seeds=[5], datasets=[{"name": "P", "class_path": "anomalib_skipts.data.HeadPhantom", "seed_arg": "split_seed"}]
    )
    from anomalib_skipts.benchmark.adapters import datamodule_init_args, resolve_datamodule_class

    run = fixed.runs()[0]
    cls = resolve_datamodule_class(run.dataset.class_path)
    assert "split_seed" not in datamodule_init_args(run, cls)
    varying = make_config(
        seeds=[5],
        protocol={"name": "smoke", "vary_split_with_seed": True},
        datasets=[{"name": "P", "class_path": "anomalib_skipts.data.HeadPhantom", "seed_arg": "split_seed"}],
    )
    args = datamodule_init_args(varying.runs()[0], cls)
    assert args["split_seed"] == 5
    assert args["val_split_mode"] == "same_as_test"  # the whole test split is evaluated
    assert args["train_batch_size"] == varying.protocol.train_batch_size


@pytest.mark.parametrize(
    ("class_path", "expected"),
    [
        ("anomalib_skipts.data.HeadPhantom", "split_seed"),
        ("anomalib_skipts.data.VolumeFolder", "split_seed"),
        ("anomalib.data.Folder", "seed"),
    ],
)
def test_seed_arg_defaults_to_the_datamodules_own_split_seed(make_config, class_path, expected) -> None:
    from anomalib_skipts.benchmark.adapters import datamodule_init_args, resolve_datamodule_class

    protocol = {"name": "smoke", "vary_split_with_seed": True}
    config = make_config(seeds=[7], protocol=protocol, datasets=[{"name": "D", "class_path": class_path}])
    run = config.runs()[0]
    assert run.dataset.seed_arg == expected  # written out in the config, as in the run's fingerprint
    assert datamodule_init_args(run, resolve_datamodule_class(class_path))[expected] == 7
    spelled_out = make_config(
        seeds=[7], protocol=protocol, datasets=[{"name": "D", "class_path": class_path, "seed_arg": expected}]
    )
    assert spelled_out.runs()[0].fingerprint() == run.fingerprint()  # finished runs stay finished
    never = make_config(
        seeds=[7], protocol=protocol, datasets=[{"name": "D", "class_path": class_path, "seed_arg": None}]
    )
    assert expected not in datamodule_init_args(never.runs()[0], resolve_datamodule_class(class_path))


def test_protocol_fills_backbone_and_size_but_keeps_explicit_args(make_config) -> None:
    from anomalib_skipts.benchmark.adapters import resolve_model_class

    config = make_config(
        models=[{"name": "RD", "class_path": "reverse_distillation", "init_args": {"backbone": "resnet34"}}, "Stfpm"]
    )
    rd, stfpm = config.runs()
    args = model_init_args(rd, resolve_model_class(rd.model.class_path))
    assert args["backbone"] == "resnet34"  # explicit init_args win
    assert args["pre_trained"] is False
    assert args["post_processor"] is False  # raw scores
    assert args["evaluator"] is False
    stfpm_args = model_init_args(stfpm, resolve_model_class("Stfpm"))
    assert stfpm_args["backbone"] == "resnet18"
    assert "pre_trained" not in stfpm_args  # STFPM has no such argument (always ImageNet)
    model = build_model(rd)
    assert type(model).__name__ == "ReverseDistillation"
    assert model.input_size == (64, 64)


def test_paper_protocol_gives_every_backbone_model_the_same_weights_and_records_them() -> None:
    from anomalib_skipts.benchmark.adapters import resolve_model_class, run_weights
    from anomalib_skipts.benchmark.config import parse_config

    def weights(protocol: str) -> dict[str, tuple[str, str]]:
        config = parse_config({"protocol": protocol, "datasets": [{"name": "D", "class_path": "anomalib.data.Folder"}]})
        result = {}
        for run in config.runs()[: len(config.models)]:
            model_class = resolve_model_class(run.model.class_path)
            result[run.model.name] = (model_init_args(run, model_class).get("backbone"), run_weights(run, model_class))
        return result

    paper = weights("paper")
    assert {name: entry[1] for name, entry in paper.items()} == dict.fromkeys(
        ["SkipTS", "Padim", "Patchcore", "Stfpm", "ReverseDistillation"], "wide_resnet50_2.tv_in1k"
    )
    assert paper["ReverseDistillation"][0] == "wide_resnet50_2"  # RD's decoder is looked up by this name
    quick = weights("cpu-quick")
    assert quick["Padim"][1] == quick["SkipTS"][1] == quick["ReverseDistillation"][1] == "random-init"
    assert quick["Stfpm"][1] == "resnet18.a1_in1k"  # STFPM's teacher is always pretrained (timm's default tag)


def test_tagged_backbones_build_padim_and_give_rd_the_tagged_encoder(make_config, monkeypatch) -> None:
    import anomalib.models.components as components

    real = components.TimmFeatureExtractor
    seen: list[tuple[str, bool]] = []

    def offline(backbone: str, pre_trained: bool, layers: list[str]):  # records, never downloads
        seen.append((backbone, pre_trained))
        return real(backbone=backbone, pre_trained=False, layers=layers)

    monkeypatch.setattr(components, "TimmFeatureExtractor", offline)
    protocol = {"name": "smoke", "backbone": "resnet18.a1_in1k", "pre_trained": True}
    config = make_config(models=["ReverseDistillation"], protocol=protocol)
    model = build_model(config.runs()[0])
    assert seen == [("resnet18.a1_in1k", True)]  # built random by name, then given the tagged encoder
    assert model.model.encoder.backbone == "resnet18.a1_in1k"

    padim_model = {"name": "P", "class_path": "Padim", "init_args": {"pre_trained": False}}
    padim = make_config(models=[padim_model], protocol=protocol)
    model = build_model(padim.runs()[0])  # n_features is filled in for the tagged name
    assert model.model.backbone == "resnet18.a1_in1k"
    assert model.model.n_features == 100
