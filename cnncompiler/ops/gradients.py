"""Shared pieces of the ops' gradient rules (each op's ``grad`` lives with its definition).

A rule is ``grad(b, node, output_grads) -> input_grads``: ``b`` is the GraphBuilder the
backward graph is written with, ``output_grads`` one Value (or None: that output does not
reach the loss) per output, and the result one Value or None (not differentiable, or not
needed) per input. Gradients are ordinary ops, so the backward graph is ordinary IR that
every pass and backend handles.
"""

from __future__ import annotations

import numpy as np

from cnncompiler.ir.builder import GraphBuilder
from cnncompiler.ir.graph import Value


def scalar(b: GraphBuilder, value: float, like: Value, name: str = "k") -> Value:
    """A 0-d constant of ``like``'s dtype (broadcasts against anything)."""
    return b.const(np.asarray(value, like.type.dtype.numpy), name)


def unbroadcast(b: GraphBuilder, grad: Value, target: Value) -> Value:
    """``grad`` (of a broadcast result) summed back to ``target``'s shape: over the leading
    axes ``target`` lacks and the axes where ``target`` has size 1."""
    return sum_to_shape(b, grad, target.type.shape)


def sum_to_shape(b: GraphBuilder, grad: Value, shape: tuple) -> Value:
    """``grad`` summed back to ``shape`` (which broadcasts to grad's shape): the adjoint of
    broadcasting, for operands that only exist in a promoted shape (MatMul's 1-D ones)."""
    extra = grad.type.rank - len(shape)
    if extra > 0:
        grad = b.op("ReduceSum", grad, axes=tuple(range(extra)), keepdims=False)
    axes = tuple(d for d, (g, t) in enumerate(zip(grad.type.shape, shape))
                 if t == 1 and g != 1)
    if axes:
        grad = b.op("ReduceSum", grad, axes=axes, keepdims=True)
    return grad


def mul_scalar(b: GraphBuilder, x: Value, k: float) -> Value:
    return x if k == 1 else b.op("Mul", x, scalar(b, k, x))


def zeros_like(b: GraphBuilder, x: Value) -> Value:
    """A zero tensor of ``x``'s shape and dtype, as a node (``x * 0``): graph outputs and
    Concat operands must be computed values, and symbolic dims are kept."""
    return b.op("Mul", x, scalar(b, 0.0, x))


def masked(b: GraphBuilder, condition: Value, x: Value) -> Value:
    """``x`` where ``condition`` holds, else 0 (a masked gradient)."""
    return b.op("Where", condition, x, scalar(b, 0.0, x))
