"""Training objective of Skip-TS (Liu et al., IEEE TIM 2024, Eq. 2-5).

- Eq. 2: ``L_l`` = mean over pixels of the layer's anomaly map ``M_l`` (Eq. 1).
- Eq. 3: ``L_sim = L_1 + L_2 + L_3``.
- Eq. 4: multiscale anomaly consistency: every ``M_l`` upsampled bilinearly to the largest map's
  size, ``L_mac`` = mean over pixels of ``sum over layer pairs (i < j) of (M_i - M_j)^2``
  (the three pairs ``L_mac1..3`` of the paper's Fig. 2(b)).
- Eq. 5: ``L_DRKD = L_sim + beta * L_mac``, ``beta = 0.05``.

Options for the paper's ablations (Table IV) and for the authors' public code:

- ``similarity="mse"``: ``M_l`` is the per-pixel mean squared error over channels instead of Eq. 1.
- ``mac=False``: drop the MAC term.
- ``variant="authors_code"``: the behaviour of the public implementation, which differs from the
  equations: the cosine loss compares each layer's whole flattened feature map per image, and the
  MAC term compares the layer-wise MSE values across scales.

All arithmetic is done in float32, also under mixed precision.
"""

from collections.abc import Sequence
from itertools import combinations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from .anomaly_map import cosine_distance_map, upsample_maps

SIMILARITIES = ("cosine", "mse")
VARIANTS = ("paper", "authors_code")
PAPER_BETA = 0.05


def squared_error_map(teacher_feature: torch.Tensor, student_feature: torch.Tensor) -> torch.Tensor:
    """Per-pixel mean squared error over channels (the MSE ablation's layer map).

    Args:
        teacher_feature: ``F_t^l`` of shape ``(B, C, H, W)``.
        student_feature: ``F_s^l`` of the same shape.

    Returns:
        Map of shape ``(B, H, W)``.
    """
    return (teacher_feature.float() - student_feature.float()).pow(2).mean(dim=1)


def similarity_loss(layer_maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Eq. 2 and 3: ``L_sim = sum_l mean_{h,w} M_l`` (averaged over the batch).

    Args:
        layer_maps: Per-layer maps ``M_l``, each ``(B, H_l, W_l)``.

    Returns:
        Scalar loss.
    """
    return torch.stack([layer_map.mean() for layer_map in layer_maps]).sum()


def mac_loss(layer_maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Eq. 4: multiscale anomaly consistency loss.

    Args:
        layer_maps: Per-layer maps ``M_l``, each ``(B, H_l, W_l)``; the first is the largest.

    Returns:
        Scalar loss: mean over pixels (and batch) of ``sum_{i<j} (M_i^bi - M_j^bi)^2``.
    """
    size = max((m.shape[-2], m.shape[-1]) for m in layer_maps)
    upsampled = upsample_maps(layer_maps, size)
    pair_terms = [(upsampled[:, i] - upsampled[:, j]).pow(2) for i, j in combinations(range(upsampled.shape[1]), 2)]
    return torch.stack(pair_terms).sum(dim=0).mean()


def authors_code_similarity_loss(
    teacher_features: Sequence[torch.Tensor], student_features: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Public-code cosine loss: one cosine per image between whole flattened layer feature maps.

    Args:
        teacher_features: ``[F_t^1, F_t^2, F_t^3]``.
        student_features: ``[F_s^1, F_s^2, F_s^3]``.

    Returns:
        Scalar loss: ``sum_l mean_b (1 - cos(vec F_t^l, vec F_s^l))``.
    """
    losses = [
        (1.0 - F.cosine_similarity(t.float().flatten(1), s.float().flatten(1), dim=1)).mean()
        for t, s in zip(teacher_features, student_features, strict=True)
    ]
    return torch.stack(losses).sum()


def authors_code_mac_loss(
    teacher_features: Sequence[torch.Tensor], student_features: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Public-code MAC term: squared differences between the layers' MSE values.

    Args:
        teacher_features: ``[F_t^1, F_t^2, F_t^3]``.
        student_features: ``[F_s^1, F_s^2, F_s^3]``.

    Returns:
        Scalar loss: ``sum_{i<j} (mse_i - mse_j)^2`` with ``mse_l = mean((F_t^l - F_s^l)^2)``.
    """
    mses = [F.mse_loss(s.float(), t.float()) for t, s in zip(teacher_features, student_features, strict=True)]
    return torch.stack([(mses[i] - mses[j]).pow(2) for i, j in combinations(range(len(mses)), 2)]).sum()


def validate_loss_options(similarity: str, mac: bool, beta: float, variant: str, variant_name: str = "variant") -> None:
    """Refuse loss options outside the allowed values, naming the bad value and the allowed ones.

    Args:
        similarity: One of ``SIMILARITIES``.
        mac: A bool.
        beta: A number >= 0.
        variant: One of ``VARIANTS``; ``"authors_code"`` only with ``similarity="cosine"``.
        variant_name: The variant's parameter name in the messages (``SkipTS`` calls it ``loss_variant``).

    Raises:
        ValueError: On the first option that is not allowed.
    """
    if similarity not in SIMILARITIES:
        msg = f"similarity={similarity!r} is not allowed: use 'cosine' (the paper, Eq. 1) or 'mse' (Table IV ablation)."
        raise ValueError(msg)
    if not isinstance(mac, bool):
        msg = f"mac={mac!r} is not allowed: use True (add the MAC loss, Eq. 4) or False."
        raise ValueError(msg)
    if isinstance(beta, bool) or not isinstance(beta, int | float) or not beta >= 0 or beta == float("inf"):
        msg = f"beta={beta!r} is not allowed: the MAC loss weight must be a finite number >= 0 (the paper's is 0.05)."
        raise ValueError(msg)
    if variant not in VARIANTS:
        msg = (
            f"{variant_name}={variant!r} is not allowed: use 'paper' (the equations) or 'authors_code' "
            "(the public code)."
        )
        raise ValueError(msg)
    if variant == "authors_code" and similarity != "cosine":
        msg = (
            f"{variant_name}='authors_code' with similarity={similarity!r} is not allowed: the public code's loss is "
            "cosine, use similarity='cosine'."
        )
        raise ValueError(msg)


class SkipTSLoss(nn.Module):
    """Eq. 5: ``L_DRKD = L_sim + beta * L_mac``.

    Args:
        similarity: ``"cosine"`` (Eq. 1, the paper) or ``"mse"`` (Table IV ablation).
        mac: Whether to add the MAC loss (Eq. 4).
        beta: Weight of the MAC loss; the paper uses 0.05.
        variant: ``"paper"`` (the equations) or ``"authors_code"`` (the public code's per-image
            flattened cosine and MSE-based MAC; only with ``similarity="cosine"``).

    Raises:
        ValueError: If an option has a value outside the allowed ones (the message names both).
    """

    def __init__(
        self, similarity: str = "cosine", mac: bool = True, beta: float = PAPER_BETA, variant: str = "paper"
    ) -> None:
        super().__init__()
        validate_loss_options(similarity, mac, beta, variant)
        self.similarity = similarity
        self.mac = mac
        self.beta = beta
        self.variant = variant

    def layer_maps(
        self, teacher_features: Sequence[torch.Tensor], student_features: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Per-layer maps ``M_l`` under the configured similarity.

        Args:
            teacher_features: ``[F_t^1, F_t^2, F_t^3]``.
            student_features: ``[F_s^1, F_s^2, F_s^3]``.

        Returns:
            One ``(B, H_l, W_l)`` map per layer.
        """
        layer_map = cosine_distance_map if self.similarity == "cosine" else squared_error_map
        return [layer_map(t, s) for t, s in zip(teacher_features, student_features, strict=True)]

    def forward(
        self, teacher_features: Sequence[torch.Tensor], student_features: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """Compute the training loss.

        Args:
            teacher_features: ``[F_t^1, F_t^2, F_t^3]`` from the frozen teacher.
            student_features: ``[F_s^1, F_s^2, F_s^3]`` from the student decoder.

        Returns:
            Scalar float32 loss.
        """
        if self.variant == "authors_code":
            loss = authors_code_similarity_loss(teacher_features, student_features)
            if self.mac:
                loss = loss + self.beta * authors_code_mac_loss(teacher_features, student_features)
            return loss
        maps = self.layer_maps(teacher_features, student_features)
        loss = similarity_loss(maps)
        if self.mac:
            loss = loss + self.beta * mac_loss(maps)
        return loss
