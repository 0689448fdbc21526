"""VolumeFolder: NIfTI and DICOM series read slice by slice, split by patient, bad volumes reported."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel
import numpy as np
import pytest

from anomalib_skipts.data import InvalidDatasetError, VolumeFolder
from anomalib_skipts.data.volume_phantom import generate_volume_phantom, render_head_volume
from anomalib_skipts.data.volume_readers import inspect_volume, read_slice


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_volume_phantom(tmp_path_factory.mktemp("volumes"), num_normal=6, num_abnormal=3, num_slices=6)


def volume_folder(root: Path, **kwargs: object) -> VolumeFolder:
    arguments = {
        "name": "volumes",
        "root": root,
        "normal_dir": "normal",
        "abnormal_dir": "abnormal",
        "num_workers": 0,
        "train_batch_size": 4,
        "eval_batch_size": 4,
        "val_split_mode": "none",
    }
    arguments.update(kwargs)
    return VolumeFolder(**arguments)


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(array, np.eye(4) if affine is None else affine), path)
    return path


def write_series(
    folder: Path, volume: np.ndarray, spacing: float = 2.5, skip: tuple[int, ...] = (), tilt: int = -1
) -> Path:
    """Write a (columns, rows, slices) int16 volume as a DICOM series, file names in REVERSE position order."""
    pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series = generate_uid()
    count = volume.shape[2]
    for k in range(count):
        if k in skip:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"IM{count - k:04d}.dcm"
        dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        dataset.SOPClassUID = CTImageStorage
        dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        dataset.SeriesInstanceUID = series
        dataset.PatientID = "PAT-7"
        dataset.Modality = "CT"
        pixels = np.ascontiguousarray(volume[:, :, k].T.astype(np.int16) + 1024)
        dataset.Rows, dataset.Columns = pixels.shape
        dataset.SamplesPerPixel = 1
        dataset.PhotometricInterpretation = "MONOCHROME2"
        dataset.BitsAllocated = dataset.BitsStored = 16
        dataset.HighBit = 15
        dataset.PixelRepresentation = 1
        dataset.RescaleSlope, dataset.RescaleIntercept = 1.0, -1024.0
        dataset.PixelSpacing = [0.8, 0.7]
        dataset.ImageOrientationPatient = [1, 0, 0, 0, 0.6, 0.8] if k == tilt else [1, 0, 0, 0, 1, 0]
        dataset.ImagePositionPatient = [-10.0, 20.0, 5.0 + spacing * k]
        dataset.PixelData = pixels.tobytes()
        dataset.save_as(path, enforce_file_format=True)
    return folder


def test_slices_carry_patient_and_split_keeps_patients_whole(phantom: Path) -> None:
    datamodule = volume_folder(phantom, mask_dir="masks", window="brain", num_test_normal=2, split_seed=3)
    datamodule.setup()
    train, test = datamodule.train_data.samples, datamodule.test_data.samples
    assert set(train["patient_id"]).isdisjoint(test["patient_id"])
    assert train["patient_id"].nunique() == 4
    assert test["patient_id"].nunique() == 5
    # 6 slices per volume; a slice of an abnormal volume is abnormal only where its mask has lesion voxels.
    assert len(train) == 4 * 6
    abnormal_patients = test[test["patient_label"] == 1]
    mask = np.asanyarray(nibabel.load(phantom / "masks" / "a000.nii.gz").dataobj)
    lesion_slices = set(np.flatnonzero(mask.any(axis=(0, 1))))
    a000 = abnormal_patients[abnormal_patients["patient_id"] == "a000"]
    assert set(a000.loc[a000["label_index"] == 1, "slice_index"]) == lesion_slices
    assert 0 < len(lesion_slices) < 6

    batch = next(iter(datamodule.test_dataloader()))
    assert batch.image.shape == (4, 3, 64, 64)
    assert batch.gt_mask.shape == (4, 64, 64)
    assert len(batch.patient_id) == 4
    assert batch.slice_index.tolist() == [0, 1, 2, 3]
    assert all(path.endswith(".nii.gz") for path in batch.volume_path)
    # The image is the CT brain window of the stored HU values (40 / 80: 0 HU -> 0, 80 HU -> 1).
    volume = np.asanyarray(nibabel.load(batch.volume_path[1]).dataobj).astype(np.float32)
    expected = np.clip(volume[:, :, 1].T / 80.0, 0, 1)
    np.testing.assert_allclose(batch.image[1, 0].numpy(), expected, atol=1e-6)

    other = volume_folder(phantom, mask_dir="masks", window="brain", num_test_normal=2, split_seed=4)
    other.setup()
    again = volume_folder(phantom, mask_dir="masks", window="brain", num_test_normal=2, split_seed=3)
    again.setup()
    assert set(again.train_data.samples["patient_id"]) == set(train["patient_id"])
    assert set(other.train_data.samples["patient_id"]) != set(train["patient_id"])


def test_patient_pattern_keeps_two_volumes_of_one_patient_together(tmp_path: Path) -> None:
    for patient in range(4):
        for visit in range(2):
            write_nifti(tmp_path / "normal" / f"p{patient}_v{visit}.nii.gz", render_head_volume((patient, visit)).hu)
    write_nifti(tmp_path / "abnormal" / "p9_v0.nii.gz", render_head_volume((9, 0), lesion=True).hu)
    for seed in range(4):
        datamodule = volume_folder(tmp_path, patient_pattern=r"^(?P<patient>p\d+)_", num_test_normal=2, split_seed=seed)
        datamodule.setup()
        train = datamodule.train_data.samples.drop_duplicates("volume_path")
        test = datamodule.test_data.samples.drop_duplicates("volume_path")
        assert set(train["patient_id"]).isdisjoint(test["patient_id"])
        assert train.groupby("patient_id").size().eq(2).all()


def test_slice_selection_intensity_and_resampling(phantom: Path) -> None:
    ranged = volume_folder(phantom, slice_range=(1, 4), num_test_normal=2)
    ranged.setup()
    assert sorted(ranged.train_data.samples["slice_index"].unique()) == [1, 2, 3]

    # An empty (air) slice is dropped by the body rule, kept without it.
    volume = render_head_volume(0).hu
    volume[:, :, 0] = -1000
    root = phantom.parent / "with_air"
    for index in range(3):
        write_nifti(root / "normal" / f"n{index}.nii.gz", volume)
    body = volume_folder(root, abnormal_dir=None, window="brain", min_body_fraction=0.05, num_test_normal=1)
    body.setup()
    assert 0 not in set(body.train_data.samples["slice_index"])
    assert body.train_data.samples["slice_index"].nunique() == volume.shape[2] - 1

    # MRI-like percentile normalisation maps each volume's body to [0, 1]; resampling to 2x the spacing halves the size.
    resampled = volume_folder(phantom, spacing=(200.0 / 32, 200.0 / 32), num_test_normal=2)
    resampled.setup()
    assert resampled.train_data[0].image.shape == (3, 32, 32)
    assert resampled.train_data[0].gt_mask is None  # classification: no mask_dir
    images = [ranged.train_data[index].image for index in range(3)]  # one volume, slices 1-3
    assert min(float(image.min()) for image in images) == 0.0
    assert max(float(image.max()) for image in images) == 1.0


def test_dicom_series_is_ordered_by_position_not_file_name(tmp_path: Path) -> None:
    volume = render_head_volume(1, num_slices=5).hu
    folder = write_series(tmp_path / "series", volume)
    info = inspect_volume(folder)
    assert info.shape == (64, 64, 5)
    assert info.patient_id == "PAT-7"
    # The first file by name is the LAST slice by position.
    assert Path(info.files[0]).name == "IM0005.dcm"
    for k in range(5):
        np.testing.assert_array_equal(read_slice(info, k), volume[:, :, k].T.astype(np.float32))
    # Voxel (i, j, k) -> RAS: DICOM's LPS with x and y negated; columns 0.7 mm, rows 0.8 mm, slices 2.5 mm.
    np.testing.assert_allclose(info.affine @ [2, 3, 4, 1], [-(-10 + 2 * 0.7), -(20 + 3 * 0.8), 5 + 4 * 2.5, 1])


def test_bad_volumes_are_all_listed_with_their_files(tmp_path: Path) -> None:
    good = render_head_volume(0, num_slices=6)
    for index in range(3):
        write_nifti(tmp_path / "normal" / f"n{index}.nii.gz", render_head_volume((5, index), num_slices=6).hu)
    four_d = write_nifti(tmp_path / "normal" / "four_d.nii.gz", np.zeros((8, 8, 4, 3), dtype=np.int16))
    corrupt = tmp_path / "normal" / "corrupt.nii.gz"
    corrupt.write_bytes(gzip.compress(nibabel.Nifti1Image(good.hu, np.eye(4)).to_bytes())[:3000])
    text = tmp_path / "normal" / "notes.nii"
    text.write_text("not a volume")
    stray = tmp_path / "normal" / "readme.txt"
    stray.write_text("hello")
    write_nifti(tmp_path / "abnormal" / "a0.nii.gz", good.hu)
    shape_mask = write_nifti(tmp_path / "masks" / "a0.nii.gz", np.zeros((32, 64, 6), dtype=np.uint8))
    write_nifti(tmp_path / "abnormal" / "a1.nii.gz", good.hu)
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    affine_mask = write_nifti(tmp_path / "masks" / "a1.nii.gz", good.mask, shifted)
    write_series(tmp_path / "abnormal" / "gap", good.hu, skip=(3,))
    write_series(tmp_path / "abnormal" / "tilted", good.hu, tilt=2)
    write_nifti(tmp_path / "masks" / "gap.nii.gz", good.mask)
    write_nifti(tmp_path / "masks" / "tilted.nii.gz", good.mask)

    with pytest.raises(InvalidDatasetError) as raised:
        volume_folder(tmp_path, mask_dir="masks", num_test_normal=1).setup()
    # First the listing: a stray file.
    assert str(stray) in str(raised.value)
    stray.unlink()
    with pytest.raises(InvalidDatasetError) as raised:
        volume_folder(tmp_path, mask_dir="masks", num_test_normal=1).setup()
    message = str(raised.value)
    problems = {problem.path: problem.reason for problem in raised.value.problems}
    assert "4-D volume" in problems[str(four_d)]
    assert "corrupt or truncated" in problems[str(corrupt)]
    assert "not a readable NIfTI" in problems[str(text)]
    assert "mask grid is (32, 64, 6)" in problems[str(shape_mask)]
    assert "mask affine differs" in problems[str(affine_mask)]
    assert "missing slice(s) between IM0004.dcm" in problems[str(tmp_path / "abnormal" / "gap")]
    assert "mixes orientations: IM0004.dcm" in problems[str(tmp_path / "abnormal" / "tilted")]
    assert len(raised.value.problems) == 7, message

    # skip_invalid leaves them out, one warning each, and trains on the rest.
    datamodule = volume_folder(tmp_path, mask_dir="masks", num_test_normal=1, skip_invalid=True)
    datamodule.setup()
    assert set(datamodule.train_data.samples["patient_id"]) | set(datamodule.test_data.samples["patient_id"]) == {
        "n0",
        "n1",
        "n2",
    }
