"""Batch-norm folding for the inference path of Skip-TS (the cheapest correct inference path).

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


def conv_bn_pairs(module: nn.Module) -> list[tuple[str, str, str]]:
    """Find every batch norm that directly follows a convolution.

    Pairs are found by the layout of timm's ResNets and anomalib's ResNet decoder, where a batch
    norm always directly follows its convolution: sibling ``convN`` / ``bnN`` attributes (the
    blocks and the stem) and consecutive ``(convolution, BatchNorm2d)`` entries of an
    ``nn.Sequential`` (the down- and upsampling shortcuts).

    Args:
        module: Module to search, e.g. the teacher's feature extractor or the student decoder.

    Returns:
        ``(parent, convolution, batch norm)`` names, the parent's relative to ``module`` (``""`` for
        ``module`` itself), the others children of the parent.
    """
    pairs = []
    for parent_name, parent in module.named_modules():
        children = dict(parent.named_children())
        candidates = list(itertools.pairwise(children)) if isinstance(parent, nn.Sequential) else []
        candidates += [(name, "bn" + name.removeprefix("conv")) for name in children if name.startswith("conv")]
        pairs += [
            (parent_name, conv, bn)
            for conv, bn in dict.fromkeys(candidates)
            if bn in children
            and isinstance(children[conv], CONVOLUTIONS)
            and type(children[bn]) is nn.BatchNorm2d
            and children[bn].track_running_stats
        ]
    return pairs


def fold_batch_norm(module: nn.Module) -> int:
    """Fold every batch norm that directly follows a convolution (:func:`conv_bn_pairs`) into it, in place.

    The folded module computes the eval-mode function of the original; it must not be trained
    afterwards.

    Args:
        module: Module to fold, e.g. the teacher's feature extractor or the student decoder.

    Returns:
        The number of batch norms folded.
    """
    pairs = conv_bn_pairs(module)
    for parent_name, conv, bn in pairs:
        _fold_pair(module.get_submodule(parent_name), conv, bn)
    return len(pairs)


def unfold_state_dict(state_dict: dict[str, torch.Tensor], module: nn.Module, prefix: str) -> int:
    """Turn a folded module's weights in ``state_dict`` back into ``module``'s (unfolded) layout, in place.

    Checkpoints written by anomalib-skipts before checkpoints became canonical (with
    ``fold_batch_norm=True``, the default) hold the teacher's folded convolutions: a bias per
    convolution and no batch norms. Each such pair gets back a batch norm that is the identity in
    eval mode (``running_mean`` 0, ``running_var`` ``1 - eps``, weight 1) with the folded bias as its
    bias, which computes exactly the folded function.

    Args:
        state_dict: A checkpoint's state dict.
        module: The unfolded module those weights belong to (for its batch norms' ``eps``).
        prefix: The module's key prefix in ``state_dict``, ending with a dot.

    Returns:
        The number of batch norms restored (0 for a state dict that was not folded).
    """
    restored = 0
    for parent_name, conv, bn in conv_bn_pairs(module):
        parent = prefix + (parent_name + "." if parent_name else "")
        bias_key, bn_key = f"{parent}{conv}.bias", f"{parent}{bn}."
        if bias_key not in state_dict or bn_key + "weight" in state_dict:
            continue
        bias = state_dict.pop(bias_key)
        eps = module.get_submodule(".".join(filter(None, (parent_name, bn)))).eps
        state_dict[bn_key + "weight"] = torch.ones_like(bias)
        state_dict[bn_key + "bias"] = bias
        state_dict[bn_key + "running_mean"] = torch.zeros_like(bias)
        state_dict[bn_key + "running_var"] = torch.full_like(bias, 1.0 - eps)
        state_dict[bn_key + "num_batches_tracked"] = torch.tensor(0)
        restored += 1
    return restored


def _state_key(module: nn.Module, frozen: bool = False) -> tuple:
    """Return what changes when a parameter or buffer of ``module`` is replaced or modified in place.

    For a ``frozen`` module only a move or cast is watched (its first parameter's storage, dtype and
    device), which is cheap on every forward; its owner drops the copy when it writes weights.
    """
    if frozen:
        first = next(module.parameters())
        return (id(first), first.data_ptr(), first.dtype, first.device)
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
        frozen: The module is never trained (the teacher): only moves and casts are detected by
            themselves, and whoever writes its weights (``load_state_dict``, loading ImageNet
            weights) calls :meth:`invalidate`, which spares a walk over all of its tensors on
            every forward.
    """

    def __init__(self, channels_last: bool = False, frozen: bool = False) -> None:
        self.channels_last = channels_last
        self.frozen = frozen
        self._key: tuple | None = None
        self._copy: nn.Module | None = None

    def get(self, module: nn.Module) -> nn.Module:
        """Return the folded eval-mode copy of ``module``, rebuilding it if ``module`` changed."""
        key = _state_key(module, self.frozen)
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
        return {"channels_last": self.channels_last, "frozen": self.frozen, "_key": None, "_copy": None}

    def __deepcopy__(self, memo: dict[int, Any]) -> "FoldedCopy":
        """Deep-copy without the copy (its key refers to the original module's tensors)."""
        return FoldedCopy(self.channels_last, self.frozen)
