"""Reductions over axes: ReduceMean/Sum/Max/Min/Prod/L1/L2/SumSquare/LogSum/LogSumExp, and
ArgMax/ArgMin (ONNX opset 18+ semantics, with ``axes`` as an attribute).

ONNX exports reach for these wherever a layer pools or normalises: ReduceMean for global
average pooling and LayerNorm, ReduceL2 for feature normalisation, ReduceMax/ArgMax in heads.
``axes`` absent (or empty) reduces every axis, unless ``noop_with_empty_axes`` is set: then
nothing is reduced, and the composite ops still apply their elementwise part (ReduceSumSquare
squares, ReduceL2 is |x|, ReduceLogSumExp is the identity), as ONNX specifies.
The batch symbol may be reduced: it becomes 1 with keepdims and disappears without.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from cnncompiler.ir.types import DType, TensorType
from cnncompiler.ops.math_ops import FLOAT, NUMERIC, require_dtype
from cnncompiler.ops.opdef import Attr, FusionKind, InferContext, Input, OpDef
from cnncompiler.ops.registry import register
from cnncompiler.ops.shape_ops import normalize_axis

Reducer = Callable[[np.ndarray, tuple[int, ...], bool], np.ndarray]


def reduce_axes(ctx: InferContext, rank: int) -> tuple[int, ...]:
    """The sorted, non-negative axes the node reduces (``()`` for a no-op)."""
    axes = ctx["axes"]
    if not axes:
        return () if ctx["noop_with_empty_axes"] else tuple(range(rank))
    out = tuple(normalize_axis(ctx, a, rank, "axes") for a in axes)
    if len(set(out)) != len(out):
        raise ctx.bad_attr(f"attribute 'axes' = {list(axes)} names an axis twice "
                           f"(rank {rank})")
    return tuple(sorted(out))


def _reduced_shape(shape: tuple, axes: tuple[int, ...], keepdims: bool) -> tuple:
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _reduce_infer(allowed: tuple[DType, ...]) -> Callable[[InferContext], TensorType]:
    def infer(ctx: InferContext) -> TensorType:
        x = require_dtype(ctx, 0, allowed)
        axes = reduce_axes(ctx, x.rank)
        return x.with_shape(_reduced_shape(x.shape, axes, ctx["keepdims"]))
    return infer


def _input_flops(per_element: int) -> Callable[[InferContext], int]:
    def flops(ctx: InferContext) -> int:
        return per_element * math.prod(ctx.input(0).shape)
    return flops


REDUCE_ATTRS = (
    Attr("axes", "ints", None, "axes to reduce (negative counts from the end); "
         "absent or empty: all of them, or none with noop_with_empty_axes"),
    Attr("keepdims", "bool", True, "keep reduced axes as size 1"),
    Attr("noop_with_empty_axes", "bool", False, "absent/empty axes reduce nothing"),
)


def _reduce_reference(fn: Reducer) -> Callable[[list, dict[str, Any]], np.ndarray]:
    def reference(inputs: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
        x = inputs[0]
        ctx = InferContext("Reduce", "ref", [TensorType.of(x)], attrs)
        out = fn(x, reduce_axes(ctx, x.ndim), attrs["keepdims"])
        return np.asarray(out).astype(x.dtype, copy=False)
    return reference


def _reduction(name: str, doc: str, fn: Reducer, allowed: tuple[DType, ...],
               flops_per_element: int = 1) -> OpDef:
    return register(OpDef(
        name=name, doc=doc, inputs=(Input("data"),), attrs=REDUCE_ATTRS,
        infer=_reduce_infer(allowed), reference=_reduce_reference(fn),
        flops=_input_flops(flops_per_element), fusion=FusionKind.REDUCTION,
    ))


def _mean(x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
    # integer data: the mean truncated to the dtype, as ONNX (and numpy's dtype=) do
    return np.mean(x, axis=axes, keepdims=keepdims, dtype=x.dtype)


def _log_sum_exp(x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
    # shift by the (finite) maximum so exp never overflows
    m = np.max(x, axis=axes, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    with np.errstate(divide="ignore"):  # all -inf: log(0) = -inf is the answer
        out = np.log(np.sum(np.exp(x - m), axis=axes, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axes)


INT_FLOAT = NUMERIC
WITH_BOOL = NUMERIC + (DType.bool,)

REDUCE_MEAN = _reduction("ReduceMean", "mean over axes", _mean, INT_FLOAT)
REDUCE_SUM = _reduction("ReduceSum", "sum over axes",
                        lambda x, a, k: np.sum(x, axis=a, keepdims=k), INT_FLOAT)
REDUCE_MAX = _reduction("ReduceMax", "maximum over axes",
                        lambda x, a, k: np.max(x, axis=a, keepdims=k), WITH_BOOL)
REDUCE_MIN = _reduction("ReduceMin", "minimum over axes",
                        lambda x, a, k: np.min(x, axis=a, keepdims=k), WITH_BOOL)
REDUCE_PROD = _reduction("ReduceProd", "product over axes",
                         lambda x, a, k: np.prod(x, axis=a, keepdims=k), INT_FLOAT)
REDUCE_L1 = _reduction("ReduceL1", "sum of |x| over axes",
                       lambda x, a, k: np.sum(np.abs(x), axis=a, keepdims=k), INT_FLOAT, 2)
REDUCE_L2 = _reduction("ReduceL2", "sqrt of the sum of x^2 over axes",
                       lambda x, a, k: np.sqrt(np.sum(np.square(x), axis=a, keepdims=k)),
                       INT_FLOAT, 2)
REDUCE_SUM_SQUARE = _reduction("ReduceSumSquare", "sum of x^2 over axes",
                               lambda x, a, k: np.sum(np.square(x), axis=a, keepdims=k),
                               INT_FLOAT, 2)
REDUCE_LOG_SUM = _reduction("ReduceLogSum", "log of the sum over axes",
                            lambda x, a, k: np.log(np.sum(x, axis=a, keepdims=k)), FLOAT)
REDUCE_LOG_SUM_EXP = _reduction("ReduceLogSumExp", "log of the sum of e^x over axes "
                                "(computed stably)", _log_sum_exp, FLOAT, 4)


# --------------------------------------------------------------------------- ArgMax/Min
def _arg_infer(ctx: InferContext) -> TensorType:
    x = require_dtype(ctx, 0, NUMERIC)
    if x.rank == 0:
        raise ctx.fail(f"{ctx.op} needs an input of rank >= 1, got a scalar")
    axis = normalize_axis(ctx, ctx["axis"], x.rank)
    return TensorType(_reduced_shape(x.shape, (axis,), ctx["keepdims"]), DType.int64)


def _arg_reference(fn: Callable[..., np.ndarray]
                   ) -> Callable[[list, dict[str, Any]], np.ndarray]:
    def reference(inputs: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
        x = inputs[0]
        axis = attrs["axis"] % x.ndim
        if attrs["select_last_index"]:
            # the first hit in the reversed axis is the last one in the original order
            idx = x.shape[axis] - 1 - fn(np.flip(x, axis), axis=axis, keepdims=True)
        else:
            idx = fn(x, axis=axis, keepdims=True)
        if not attrs["keepdims"]:
            idx = np.squeeze(idx, axis=axis)
        return idx.astype(np.int64)
    return reference


ARG_ATTRS = (
    Attr("axis", "int", 0, "the axis searched (negative counts from the end)"),
    Attr("keepdims", "bool", True, "keep the searched axis as size 1"),
    Attr("select_last_index", "bool", False, "on ties, the last index instead of the first"),
)

ARG_MAX = register(OpDef(
    name="ArgMax", doc="index (int64) of the maximum along one axis", inputs=(Input("data"),),
    attrs=ARG_ATTRS, infer=_arg_infer, reference=_arg_reference(np.argmax),
    flops=_input_flops(1), fusion=FusionKind.REDUCTION, outputs=("reduced",),
))
ARG_MIN = register(OpDef(
    name="ArgMin", doc="index (int64) of the minimum along one axis", inputs=(Input("data"),),
    attrs=ARG_ATTRS, infer=_arg_infer, reference=_arg_reference(np.argmin),
    flops=_input_flops(1), fusion=FusionKind.REDUCTION, outputs=("reduced",),
))


# ---------------------------------------------------------------------- gradients
def _spread(b, node, g):
    """The output gradient broadcast back over the reduced axes of the input."""
    x = node.inputs[0]
    ctx = InferContext(node.op, node.name, [x.type], node.attrs)
    axes = reduce_axes(ctx, x.type.rank)
    if axes and not node.attrs["keepdims"]:
        g = b.op("Unsqueeze", g, axes=axes)
    shape = tuple(1 if isinstance(d, str) else d for d in x.type.shape)
    return b.op("Expand", g, shape=shape), axes


def _reduce_sum_grad(b, node, grads):
    return [_spread(b, node, grads[0])[0]]


def _reduce_mean_grad(b, node, grads):
    from cnncompiler.errors import UnsupportedError
    from cnncompiler.ops.gradients import mul_scalar

    g, axes = _spread(b, node, grads[0])
    dims = [node.inputs[0].type.shape[a] for a in axes]
    if any(isinstance(d, str) for d in dims):
        raise UnsupportedError(f"node '{node.name}' (ReduceMean): the gradient of a mean "
                               "over a symbolic axis needs the batch size pinned")
    return [mul_scalar(b, g, 1.0 / math.prod(dims))]


REDUCE_SUM.grad, REDUCE_MEAN.grad = _reduce_sum_grad, _reduce_mean_grad
