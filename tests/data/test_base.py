"""The one datamodule base: constructor through **kwargs, seed vocabulary, facts table as data, old names."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
from anomalib.data import AnomalibDataModule
from jsonargparse import ArgumentParser

from anomalib_skipts.data import (
    BMAD,
    BUSI,
    DATASETS,
    HeadCT,
    HeadPhantom,
    MedIAnomaly,
    MedicalDataModule,
    MedicalFolder,
    VolumeFolder,
    get_benchmark_datamodule,
    get_datamodule,
)
from anomalib_skipts.data.table1 import FACTS_FILE, load_facts

from .generated_layouts import write_scan

REPO = Path(__file__).resolve().parents[2]
TINY = {"num_train": 2, "num_test_normal": 1, "num_test_abnormal": 1, "image_size": 32, "num_workers": 0}
BASE_ARGUMENTS = set(inspect.signature(MedicalDataModule).parameters) - {"name", "patient_pattern"}


@pytest.mark.parametrize("datamodule_class", [MedicalFolder, HeadCT, BMAD, MedIAnomaly, HeadPhantom])
def test_every_datamodule_offers_the_base_arguments_to_the_cli(datamodule_class: type) -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(datamodule_class, "data")
    offered = {action.dest.removeprefix("data.") for action in parser._actions}
    assert {"train_batch_size", "num_workers", "split_seed", "seed", "skip_invalid", "val_split_mode"} <= offered
    assert offered >= BASE_ARGUMENTS


def test_volume_folder_takes_the_shared_arguments_from_the_base() -> None:
    own = set(inspect.signature(VolumeFolder).parameters)
    assert not own & BASE_ARGUMENTS  # declared once, in the base
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(VolumeFolder, "data")
    offered = {action.dest.removeprefix("data.") for action in parser._actions}
    assert offered >= (BASE_ARGUMENTS - {"dicom_window"}) | {"name", "patient_pattern", "window", "slice_axis"}
    assert "dicom_window" not in offered  # volumes are windowed by `window`, NIfTI and DICOM alike


def test_subclass_defaults_survive_the_cli() -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(HeadCT, "data")
    config = parser.parse_args([])
    assert config.data.val_split_mode == "same_as_test"  # the paper evaluates on the test set
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(BMAD, "data")
    assert parser.parse_args([]).data.val_split_mode == "from_dir"  # BMAD's own validation split


def test_split_seed_and_seed_mean_the_same_everywhere(tmp_path: Path) -> None:
    folder = MedicalFolder(name="x", normal_dir="n", split_seed=3)
    busi = BUSI(root=tmp_path, split_seed=3)
    phantom = HeadPhantom(root=tmp_path / "p", split_seed=3, **TINY)
    for datamodule in (folder, busi, phantom):
        assert (datamodule.split_seed, datamodule.seed) == (3, 3)  # anomalib's seed follows split_seed
    phantom = HeadPhantom(root=tmp_path / "p", phantom_seed=1, split_seed=3, seed=7, **TINY)
    assert (phantom.phantom_seed, phantom.split_seed, phantom.seed) == (1, 3, 7)


def test_phantom_old_seed_spelling_still_seeds_the_generation_with_a_warning(tmp_path: Path) -> None:
    with pytest.warns(FutureWarning, match="phantom_seed"):
        old = HeadPhantom(root=tmp_path / "p", seed=4, **TINY)
    assert (old.phantom_seed, old.seed) == (4, 4)
    new = HeadPhantom(root=tmp_path / "p", phantom_seed=4, **TINY)
    assert new.phantom_seed == 4


def test_phantom_yaml_uses_the_new_spelling(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    datamodule = AnomalibDataModule.from_config(REPO / "datamodules" / "phantom.yaml", **{"data.root": str(tmp_path)})
    assert datamodule.phantom_seed == 0
    assert not [warning for warning in recwarn if issubclass(warning.category, FutureWarning)]


def test_old_get_datamodule_name_warns_and_works(tmp_path: Path) -> None:
    assert isinstance(get_benchmark_datamodule("BUSI", root=tmp_path), BUSI)
    with pytest.warns(FutureWarning, match="get_benchmark_datamodule"):
        assert isinstance(get_datamodule(4, root=tmp_path), BUSI)


def test_facts_table_is_data_shipped_with_the_package() -> None:
    path = REPO / "anomalib_skipts" / "data" / FACTS_FILE
    assert load_facts(path.read_text(encoding="utf-8")) == DATASETS
    edited = path.read_text(encoding="utf-8").replace("journal: [60, 40, 100]", "journal: [61, 39, 100]")
    assert load_facts(edited)["headct"].journal.train == 61  # the table, not code, holds the counts
    assert load_facts(edited)["headct"].loader is DATASETS["headct"].loader


def test_from_dir_without_a_validation_folder_is_a_clear_error(tmp_path: Path) -> None:
    for folder, count in (("normal", 4), ("abnormal", 2)):
        for index in range(count):
            write_scan(tmp_path / folder / f"{index}.png", np.random.default_rng(index))
    datamodule = MedicalFolder(
        name="x", root=tmp_path, normal_dir="normal", abnormal_dir="abnormal", val_split_mode="from_dir"
    )
    with pytest.raises(ValueError, match=r"from_dir' needs a validation folder.*same_as_test"):
        datamodule.setup()


def test_benchmark_gives_protocol_batch_sizes_to_kwargs_datamodules() -> None:
    from anomalib_skipts.benchmark.adapters import datamodule_init_args
    from anomalib_skipts.benchmark.config import load_config

    config = load_config(REPO / "configs" / "benchmark" / "smoke.yaml")
    run = config.runs()[0]
    kwargs = datamodule_init_args(run, HeadPhantom)
    assert kwargs["train_batch_size"] == run.protocol.train_batch_size
    assert kwargs["num_workers"] == run.protocol.num_workers
    assert kwargs["val_split_mode"] == "same_as_test"
