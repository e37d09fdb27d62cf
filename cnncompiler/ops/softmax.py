"""Softmax and LogSoftmax along one axis (ONNX opset 13: ``axis`` defaults to -1).

Both subtract the max along the axis first, so exp never overflows; LogSoftmax is computed as
(x - max) - log(sum(exp(x - max))) rather than log(softmax), which would underflow to -inf.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from cnncompiler.ir.types import TensorType
from cnncompiler.ops.opdef import Attr, FusionKind, InferContext, Input, OpDef, elementwise_flops
from cnncompiler.ops.registry import register


def _softmax_infer(ctx: InferContext) -> TensorType:
    x = ctx.require_float(0)
    if x.rank < 1:
        raise ctx.fail("input X must have rank >= 1, got a scalar")
    axis = ctx["axis"]
    if not -x.rank <= axis < x.rank:
        raise ctx.bad_attr(f"attribute 'axis' = {axis} is out of range for input of rank "
                           f"{x.rank} (shape {list(x.shape)}); expected {-x.rank}..{x.rank - 1}")
    return x


def _shifted(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(x - max, sum(exp(x - max))) along ``axis`` in float64."""
    z = x.astype(np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    return z, np.exp(z).sum(axis=axis, keepdims=True)


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    z, total = _shifted(x, axis)
    return (np.exp(z) / total).astype(x.dtype)


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    z, total = _shifted(x, axis)
    return (z - np.log(total)).astype(x.dtype)


def _register(name: str, doc: str, fn: Callable[[np.ndarray, int], np.ndarray]) -> OpDef:
    def reference(inputs: list, attrs: dict[str, Any]) -> np.ndarray:
        return fn(inputs[0], attrs["axis"])

    return register(OpDef(
        name=name, doc=doc, inputs=(Input("X"),),
        attrs=(Attr("axis", "int", -1, "the axis normalised over (negative counts from the end)"),),
        infer=_softmax_infer, reference=reference, flops=elementwise_flops(5),
        fusion=FusionKind.REDUCTION,
    ))


SOFTMAX = _register("Softmax", "exp(x) / sum(exp(x)) along axis", _softmax)
LOG_SOFTMAX = _register("LogSoftmax", "x - log(sum(exp(x))) along axis", _log_softmax)


# ---------------------------------------------------------------------- gradients
def _softmax_grad(b, node, grads):
    """y (g - sum(g y)) along the axis, from the output y."""
    (g,), y, axis = grads, node.outputs[0], node.attrs["axis"]
    dot = b.op("ReduceSum", b.op("Mul", g, y), axes=(axis,), keepdims=True)
    return [b.op("Mul", y, b.op("Sub", g, dot))]


def _log_softmax_grad(b, node, grads):
    """g - softmax(x) sum(g) along the axis; softmax(x) = exp(y) from the output y."""
    (g,), y, axis = grads, node.outputs[0], node.attrs["axis"]
    total = b.op("ReduceSum", g, axes=(axis,), keepdims=True)
    return [b.op("Sub", g, b.op("Mul", b.op("Exp", y), total))]


SOFTMAX.grad, LOG_SOFTMAX.grad = _softmax_grad, _log_softmax_grad
