"""``python -m anomalib_skipts.seeded_cli``: anomalib's CLI with its ``seed_everything`` applied."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from anomalib_skipts.seeded_cli import find_seed

from .conftest import PHANTOM


def test_seed_comes_from_configs_then_the_command_line(tmp_path: Path) -> None:
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("seed_everything: 3\n")
    second.write_text("trainer:\n  max_epochs: 1\n")
    assert find_seed(["train", "--config", str(first)]) == 3
    assert find_seed(["train", "-c", str(first), "--config", str(second)]) == 3  # b.yaml has no seed
    assert find_seed(["train", f"--config={first}", "--seed_everything", "5"]) == 5
    assert find_seed(["train", "--seed_everything=7", "--config", str(first)]) == 3  # the last one wins
    assert find_seed(["train", "--seed_everything", "true"]) is None  # anomalib's "random seed"
    assert find_seed(["train", "--model", "SkipTS"]) is None


def test_bad_seed_or_config_is_reported(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("seed_everything: abc\n")
    with pytest.raises(SystemExit, match=r"seed_everything='abc' in .*c\.yaml is not allowed: use an integer"):
        find_seed(["train", "--config", str(config)])
    with pytest.raises(SystemExit, match="cannot read the config file"):
        find_seed(["train", "--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(SystemExit, match="needs a value"):
        find_seed(["train", "--seed_everything"])


def _seeded_fit(work: Path, phantom_root: Path) -> dict[str, torch.Tensor]:
    config = {
        "seed_everything": 0,
        "default_root_dir": str(work),
        "trainer": {"accelerator": "cpu", "max_epochs": 1, "enable_progress_bar": False, "logger": False},
        "model": {
            "class_path": "SkipTS",
            "init_args": {"backbone": "resnet18", "pre_trained": False, "image_size": PHANTOM["image_size"]},
        },
        "data": {
            "class_path": "anomalib_skipts.data.HeadPhantom",
            "init_args": {"root": str(phantom_root), **PHANTOM, "train_batch_size": 4, "eval_batch_size": 4},
        },
    }
    work.mkdir()
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "anomalib_skipts.seeded_cli", "fit", "--config", "config.yaml"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=work, timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    checkpoint = next(work.rglob("model.ckpt"))
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]


def test_two_seeded_runs_train_the_same_model(tmp_path: Path, phantom_root: Path) -> None:
    first = _seeded_fit(tmp_path / "one", phantom_root)
    second = _seeded_fit(tmp_path / "two", phantom_root)
    assert first.keys() == second.keys()
    assert any(key.startswith("model.student.") for key in first)
    for key, value in first.items():
        assert torch.equal(value, second[key]), key
