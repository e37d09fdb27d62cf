"""CPU schedule decisions the LLVM backend makes before code generation.

Layouts: convolutions run on channel-blocked tensors (NCHW8c: 8 float lanes = one AVX2
register, see :mod:`cnncompiler.kernel.conv_nchwc`) whenever their channel counts allow it;
pooling and BatchNormalization follow their input (they index blocked tensors directly), and
everything else reads NCHW. A conv whose input channels do not fill whole blocks (the
3-channel image) but whose filters do reads X as it is and writes NCHW8c. The layout pass
inserts the conversions.
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
            or x.dtype.value != "float32" or not node.inputs[1].is_stored):
        return "NCHW"
    if c % LANES and node.attrs["group"] == 1 and k % LANES == 0:
        return BLOCKED   # X stays as it is (a 3-channel image): the layout pass sets x_layout
    return "NCHW" if channel_problem(c, k, node.attrs["group"], LANES) else BLOCKED
