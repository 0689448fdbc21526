"""INT8 OpenVINO exports of Skip-TS that keep the anomaly-map head in floating point.

anomalib compresses an exported OpenVINO model with NNCF (``INT8`` weight compression, ``INT8_PTQ``
post-training quantization, ``INT8_ACQ`` accuracy-controlled quantization) over the whole graph.
For Skip-TS that includes the head: the cosine distances of Eq. 1, the fused upsampling and
Gaussian of Eq. 7 (matrix products with constant operators) and the maximum of Eq. 8, whose
quantization reorders the image scores although the networks quantize well. ``SkipTS`` passes NNCF
an ignored scope of the head (every operation after the networks' last convolutions), so the
teacher and the student run in INT8 and the map is computed in float.
"""

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import nncf
    import openvino as ov

logger = logging.getLogger(__name__)

NETWORK_OPERATIONS = ("Convolution", "ConvolutionBackpropData", "GroupConvolution")
"""OpenVINO operation types of the teacher and the student; the head has none."""
NOT_OPERATIONS = ("Parameter", "Constant", "Result")
NNCF_ENTRY_POINTS = ("quantize", "quantize_with_accuracy_control", "compress_weights")
"""The NNCF functions anomalib's export calls for ``INT8_PTQ``, ``INT8_ACQ`` and ``INT8``."""


def head_operations(model: "ov.Model") -> list["ov.Node"]:
    """Return the operations of the anomaly-map head: those that feed no convolution.

    Walking the graph from the outputs back, an operation belongs to the networks when it is a
    convolution or feeds one; every other operation (the Eq. 1 cosines, the Eq. 7 products and
    sums, the Eq. 8 maximum, anomalib's post-processing, the student's last activation) is the head.

    Args:
        model: The exported OpenVINO model.

    Returns:
        The head's operations in topological order.
    """
    ordered = model.get_ordered_ops()
    feeds_network: set[str] = set()
    for operation in reversed(ordered):
        consumers = (
            target.get_node().get_friendly_name()
            for output in operation.outputs()
            for target in output.get_target_inputs()
        )
        if operation.get_type_name() in NETWORK_OPERATIONS or any(name in feeds_network for name in consumers):
            feeds_network.add(operation.get_friendly_name())
    return [
        operation
        for operation in ordered
        if operation.get_friendly_name() not in feeds_network and operation.get_type_name() not in NOT_OPERATIONS
    ]


def head_ignored_scope(model: "ov.Model") -> "nncf.IgnoredScope":
    """NNCF ignored scope that leaves the anomaly-map head in float, and log what it keeps.

    Args:
        model: The exported OpenVINO model.

    Returns:
        The scope, naming every head operation.

    Raises:
        ValueError: If the model has no head (no operation after its convolutions).
    """
    import nncf

    operations = head_operations(model)
    if not operations:
        msg = "The exported model has no operation after its convolutions: there is no anomaly-map head to keep."
        raise ValueError(msg)
    kinds = Counter(operation.get_type_name() for operation in operations)
    logger.info(
        "INT8 export of Skip-TS: the anomaly-map head stays in floating point, %d operations after the last "
        "convolutions (%s); the teacher and the student are compressed.",
        len(operations),
        ", ".join(f"{kind} x{count}" for kind, count in kinds.most_common()),
    )
    return nncf.IgnoredScope(names=[operation.get_friendly_name() for operation in operations])


@contextmanager
def nncf_ignoring(scope: "nncf.IgnoredScope") -> Iterator[None]:
    """Make NNCF's compression entry points use ``scope`` while the block runs.

    anomalib's export calls ``nncf.quantize``, ``nncf.quantize_with_accuracy_control`` and
    ``nncf.compress_weights`` without options; inside the block they get ``ignored_scope=scope``.
    The functions are restored afterwards, also on errors.

    Args:
        scope: The ignored scope to pass.
    """
    import nncf

    originals: dict[str, Callable[..., Any]] = {name: getattr(nncf, name) for name in NNCF_ENTRY_POINTS}
    try:
        for name, function in originals.items():
            setattr(nncf, name, partial(function, ignored_scope=scope))
        yield
    finally:
        for name, function in originals.items():
            setattr(nncf, name, function)
