"""Batch-norm folding for the inference path of Skip-TS (issue 5: the cheapest correct inference path).

In evaluation mode a batch normalisation is an affine map per channel, so a convolution followed by
it equals one convolution with rescaled weights and a bias (``torch.nn.utils.fusion``). Folding
saves one pass over every activation map; the result is the same function up to float round-off.

- The teacher of Skip-TS (Liu et al., IEEE TIM 2024, Sec. III-A) is frozen and always in eval mode:
  it runs through a folded copy, built on first use.
- The student trains, so its batch norms stay; inference without gradients uses a folded copy that
  is rebuilt whenever a student parameter or buffer has changed (optimizer step, new running
  statistics, ``load_state_dict``, a move to another device or dtype).

The copies are plain attributes, never registered submodules: the state dict, hence every
checkpoint, holds the original modules whatever the folding setting. A change made through
``.data`` bypasses the version counters that detect changes, so the owner drops the copies with
``FoldedCopy.invalidate`` at the start of each evaluation loop.
"""

import copy
import itertools
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

CONVOLUTIONS = (nn.Conv2d, nn.ConvTranspose2d)


def _fold_pair(parent: nn.Module, conv_name: str, bn_name: str) -> bool:
    """Fold ``parent.<bn_name>`` into ``parent.<conv_name>`` if they are a convolution and a batch norm."""
    conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
    if not isinstance(conv, CONVOLUTIONS) or type(bn) is not nn.BatchNorm2d or not bn.track_running_stats:
        return False
    fused = fuse_conv_bn_eval(conv.eval(), bn.eval(), transpose=isinstance(conv, nn.ConvTranspose2d))
    fused.requires_grad_(conv.weight.requires_grad)
    setattr(parent, conv_name, fused)
    setattr(parent, bn_name, nn.Identity())
    return True


def fold_batch_norm(module: nn.Module) -> int:
    """Fold every batch norm that directly follows a convolution into it, in place.

    Pairs are found by the layout of timm's ResNets and anomalib's ResNet decoder, where a batch
    norm always directly follows its convolution: sibling ``convN`` / ``bnN`` attributes (the
    blocks and the stem) and consecutive ``(convolution, BatchNorm2d)`` entries of an
    ``nn.Sequential`` (the down- and upsampling shortcuts). The folded module computes the eval-mode
    function of the original; it must not be trained afterwards.

    Args:
        module: Module to fold, e.g. the teacher's feature extractor or the student decoder.

    Returns:
        The number of batch norms folded.
    """
    folded = 0
    for parent in list(module.modules()):
        names = [name for name, _ in parent.named_children()]
        if isinstance(parent, nn.Sequential):
            folded += sum(_fold_pair(parent, a, b) for a, b in itertools.pairwise(names))
        for name in names:
            bn_name = "bn" + name.removeprefix("conv")
            if name.startswith("conv") and bn_name in names:
                folded += _fold_pair(parent, name, bn_name)
    return folded


def _state_key(module: nn.Module) -> tuple:
    """Return what changes when a parameter or buffer of ``module`` is replaced or modified in place."""
    return tuple(
        # inference tensors (a module built under torch.inference_mode) have no version counter
        (id(tensor), tensor.data_ptr(), -1 if tensor.is_inference() else tensor._version, tensor.dtype, tensor.device)
        for tensor in (*module.parameters(), *module.buffers())
    )


class FoldedCopy:
    """A batch-norm-folded copy of a trainable module, rebuilt only when the module has changed.

    The copy is a plain attribute (not a registered submodule): it is not in ``state_dict``, not
    seen by optimizers, and not pickled.

    Args:
        channels_last: Give the copy's weights the channels-last memory layout.
    """

    def __init__(self, channels_last: bool = False) -> None:
        self.channels_last = channels_last
        self._key: tuple | None = None
        self._copy: nn.Module | None = None

    def get(self, module: nn.Module) -> nn.Module:
        """Return the folded eval-mode copy of ``module``, rebuilding it if ``module`` changed."""
        key = _state_key(module)
        if self._copy is None or key != self._key:
            with torch.inference_mode(False), torch.no_grad():
                folded = copy.deepcopy(module).eval().requires_grad_(False)
                fold_batch_norm(folded)
                memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
                self._copy = folded.to(memory_format=memory_format)
            self._key = key
        return self._copy

    def invalidate(self) -> None:
        """Drop the copy: the next ``get`` rebuilds it from the module's current weights."""
        self._key = None
        self._copy = None

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the copy: it is rebuilt on first use."""
        return {"channels_last": self.channels_last, "_key": None, "_copy": None}

    def __deepcopy__(self, memo: dict[int, Any]) -> "FoldedCopy":
        """Deep-copy without the copy (its key refers to the original module's tensors)."""
        return FoldedCopy(self.channels_last)
