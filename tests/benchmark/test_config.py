"""Config parsing, named protocols, run expansion and run fingerprints."""

from pathlib import Path

import pytest

from anomalib_skipts.benchmark.config import DEFAULT_MODELS, PROTOCOLS, get_protocol, load_config, parse_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "benchmark"


def _data(**overrides: object) -> dict:
    data = {"datasets": [{"name": "A", "class_path": "anomalib.data.Folder", "init_args": {"root": "x"}}]}
    data.update(overrides)
    return data


def test_named_protocols() -> None:
    paper = get_protocol("paper")
    assert paper.image_size == (256, 256)
    assert paper.backbone == "wide_resnet50_2.tv_in1k"  # torchvision weights, as in the authors code
    assert paper.pre_trained is True
    assert paper.max_epochs == 200
    assert paper.train_batch_size == 16
    assert len(paper.seeds) == 5
    quick = get_protocol("cpu_quick")
    assert quick is PROTOCOLS["cpu-quick"]
    assert quick.pre_trained is False
    assert len(quick.seeds) == 3
    with pytest.raises(KeyError, match="Unknown protocol"):
        get_protocol("nope")


def test_defaults_five_models_and_protocol_seeds() -> None:
    config = parse_config(_data())
    assert tuple(model.name for model in config.models) == DEFAULT_MODELS
    assert config.protocol.name == "paper"
    assert config.seeds == (0, 1, 2, 3, 4)
    assert config.kde_models == ("SkipTS",)


def test_protocol_overrides_and_image_size() -> None:
    config = parse_config(_data(protocol={"name": "cpu-quick", "max_epochs": 3, "image_size": 96}))
    assert config.protocol.name == "cpu-quick"
    assert config.protocol.max_epochs == 3
    assert config.protocol.image_size == (96, 96)
    assert config.protocol.backbone == "resnet18"
    assert config.seeds == (0, 1, 2)


def test_runs_grid_order_and_ids() -> None:
    config = parse_config(
        _data(
            models=["Padim", {"name": "ST0", "class_path": "SkipTS", "init_args": {"num_skips": 0}, "max_epochs": 7}],
            datasets=[
                {"name": "A", "class_path": "anomalib.data.Folder"},
                {"name": "B/C", "class_path": "anomalib.data.Folder"},
            ],
            seeds=[3, 1],
        ),
    )
    runs = config.runs()
    assert len(runs) == 2 * 2 * 2
    # Seeds outer, models inner: every model runs early.
    assert [(run.seed, run.dataset.name, run.model.name) for run in runs[:4]] == [
        (3, "A", "Padim"),
        (3, "A", "ST0"),
        (3, "B/C", "Padim"),
        (3, "B/C", "ST0"),
    ]
    assert len({run.run_id for run in runs}) == len(runs)
    assert runs[3].run_id == "ST0__B-C__seed3"
    assert runs[0].max_epochs == config.protocol.max_epochs
    assert runs[1].max_epochs == 7


def test_fingerprint_tracks_what_changes_results() -> None:
    base = parse_config(_data(models=["Padim"], seeds=[0])).runs()[0]
    same = parse_config(_data(models=[{"class_path": "Padim", "group": "x"}], seeds=[0])).runs()[0]
    assert base.fingerprint() == same.fingerprint()  # the table section does not change the result
    other_seed = parse_config(_data(models=["Padim"], seeds=[1])).runs()[0]
    other_args = parse_config(_data(models=[{"class_path": "Padim", "init_args": {"n_features": 50}}])).runs()[0]
    other_epochs = parse_config(_data(models=["Padim"], protocol={"name": "paper", "max_epochs": 3})).runs()[0]
    fingerprints = {run.fingerprint() for run in (base, other_seed, other_args, other_epochs)}
    assert len(fingerprints) == 4


def test_invalid_configs() -> None:
    with pytest.raises(ValueError, match="Unknown key"):
        parse_config(_data(modles=["Padim"]))
    with pytest.raises(ValueError, match="Unknown key"):
        parse_config(_data(protocol={"name": "paper", "epochs": 3}))
    with pytest.raises(ValueError, match="Duplicate model"):
        parse_config(_data(models=["Padim", "Padim"]))
    with pytest.raises(ValueError, match="Duplicate seeds"):
        parse_config(_data(seeds=[1, 1]))
    with pytest.raises(ValueError, match="datasets"):
        parse_config({"models": ["Padim"]})
    with pytest.raises(ValueError, match="kde_models"):
        parse_config(_data(models=["Padim"], kde_models=["SkipTS"]))


def test_select() -> None:
    config = parse_config(_data(models=["Padim", "Patchcore"]))
    selected = config.select(models=["Patchcore"], seeds=[9])
    assert [model.name for model in selected.models] == ["Patchcore"]
    assert selected.seeds == (9,)
    with pytest.raises(ValueError, match="Unknown model"):
        config.select(models=["Nope"])


@pytest.mark.parametrize("name", ["smoke", "cpu_quick", "paper", "ablation"])
def test_shipped_configs_parse(name: str) -> None:
    config = load_config(CONFIGS / f"{name}.yaml")
    assert config.runs()
    if name in {"cpu_quick", "paper", "smoke"}:
        assert [model.name for model in config.models] == list(DEFAULT_MODELS)


def test_ablation_config_has_table_iv_variants() -> None:
    config = load_config(CONFIGS / "ablation.yaml", protocol="cpu-quick", max_epochs=2)
    assert config.protocol.name == "cpu-quick"
    assert config.protocol.max_epochs == 2
    args = {model.name: (model.class_path, model.init_args) for model in config.models}
    skips = sorted(init.get("num_skips", 2) for path, init in args.values() if path == "SkipTS")
    assert {0, 1, 2} <= set(skips)
    assert ("Stfpm", {}) in args.values()
    losses = {(init.get("similarity", "cosine"), init.get("mac", True)) for path, init in args.values()}
    assert {("mse", False), ("mse", True), ("cosine", False), ("cosine", True)} <= losses
    maps = {tuple(init.get("anomaly_map_layers", (1, 2, 3))) for _, init in args.values()}
    assert {(1, 2), (1, 3), (2, 3), (1, 2, 3)} <= maps
    assert len({model.group for model in config.models}) == 4
    assert config.kde_models == ("Skip-TS (Skip-ST2, cosine + MAC, M1+M2+M3)",)
