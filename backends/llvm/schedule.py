"""CPU schedule decisions the LLVM backend makes before code generation.

Layouts: convolutions run on channel-blocked tensors (NCHW8c: 8 float lanes = one AVX2
register, see :mod:`cnncompiler.kernel.conv_nchwc`) whenever their channel counts allow it;
pooling and BatchNormalization follow their input (they index blocked tensors directly), and
everything else reads NCHW. The layout pass inserts the conversions.
"""

from __future__ import annotations

from cnncompiler.ir.graph import Node
from cnncompiler.kernel.conv_nchwc import channel_problem

#: f32 lanes of one vector register (AVX2: 256 bits)
LANES = 8
BLOCKED = f"NCHW{LANES}c"


def choose_layout(node: Node) -> str | None:
    """The layout ``node`` should run in (None: whatever its input is in)."""
    if node.op != "Conv":
        return None
    x, y = node.inputs[0].type, node.outputs[0].type
    c, k = x.shape[1], y.shape[1]
    if (x.rank != 4 or not isinstance(c, int) or not isinstance(k, int)
            or x.dtype.value != "float32" or not node.inputs[1].is_stored
            or channel_problem(c, k, node.attrs["group"], LANES)):
        return "NCHW"
    return BLOCKED
