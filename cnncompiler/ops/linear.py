"""Fully connected layers: Gemm (ONNX's FC layer, Y = alpha*A'B' + beta*C) and MatMul.

Gemm is what ONNX exporters emit for ``nn.Linear``: A [M, K] activations (M usually the
symbolic batch), B the weight, C the bias broadcast to [M, N]. MatMul follows numpy's
``matmul``: 1-D operands are promoted and the leading (batch) dims broadcast.
"""

from __future__ import annotations

import math

import numpy as np

from cnncompiler.ir.types import Dim, DType, TensorType
from cnncompiler.ops.broadcast import broadcast_shapes
from cnncompiler.ops.opdef import Attr, FusionKind, InferContext, Input, OpDef
from cnncompiler.ops.registry import register


def _gemm_infer(ctx: InferContext) -> TensorType:
    a = ctx.require_rank(0, 2, "A")
    b = ctx.require_rank(1, 2, "B")
    dtype = ctx.same_dtype(0, 1, 2)
    if dtype is DType.bool:
        raise ctx.fail("Gemm needs numeric inputs, got bool")
    m, ka = (a.shape[1], a.shape[0]) if ctx["transA"] else a.shape
    kb, n = (b.shape[1], b.shape[0]) if ctx["transB"] else b.shape
    if ka != kb:
        a_k = f"A^T gives K={ka}" if ctx["transA"] else f"K={ka}"
        b_what = "B^T" if ctx["transB"] else "B"
        raise ctx.fail(f"inner dimensions differ: A is {list(a.shape)} ({a_k}), {b_what} "
                       f"gives K={kb} (B is {list(b.shape)})")
    if isinstance(ka, str):
        raise ctx.fail(f"the inner dimension K={ka!r} must be concrete")
    if ctx.has_input(2):
        c = ctx.input(2)
        if c.rank > 2:
            raise ctx.fail(f"C must have rank <= 2 to broadcast to [M, N] = [{m}, {n}], "
                           f"got shape {list(c.shape)}")
        for have, want in zip(reversed(c.shape), (n, m), strict=False):
            if have != 1 and have != want:
                raise ctx.fail(f"C of shape {list(c.shape)} does not broadcast to "
                               f"[M, N] = [{m}, {n}]")
    return TensorType((m, n), dtype)


def _gemm_reference(inputs: list[np.ndarray | None], attrs: dict) -> np.ndarray:
    a, b = inputs[0], inputs[1]
    c = inputs[2] if len(inputs) > 2 else None
    a = a.T if attrs["transA"] else a
    b = b.T if attrs["transB"] else b
    y = attrs["alpha"] * np.matmul(a, b)
    if c is not None:
        y = y + attrs["beta"] * c
    return np.asarray(y).astype(inputs[0].dtype, copy=False)


def _gemm_flops(ctx: InferContext) -> int:
    m, n = ctx.outputs[0].shape
    a = ctx.inputs[0]
    k = a.shape[0] if ctx.attrs.get("transA") else a.shape[1]
    return 2 * m * n * k + (m * n if ctx.has_input(2) else 0)


GEMM = register(OpDef(
    name="Gemm",
    doc="Y = alpha * A' @ B' + beta * C, A' = A^T if transA, B' = B^T if transB; C broadcasts "
        "to [M, N] (the fully connected layer: A [M, K] activations, B the weight, C the bias).",
    inputs=(Input("A"), Input("B", weight=True), Input("C", optional=True, weight=True)),
    attrs=(
        Attr("alpha", "float", 1.0, "scale of A' @ B'"),
        Attr("beta", "float", 1.0, "scale of C"),
        Attr("transA", "bool", False, "transpose A (A is [K, M])"),
        Attr("transB", "bool", False, "transpose B (B is [N, K], PyTorch's Linear weight)"),
    ),
    infer=_gemm_infer,
    reference=_gemm_reference,
    flops=_gemm_flops,
    fusion=FusionKind.OUTPUT_FUSABLE,
))


def _matmul_infer(ctx: InferContext) -> TensorType:
    a, b = ctx.input(0), ctx.input(1)
    dtype = ctx.same_dtype(0, 1)
    if dtype is DType.bool:
        raise ctx.fail("MatMul needs numeric inputs, got bool")
    if a.rank == 0 or b.rank == 0:
        raise ctx.fail(f"MatMul operands must have rank >= 1, got shapes {list(a.shape)} "
                       f"and {list(b.shape)}")
    sa: tuple[Dim, ...] = (1, *a.shape) if a.rank == 1 else a.shape
    sb: tuple[Dim, ...] = (*b.shape, 1) if b.rank == 1 else b.shape
    if sa[-1] != sb[-2]:
        raise ctx.fail(f"inner dimensions differ: A is {list(a.shape)} (K={sa[-1]}), "
                       f"B is {list(b.shape)} (K={sb[-2]})")
    if isinstance(sa[-1], str):
        raise ctx.fail(f"the inner dimension K={sa[-1]!r} must be concrete")
    batch = broadcast_shapes(ctx, sa[:-2], sb[:-2])
    out = (*batch, sa[-2], sb[-1])
    if a.rank == 1:
        out = out[:-2] + out[-1:]
    if b.rank == 1:
        out = out[:-1]
    return TensorType(out, dtype)


def _matmul_flops(ctx: InferContext) -> int:
    a = ctx.inputs[0]
    return 2 * math.prod(ctx.outputs[0].shape) * int(a.shape[-1])


MATMUL = register(OpDef(
    name="MatMul",
    doc="numpy matmul: [..., M, K] @ [..., K, N] -> [..., M, N], batch dims broadcast, a 1-D "
        "operand is a row (A) or column (B) vector whose unit dim is dropped from the result.",
    inputs=(Input("A"), Input("B")),
    attrs=(),
    infer=_matmul_infer,
    reference=lambda inputs, attrs: np.matmul(inputs[0], inputs[1]),
    flops=_matmul_flops,
    fusion=FusionKind.OUTPUT_FUSABLE,
))


# ---------------------------------------------------------------------- gradients
def _gemm_grad(b, node, grads):
    """Y = alpha A'B' + beta C with A' = A or A^T, B' = B or B^T:
    dA' = alpha g B'^T, dB' = alpha A'^T g, dC = beta g summed to C's shape. Each is one
    Gemm with the transposes folded into its flags."""
    from cnncompiler.ops.gradients import mul_scalar, unbroadcast

    (g,) = grads
    a, bb = node.inputs[0], node.inputs[1]
    c = node.inputs[2] if len(node.inputs) > 2 else None
    alpha, beta = node.attrs["alpha"], node.attrs["beta"]
    ta, tb = node.attrs["transA"], node.attrs["transB"]
    da = (b.op("Gemm", g, bb, alpha=alpha, transB=not tb) if not ta
          else b.op("Gemm", bb, g, alpha=alpha, transA=tb, transB=True))
    db = (b.op("Gemm", a, g, alpha=alpha, transA=not ta) if not tb
          else b.op("Gemm", g, a, alpha=alpha, transA=True, transB=ta))
    dc = None if c is None else mul_scalar(b, unbroadcast(b, g, c), beta)
    return [da, db, dc]


def _swap_last(b, v):
    """``v`` with its last two axes swapped (a batched transpose)."""
    r = v.type.rank
    return b.op("Transpose", v, perm=(*range(r - 2), r - 1, r - 2))


def _matmul_grad(b, node, grads):
    """numpy matmul, A' @ B' with 1-D operands promoted (A [K] -> [1, K], B [K] -> [K, 1])
    and g promoted to match: dA' = g B'^T, dB' = A'^T g, each summed over the batch axes
    its operand was broadcast along, then reshaped to the operand's own shape. 2-D
    operands take one Gemm each; a 2-D (or 1-D) B under an N-D A, nn.Linear applied over
    extra axes, folds the batch axes into the rows so dB is one Gemm too."""
    from cnncompiler.ops.gradients import sum_to_shape

    (g,), (a, bb) = grads, node.inputs
    if a.type.rank == 2 and bb.type.rank == 2:
        return [b.op("Gemm", g, bb, transB=True), b.op("Gemm", a, g, transA=True)]
    sa = (1, *a.type.shape) if a.type.rank == 1 else a.type.shape
    sb = (*bb.type.shape, 1) if bb.type.rank == 1 else bb.type.shape
    a2 = a if a.type.rank > 1 else b.op("Unsqueeze", a, axes=(0,))
    b2 = bb if bb.type.rank > 1 else b.op("Unsqueeze", bb, axes=(1,))
    if a.type.rank == 1:
        g = b.op("Unsqueeze", g, axes=(g.type.rank - (0 if bb.type.rank == 1 else 1),))
    if bb.type.rank == 1:
        g = b.op("Unsqueeze", g, axes=(g.type.rank,))
    # g is now [batch..., M, N]
    da = sum_to_shape(b, b.op("MatMul", g, _swap_last(b, b2)), sa)
    k, n = sb[-2], sb[-1]
    rows_static = all(isinstance(d, int) for d in g.type.shape)
    if len(sb) == 2 and rows_static:
        db = b.op("Gemm", b.op("Reshape", a2, shape=(-1, k)), b.op("Reshape", g, shape=(-1, n)),
                  transA=True)
    else:
        db = sum_to_shape(b, b.op("MatMul", _swap_last(b, a2), g), sb)
    if a.type.rank == 1:
        da = b.op("Reshape", da, shape=a.type.shape)
    if bb.type.rank == 1:
        db = b.op("Reshape", db, shape=bb.type.shape)
    return [da, db]


GEMM.grad, MATMUL.grad = _gemm_grad, _matmul_grad
