"""Normalisation and pass-through ops: LRN, BatchNormalization, Dropout, Identity (ONNX).

LRN is AlexNet's cross-channel NORM layer. BatchNormalization is the inference form: a
per-channel affine map, so it fuses like an elementwise op (and folds into a preceding conv).
Dropout is the identity at inference; Identity is the identity. Both may alias their input.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cnncompiler.ir.types import TensorType
from cnncompiler.kernel import ir as K
from cnncompiler.ops.layout_ops import LAYOUT_ATTR, layout_infer, layout_reference
from cnncompiler.ops.opdef import Attr, FusionKind, InferContext, Input, OpDef, elementwise_flops
from cnncompiler.ops.registry import register


def _at_least(low: float, strict: bool = False):
    def check(v: float) -> str | None:
        ok = v > low if strict else v >= low
        return None if ok else f"must be {'>' if strict else '>='} {low}"
    return check


# ------------------------------------------------------------------------------------- LRN
def _lrn_infer(ctx: InferContext) -> TensorType:
    ctx.require_rank(0, 4, "input X [N, C, H, W]")
    return ctx.require_float(0)


def _lrn_reference(inputs: list, attrs: dict[str, Any]) -> np.ndarray:
    x = inputs[0]
    size = attrs["size"]
    lo, hi = (size - 1) // 2, -(-(size - 1) // 2)  # floor and ceil of (size - 1)/2
    sq = np.pad(x.astype(np.float64) ** 2, ((0, 0), (lo, hi), (0, 0), (0, 0)))
    c = x.shape[1]
    square_sum = sum(sq[:, k:k + c] for k in range(size))
    scale = (attrs["bias"] + attrs["alpha"] / size * square_sum) ** attrs["beta"]
    return (x / scale).astype(x.dtype)


def _lrn_flops(ctx: InferContext) -> int:
    return (ctx["size"] + 4) * math.prod(ctx.outputs[0].shape)


LRN = register(OpDef(
    name="LRN",
    doc="local response normalisation across channels: "
        "x / (bias + alpha/size * sum of x^2 over `size` neighbouring channels)^beta",
    inputs=(Input("X"),),
    attrs=(Attr("size", "int", doc="number of channels summed over", check=_at_least(1)),
           Attr("alpha", "float", 1e-4, "scale of the square sum"),
           Attr("beta", "float", 0.75, "exponent"),
           Attr("bias", "float", 1.0, "added before the power")),
    infer=_lrn_infer,
    reference=_lrn_reference,
    flops=_lrn_flops,
    fusion=FusionKind.OPAQUE,
))


# ------------------------------------------------------------------------- BatchNormalization
BN_PARAMS = ("scale", "B", "input_mean", "input_var")


def _bn_infer(ctx: InferContext) -> TensorType:
    x = ctx.input(0)
    if x.rank < 2:
        raise ctx.fail(f"input X must have rank >= 2 ([N, C, ...]), got shape {list(x.shape)}")
    ctx.require_float(0)
    dtype = ctx.same_dtype(0, 1, 2, 3, 4)
    c = x.shape[1]
    for i, name in enumerate(BN_PARAMS, start=1):
        p = ctx.input(i)
        if p.shape != (c,):
            raise ctx.fail(f"{name} must have shape [C] = [{c}] (C = X.shape[1]), "
                           f"got {list(p.shape)}")
    return x.with_dtype(dtype)


def _bn_reference(inputs: list, attrs: dict[str, Any]) -> np.ndarray:
    x, scale, b, mean, var = inputs
    shape = (1, -1) + (1,) * (x.ndim - 2)
    x64, scale, b, mean, var = (np.asarray(a, np.float64) for a in (x, scale, b, mean, var))
    inv = scale / np.sqrt(var + attrs["epsilon"])
    y = (x64 - mean.reshape(shape)) * inv.reshape(shape) + b.reshape(shape)
    return y.astype(x.dtype)


BATCH_NORMALIZATION = register(OpDef(
    name="BatchNormalization",
    doc="inference batch norm: scale * (x - mean) / sqrt(var + epsilon) + B per channel (axis 1)",
    inputs=(Input("X"), Input("scale", weight=True), Input("B", weight=True),
            Input("input_mean"), Input("input_var")),
    attrs=(Attr("epsilon", "float", 1e-5, "added to the variance", check=_at_least(0.0)),
           Attr("momentum", "float", 0.9, "running-statistics momentum (training)",
                check=lambda m: None if 0.0 <= m <= 1.0 else "must be in [0, 1]"),
           LAYOUT_ATTR),
    infer=layout_infer(_bn_infer),
    reference=layout_reference(_bn_reference),
    flops=elementwise_flops(2),
    fusion=FusionKind.ELEMENTWISE,
    scalar=lambda xs, a: (xs[0] - xs[3]) * (xs[1] / K.call("sqrt", xs[4] + a["epsilon"]))
    + xs[2],
    per_channel_inputs=True,
))


# ------------------------------------------------------------------------ Dropout, Identity
def _float_same(ctx: InferContext) -> TensorType:
    return ctx.require_float(0)


DROPOUT = register(OpDef(
    name="Dropout",
    doc="randomly zeroes a fraction `ratio` of activations in training; the identity at "
        "inference",
    inputs=(Input("X"),),
    attrs=(Attr("ratio", "float", 0.5, "fraction dropped in training",
                check=lambda r: None if 0.0 <= r < 1.0 else "must be in [0, 1)"),),
    infer=_float_same,
    reference=lambda inputs, a: inputs[0].copy(),
    fusion=FusionKind.ELEMENTWISE,
    view=True,
    scalar=lambda xs, a: xs[0],
))

IDENTITY = register(OpDef(
    name="Identity",
    doc="Y = X",
    inputs=(Input("X"),),
    attrs=(),
    infer=lambda ctx: ctx.input(0),
    reference=lambda inputs, a: inputs[0].copy(),
    fusion=FusionKind.ELEMENTWISE,
    view=True,
    scalar=lambda xs, a: xs[0],
))


# ---------------------------------------------------------------------- gradients
def _channel_window_sum(b, v, size: int, before: int, after: int):
    """sum of ``v`` [N, C, H, W] over channels c - before .. c + after (zeros past the
    ends), as a Conv of a [size, 1] ones filter over ``v`` viewed as [N, 1, C, H*W]:
    ``size`` adds per element, exact, and no new op."""
    from cnncompiler.errors import UnsupportedError

    n, c, h, w = v.type.shape
    if not all(isinstance(d, int) for d in (c, h, w)):
        raise UnsupportedError(f"LRN's gradient needs C, H and W static, got {list(v.type.shape)}")
    ones = b.const(np.ones((1, 1, size, 1), v.type.dtype.numpy), "lrn_window")
    flat = b.op("Reshape", v, shape=(0, 1, c, h * w))
    summed = b.op("Conv", flat, ones, pads=(before, 0, after, 0))
    return b.op("Reshape", summed, shape=(0, c, h, w))


def _lrn_grad(b, node, grads):
    """y = x S^-beta, S = bias + alpha/size * sum of x^2 over channels c - lo .. c + hi:
    dx = g S^-beta - 2 alpha beta / size * x * W^T(g y / S), where W^T sums over the
    transposed window c - hi .. c + lo (the two differ when size is even)."""
    from cnncompiler.ops.gradients import mul_scalar, scalar

    (g,), x, y = grads, node.inputs[0], node.outputs[0]
    size, alpha, beta, bias = (node.attrs[k] for k in ("size", "alpha", "beta", "bias"))
    lo, hi = (size - 1) // 2, size // 2        # floor and ceil of (size - 1)/2
    window = _channel_window_sum(b, b.op("Mul", x, x), size, lo, hi)
    s = b.op("Add", mul_scalar(b, window, alpha / size), scalar(b, bias, x))
    direct = b.op("Mul", g, b.op("Pow", s, scalar(b, -beta, x)))
    spread = _channel_window_sum(b, b.op("Div", b.op("Mul", g, y), s), size, hi, lo)
    cross = mul_scalar(b, b.op("Mul", x, spread), 2.0 * alpha * beta / size)
    return [b.op("Sub", direct, cross)]


def _batch_norm_grad(b, node, grads):
    """Inference BatchNormalization, y = (x - mean) k + B with k = scale / sqrt(var + eps)
    per channel: dx = g k; dB = sum g; dscale = sum g (x - mean) / sqrt(var + eps);
    dmean = -k sum g; dvar = -scale/2 (var + eps)^(-3/2) sum g (x - mean), sums over every
    axis but the channels. (A training step rewrites BatchNormalization to batch
    statistics first; this rule serves gradients through a frozen, inference-mode one.)"""
    from cnncompiler.errors import UnsupportedError
    from cnncompiler.ops.gradients import mul_scalar, scalar

    if node.attrs.get("layout") not in (None, "NCHW"):
        raise UnsupportedError(f"node '{node.name}' (BatchNormalization): the gradient in "
                               f"layout {node.attrs['layout']} is not implemented (run autodiff "
                               "before layout assignment)")
    (g,), (x, scale, _, mean, var) = grads, node.inputs
    rank, c = x.type.rank, x.type.shape[1]
    axes = (0, *range(2, rank))
    per_channel = (1, c) + (1,) * (rank - 2)

    def channel(v):
        return b.op("Reshape", v, shape=per_channel)

    def total(v):
        return b.op("ReduceSum", v, axes=axes, keepdims=False)

    inv_std = b.op("Div", scalar(b, 1.0, var),
                   b.op("Sqrt", b.op("Add", var, scalar(b, node.attrs["epsilon"], var))))
    k = b.op("Mul", scale, inv_std)
    dx = b.op("Mul", g, channel(k))
    sum_g = total(g)
    sum_gc = total(b.op("Mul", g, b.op("Sub", x, channel(mean))))
    dscale = b.op("Mul", sum_gc, inv_std)
    dmean = b.op("Neg", b.op("Mul", sum_g, k))
    cube = b.op("Mul", b.op("Mul", inv_std, inv_std), inv_std)
    dvar = mul_scalar(b, b.op("Mul", b.op("Mul", sum_gc, scale), cube), -0.5)
    return [dx, dscale, sum_g, dmean, dvar]


def _pass_through_grad(b, node, grads):
    """Identity, and Dropout at inference (a training step rewrites Dropout to a mask)."""
    return [grads[0]]


LRN.grad, BATCH_NORMALIZATION.grad = _lrn_grad, _batch_norm_grad
DROPOUT.grad = IDENTITY.grad = _pass_through_grad
