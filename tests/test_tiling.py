"""Tiling of large images with anomalib's ``Tiler`` / ``TilerConfigurationCallback``, as for its built-in models."""

import logging
from pathlib import Path

import pytest
import torch
from anomalib.callbacks import TilerConfigurationCallback
from anomalib.data.utils.tiler import ImageUpscaleMode, Tiler
from anomalib.engine import Engine

from anomalib_skipts.data.phantom import HeadPhantom
from anomalib_skipts.models import SkipTS
from anomalib_skipts.models.skip_ts.torch_model import SkipTSModel

IMAGE = 128
TILE = 64


@pytest.fixture(scope="module")
def torch_model() -> SkipTSModel:
    torch.manual_seed(0)
    return SkipTSModel(backbone="resnet18", input_size=(IMAGE, IMAGE), pre_trained=False)


def test_tiled_features_are_the_features_of_each_tile_put_back_in_place(torch_model: SkipTSModel) -> None:
    images = torch.randn(2, 3, IMAGE, IMAGE)
    torch_model.train()  # the forward returns the features ...
    torch_model.student.eval()  # ... and batch norms use running statistics, not those of the batch of tiles
    with torch.no_grad():
        torch_model.tiler = Tiler(tile_size=TILE, stride=TILE)
        teacher, student = torch_model(images)
        torch_model.tiler = None
        for top, left in ((0, 0), (0, TILE), (TILE, 0), (TILE, TILE)):
            tile_teacher, tile_student = torch_model(images[:, :, top : top + TILE, left : left + TILE])
            for whole, tile in zip([*teacher, *student], [*tile_teacher, *tile_student], strict=True):
                scale = whole.shape[-1] // (IMAGE // TILE)
                row, column = top // TILE * scale, left // TILE * scale
                torch.testing.assert_close(whole[..., row : row + scale, column : column + scale], tile)
    torch_model.eval()


@pytest.mark.parametrize(
    ("tile", "stride", "mode"),
    [
        (TILE, TILE, ImageUpscaleMode.PADDING),
        (TILE, 32, ImageUpscaleMode.PADDING),  # overlapping tiles, averaged
        (96, 64, ImageUpscaleMode.PADDING),  # the tiles do not fit: padded, padding cut off again
        (96, 64, ImageUpscaleMode.INTERPOLATION),
    ],
)
def test_anomaly_map_comes_back_at_the_full_input_size(
    torch_model: SkipTSModel, tile: int, stride: int, mode: ImageUpscaleMode
) -> None:
    torch_model.eval()
    torch_model.tiler = Tiler(tile_size=tile, stride=stride, mode=mode)
    try:
        with torch.no_grad():
            output = torch_model(torch.randn(2, 3, IMAGE, IMAGE))
    finally:
        torch_model.tiler = None
    assert output.anomaly_map.shape == (2, 1, IMAGE, IMAGE)
    assert output.pred_score.shape == (2, 1)
    assert torch.isfinite(output.anomaly_map).all()


def test_padding_is_cut_off_the_features(torch_model: SkipTSModel) -> None:
    """A 96-pixel tile with stride 64 pads a 128 image to 160: the features must cover 128 pixels only."""
    torch_model.train()
    torch_model.tiler = Tiler(tile_size=96, stride=64)
    try:
        with torch.no_grad():
            teacher, student = torch_model(torch.randn(1, 3, IMAGE, IMAGE))
    finally:
        torch_model.tiler = None
        torch_model.eval()
    assert [feature.shape[-1] for feature in teacher] == [IMAGE // 4, IMAGE // 8, IMAGE // 16]
    assert [feature.shape[-1] for feature in student] == [IMAGE // 4, IMAGE // 8, IMAGE // 16]


def test_tile_size_that_is_not_a_multiple_of_32_is_refused(torch_model: SkipTSModel) -> None:
    torch_model.tiler = Tiler(tile_size=48, stride=48)
    try:
        with pytest.raises(ValueError, match="multiples of 32"):
            torch_model(torch.randn(1, 3, IMAGE, IMAGE))
    finally:
        torch_model.tiler = None


def test_tiler_callback_fit_test_predict_with_images_larger_than_the_tile(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    datamodule = HeadPhantom(
        root=tmp_path / "phantom",
        num_train=4,
        num_test_normal=2,
        num_test_abnormal=2,
        image_size=IMAGE,
        train_batch_size=4,
        eval_batch_size=4,
        num_workers=0,
    )
    model = SkipTS(backbone="resnet18", pre_trained=False, image_size=IMAGE)
    engine = Engine(
        default_root_dir=tmp_path,
        max_epochs=1,
        accelerator="cpu",
        enable_progress_bar=False,
        logger=False,
        callbacks=[TilerConfigurationCallback(enable=True, tile_size=TILE, stride=TILE)],
    )
    with caplog.at_level(logging.INFO, logger="anomalib_skipts"):
        engine.fit(model=model, datamodule=datamodule)
    assert isinstance(model.model.tiler, Tiler)
    assert "Teacher-feature cache off: tiling is on" in caplog.text
    results = engine.test(model=model, datamodule=datamodule)[0]
    assert 0.0 <= results["image_AUROC"] <= 1.0
    batch = engine.predict(model=model, datamodule=datamodule)[0]
    assert batch.anomaly_map.shape[-2:] == (IMAGE, IMAGE)
    assert batch.pred_mask.shape[-2:] == (IMAGE, IMAGE)


@pytest.mark.slow  # torch.onnx's graph optimisation of the unrolled tiler takes tens of seconds
def test_export_with_the_tiler_on_keeps_the_tiling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The exported graph tiles and untiles like the torch model (anomalib's models export the tiler too)."""
    from anomalib.deploy import OpenVINOInferencer

    monkeypatch.chdir(tmp_path)  # the inferencer writes an openvino_cache/ folder into the working directory
    torch.manual_seed(0)
    model = SkipTS(backbone="resnet18", pre_trained=False, image_size=IMAGE).eval()
    model.model.tiler = Tiler(tile_size=TILE, stride=TILE)
    images = torch.rand(2, 3, IMAGE, IMAGE)
    with torch.no_grad():
        expected = model(images).anomaly_map.numpy()
        model.model.tiler = None
        untiled = model(images).anomaly_map.numpy()
        model.model.tiler = Tiler(tile_size=TILE, stride=TILE)
    assert abs(expected - untiled).max() > 1e-3  # tiling changes the map: the check below can tell them apart
    # without torch.onnx's graph optimisation of the unrolled tiler (tens of seconds; OpenVINO optimises anyway)
    path = model.to_openvino(tmp_path, input_size=(IMAGE, IMAGE), onnx_kwargs={"optimize": False})
    inferencer = OpenVINOInferencer(path=path, device="CPU", config={"INFERENCE_PRECISION_HINT": "f32"})
    for image, reference in zip(images, expected, strict=True):
        anomaly_map = torch.as_tensor(inferencer.predict(image).anomaly_map).reshape(reference.shape)
        torch.testing.assert_close(anomaly_map, torch.from_numpy(reference), atol=1e-4, rtol=1e-4)
