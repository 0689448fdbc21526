"""A wrong value in a benchmark YAML is reported with its key, the expected type, the file and the entry."""

from pathlib import Path

import pytest
import yaml

from anomalib_skipts.benchmark.__main__ import main
from anomalib_skipts.benchmark.config import load_config

DATASET = {"class_path": "anomalib.data.Folder", "init_args": {"root": "x"}}


def _write(tmp_path: Path, **data: object) -> Path:
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump({"datasets": [DATASET], **data}), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"protocol": {"name": "smoke", "max_epochs": "zero"}}, ["protocol", '"max_epochs"', "PositiveInt"]),
        ({"models": ["Padim", {"class_path": "Stfpm", "max_epochs": -3}]}, ["models[1]", '"max_epochs"']),
        ({"seeds": [0, "one"]}, ['"seeds"', "int"]),
        ({"run_timeout": "soon"}, ['"run_timeout"', "Duration"]),
        ({"run_memory_limit": 0}, ['"run_memory_limit"', "PositiveFloat"]),
        ({"isolate": "maybe"}, ['"isolate"', "bool"]),
    ],
)
def test_wrong_values_name_key_type_file_and_entry(tmp_path: Path, data: dict, words: list[str]) -> None:
    path = _write(tmp_path, **data)
    with pytest.raises(ValueError, match="Invalid value") as error:
        load_config(path)
    for word in [str(path), *words]:
        assert word in str(error.value)


def test_null_means_the_default_and_durations_have_units(tmp_path: Path) -> None:
    path = _write(tmp_path, protocol={"name": "smoke", "max_epochs": None, "backbone": None}, run_timeout="90m")
    config = load_config(path)
    assert config.protocol.max_epochs == 1  # the smoke protocol's, not a missing value
    assert config.protocol.backbone is None  # null backbone: each model keeps its own
    assert config.run_timeout == 5400


def test_command_line_reports_config_errors_without_a_traceback(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(_write(tmp_path, seeds=["x"])), "--dry-run"])
    assert exit_info.value.code == 2
    assert '"seeds"' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--config", str(tmp_path / "missing.yaml"), "--dry-run"])
    assert "No benchmark config" in capsys.readouterr().err
