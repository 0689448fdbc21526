"""Real-data check: train and test Skip-TS on HeadCT and BrainMRI with Table I's splits.

A benchmark, not a unit test: deselected by default (``-m 'not benchmark'`` in pyproject), run with::

    .venv/bin/python -m pytest tests/data/test_real_data_benchmark.py -m benchmark -s

Reduced CPU protocol (no GPU, no ImageNet download): random-initialised ResNet-18 teacher
(``pre_trained=False``), 128x128 input, 10 epochs, batch 16, seed 0; otherwise the paper's
Skip-TS (two skip connections, cosine + MAC loss with beta 0.05, Adam lr 0.005, last epoch).
The datasets are read from their raw public layouts in ``../shared/data`` (skipped if absent).
Results are recorded in ``docs/BENCHMARKS.md``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from anomalib_skipts.data import BrainMRI, HeadCT

pytestmark = pytest.mark.benchmark

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
PROTOCOL = {"backbone": "resnet18", "pre_trained": False, "image_size": (128, 128), "num_skips": 2, "beta": 0.05}
EPOCHS = 10
BATCH_SIZE = 16
SEED = 0


@pytest.mark.parametrize(("datamodule_class", "folder"), [(HeadCT, "headct"), (BrainMRI, "brainmri")])
def test_skipts_on_real_data(datamodule_class, folder, tmp_path):
    root = DATA / folder
    if not root.is_dir():
        pytest.skip(f"real data not found at {root}")
    models = pytest.importorskip("anomalib_skipts.models")
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    seed_everything(SEED, workers=True)
    datamodule = datamodule_class(
        root=root,
        split="journal",
        split_seed=SEED,
        train_batch_size=BATCH_SIZE,
        eval_batch_size=32,
        num_workers=2,
    )
    model = models.SkipTS(**PROTOCOL, visualizer=False)
    engine = Engine(
        max_epochs=EPOCHS,
        accelerator="cpu",
        devices=1,
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
    )
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    results = engine.test(model=model, datamodule=datamodule)
    seconds = time.perf_counter() - start

    train = datamodule.train_data.samples
    test = datamodule.test_data.samples
    counts = (len(train), int((test.label_index == 0).sum()), int((test.label_index == 1).sum()))
    assert counts == (
        datamodule.info.journal.train,
        datamodule.info.journal.test_normal,
        datamodule.info.journal.test_abnormal,
    )
    auroc = float(results[0]["image_AUROC"])
    assert 0.0 <= auroc <= 1.0
    print(
        f"\n[real-data check] {datamodule.name}: train {counts[0]} normal, test {counts[1]} normal & "
        f"{counts[2]} abnormal; image AUROC {auroc:.3f} ({seconds:.0f} s fit+test, {EPOCHS} epochs)"
    )
