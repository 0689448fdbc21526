"""Teacher-feature cache: one entry per sample, checked by content, never another image's features.

Samples that share an image path (slices of one volume, several crops of one file) and datasets
that change an image between epochs inside ``__getitem__`` (invisible to the static augmentation
check) must train exactly as without the cache.
"""

import dataclasses
import logging
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from anomalib_skipts.data.phantom import HeadPhantom
from anomalib_skipts.models.skip_ts.feature_cache import (
    FeatureCacheStaleError,
    TeacherFeatureCache,
    image_fingerprint,
    samples_per_process,
)

from .test_feature_cache_and_amp import _fit


def _teacher() -> tuple[torch.nn.Module, list[int]]:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    calls = [0]

    def compute(images: torch.Tensor) -> list[torch.Tensor]:
        calls[0] += len(images)
        with torch.no_grad():
            return [conv(images), conv(images).mean(dim=(2, 3), keepdim=True)]

    return compute, calls


def test_samples_sharing_a_path_each_get_their_own_features() -> None:
    compute, calls = _teacher()
    images = torch.rand(3, 3, 8, 8)
    cache = TeacherFeatureCache(budget_bytes=10**6, dtype=torch.float32)
    # three slices of one volume file, in two batches, in any order
    first = cache.features(["vol.nii", "vol.nii"], images[:2], compute)
    second = cache.features(["vol.nii"], images[2:], compute)
    expected = compute(images)
    torch.testing.assert_close(torch.cat([first[0], second[0]]), expected[0])
    cache.start_epoch()
    calls[0] = 0
    again = cache.features(["vol.nii"] * 3, images[[2, 0, 1]], compute)
    assert calls[0] == 0  # all three reused ...
    torch.testing.assert_close(again[0], expected[0][[2, 0, 1]])  # ... each its own
    torch.testing.assert_close(again[1], expected[1][[2, 0, 1]])
    assert len(cache) == 3


def test_an_image_that_changed_since_an_earlier_epoch_is_refused() -> None:
    compute, calls = _teacher()
    images = torch.rand(2, 3, 8, 8)
    cache = TeacherFeatureCache(budget_bytes=10**6)
    cache.features(["a.png", "b.png"], images, compute)
    cache.start_epoch()
    flipped = images[:1].flip(-1)
    with pytest.raises(FeatureCacheStaleError, match=r"a\.png is not the image cached for it"):
        cache.features(["b.png", "a.png"], torch.cat([images[1:], flipped]), compute)
    assert len(cache) == 2  # nothing stored
    # a tiny change (0.5% of the RMS on one pixel row) is caught too
    nudged = images[:1].clone()
    nudged[..., 0, :] += 0.005 * images.square().mean().sqrt() * 8**0.5
    with pytest.raises(FeatureCacheStaleError):
        cache.features(["a.png"], nudged, compute)
    # a path first met now is a new sample (partial epochs), not a change
    calls[0] = 0
    cache.features(["c.png"], images[:1].flip(-1), compute)
    assert calls[0] == 1


def test_duplicates_within_an_epoch_share_one_entry_and_are_counted(caplog: pytest.LogCaptureFixture) -> None:
    compute, calls = _teacher()
    image = torch.rand(1, 3, 8, 8)
    cache = TeacherFeatureCache(budget_bytes=10**6, dtype=torch.float32)
    with caplog.at_level(logging.INFO):
        features = cache.features(["blank.dcm", "blank.dcm"], torch.cat([image, image]), compute)
    cache.start_epoch()
    calls[0] = 0
    cache.features(["blank.dcm", "blank.dcm"], torch.cat([image, image]), compute)
    assert calls[0] == 0
    torch.testing.assert_close(features[0][0], features[0][1])
    assert len(cache) == 1
    assert cache.shared_samples == 2  # once per epoch
    assert "comes twice in one epoch" in caplog.text


def test_fingerprint_is_independent_of_the_batch_and_autocast() -> None:
    images = torch.randn(5, 3, 32, 32)
    projections = TeacherFeatureCache(0)._projections(images[0].numel(), images.device)
    whole = image_fingerprint(images, projections)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        single = image_fingerprint(images[3:4], projections)
    assert whole.dtype == torch.float64
    assert whole.shape == (5, 6)
    torch.testing.assert_close(single[0], whole[3], rtol=0, atol=1e-12)
    torch.testing.assert_close(whole[:, 0], images.flatten(1).double().mean(1))
    torch.testing.assert_close(whole[:, 1], images.flatten(1).double().square().mean(1).sqrt())


class _Dataset(Dataset):
    """Wraps a training set; ``variant`` maps (item, index) to the returned item."""

    def __init__(self, dataset: Dataset, size: int, variant) -> None:
        self.dataset, self.size, self.variant = dataset, size, variant

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        return self.variant(self.dataset[index % len(self.dataset)], index)


def _datamodule_class(size: callable, variant) -> type[HeadPhantom]:
    class Wrapped(HeadPhantom):
        def train_dataloader(self) -> DataLoader:
            return DataLoader(
                _Dataset(self.train_data, size(len(self.train_data)), variant),
                shuffle=True,
                batch_size=self.train_batch_size,
                num_workers=0,
                collate_fn=self.train_data.collate_fn,
            )

    return Wrapped


def _mirrored_copies(item, index: int):
    """Each training file twice: as is and mirrored, under the same path (two crops of one file)."""
    return dataclasses.replace(item, image=item.image.flip(-1)) if index >= 8 else item


def _random_flip(item, index: int):
    """Augmentation hidden inside ``__getitem__``: the static transform check cannot see it."""
    del index
    return dataclasses.replace(item, image=item.image.flip(-1)) if torch.rand(()) < 0.5 else item


def test_training_with_two_samples_per_path_equals_training_without_cache(phantom_root: Path, tmp_path: Path) -> None:
    datamodule = _datamodule_class(lambda n: 2 * n, _mirrored_copies)
    _, cached_losses, cached_calls = _fit(
        phantom_root, tmp_path / "a", datamodule_class=datamodule, teacher_cache_dtype="float32"
    )
    _, plain_losses, plain_calls = _fit(phantom_root, tmp_path / "b", datamodule_class=datamodule, teacher_cache=False)
    assert cached_calls == 16  # 16 samples (8 paths), each once
    assert plain_calls == 16 * 3
    assert cached_losses == pytest.approx(plain_losses, rel=1e-6)


def test_augmentation_inside_the_dataset_turns_the_cache_off(
    phantom_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    datamodule = _datamodule_class(lambda n: n, _random_flip)
    with caplog.at_level(logging.INFO):
        _, cached_losses, cached_calls = _fit(
            phantom_root, tmp_path / "a", datamodule_class=datamodule, teacher_cache_dtype="float32"
        )
    assert "Teacher-feature cache on" in caplog.text
    assert "Teacher-feature cache off: training sample" in caplog.text
    assert "is not the image cached for it in an earlier epoch" in caplog.text
    _, plain_losses, _ = _fit(phantom_root, tmp_path / "b", datamodule_class=datamodule, teacher_cache=False)
    assert cached_calls > 8  # the teacher ran again after the first epoch
    assert cached_losses == pytest.approx(plain_losses, rel=1e-6)


class _Sized(Dataset):
    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> int:
        return index


@pytest.mark.parametrize(
    ("shuffle", "expected", "words"), [(False, 5, "fixed shard of 5"), (True, 10, "reshuffled every epoch")]
)
def test_each_ddp_rank_budgets_for_the_samples_it_can_meet(shuffle: bool, expected: int, words: str) -> None:
    sampler = DistributedSampler(_Sized(), num_replicas=2, rank=1, shuffle=shuffle)
    samples, plan = samples_per_process(DataLoader(_Sized(), sampler=sampler))
    assert samples == expected
    assert "rank 1 of 2" in plan
    assert words in plan
    assert samples_per_process(DataLoader(_Sized(), shuffle=True)) == (10, "one process")
