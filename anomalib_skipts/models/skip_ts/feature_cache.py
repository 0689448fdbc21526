"""Cache of the frozen teacher's features for the training set.

The Skip-TS teacher is frozen and the paper trains without augmentation (Liu et al., IEEE TIM
2024, Sec. IV-A), so each training sample's teacher features ``F_t^1..F_t^4`` are the same in every
epoch: they are computed once, stored in half precision, and reused. Only the student then runs in
later epochs.

A reuse is never trusted on the key alone. Each entry is keyed by the sample's image path and
carries a fingerprint of the pre-processed image (its mean, its root mean square and four fixed
random +-1 projections, :func:`image_fingerprint`); a cached entry is served only to an image whose
fingerprint matches. So several samples that share one path (slices of one volume, several crops
of one file) each get their own entry, and a sample whose content changes between epochs (random
augmentation inside a dataset's ``__getitem__``, non-deterministic loading) is detected: the cache
raises :class:`FeatureCacheStaleError` instead of serving the features of another image.

The features live in host memory, never on the accelerator: training keeps all of the GPU's
memory. On CUDA a batch's features are gathered into pinned memory and copied asynchronously.
"""

import logging
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import DataLoader, DistributedSampler

logger = logging.getLogger(__name__)

NUM_PROJECTIONS = 4
"""Random +-1 projections in a fingerprint (besides the mean and the root mean square)."""
FINGERPRINT_TOLERANCE = 1e-5
"""Two fingerprints match when every entry differs by at most this times the images' RMS.

The fingerprint is computed in float64, so one image always matches itself, whatever the batch it
comes in; an image that differs from another by more than about 0.1% (64x64) to 0.4% (256x256) of
its RMS is told apart with near certainty. Smaller differences are below the 1e-3 rounding of the
float16 cache itself.
"""
_PROJECTION_SEED = 20240101


class FeatureCacheError(RuntimeError):
    """The teacher-feature cache cannot serve a batch; train without it."""


class FeatureCacheFullError(FeatureCacheError):
    """Storing a batch's new features would exceed the cache's memory budget (nothing was stored)."""


class FeatureCacheStaleError(FeatureCacheError):
    """A sample's image changed since its features were cached (e.g. random augmentation in a dataset)."""


def image_fingerprint(images: torch.Tensor, projections: torch.Tensor) -> torch.Tensor:
    """Cheap content fingerprint of each image: mean, RMS and +-1 projections.

    One matrix product and one norm over the batch, in float64 (round-off-free, no TF32) with
    autocast off, on the images' device; returned on the CPU.

    Args:
        images: Batch ``(B, ...)`` of ``N`` values per image.
        projections: ``(N, 1 + K)`` float64: a column of ones, then ``K`` columns of +-1 values.

    Returns:
        ``(B, 2 + K)`` fingerprints: ``[mean, rms, proj_1, ..., proj_K]`` (projections are means).
    """
    with torch.autocast(device_type=images.device.type, enabled=False):
        flat = images.detach().flatten(1).double()
        means = flat @ projections / flat.shape[1]
        rms = torch.linalg.vector_norm(flat, dim=1, keepdim=True) / flat.shape[1] ** 0.5
    return torch.cat([means[:, :1], rms, means[:, 1:]], dim=1).cpu()


def fingerprints_match(reference: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Which of ``candidates`` ``(M, F)`` match the fingerprint ``reference`` ``(F,)``.

    Returns:
        ``(M,)`` booleans.
    """
    scale = torch.maximum(candidates[:, 1], reference[1]).clamp_min(1e-30)
    return ((candidates - reference).abs() <= FINGERPRINT_TOLERANCE * scale[:, None]).all(dim=1)


def samples_per_process(dataloader: DataLoader | None) -> tuple[int | None, str]:
    """How many training samples this process's cache may have to hold, and why.

    Single process: the whole training set. Under DDP each rank caches only the samples it meets:
    with a fixed shard (a ``DistributedSampler`` without shuffling) that is the shard; with the
    default shuffling sampler the shards are drawn anew every epoch, so over the epochs each rank
    meets, and caches, every sample: the budget of every rank must then hold the whole set.

    Args:
        dataloader: The training dataloader (after Lightning has set its sampler up).

    Returns:
        ``(number of samples or None when the dataset has no length, description for the log)``.
    """
    dataset = getattr(dataloader, "dataset", None)
    total = len(dataset) if hasattr(dataset, "__len__") else None
    sampler = getattr(dataloader, "sampler", None)
    if isinstance(sampler, DistributedSampler) and sampler.num_replicas > 1:
        where = f"rank {sampler.rank} of {sampler.num_replicas}"
        if type(sampler) is DistributedSampler and not sampler.shuffle:
            return len(sampler), f"{where}, caching its fixed shard of {len(sampler)} samples"
        return total, f"{where}; shards are reshuffled every epoch, so each rank caches every sample it meets"
    return total, "one process"


class TeacherFeatureCache:
    """Host-memory store of per-sample teacher features under a byte budget, checked by content.

    Features are stored on the CPU in ``dtype`` (half precision by default: about 3.9 MB per
    256x256 image for WideResNet50-2), each with its image's fingerprint. Features of a new sample
    are always returned from the stored copy, so the first epoch sees the same (rounded) values as
    all later ones.

    Rules, per key (image path):

    - an image whose fingerprint matches an entry of its key gets that entry (the same image: also
      true duplicates within an epoch share it, as their features are the same);
    - an image with a new fingerprint gets a new entry if its key was first met in the current epoch
      (several samples with one path);
    - an image with a new fingerprint whose key was met in an earlier epoch means the data changed
      between epochs: :class:`FeatureCacheStaleError`.

    Call :meth:`start_epoch` at the start of every training epoch.

    Args:
        budget_bytes: The most host memory the stored features may use.
        dtype: Storage precision.
    """

    def __init__(self, budget_bytes: int, dtype: torch.dtype = torch.float16) -> None:
        self.budget_bytes = int(budget_bytes)
        self.dtype = dtype
        self.nbytes = 0
        self.epoch = 0
        self.shared_samples = 0
        """Samples served an entry stored for another sample of the same key and content."""
        self._fingerprints: dict[str, torch.Tensor] = {}
        self._entries: dict[str, list[list[torch.Tensor]]] = {}
        self._first_epoch: dict[str, int] = {}
        self._projection_cache: dict[tuple[int, torch.device], torch.Tensor] = {}
        self._used: set[tuple[str, int]] = set()

    def __len__(self) -> int:
        """Return the number of stored entries (samples with distinct content)."""
        return sum(len(entries) for entries in self._entries.values())

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def clear(self) -> None:
        """Drop every stored feature."""
        self._fingerprints.clear()
        self._entries.clear()
        self._first_epoch.clear()
        self._used.clear()
        self.nbytes = 0

    def start_epoch(self) -> None:
        """Mark the start of a training epoch (keys met before now may no longer change content)."""
        if self._entries or self._used:
            self.epoch += 1
        self._used.clear()

    def _projections(self, values: int, device: torch.device) -> torch.Tensor:
        """Return the fixed fingerprint projections for images of ``values`` values, on ``device``."""
        if (values, device) not in self._projection_cache:
            generator = torch.Generator().manual_seed(_PROJECTION_SEED)
            signs = torch.randint(0, 2, (values, NUM_PROJECTIONS), generator=generator).double() * 2 - 1
            ones = torch.ones(values, 1, dtype=torch.float64)
            self._projection_cache[values, device] = torch.cat([ones, signs], dim=1).to(device)
        return self._projection_cache[values, device]

    def _find(self, key: str, fingerprint: torch.Tensor) -> int | None:
        """Index of the entry of ``key`` whose fingerprint matches, or ``None``."""
        stored = self._fingerprints.get(key)
        if stored is None:
            return None
        matches = torch.nonzero(fingerprints_match(fingerprint, stored)).flatten()
        return int(matches[0]) if len(matches) else None

    def _add(self, key: str, fingerprint: torch.Tensor, features: list[torch.Tensor]) -> int:
        """Store one sample's features (already on the CPU in ``dtype``) and return its entry index."""
        stored = self._fingerprints.get(key)
        self._fingerprints[key] = fingerprint[None] if stored is None else torch.cat([stored, fingerprint[None]])
        self._entries.setdefault(key, []).append(features)
        self._first_epoch.setdefault(key, self.epoch)
        self.nbytes += sum(feature.numel() * feature.element_size() for feature in features)
        return len(self._entries[key]) - 1

    def features(
        self,
        keys: Sequence[str],
        images: torch.Tensor,
        compute: Callable[[torch.Tensor], list[torch.Tensor]],
    ) -> list[torch.Tensor]:
        """Return the teacher features of a batch, computing only those of unseen samples.

        Args:
            keys: One key (image path) per image in the batch.
            images: The pre-processed batch ``(B, 3, H, W)``.
            compute: The teacher: images -> ``[F_t^1, ..., F_t^4]``.

        Returns:
            ``[F_t^1, ..., F_t^4]`` for the batch, on the images' device, in the images' dtype.

        Raises:
            FeatureCacheStaleError: If an image differs from every image cached under its key in an
                earlier epoch (nothing is stored then).
            FeatureCacheFullError: If storing the new features would exceed the budget (nothing is
                stored then).
        """
        if len(keys) != len(images):
            msg = f"{len(keys)} keys for {len(images)} images: give one key per image."
            raise ValueError(msg)
        fingerprints = image_fingerprint(images, self._projections(images[0].numel(), images.device))
        found = [self._find(key, fingerprint) for key, fingerprint in zip(keys, fingerprints, strict=True)]
        missing = [index for index, entry in enumerate(found) if entry is None]
        for index in missing:
            if self._first_epoch.get(keys[index], self.epoch) < self.epoch:
                msg = (
                    f"training sample {keys[index]} is not the image cached for it in an earlier epoch (random "
                    "augmentation or non-deterministic loading in the dataset?)"
                )
                raise FeatureCacheStaleError(msg)
        if missing:
            computed = [feature.detach().to("cpu", self.dtype) for feature in compute(images[missing])]
            new = [[feature[position] for feature in computed] for position in range(len(missing))]
            needed = self.nbytes + sum(feature.numel() * feature.element_size() for item in new for feature in item)
            if needed > self.budget_bytes:
                msg = f"teacher feature cache budget exceeded: {needed} bytes needed, {self.budget_bytes} allowed"
                raise FeatureCacheFullError(msg)
            for index, item in zip(missing, new, strict=True):
                entry = self._find(keys[index], fingerprints[index])  # a duplicate earlier in this batch
                if entry is None:
                    # a copy of exactly one sample's values, not a view that keeps the whole batch alive
                    entry = self._add(keys[index], fingerprints[index], [feature.clone() for feature in item])
                found[index] = entry
        for key, entry in zip(keys, found, strict=True):
            if (key, entry) in self._used:
                if not self.shared_samples:
                    logger.info(
                        "Teacher-feature cache: sample %s comes twice in one epoch with the same image; both use one "
                        "entry (counted in shared_samples).",
                        key,
                    )
                self.shared_samples += 1
            self._used.add((key, entry))
        return self._gather([self._entries[key][entry] for key, entry in zip(keys, found, strict=True)], images)

    def _gather(self, stored: list[list[torch.Tensor]], images: torch.Tensor) -> list[torch.Tensor]:
        """Stack stored per-sample features into batch tensors on the images' device and dtype."""
        levels = []
        with torch.autocast(device_type=images.device.type, enabled=False):
            for level in range(len(stored[0])):
                items = [item[level] for item in stored]
                if images.device.type == "cuda":
                    pinned = torch.empty((len(items), *items[0].shape), dtype=self.dtype, pin_memory=True)
                    torch.stack(items, out=pinned)
                    levels.append(pinned.to(images.device, non_blocking=True).to(images.dtype))
                else:
                    levels.append(torch.stack([item.to(images.dtype) for item in items]))
        return levels
