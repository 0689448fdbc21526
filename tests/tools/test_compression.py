"""The compression benchmark feeds anomalib's OpenVINOInferencer images it scores as the model does."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tools.compression import load_test_images, run_inferencer


class EightBitGuessingInferencer:
    """Does what anomalib 2.7's ``OpenVINOInferencer.pre_process`` does to a float image whose max exceeds 1.

    It takes the image for an 8-bit one and divides it by 255, in place in the caller's memory.
    """

    def predict(self, image: torch.Tensor) -> SimpleNamespace:
        array = image.numpy()
        if array.max() > 1.0:
            array /= 255.0
        return SimpleNamespace(pred_score=np.array([array.mean()]))


def test_resized_images_a_rounding_above_one_are_clipped_and_scored_unchanged() -> None:
    above_one = torch.full((1, 3, 8, 8), 1.0000004)  # what an antialiased resize of a [0, 1] image can give
    datamodule = SimpleNamespace(
        test_dataloader=lambda: [SimpleNamespace(image=above_one, gt_label=torch.tensor([1]))],
    )
    images, labels = load_test_images(datamodule)
    assert labels.tolist() == [1]
    assert float(images[0].max()) == 1.0  # not taken for an 8-bit image

    inferencer = EightBitGuessingInferencer()
    unclipped = [above_one[0].clone()]
    first, second = run_inferencer(inferencer, unclipped), run_inferencer(inferencer, unclipped)
    np.testing.assert_array_equal(first, second)  # the caller's images are not scaled in place
    torch.testing.assert_close(unclipped[0], above_one[0], rtol=0, atol=0)
    assert run_inferencer(inferencer, images)[0] == 1.0


def test_models_and_data_come_from_the_benchmarks_adapters_with_anomalibs_post_processing(tmp_path) -> None:
    from anomalib.post_processing import PostProcessor

    from anomalib_skipts.benchmark.adapters import build_datamodule, build_model
    from anomalib_skipts.benchmark.config import get_protocol
    from tools.compression import run_spec

    protocol = get_protocol("cpu-quick")
    run = run_spec("SkipTS", "phantom", tmp_path, protocol)
    exported = build_model(run, raw_scores=False)  # exported with its threshold, tested by Engine.test
    assert isinstance(exported.post_processor, PostProcessor)
    assert exported.evaluator
    assert exported.input_size == protocol.image_size
    assert not build_model(run).post_processor  # the benchmark's own runs score raw
    datamodule = build_datamodule(run)
    assert datamodule.image_size == protocol.image_size[0]
    assert datamodule.train_batch_size == protocol.train_batch_size
    with pytest.raises(ValueError, match="dataset 'lungct' is not known"):
        run_spec("SkipTS", "lungct", tmp_path, protocol)
    with pytest.raises(ValueError, match="model 'Padim' is not known"):
        run_spec("Padim", "phantom", tmp_path, protocol)
