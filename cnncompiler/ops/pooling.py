"""Pooling: MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool (NCHW, ONNX semantics).

Pools share the sliding-window arithmetic of convolution (``windows.py``) but have no weights:
Y[n, c, oh, ow] reduces the window of X[n, c] that starts at (oh*S_h - P_top, ow*S_w - P_left).
MaxPool pads with -inf so padded cells never win. AveragePool divides by the number of real
input cells in the window, or with ``count_include_pad`` by the cells of the explicitly padded
input (cells that a ceil-mode window reaches beyond the end padding never count).
With the ``layout`` attribute X and Y are stored NHWC or NCHW{x}c (see ops/layout_ops.py).

MaxPoolGrad is MaxPool's backward op (what MaxPool's gradient rule emits): each window's
gradient goes to the first cell of the window, in window order (row-major over the kernel
taps), that equals the window's max, as in PyTorch. Ties therefore do not multiply the
gradient (a ReLU'd blank region, where a whole window holds the same value, passes each
window's gradient on once).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cnncompiler.ir.types import TensorType
from cnncompiler.ops.layout_ops import LAYOUT_ATTR, layout_flops, layout_infer, layout_reference
from cnncompiler.ops.opdef import Attr, FusionKind, InferContext, Input, OpDef
from cnncompiler.ops.registry import register
from cnncompiler.ops.windows import (
    AXIS_NAMES,
    check_2d,
    end_padding_for,
    pad_nchw,
    spatial_out,
    window_attrs,
    window_views,
)

Geometry = tuple[tuple, tuple, tuple, tuple]  # kernel, strides, pads, dilations


def pool_geometry(ctx: InferContext) -> Geometry:
    """(kernel, strides, pads, dilations) of a pooling node, checked to be 2-D and sane."""
    kernel = check_2d(ctx, "kernel_shape", ctx["kernel_shape"])
    strides = check_2d(ctx, "strides", ctx["strides"])
    pads = check_2d(ctx, "pads", ctx["pads"], 4)
    dil = check_2d(ctx, "dilations", ctx.attrs.get("dilations") or (1, 1))
    for i, axis in enumerate(AXIS_NAMES):
        extent = (kernel[i] - 1) * dil[i] + 1
        for side, p in (("begin", pads[i]), ("end", pads[i + 2])):
            if p >= extent:
                raise ctx.bad_attr(f"pads {list(pads)}: the {axis} {side} pad {p} must be "
                                   f"smaller than the window extent F={extent}, else a "
                                   "window would cover only padding")
    return kernel, strides, pads, dil


def _pool_infer(ctx: InferContext) -> TensorType:
    x = ctx.require_rank(0, 4, "input X [N, C, H, W]")
    ctx.require_float(0)
    kernel, strides, pads, dil = pool_geometry(ctx)
    n, c, h, w = x.shape
    return x.with_shape((n, c, *spatial_out(ctx, (h, w), kernel, strides, pads, dil)))


def _padded(x: np.ndarray, geometry: Geometry, out_hw: tuple, value: float) -> np.ndarray:
    """X padded with ``value``: the explicit pads, plus whatever end padding ceil mode needs."""
    kernel, strides, pads, dil = geometry
    bottom, right = (end_padding_for(x.shape[2 + i], kernel[i], strides[i], pads[i], pads[i + 2],
                                     dil[i], out_hw[i]) for i in range(2))
    return pad_nchw(x, (pads[0], pads[1], bottom, right), value)


def _setup(op: str, x: np.ndarray, attrs: dict[str, Any]) -> tuple[Geometry, tuple]:
    ctx = InferContext(op, "reference", [TensorType.of(x)], attrs)
    return pool_geometry(ctx), tuple(_pool_infer(ctx).shape[2:])


def _max_pool_reference(inputs: list, attrs: dict[str, Any]) -> np.ndarray:
    x = inputs[0]
    geometry, out_hw = _setup("MaxPool", x, attrs)
    kernel, strides, _, dil = geometry
    xp = _padded(x, geometry, out_hw, -np.inf)
    out = np.full(x.shape[:2] + out_hw, -np.inf, dtype=x.dtype)
    for _, view in window_views(xp, kernel, strides, dil, out_hw):
        np.maximum(out, view, out=out)
    return out


def _average_pool_reference(inputs: list, attrs: dict[str, Any]) -> np.ndarray:
    x = inputs[0]
    geometry, out_hw = _setup("AveragePool", x, attrs)
    kernel, strides, pads, dil = geometry
    xp = _padded(x.astype(np.float64), geometry, out_hw, 0.0)
    # the divisor is the same window sum taken over a mask of the cells that count
    mp = np.zeros((1, 1) + xp.shape[2:])
    h, w = x.shape[2:]
    if attrs["count_include_pad"]:
        mp[:, :, :pads[0] + h + pads[2], :pads[1] + w + pads[3]] = 1.0
    else:
        mp[:, :, pads[0]:pads[0] + h, pads[1]:pads[1] + w] = 1.0
    total = np.zeros(x.shape[:2] + out_hw)
    count = np.zeros((1, 1) + out_hw)
    for (_, xv), (_, mv) in zip(window_views(xp, kernel, strides, dil, out_hw),
                                window_views(mp, kernel, strides, dil, out_hw), strict=True):
        total += xv
        count += mv
    return (total / count).astype(x.dtype)


def _global_infer(ctx: InferContext) -> TensorType:
    x = ctx.require_rank(0, 4, "input X [N, C, H, W]")
    ctx.require_float(0)
    return x.with_shape((*x.shape[:2], 1, 1))


def _window_flops(extra: int) -> Any:
    def flops(ctx: InferContext) -> int:
        kh, kw = ctx["kernel_shape"]
        return (kh * kw + extra) * math.prod(ctx.outputs[0].shape)
    return flops


def _global_flops(ctx: InferContext) -> int:
    return math.prod(ctx.inputs[0].shape[2:]) * math.prod(ctx.outputs[0].shape)


X_INPUT = (Input("X"),)

MAX_POOL = register(OpDef(
    name="MaxPool",
    doc="max over each (dilated) window; padded cells are -inf and never win",
    inputs=X_INPUT,
    attrs=window_attrs(kernel_required=True, with_dilation=True) + (LAYOUT_ATTR,),
    infer=layout_infer(_pool_infer),
    reference=layout_reference(_max_pool_reference),
    flops=layout_flops(_window_flops(0)),
    fusion=FusionKind.OUTPUT_FUSABLE,
))

AVERAGE_POOL = register(OpDef(
    name="AveragePool",
    doc="mean over each window; count_include_pad counts the explicit pad cells in the divisor",
    inputs=X_INPUT,
    attrs=window_attrs(kernel_required=True, with_dilation=False)
    + (Attr("count_include_pad", "bool", False,
            "divide by the window area within the padded input, not only real cells"),
       LAYOUT_ATTR),
    infer=layout_infer(_pool_infer),
    reference=layout_reference(_average_pool_reference),
    flops=layout_flops(_window_flops(1)),
    fusion=FusionKind.OUTPUT_FUSABLE,
))

GLOBAL_AVERAGE_POOL = register(OpDef(
    name="GlobalAveragePool",
    doc="mean over all of H and W: [N, C, H, W] -> [N, C, 1, 1]",
    inputs=X_INPUT, attrs=(LAYOUT_ATTR,), infer=layout_infer(_global_infer),
    reference=layout_reference(lambda inputs, a: inputs[0].astype(np.float64)
                               .mean(axis=(2, 3), keepdims=True).astype(inputs[0].dtype)),
    flops=layout_flops(_global_flops),
    fusion=FusionKind.REDUCTION,
))

GLOBAL_MAX_POOL = register(OpDef(
    name="GlobalMaxPool",
    doc="max over all of H and W: [N, C, H, W] -> [N, C, 1, 1]",
    inputs=X_INPUT, attrs=(LAYOUT_ATTR,), infer=layout_infer(_global_infer),
    reference=layout_reference(lambda inputs, a: inputs[0].max(axis=(2, 3), keepdims=True)),
    flops=layout_flops(_global_flops),
    fusion=FusionKind.REDUCTION,
))


# ------------------------------------------------------------------------- MaxPoolGrad
def _max_pool_grad_infer(ctx: InferContext) -> TensorType:
    """dX has X's type; Y and dY must have the shape MaxPool gives X."""
    x = ctx.require_rank(0, 4, "input X [N, C, H, W]")
    ctx.require_float(0)
    dtype = ctx.same_dtype(0, 1, 2)
    y = _pool_infer(ctx)
    for i, what in ((1, "the pool output Y"), (2, "its gradient dY")):
        if ctx.input(i).shape != y.shape:
            raise ctx.fail(f"{what} must have MaxPool's output shape {list(y.shape)} for X "
                           f"{list(x.shape)}, got {list(ctx.input(i).shape)}")
    return x.with_dtype(dtype)


def _max_pool_grad_reference(inputs: list, attrs: dict[str, Any]) -> np.ndarray:
    """Per kernel tap, in window order, the windows whose max this tap is first to equal
    take dY there; padded cells (-inf) never equal a finite max."""
    x, y, dy = inputs
    geometry, out_hw = _setup("MaxPoolGrad", x, attrs)
    kernel, strides, pads, dil = geometry
    xp = _padded(x, geometry, out_hw, -np.inf)
    dxp = np.zeros(xp.shape, np.float64)
    taken = np.zeros(y.shape, bool)       # windows whose max an earlier tap already took
    (sh, sw), (dh, dw), (oh, ow) = strides, dil, out_hw
    for (i, j), view in window_views(xp, kernel, strides, dil, out_hw):
        hit = (view == y) & ~taken
        taken |= hit
        # one tap of distinct windows lands on distinct cells: a plain strided add is exact
        dxp[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh,
            j * dw: j * dw + sw * (ow - 1) + 1: sw] += np.where(hit, dy, 0.0)
    h, w = x.shape[2:]
    return dxp[:, :, pads[0]:pads[0] + h, pads[1]:pads[1] + w].astype(x.dtype)


def _max_pool_grad_flops(ctx: InferContext) -> int:
    """A compare per window cell and an add per window (as the reference counts them)."""
    kh, kw = ctx["kernel_shape"]
    return (kh * kw + 1) * math.prod(ctx.inputs[2].shape)


MAX_POOL_GRAD = register(OpDef(
    name="MaxPoolGrad",
    doc="MaxPool's backward: dX[cell] = sum of dY over the windows whose first max (in "
        "window order) is that cell; NCHW only",
    inputs=(Input("X"), Input("Y"), Input("dY")),
    attrs=window_attrs(kernel_required=True, with_dilation=True),
    infer=_max_pool_grad_infer,
    reference=_max_pool_grad_reference,
    flops=_max_pool_grad_flops,
    # an elementwise epilogue (ReLU's gradient before the pool) fuses into its kernel
    fusion=FusionKind.OUTPUT_FUSABLE,
))


# ---------------------------------------------------------------------- gradients
def _average_pool_grad(b, node, grads):
    """Each window's gradient spread evenly over its cells: where the windows tile the
    input, an upsampling (Reshape, Expand) times 1/(kh kw); otherwise a depthwise
    transposed conv with a constant 1/(kh kw) filter (exact where every divisor is the
    window area: no padding, or count_include_pad)."""
    from cnncompiler.errors import UnsupportedError
    from cnncompiler.ops.gradients import mul_scalar

    (g,), x, a = grads, node.inputs[0], node.attrs
    if any(a["pads"]) and not a["count_include_pad"]:
        raise UnsupportedError(f"node '{node.name}' (AveragePool): the gradient with padding "
                               "excluded from the divisor is not implemented yet")
    c, (h, w), (kh, kw), (sh, sw) = x.type.shape[1], x.type.shape[2:], a["kernel_shape"], \
        a["strides"]
    (oh, ow), pads = g.type.shape[2:], a["pads"]
    rh = h + pads[0] + pads[2] - kh - (oh - 1) * sh
    rw = w + pads[1] + pads[3] - kw - (ow - 1) * sw
    if (sh, sw) == (kh, kw) and not any(pads) and (h, w) == (oh * kh, ow * kw):
        # windows tile the input: each cell takes its window's share, an upsampling
        n = x.type.shape[0]
        spread = b.op("Expand", b.op("Reshape", g, shape=(n, c, oh, 1, ow, 1)),
                      shape=(n, c, oh, kh, ow, kw))
        return [mul_scalar(b, b.op("Reshape", spread, shape=(n, c, h, w)), 1.0 / (kh * kw))]
    ones = b.const(np.full((c, 1, kh, kw), 1.0 / (kh * kw), x.type.dtype.numpy), "pool_grad")
    return [b.op("ConvTranspose", g, ones, strides=(sh, sw), pads=pads, group=c,
                 output_padding=(rh, rw))]


def _global_average_pool_grad(b, node, grads):
    from cnncompiler.ops.gradients import mul_scalar

    (g,), x = grads, node.inputs[0]
    h, w = x.type.shape[2:]
    return [mul_scalar(b, b.op("Expand", g, shape=(1, 1, h, w)), 1.0 / (h * w))]


def _max_pool_grad(b, node, grads):
    """A MaxPoolGrad node reading X, the pool's own output Y and dY (the pool runs once)."""
    from cnncompiler.errors import UnsupportedError

    (g,), x, a = grads, node.inputs[0], node.attrs
    if a.get("layout") not in (None, "NCHW"):
        raise UnsupportedError(f"node '{node.name}' (MaxPool): the gradient of a pool in "
                               f"layout {a['layout']} is not implemented (run autodiff "
                               "before layout assignment)")
    attrs = {k: v for k, v in a.items() if k != "layout"}
    return [b.op("MaxPoolGrad", x, node.outputs[0], g, **attrs)]


MAX_POOL.grad = _max_pool_grad
AVERAGE_POOL.grad = _average_pool_grad
GLOBAL_AVERAGE_POOL.grad = _global_average_pool_grad
