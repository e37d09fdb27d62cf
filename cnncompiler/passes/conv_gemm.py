"""Dense convolutions as matrix products (im2col), the form compiled training runs.

A conv whose weights change every step (a parameter fed to the training step) cannot have
them repacked at compile time, which the blocked and Winograd schedules rely on; and its
gradients, as convs, are awkward shapes (the weight gradient's "filter" is the whole
output gradient). As matrices they are three GEMMs over the same two operands, which the
tiled GEMM schedule runs near the FMA peak:

    cols = Im2Col(X)                          [C·F_h·F_w, N·OH·OW]
    Yt   = W as [K, C·F_h·F_w] · cols + B     [K, N·OH·OW]
    Y    = Yt as [K, N, OH, OW], transposed   [N, K, OH, OW]

and autodiff then yields dW = dYt · colsᵀ, dcols = Wᵀ · dYt, dX = Im2ColGrad(dcols).
Grouped and depthwise convs keep their own schedule (their products are tiny).
"""

from __future__ import annotations

from cnncompiler.ir.builder import GraphBuilder
from cnncompiler.ir.graph import Node, Value


def conv_as_gemm(b: GraphBuilder, node: Node, ins: list[Value | None]) -> list[Value] | None:
    """A rewrite for :func:`cnncompiler.autodiff.rebuild`: a dense NCHW Conv with concrete
    shapes becomes Im2Col, Gemm and a transpose (see the module docstring); other nodes are
    left alone (None)."""
    a = node.attrs
    if (node.op != "Conv" or a["group"] != 1 or a.get("layout") not in (None, "NCHW")
            or a.get("x_layout") not in (None, "NCHW")
            or not all(v.type.is_static for v in node.inputs[:2])):
        return None
    x, w = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    n = x.type.shape[0]
    k, c, fh, fw = w.type.shape
    oh, ow = node.outputs[0].type.shape[2:]
    cols = b.op("Im2Col", x, kernel_shape=(fh, fw), strides=a["strides"], pads=a["pads"],
                dilations=a["dilations"], rounding=a["rounding"], name=f"{node.name}.im2col")
    operands = [b.op("Reshape", w, shape=(k, c * fh * fw), name=f"{node.name}.w2d"), cols]
    if bias is not None:
        operands.append(b.op("Reshape", bias, shape=(k, 1), name=f"{node.name}.b2d"))
    yt = b.op("Gemm", *operands, name=f"{node.name}.gemm")
    y = b.op("Reshape", yt, shape=(k, n, oh, ow), name=f"{node.name}.kn")
    return [b.op("Transpose", y, perm=(1, 0, 2, 3), name=node.name)]
