"""Predicting on a volume writes a NIfTI anomaly map on the input's grid and affine, and a patient score."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel
import numpy as np
import pandas as pd
import pytest
import torch
from anomalib.data import InferenceBatch

from anomalib_skipts.data.volume_phantom import phantom_affine, render_head_volume
from anomalib_skipts.data.volumes import VolumeSettings
from anomalib_skipts.volume_predict import SCORES_CSV, predict_volumes


class HyperdensityDetector(torch.nn.Module):
    """A known-response detector for checking geometry: the map is the hyperdense (not bone) signal at 64x64.

    With the window 40..100 HU the phantom's lesion (about 60-80 HU) maps to the middle of the range, brain
    to 0 and bone to 1; the map is zero within four pixels of bone, so its maximum lies in the lesion, and it is
    returned at another size than the input (as a model's pre-processor does) to exercise the resizing.
    """

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images: torch.Tensor) -> InferenceBatch:
        resized = torch.nn.functional.interpolate(images[:, :1], size=(48, 48), mode="bilinear", align_corners=False)
        not_bone = -torch.nn.functional.max_pool2d(-(resized < 0.95).float(), 9, stride=1, padding=4)
        maps = resized * not_bone
        return InferenceBatch(pred_score=torch.amax(maps, dim=(-2, -1)), anomaly_map=maps)


def test_map_has_the_input_affine_and_peaks_in_the_lesion(tmp_path: Path) -> None:
    volume = render_head_volume((4, 2), image_size=64, num_slices=8, lesion=True)
    affine = phantom_affine(64, 8)
    path = tmp_path / "scan.nii.gz"
    nibabel.save(nibabel.Nifti1Image(volume.hu, affine), path)
    normal = tmp_path / "normal.nii.gz"
    nibabel.save(nibabel.Nifti1Image(render_head_volume((4, 3), image_size=64, num_slices=8).hu, affine), normal)

    table = predict_volumes(
        HyperdensityDetector(), [path, normal], tmp_path / "out", VolumeSettings(window=(70.0, 60.0)), batch_size=3
    )

    written = nibabel.load(tmp_path / "out" / "scan_anomaly_map.nii.gz")
    np.testing.assert_allclose(written.affine, affine)
    assert written.shape == volume.hu.shape
    anomaly_map = written.get_fdata()
    peak = np.unravel_index(anomaly_map.argmax(), anomaly_map.shape)
    assert volume.mask[peak] == 1
    csv = pd.read_csv(tmp_path / "out" / SCORES_CSV)
    assert csv["volume_path"].tolist() == [str(path), str(normal)]
    assert csv["n_slices"].tolist() == [8, 8]
    assert csv.loc[0, "patient_score"] > csv.loc[1, "patient_score"]
    assert table.equals(csv)


@pytest.fixture(scope="module")
def trained_on_volumes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A Skip-TS checkpoint trained (1 epoch) on phantom volumes read in the brain window, and its data root."""
    from anomalib.engine import Engine

    from anomalib_skipts.data import VolumeFolder, generate_volume_phantom
    from anomalib_skipts.models import SkipTS

    tmp_path = tmp_path_factory.mktemp("trained_on_volumes")
    root = generate_volume_phantom(tmp_path / "volumes", num_normal=4, num_abnormal=2, num_slices=4)
    datamodule = VolumeFolder(
        name="volumes",
        root=root,
        normal_dir="normal",
        abnormal_dir="abnormal",
        mask_dir="masks",
        window="brain",
        num_test_normal=1,
        num_workers=0,
        val_split_mode="same_as_test",
    )
    model = SkipTS(backbone="resnet18", pre_trained=False, image_size=(64, 64), visualizer=False)
    engine = Engine(accelerator="cpu", max_epochs=1, logger=False, default_root_dir=tmp_path / "results")
    engine.fit(model=model, datamodule=datamodule)
    checkpoint = tmp_path / "model.ckpt"
    engine.trainer.save_checkpoint(checkpoint)
    return checkpoint, root


def test_command_line_writes_maps_from_a_trained_checkpoint(
    trained_on_volumes: tuple[Path, Path], tmp_path: Path
) -> None:
    from anomalib_skipts.volume_predict import main

    checkpoint, root = trained_on_volumes
    scan = root / "abnormal" / "a001.nii.gz"
    assert (
        main(["--ckpt_path", str(checkpoint), "--window", "brain", "--output", str(tmp_path / "out"), str(scan)]) == 0
    )
    written = nibabel.load(tmp_path / "out" / "a001_anomaly_map.nii.gz")
    np.testing.assert_allclose(written.affine, nibabel.load(scan).affine)
    assert written.shape == (64, 64, 4)
    assert np.isfinite(written.get_fdata()).all()
    assert pd.read_csv(tmp_path / "out" / SCORES_CSV)["volume_path"].tolist() == [str(scan)]


def test_prediction_takes_the_volume_settings_of_training_from_the_checkpoint(
    trained_on_volumes: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from anomalib_skipts.input_settings import find_input_settings
    from anomalib_skipts.models import SkipTS
    from anomalib_skipts.volume_predict import main, trained_volume_settings

    checkpoint, root = trained_on_volumes
    scan = root / "abnormal" / "a001.nii.gz"
    stored = trained_volume_settings(find_input_settings(torch.load(checkpoint, weights_only=False)))
    assert stored == VolumeSettings(window="brain")

    def run(*flags: str) -> tuple[np.ndarray, float]:
        output = tmp_path / "_".join(flags or ("stored",))
        assert main(["--ckpt_path", str(checkpoint), *flags, "--output", str(output), str(scan)]) == 0
        return nibabel.load(output / "a001_anomaly_map.nii.gz").get_fdata(), pd.read_csv(output / SCORES_CSV).loc[
            0, "patient_score"
        ]

    as_trained, score = run("--window", "brain")
    no_flags, no_flags_score = run()  # no flags: the brain window from the checkpoint, not the percentile default
    np.testing.assert_array_equal(no_flags, as_trained)
    assert no_flags_score == score
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="anomalib_skipts.volume_predict"):
        other, _ = run("--window", "400,2000")  # a forced other window is used, with a warning
    assert not np.array_equal(other, as_trained)
    assert any("trained with" in record.getMessage() for record in caplog.records)

    # Python: a model loaded from the checkpoint predicts with its stored settings too.
    model = SkipTS.load_from_checkpoint(checkpoint, map_location="cpu")
    table = predict_volumes(model, [scan], tmp_path / "python")
    assert table.loc[0, "patient_score"] == pytest.approx(score, abs=1e-6)


class EmptinessDetector(torch.nn.Module):
    """Scores a slice by how empty it is (1 - mean intensity): air slices score highest."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images: torch.Tensor) -> InferenceBatch:
        maps = 1.0 - images[:, :1]
        return InferenceBatch(pred_score=maps.mean(dim=(-3, -2, -1)), anomaly_map=maps[:, 0])


def test_patient_score_uses_the_slices_training_would_use(tmp_path: Path) -> None:
    # Two air slices above and below the head: outside the body rule of training, they must not
    # decide the patient (the map still covers them).
    head = render_head_volume((4, 2), image_size=32, num_slices=4).hu
    air = np.full((32, 32, 2), -1000.0, dtype=head.dtype)
    path = tmp_path / "scan.nii.gz"
    nibabel.save(nibabel.Nifti1Image(np.concatenate([air, head, air], axis=2), phantom_affine(32, 8)), path)

    everything = predict_volumes(EmptinessDetector(), [path], tmp_path / "all", VolumeSettings(window="brain"))
    body = predict_volumes(
        EmptinessDetector(), [path], tmp_path / "body", VolumeSettings(window="brain", min_body_fraction=0.05)
    )
    assert everything.loc[0, "n_slices"] == 8
    assert everything.loc[0, "patient_score"] == pytest.approx(1.0)  # an air slice
    assert body.loc[0, "n_slices"] == 4
    assert body.loc[0, "patient_score"] < 0.99
    assert nibabel.load(tmp_path / "body" / "scan_anomaly_map.nii.gz").shape == (32, 32, 8)
