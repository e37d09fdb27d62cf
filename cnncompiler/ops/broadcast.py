"""Binary arithmetic with numpy broadcasting: Add, Sub, Mul, Div."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cnncompiler.ir.types import TensorType
from cnncompiler.ops.opdef import FusionKind, InferContext, Input, OpDef, elementwise_flops
from cnncompiler.ops.registry import register


def broadcast_shapes(ctx: InferContext, a: tuple, b: tuple) -> tuple:
    """numpy's rule: align right, each pair equal or one of them 1."""
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        da = a[-i] if i <= len(a) else 1
        db = b[-i] if i <= len(b) else 1
        if da == db or db == 1:
            out.append(da)
        elif da == 1:
            out.append(db)
        else:
            raise ctx.fail(f"shapes {list(a)} and {list(b)} do not broadcast "
                           f"(dimension -{i}: {da} vs {db})")
    return tuple(reversed(out))


def broadcast_infer(ctx: InferContext) -> TensorType:
    a, b = ctx.input(0), ctx.input(1)
    dtype = ctx.same_dtype(0, 1)
    return TensorType(broadcast_shapes(ctx, a.shape, b.shape), dtype)


def binary(name: str, doc: str, fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
           infer: Callable[[InferContext], TensorType] = broadcast_infer,
           flops_per_element: int = 1, scalar: Callable | None = None) -> OpDef:
    """Register a broadcasting op ``Y = fn(A, B)``; ``infer`` defaults to same-dtype operands
    and a result of that dtype (comparisons pass their own, with a bool result)."""
    return register(OpDef(
        name=name, doc=doc, inputs=(Input("A"), Input("B")), attrs=(), infer=infer,
        reference=lambda inputs, attrs: fn(inputs[0], inputs[1]),
        flops=elementwise_flops(flops_per_element), fusion=FusionKind.BROADCAST,
        scalar=None if scalar is None else (lambda xs, attrs: scalar(xs[0], xs[1])),
    ))


ADD = binary("Add", "A + B with numpy broadcasting (residual connections, biases)", np.add,
             scalar=lambda a, b: a + b)
SUB = binary("Sub", "A - B with numpy broadcasting", np.subtract, scalar=lambda a, b: a - b)
MUL = binary("Mul", "A * B with numpy broadcasting", np.multiply, scalar=lambda a, b: a * b)
DIV = binary("Div", "A / B with numpy broadcasting (integer inputs divide toward zero)",
             lambda a, b: np.divide(a, b) if a.dtype.kind == "f"
             else (np.trunc(a / b)).astype(a.dtype), scalar=lambda a, b: a / b)


# ---------------------------------------------------------------------- gradients
def _add_grad(b, node, grads):
    (g,) = grads
    from cnncompiler.ops.gradients import unbroadcast

    return [unbroadcast(b, g, v) for v in node.inputs]


def _sub_grad(b, node, grads):
    (g,) = grads
    from cnncompiler.ops.gradients import unbroadcast

    x, y = node.inputs
    return [unbroadcast(b, g, x), unbroadcast(b, b.op("Neg", g), y)]


def _mul_grad(b, node, grads):
    (g,) = grads
    from cnncompiler.ops.gradients import unbroadcast

    x, y = node.inputs
    return [unbroadcast(b, b.op("Mul", g, y), x), unbroadcast(b, b.op("Mul", g, x), y)]


def _div_grad(b, node, grads):
    """d(x/y) = g/y, -g x/y^2 = -(g/y) * out / y ... written as -(g * out) / y."""
    (g,) = grads
    from cnncompiler.ops.gradients import unbroadcast

    x, y = node.inputs
    gx = b.op("Div", g, y)
    gy = b.op("Neg", b.op("Div", b.op("Mul", g, node.outputs[0]), y))
    return [unbroadcast(b, gx, x), unbroadcast(b, gy, y)]


ADD.grad, SUB.grad, MUL.grad, DIV.grad = _add_grad, _sub_grad, _mul_grad, _div_grad
