"""Shared fixtures: a tiny generated head-phantom dataset and a briefly trained Skip-TS."""

from pathlib import Path

import pytest
from anomalib.engine import Engine

from anomalib_skipts.data.phantom import HeadPhantom
from anomalib_skipts.models import SkipTS

from .slurm_cluster import slurm_cluster  # noqa: F401 (a real single-node SLURM cluster, for the cluster tests)

IMAGE_SIZE = 64
PHANTOM = {"num_train": 8, "num_test_normal": 4, "num_test_abnormal": 4, "image_size": IMAGE_SIZE}
"""Generator parameters of the shared phantom dataset: every test that uses ``phantom_root`` must use these."""


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a small phantom dataset (written once per test session)."""
    return tmp_path_factory.mktemp("phantom")


@pytest.fixture(scope="session")
def phantom_datamodule(phantom_root: Path) -> HeadPhantom:
    """A head-phantom datamodule: 8 training images, 4 + 4 test images of 64x64 pixels."""
    datamodule = HeadPhantom(
        root=phantom_root,
        **PHANTOM,
        train_batch_size=4,
        eval_batch_size=4,
        num_workers=0,
    )
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, phantom_datamodule: HeadPhantom) -> tuple[SkipTS, Engine, Path]:
    """Skip-TS (ResNet-18 random teacher, 64x64) trained for 2 epochs through anomalib's Engine."""
    root = tmp_path_factory.mktemp("engine")
    model = SkipTS(backbone="resnet18", pre_trained=False, image_size=IMAGE_SIZE)
    engine = Engine(
        default_root_dir=root,
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        logger=False,
    )
    engine.fit(model=model, datamodule=phantom_datamodule)
    checkpoint = Path(
        engine.trainer.checkpoint_callback.best_model_path or engine.trainer.checkpoint_callback.last_model_path
    )
    return model, engine, checkpoint
