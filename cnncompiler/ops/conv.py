"""Convolution (Conv2d), NCHW, ONNX semantics; ConvTranspose lives in conv_transpose.py.

Conv: X [N, C, H, W], W [K, C/group, F_h, F_w], optional B [K] -> Y [N, K, H2, W2] with
H2 = (H - F + P_top + P_bottom)/S + 1 (F dilated). (F·F·C/group)·K weights + K biases.
With the ``layout`` attribute X and Y are stored NHWC or NCHW{x}c (see ops/layout_ops.py).
"""

from __future__ import annotations

import math

import numpy as np

from cnncompiler.ir.types import TensorType
from cnncompiler.ops.layout_ops import (
    LAYOUT_ATTR,
    X_LAYOUT_ATTR,
    layout_flops,
    layout_infer,
    layout_reference,
)
from cnncompiler.ops.opdef import Attr, FusionKind, InferContext, Input, OpDef
from cnncompiler.ops.registry import register
from cnncompiler.ops.windows import check_2d, pad_nchw, spatial_out, window_attrs, window_views


def conv_geometry(ctx: InferContext) -> tuple[tuple, tuple, tuple, tuple]:
    """(kernel, strides, pads, dilations) of a Conv node, kernel read from W if absent."""
    w = ctx.input(1)
    kernel = ctx["kernel_shape"] or tuple(w.shape[2:])
    if tuple(kernel) != tuple(w.shape[2:]):
        raise ctx.fail(f"kernel_shape {list(kernel)} does not match the weight's spatial "
                       f"shape {list(w.shape[2:])}")
    return (check_2d(ctx, "kernel_shape", tuple(kernel)), check_2d(ctx, "strides", ctx["strides"]),
            check_2d(ctx, "pads", ctx["pads"], 4), check_2d(ctx, "dilations", ctx["dilations"]))


def _conv_infer(ctx: InferContext):
    x = ctx.require_rank(0, 4, "input X [N, C, H, W]")
    w = ctx.require_rank(1, 4, "weight W [K, C/group, F_h, F_w]")
    ctx.require_float(0)
    dtype = ctx.same_dtype(0, 1, 2)
    group = ctx["group"]
    n, c, h, wd = x.shape
    k, cg = w.shape[0], w.shape[1]
    if isinstance(c, str):
        raise ctx.fail(f"the channel count must be concrete, got {c!r}")
    if c % group:
        raise ctx.fail(f"input channels D1={c} are not divisible by group={group}")
    if k % group:
        raise ctx.fail(f"filters K={k} are not divisible by group={group}")
    if cg * group != c:
        raise ctx.fail(f"channel mismatch: input has D1={c} channels, the weight expects "
                       f"{cg} x group {group} = {cg * group}")
    if ctx.has_input(2):
        b = ctx.input(2)
        if b.shape != (k,):
            raise ctx.fail(f"bias B must have shape [K] = [{k}], got {list(b.shape)}")
    kernel, strides, pads, dil = conv_geometry(ctx)
    h2, w2 = spatial_out(ctx, (h, wd), kernel, strides, pads, dil)
    return x.with_shape((n, k, h2, w2)).with_dtype(dtype)


def conv2d_reference(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, strides: tuple,
                     pads: tuple, dilations: tuple, group: int, out_hw: tuple[int, int]
                     ) -> np.ndarray:
    """Grouped, dilated, strided conv as one batched matmul per kernel tap."""
    n, c = x.shape[:2]
    k, cg, fh, fw = w.shape
    kg = k // group
    oh, ow = out_hw
    # pad the end enough for every window (floor/ceil rounding may need more or less)
    need_h = (oh - 1) * strides[0] + (fh - 1) * dilations[0] + 1 - x.shape[2] - pads[0]
    need_w = (ow - 1) * strides[1] + (fw - 1) * dilations[1] + 1 - x.shape[3] - pads[1]
    xp = pad_nchw(x, (pads[0], pads[1], max(need_h, 0), max(need_w, 0)))
    out = np.zeros((n, group, kg, oh * ow), dtype=np.result_type(x, w))
    wg = w.reshape(group, kg, cg, fh, fw)
    for (i, j), view in window_views(xp, (fh, fw), strides, dilations, out_hw):
        patch = view.reshape(n, group, cg, oh * ow)
        out += np.matmul(wg[:, :, :, i, j], patch)
    out = out.reshape(n, k, oh, ow)
    if b is not None:
        out += b.reshape(1, k, 1, 1)
    return out


def _conv_reference(inputs, attrs):
    x, w = inputs[0], inputs[1]
    b = inputs[2] if len(inputs) > 2 else None
    types = [TensorType.of(x), TensorType.of(w), None if b is None else TensorType.of(b)]
    ctx = InferContext("Conv", "ref", types, attrs)
    y = _conv_infer(ctx)
    return conv2d_reference(x, w, b, attrs["strides"], attrs["pads"], attrs["dilations"],
                            attrs["group"], y.shape[2:])


def _conv_flops(ctx: InferContext) -> int:
    w = ctx.inputs[1]
    y = ctx.outputs[0]
    macs = math.prod(y.shape) * math.prod(w.shape[1:])
    return 2 * macs + (math.prod(y.shape) if ctx.has_input(2) else 0)


CONV = register(OpDef(
    name="Conv",
    doc="2-D convolution (cross-correlation) with K filters, stride, zero padding, dilation "
        "and groups (group = C gives depthwise).",
    inputs=(Input("X"), Input("W", weight=True), Input("B", optional=True, weight=True)),
    attrs=window_attrs(kernel_required=False, with_dilation=True,
                       rounding_choices=("exact", "floor"))
    + (Attr("group", "int", 1, "number of channel groups", check=lambda g: None if g >= 1
            else "must be >= 1"), LAYOUT_ATTR, X_LAYOUT_ATTR),
    infer=layout_infer(_conv_infer),
    reference=layout_reference(_conv_reference),
    flops=layout_flops(_conv_flops),
    fusion=FusionKind.OUTPUT_FUSABLE,
))


# ---------------------------------------------------------------------- gradients
def _conv_grad(b, node, grads):
    """dX is the transposed conv of g with the same filters (output_padding restores the
    rows a floor-rounded conv dropped); dW correlates X with g: a conv of X's channels (as
    the batch) with g's (as filters), strides and dilations swapped, cut to the filter
    extent; dB sums g over batch and space."""
    from cnncompiler.errors import UnsupportedError

    (g,) = grads
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    a = node.attrs
    (sh, sw), (dh, dw), pads, group = a["strides"], a["dilations"], a["pads"], a["group"]
    (h, wd), (fh, fw), (oh, ow) = x.type.shape[2:], w.type.shape[2:], g.type.shape[2:]
    if any(isinstance(d, str) for d in (*x.type.shape, *g.type.shape)):
        raise UnsupportedError(f"node '{node.name}' (Conv): gradients need concrete shapes "
                               "(pin the batch size)")
    rh = h + pads[0] + pads[2] - dh * (fh - 1) - 1 - (oh - 1) * sh
    rw = wd + pads[1] + pads[3] - dw * (fw - 1) - 1 - (ow - 1) * sw
    full = (dh * (fh - 1), dw * (fw - 1))
    if (sh, sw) == (1, 1) and group == 1 and all(
            0 <= pads[a] <= full[a % 2] for a in range(4)):
        # stride 1: a plain conv of g (padded by the filter extent minus the forward
        # padding) with the filters flipped and in/out swapped, which the backends'
        # direct-conv schedules run far faster than the transposed conv's gather
        flipped = b.op("Slice", w, starts=(-1, -1), ends=(-(2**31), -(2**31)), axes=(2, 3),
                       steps=(-1, -1))
        wt = b.op("Transpose", flipped, perm=(1, 0, 2, 3))
        back = tuple(full[a % 2] - pads[a] for a in range(4))
        dx = b.op("Conv", g, wt, pads=back, dilations=(dh, dw))
    else:
        dx = b.op("ConvTranspose", g, w, strides=(sh, sw), pads=pads, dilations=(dh, dw),
                  group=group, output_padding=(rh, rw))
    # the batch becomes the channels and X's channels (within a group) the batch: a
    # grouped conv of X, as [C/G, G*N, H, W], with g, as [K, N, OH, OW], gives
    # [C/G, K, F', F']: every group's filters correlate their own channels with the batch
    n, c = x.type.shape[:2]
    cg = c // group
    if group == 1:
        xt = b.op("Transpose", x, perm=(1, 0, 2, 3))
    else:
        x5 = b.op("Reshape", x, shape=(n, group, cg, h, wd))
        xt = b.op("Reshape", b.op("Transpose", x5, perm=(2, 1, 0, 3, 4)),
                  shape=(cg, group * n, h, wd))
    gt = b.op("Transpose", g, perm=(1, 0, 2, 3))
    corr = b.op("Conv", xt, gt, strides=(dh, dw), pads=pads, dilations=(sh, sw),
                group=group, rounding="floor")
    if corr.type.shape[2:] != (fh, fw):
        corr = b.op("Slice", corr, starts=(0, 0), ends=(fh, fw), axes=(2, 3))
    dw_ = b.op("Transpose", corr, perm=(1, 0, 2, 3))
    db = None if bias is None else b.op("ReduceSum", g, axes=(0, 2, 3), keepdims=False)
    return [dx, dw_, db]


CONV.grad = _conv_grad
