"""Cache of the frozen teacher's features for the training set.

The Skip-TS teacher is frozen and the paper trains without augmentation (Liu et al., IEEE TIM
2024, Sec. IV-A), so each training image's teacher features ``F_t^1..F_t^4`` are the same in every
epoch: they are computed once, stored in half precision, and reused. Only the student then runs in
later epochs. The cache is keyed by image path.
"""

import logging
from collections.abc import Callable, Sequence

import torch

logger = logging.getLogger(__name__)


class TeacherFeatureCache:
    """In-memory store of per-image teacher features under a byte budget.

    Features are stored on the device they were computed on, in ``dtype`` (half precision by default:
    about 3.9 MB per 256x256 image for WideResNet50-2). Features of a new image are always returned
    from the stored copy, so the first epoch sees the same (rounded) values as all later ones.

    Args:
        budget_bytes: The most memory the cache may use.
        dtype: Storage precision.
    """

    def __init__(self, budget_bytes: int, dtype: torch.dtype = torch.float16) -> None:
        self.budget_bytes = int(budget_bytes)
        self.dtype = dtype
        self._store: dict[str, list[torch.Tensor]] = {}
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, key: str) -> bool:
        return key in self._store

    def clear(self) -> None:
        """Drop every stored feature."""
        self._store.clear()
        self.nbytes = 0

    def features(
        self,
        keys: Sequence[str],
        images: torch.Tensor,
        compute: Callable[[torch.Tensor], list[torch.Tensor]],
    ) -> list[torch.Tensor]:
        """Return the teacher features of a batch, computing only those of unseen images.

        Args:
            keys: One key (image path) per image in the batch.
            images: The pre-processed batch ``(B, 3, H, W)``.
            compute: The teacher: images -> ``[F_t^1, ..., F_t^4]``.

        Returns:
            ``[F_t^1, ..., F_t^4]`` for the batch, in the images' dtype.

        Raises:
            MemoryError: If storing the new features would exceed the budget (nothing is stored then).
        """
        missing = [index for index, key in enumerate(keys) if key not in self._store]
        if missing:
            computed = compute(images[missing])
            per_image = sum(
                feature[0].numel() * feature.new_empty((), dtype=self.dtype).element_size() for feature in computed
            )
            if self.nbytes + per_image * len(missing) > self.budget_bytes:
                msg = (
                    f"teacher feature cache budget exceeded: {self.nbytes + per_image * len(missing)} bytes needed, "
                    f"{self.budget_bytes} allowed"
                )
                raise MemoryError(msg)
            for position, index in enumerate(missing):
                self._store[keys[index]] = [feature[position].detach().to(self.dtype).clone() for feature in computed]
            self.nbytes += per_image * len(missing)
        stored = [self._store[key] for key in keys]
        # cast before stacking: under CPU autocast, stacking float16 tensors is not supported
        return [torch.stack([item[level].to(images.dtype) for item in stored]) for level in range(len(stored[0]))]
