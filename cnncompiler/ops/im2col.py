"""Im2Col and its adjoint Im2ColGrad: a convolution's windows as the columns of a matrix.

Im2Col: X [N, C, H, W] -> cols [C·F_h·F_w, N·OH·OW], row (c, i, j) holding, for every
output pixel (n, oh, ow) of the batch, X[n, c, oh·S_h + i·D_h - P_top, ow·S_w + j·D_w -
P_left] (0 in the padding). A dense conv is then one matrix product, W as [K, C·F_h·F_w]
times cols, giving Y as [K, N·OH·OW]; its gradients are matrix products too (dW = dY ·
colsᵀ, dcols = Wᵀ · dY), which is how compiled training runs its convs
(:mod:`cnncompiler.passes.conv_gemm`). The whole batch shares one matrix so each product
is one large GEMM rather than N small ones.

Im2ColGrad (attribute ``image_shape`` = [N, C, H, W]) is the adjoint: each column entry is
added back to the input cell it was read from (cells read by several windows sum their
entries; padding entries are dropped). Each op's gradient is the other.

Neither is an ONNX op (ONNX's Col2Im keeps a batch axis): they appear only in graphs
cnncompiler builds, and the ONNX exporter refuses them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cnncompiler.ir.types import TensorType
from cnncompiler.ops.opdef import (
    REQUIRED,
    Attr,
    FusionKind,
    InferContext,
    Input,
    OpDef,
    no_flops,
)
from cnncompiler.ops.registry import register
from cnncompiler.ops.windows import check_2d, pad_nchw, spatial_out, window_attrs, window_views


def _geometry(ctx: InferContext) -> tuple[tuple, tuple, tuple, tuple]:
    return (check_2d(ctx, "kernel_shape", ctx["kernel_shape"]),
            check_2d(ctx, "strides", ctx["strides"]), check_2d(ctx, "pads", ctx["pads"], 4),
            check_2d(ctx, "dilations", ctx["dilations"]))


def _columns_shape(ctx: InferContext, image: tuple) -> tuple[tuple[int, int], tuple[int, int]]:
    """(cols shape, (OH, OW)) for an image of shape ``image``."""
    n, c, h, w = image
    kernel, strides, pads, dil = _geometry(ctx)
    oh, ow = spatial_out(ctx, (h, w), kernel, strides, pads, dil)
    return (c * kernel[0] * kernel[1], n * oh * ow), (oh, ow)


def _im2col_infer(ctx: InferContext) -> TensorType:
    x = ctx.require_rank(0, 4, "input X [N, C, H, W]")
    ctx.require_float(0)
    if any(isinstance(d, str) for d in x.shape):
        raise ctx.fail(f"Im2Col needs a concrete input shape, got {list(x.shape)}")
    shape, _ = _columns_shape(ctx, x.shape)
    return x.with_shape(shape)


def _padded_image(x_shape: tuple, attrs: dict[str, Any], out_hw: tuple[int, int]
                  ) -> tuple[int, int]:
    """End padding that makes every one of the windows fit (floor rounding drops cells)."""
    (fh, fw), (sh, sw), pads, (dh, dw) = (attrs["kernel_shape"], attrs["strides"],
                                          attrs["pads"], attrs["dilations"])
    need_h = (out_hw[0] - 1) * sh + (fh - 1) * dh + 1 - x_shape[2] - pads[0]
    need_w = (out_hw[1] - 1) * sw + (fw - 1) * dw + 1 - x_shape[3] - pads[1]
    return max(need_h, 0), max(need_w, 0)


def _out_hw(image: tuple, attrs: dict[str, Any]) -> tuple[int, int]:
    types = [TensorType(tuple(image), "float64")]
    _, hw = _columns_shape(InferContext("Im2Col", "ref", types, attrs), tuple(image))
    return hw


def _im2col_reference(inputs: list, attrs: dict[str, Any]) -> np.ndarray:
    (x,) = inputs
    n, c = x.shape[:2]
    out_hw = _out_hw(x.shape, attrs)
    pads = attrs["pads"]
    xp = pad_nchw(x, (pads[0], pads[1], *_padded_image(x.shape, attrs, out_hw)))
    fh, fw = attrs["kernel_shape"]
    cols = np.empty((c, fh, fw, n, *out_hw), x.dtype)
    for (i, j), view in window_views(xp, (fh, fw), attrs["strides"], attrs["dilations"],
                                     out_hw):
        cols[:, i, j] = view.transpose(1, 0, 2, 3)
    return cols.reshape(c * fh * fw, -1)


def _im2col_grad_infer(ctx: InferContext) -> TensorType:
    cols = ctx.require_rank(0, 2, "input cols [C·F_h·F_w, N·OH·OW]")
    ctx.require_float(0)
    image = check_2d(ctx, "image_shape", ctx["image_shape"], 4)
    expected, _ = _columns_shape(ctx, image)
    if tuple(cols.shape) != expected:
        raise ctx.fail(f"cols must have shape {list(expected)} for image {list(image)}, "
                       f"got {list(cols.shape)}")
    return cols.with_shape(tuple(image))


def _im2col_grad_reference(inputs: list, attrs: dict[str, Any]) -> np.ndarray:
    (cols,) = inputs
    n, c, h, w = attrs["image_shape"]
    out_hw = _out_hw((n, c, h, w), attrs)
    (fh, fw), (sh, sw), pads, (dh, dw) = (attrs["kernel_shape"], attrs["strides"],
                                          attrs["pads"], attrs["dilations"])
    end_h, end_w = _padded_image((n, c, h, w), attrs, out_hw)
    xp = np.zeros((n, c, h + pads[0] + end_h, w + pads[1] + end_w), np.float64)
    blocks = cols.reshape(c, fh, fw, n, *out_hw).astype(np.float64)
    oh, ow = out_hw
    for i in range(fh):
        for j in range(fw):
            # one tap of distinct windows lands on distinct cells: a strided add is exact
            xp[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh,
               j * dw: j * dw + sw * (ow - 1) + 1: sw] += blocks[:, i, j].transpose(1, 0, 2, 3)
    return xp[:, :, pads[0]:pads[0] + h, pads[1]:pads[1] + w].astype(cols.dtype)


def _added(ctx: InferContext) -> int:
    """Im2ColGrad adds each column entry into its cell (Im2Col only moves data: no flops)."""
    return math.prod(ctx.inputs[0].shape)


_ATTRS = window_attrs(kernel_required=True, with_dilation=True,
                      rounding_choices=("exact", "floor"))

IM2COL = register(OpDef(
    name="Im2Col",
    doc="a conv's windows as columns: X [N, C, H, W] -> [C·F_h·F_w, N·OH·OW] (row "
        "(c, i, j), column (n, oh, ow)); zero padding",
    inputs=(Input("X"),),
    attrs=_ATTRS,
    infer=_im2col_infer,
    reference=_im2col_reference,
    flops=no_flops,
    # its own row-copy kernel: never inlined into the GEMM that reads it
    fusion=FusionKind.OPAQUE,
))

IM2COL_GRAD = register(OpDef(
    name="Im2ColGrad",
    doc="Im2Col's adjoint: cols [C·F_h·F_w, N·OH·OW] summed back into an image of "
        "image_shape [N, C, H, W]",
    inputs=(Input("cols"),),
    attrs=_ATTRS + (Attr("image_shape", "ints", REQUIRED, "[N, C, H, W] of the image"),),
    infer=_im2col_grad_infer,
    reference=_im2col_grad_reference,
    flops=_added,
    fusion=FusionKind.OPAQUE,
))


def _window(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: attrs[k] for k in ("kernel_shape", "strides", "pads", "dilations", "rounding")}


def _im2col_grad(b, node, grads):
    (g,) = grads
    return [b.op("Im2ColGrad", g, image_shape=node.inputs[0].type.shape, **_window(node.attrs))]


def _im2col_grad_grad(b, node, grads):
    (g,) = grads
    return [b.op("Im2Col", g, **_window(node.attrs))]


IM2COL.grad, IM2COL_GRAD.grad = _im2col_grad, _im2col_grad_grad
