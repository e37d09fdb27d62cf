"""ConvTranspose (ConvTranspose2d, "deconvolution"), NCHW, ONNX semantics.

The gradient of Conv with respect to its input, used as a learned upsampler (decoders,
segmentation heads). Every input pixel scatters a weighted copy of the kernel into the output:
X [N, C, H, W], W [C, K/group, F_h, F_w], optional B [K] -> Y [N, K, H2, W2] with

    H2 = S*(H - 1) + output_padding + (F - 1)*D + 1 - P_top - P_bottom

``output_shape`` (or ``auto_pad`` SAME_*) fixes H2 instead and the pads follow from it:
total = S*(H - 1) + output_padding + (F - 1)*D + 1 - H2, split as onnxruntime does for NOTSET
(begin = total - total//2, the end getting the rest; a negative total extends the end, as the
ONNX test convtranspose_output_shape expects) and as the ONNX spec says for SAME_UPPER
(begin = total//2) and SAME_LOWER (begin = total - total//2).
"""

from __future__ import annotations

import math

import numpy as np

from cnncompiler.ir.types import TensorType
from cnncompiler.ops.opdef import Attr, FusionKind, InferContext, Input, OpDef
from cnncompiler.ops.registry import register
from cnncompiler.ops.windows import AXIS_NAMES, check_2d, non_negative, positive

AUTO_PAD = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


def _split_total(total: int, auto_pad: str) -> tuple[int, int]:
    if auto_pad == "SAME_UPPER":
        begin = total // 2
    elif auto_pad == "SAME_LOWER":
        begin = total - total // 2
    else:
        positive = max(total, 0)
        begin = positive - positive // 2
    return begin, total - begin


def conv_transpose_geometry(ctx: InferContext) -> tuple[tuple, tuple, tuple, tuple, tuple]:
    """(kernel, strides, pads, dilations, output_padding) with pads resolved from
    ``output_shape``/``auto_pad`` when those are given; pads may come out negative."""
    x, w = ctx.input(0), ctx.input(1)
    kernel = tuple(ctx["kernel_shape"] or w.shape[2:])
    if kernel != tuple(w.shape[2:]):
        raise ctx.fail(f"kernel_shape {list(kernel)} does not match the weight's spatial "
                       f"shape {list(w.shape[2:])}")
    check_2d(ctx, "kernel_shape", kernel)
    strides = check_2d(ctx, "strides", ctx["strides"])
    dil = check_2d(ctx, "dilations", ctx["dilations"])
    out_pad = check_2d(ctx, "output_padding", ctx["output_padding"])
    for i in range(2):
        if out_pad[i] >= strides[i] and out_pad[i] >= dil[i]:
            raise ctx.bad_attr(f"output_padding {list(out_pad)}: the {AXIS_NAMES[i]} entry "
                               f"{out_pad[i]} must be less than the stride {strides[i]} or "
                               f"the dilation {dil[i]}")
    auto_pad, out_shape = ctx["auto_pad"], ctx["output_shape"]
    if out_shape is not None:
        out_shape = check_2d(ctx, "output_shape", tuple(out_shape[-2:]) if len(out_shape) == 4
                             else out_shape)
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out_shape = tuple(x.shape[2 + i] * strides[i] for i in range(2))
    if out_shape is None:
        pads = (0, 0, 0, 0) if auto_pad == "VALID" else check_2d(ctx, "pads", ctx["pads"], 4)
        return kernel, strides, pads, dil, out_pad
    begins, ends = [], []
    for i in range(2):
        full = strides[i] * (x.shape[2 + i] - 1) + out_pad[i] + (kernel[i] - 1) * dil[i] + 1
        b, e = _split_total(full - out_shape[i], auto_pad)
        begins.append(b)
        ends.append(e)
    return kernel, strides, (*begins, *ends), dil, out_pad


def _infer(ctx: InferContext) -> TensorType:
    x = ctx.require_rank(0, 4, "input X [N, C, H, W]")
    w = ctx.require_rank(1, 4, "weight W [C, K/group, F_h, F_w]")
    ctx.require_float(0)
    dtype = ctx.same_dtype(0, 1, 2)
    group = ctx["group"]
    n, c, h, wd = x.shape
    for axis, d in (("channel", c), ("height", h), ("width", wd)):
        if isinstance(d, str):
            raise ctx.fail(f"the {axis} dimension must be concrete, got symbol {d!r}")
    if w.shape[0] != c:
        raise ctx.fail(f"channel mismatch: input has C={c} channels, the weight "
                       f"{list(w.shape)} expects W.shape[0] = {w.shape[0]}")
    if c % group:
        raise ctx.fail(f"input channels C={c} are not divisible by group={group}")
    k = w.shape[1] * group
    if ctx.has_input(2) and ctx.input(2).shape != (k,):
        raise ctx.fail(f"bias B must have shape [K] = [{k}] (K = W.shape[1] x group = "
                       f"{w.shape[1]} x {group}), got {list(ctx.input(2).shape)}")
    kernel, strides, pads, dil, out_pad = conv_transpose_geometry(ctx)
    out = []
    for i, size in enumerate((h, wd)):
        o = (strides[i] * (size - 1) + out_pad[i] + (kernel[i] - 1) * dil[i] + 1
             - pads[i] - pads[i + 2])
        if o <= 0:
            raise ctx.fail(f"output {AXIS_NAMES[i]} S*(H-1) + output_padding + (F-1)*D + 1 - "
                           f"P_begin - P_end = {strides[i]}*({size}-1) + {out_pad[i]} + "
                           f"({kernel[i]}-1)*{dil[i]} + 1 - {pads[i]} - {pads[i + 2]} = {o} "
                           "is not positive")
        out.append(o)
    return x.with_shape((n, k, *out)).with_dtype(dtype)


def conv_transpose2d_reference(x: np.ndarray, w: np.ndarray, b: np.ndarray | None,
                               strides: tuple, pads: tuple, dilations: tuple, group: int,
                               out_hw: tuple[int, int]) -> np.ndarray:
    """Scatter-add: for each kernel tap, every input pixel adds W[c, k, i, j]*x[c] at
    output position S*h + D*i - P_top (and the same along the width)."""
    n, c, h, wd = x.shape
    _, kg, fh, fw = w.shape
    cg = c // group
    (sh, sw), (dh, dw) = strides, dilations
    # the unpadded output, extended so that crop windows past either end read zeros
    lo_h, lo_w = max(-pads[0], 0), max(-pads[1], 0)
    full_h = sh * (h - 1) + (fh - 1) * dh + 1
    full_w = sw * (wd - 1) + (fw - 1) * dw + 1
    top, left = pads[0] + lo_h, pads[1] + lo_w   # where the output starts in the buffer
    buf_h = max(lo_h + full_h, top + out_hw[0])
    buf_w = max(lo_w + full_w, left + out_hw[1])
    dtype = np.result_type(x, w)
    buf = np.zeros((n, group, kg, buf_h, buf_w), dtype=dtype)
    xg = x.reshape(n, group, cg, h * wd)
    wg = w.reshape(group, cg, kg, fh, fw)
    for i in range(fh):
        for j in range(fw):
            # [group, kg, cg] @ [n, group, cg, H*W] -> [n, group, kg, H*W]
            contrib = np.matmul(wg[:, :, :, i, j].transpose(0, 2, 1), xg)
            r0, c0 = lo_h + i * dh, lo_w + j * dw
            buf[:, :, :, r0: r0 + sh * (h - 1) + 1: sh, c0: c0 + sw * (wd - 1) + 1: sw] += \
                contrib.reshape(n, group, kg, h, wd)
    out = buf[:, :, :, top: top + out_hw[0], left: left + out_hw[1]]
    out = out.reshape(n, group * kg, *out_hw)
    if b is not None:
        out = out + b.reshape(1, -1, 1, 1)
    return np.ascontiguousarray(out, dtype=dtype)


def _reference(inputs: list[np.ndarray | None], attrs: dict) -> np.ndarray:
    x, w = inputs[0], inputs[1]
    b = inputs[2] if len(inputs) > 2 else None
    types = [TensorType.of(x), TensorType.of(w), None if b is None else TensorType.of(b)]
    ctx = InferContext("ConvTranspose", "ref", types, attrs)
    y = _infer(ctx)
    _, strides, pads, dil, _ = conv_transpose_geometry(ctx)
    return conv_transpose2d_reference(x, w, b, strides, pads, dil, attrs["group"], y.shape[2:])


def _flops(ctx: InferContext) -> int:
    x, w = ctx.inputs[0], ctx.inputs[1]
    macs = math.prod(x.shape) * math.prod(w.shape[1:])  # N*C*H*W * (K/group)*F_h*F_w
    return 2 * macs + (math.prod(ctx.outputs[0].shape) if ctx.has_input(2) else 0)


CONV_TRANSPOSE = register(OpDef(
    name="ConvTranspose",
    doc="2-D transposed convolution: each input pixel scatters a kernel-weighted copy into a "
        "stride-spaced output (learned upsampling); the input-gradient of Conv.",
    inputs=(Input("X"), Input("W", weight=True), Input("B", optional=True, weight=True)),
    attrs=(
        Attr("kernel_shape", "ints", None, "kernel extent [F_h, F_w] (default: W's)",
             check=positive),
        Attr("strides", "ints", (1, 1), "stride [S_h, S_w]", check=positive),
        Attr("pads", "ints", (0, 0, 0, 0), "output cropping [top, left, bottom, right]",
             check=non_negative),
        Attr("dilations", "ints", (1, 1), "dilation [D_h, D_w]", check=positive),
        Attr("group", "int", 1, "number of channel groups",
             check=lambda g: None if g >= 1 else "must be >= 1"),
        Attr("output_padding", "ints", (0, 0), "extra rows/columns at the bottom/right",
             check=non_negative),
        Attr("output_shape", "ints", None, "[H2, W2]: overrides pads", check=positive),
        Attr("auto_pad", "str", "NOTSET", "SAME_* gives H2 = H*S; VALID = no pads",
             choices=AUTO_PAD),
    ),
    infer=_infer,
    reference=_reference,
    flops=_flops,
    fusion=FusionKind.OUTPUT_FUSABLE,
))
