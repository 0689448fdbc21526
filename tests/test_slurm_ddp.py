"""Lightning DDP under SLURM: the sbatch template trains and tests Skip-TS with 2 tasks (CPU, gloo)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from anomalib.engine import Engine

from anomalib_skipts.data.phantom import HeadPhantom as PhantomData
from anomalib_skipts.models import SkipTS

from .conftest import IMAGE_SIZE, PHANTOM
from .slurm_cluster import SlurmCluster

TEMPLATE = Path(__file__).resolve().parents[1] / "scripts" / "slurm" / "skipts_ddp.sbatch"


@pytest.mark.slow
def test_ddp_template_trains_on_two_tasks_and_its_checkpoint_predicts(
    slurm_cluster: SlurmCluster,
    phantom_datamodule: PhantomData,
    tmp_path: Path,
) -> None:
    del slurm_cluster  # running; SLURM_CONF points at it
    log = tmp_path / "ddp.out"
    results = tmp_path / "results"
    data = {"root": phantom_datamodule.root, **PHANTOM, "train_batch_size": 4, "eval_batch_size": 4, "num_workers": 0}
    arguments = [
        *("--model", "SkipTS", "--model.backbone", "resnet18", "--model.pre_trained", "false"),
        *("--model.image_size", f"[{IMAGE_SIZE},{IMAGE_SIZE}]", "--data", "anomalib_skipts.data.HeadPhantom"),
        *(item for key, value in data.items() for item in (f"--data.{key}", str(value))),
        *("--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--default_root_dir", str(results)),
    ]
    environment = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # `anomalib` of this venv
        "SKIPTS_ACCELERATOR": "cpu",
    }
    command = [
        *("sbatch", "--wait", "--gpus-per-node=0", "--ntasks-per-node=2", "--cpus-per-task=1", "--mem-per-cpu=1G"),
        f"--output={log}",
        str(TEMPLATE),
        *arguments,
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600, check=False)
    output = log.read_text(errors="replace") if log.is_file() else ""
    assert result.returncode == 0, result.stderr + output[-4000:]
    assert "MEMBER: 1/2" in output
    assert "MEMBER: 2/2" in output  # two DDP ranks
    (checkpoint,) = results.rglob("model.ckpt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    # 8 training images, batch 4: one step per epoch on each of the 2 ranks (2 steps on one process).
    assert state["global_step"] == 1

    model = SkipTS(backbone="resnet18", pre_trained=False, image_size=IMAGE_SIZE)
    engine = Engine(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    predictions = engine.predict(model=model, datamodule=phantom_datamodule, ckpt_path=checkpoint)
    scores = torch.cat([batch.pred_score.reshape(-1) for batch in predictions])
    assert len(scores) == len(phantom_datamodule.predict_dataloader().dataset) > 0
    assert torch.isfinite(scores).all()
    student = "model.student.decoder"
    weights = {key: value for key, value in state["state_dict"].items() if key.startswith(student)}
    assert weights
    assert all(torch.equal(model.state_dict()[key], value) for key, value in weights.items())
