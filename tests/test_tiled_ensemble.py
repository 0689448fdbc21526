"""anomalib's tiled ensemble trains and evaluates Skip-TS end to end, as it does its built-in models.

The pipeline (``TrainTiledEnsemble`` then ``EvalTiledEnsemble``) trains one model per tile position,
predicts, merges the tiles, smooths the seams, normalises, thresholds, draws the pictures and computes
the metrics; its metrics stage builds a throwaway model at 10x10 only to read its evaluator.
"""

from pathlib import Path
from typing import Any

import anomalib.models
import pandas as pd
import pytest
import yaml
from anomalib.pipelines.tiled_ensemble import EvalTiledEnsemble, TrainTiledEnsemble

from anomalib_skipts.data.phantom import generate_head_phantom
from anomalib_skipts.models import SkipTS

IMAGE = 128
TILE = 64
NUM_TEST = 4 + 4


class TinySkipTS(SkipTS):
    """Skip-TS with a small random teacher.

    anomalib 2.7's tiled ensemble cannot pass ``init_args`` to any model (its ``get_model`` adds the
    tile pre-processor to them through OmegaConf, which refuses the object), so settings other than
    the defaults come from a subclass exposed on ``anomalib.models``, as ``SkipTS`` itself is.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**({"backbone": "resnet18", "pre_trained": False} | kwargs))


def _config(root: Path) -> dict:
    """The example config of anomalib's tiled ensemble, on a generated phantom read by anomalib's Folder."""
    return {
        "seed": 0,
        "accelerator": "cpu",
        "default_root_dir": str(root / "results"),
        "tiling": {"image_size": [IMAGE, IMAGE], "tile_size": [TILE, TILE], "stride": TILE},
        "normalization_stage": "image",
        "thresholding_stage": "image",
        "data": {
            "class_path": "anomalib.data.Folder",
            "init_args": {
                "name": "phantom",
                "root": str(root / "data"),
                "normal_dir": "train/good",
                "abnormal_dir": "test/lesion",
                "normal_test_dir": "test/good",
                "mask_dir": "ground_truth/lesion",
                "train_batch_size": 4,
                "eval_batch_size": 4,
                "num_workers": 0,
                "val_split_mode": "same_as_test",
                "test_split_mode": "from_dir",
            },
        },
        "SeamSmoothing": {"apply": True, "sigma": 2, "width": 0.1},
        "TrainModels": {"model": {"class_path": "TinySkipTS"}, "trainer": {"max_epochs": 1}},
    }


@pytest.mark.slow
def test_tiled_ensemble_trains_and_evaluates_skipts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the pipeline logs to runs/pipeline.log in the working directory
    monkeypatch.setattr(anomalib.models, "TinySkipTS", TinySkipTS, raising=False)
    generate_head_phantom(tmp_path / "data", num_train=8, num_test_normal=4, num_test_abnormal=4, image_size=IMAGE)
    config = tmp_path / "ensemble.yaml"
    config.write_text(yaml.safe_dump(_config(tmp_path)))

    train = TrainTiledEnsemble()
    arguments = train.get_parser().parse_args(["--config", str(config)])
    train.run(arguments)
    EvalTiledEnsemble(root_dir=train.root_dir).run(arguments)

    log = (tmp_path / "runs" / "pipeline.log").read_text()
    assert "ERROR" not in log, log[-4000:]  # the pipeline logs a failing stage and goes on
    weights = train.root_dir / "weights" / "lightning"
    tiles = [f"model{row}_{column}.ckpt" for row in (0, 1) for column in (0, 1)]
    assert sorted(path.name for path in weights.glob("*.ckpt")) == tiles
    assert (weights / "stats.json").is_file()
    metrics = pd.read_csv(train.root_dir / "metric_results.csv")
    assert {"image_AUROC", "pixel_AUROC"} <= set(metrics.columns)
    assert metrics.notna().all(axis=None)
    assert ((metrics >= 0) & (metrics <= 1)).all(axis=None)
    pictures = sorted((train.root_dir / "images").rglob("*.png"))
    assert len(pictures) == NUM_TEST
