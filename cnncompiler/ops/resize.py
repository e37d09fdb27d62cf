"""Resize (and the deprecated ONNX Upsample, which the importer maps here), opset 13+ semantics.

Upsampling in decoders and feature pyramids. Output dim i is floor(in_i * scales[i]) or
sizes[i]; each output coordinate x is mapped back to a source coordinate by
``coordinate_transformation_mode`` and read there: the nearest pixel (``nearest_mode``
rounding) or N-linear interpolation, clamped at the borders (edge replication), exactly as
the ONNX reference does it. Interpolation is separable, so the reference resizes one axis at
a time. scales/sizes are attributes here (ONNX passes them as tensor inputs).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cnncompiler.ir.types import Dim, TensorType
from cnncompiler.ops.opdef import Attr, FusionKind, InferContext, Input, OpDef
from cnncompiler.ops.registry import register

COORD_MODES = ("half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel",
               "half_pixel_symmetric")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def _out_sizes(ctx: InferContext, shape: tuple[Dim, ...]) -> tuple[Dim, ...]:
    scales, sizes = ctx["scales"], ctx["sizes"]
    rank = len(shape)
    if (scales is None) == (sizes is None):
        raise ctx.bad_attr("give exactly one of 'scales' and 'sizes'"
                           + (", not both" if scales is not None else ""))
    given, name = (scales, "scales") if scales is not None else (sizes, "sizes")
    if len(given) != rank:
        raise ctx.bad_attr(f"attribute '{name}' = {list(given)} must have one entry per input "
                           f"axis ({rank} for input shape {list(shape)})")
    if any(v <= 0 for v in given):
        raise ctx.bad_attr(f"attribute '{name}' = {list(given)}: entries must be > 0")
    out: list[Dim] = []
    for i, (d, v) in enumerate(zip(shape, given, strict=True)):
        if isinstance(d, str):
            if scales is None or v != 1.0:
                raise ctx.fail(f"cannot resize the symbolic axis {i} ({d!r}) with {name}[{i}] "
                               f"= {v}; give scales with 1.0 on that axis")
            out.append(d)
        elif scales is not None:
            o = math.floor(d * v)
            if o < 1:
                raise ctx.fail(f"axis {i}: floor({d} * {v}) = {o} leaves nothing")
            out.append(o)
        else:
            out.append(v)
    return tuple(out)


def _infer(ctx: InferContext) -> TensorType:
    x = ctx.input(0)
    if x.rank == 0:
        raise ctx.fail("cannot resize a scalar")
    if ctx["mode"] == "linear":
        ctx.require_float(0)
    return x.with_shape(_out_sizes(ctx, x.shape))


def source_coords(mode: str, out_size: int, in_size: int, scale: float) -> np.ndarray:
    """x_original for every output coordinate x (ONNX's formulas; length_resized is the
    unrounded scale * in_size, as in the ONNX reference)."""
    x = np.arange(out_size, dtype=np.float64)
    length = scale * in_size
    if mode == "asymmetric":
        return x / scale
    if mode == "align_corners":
        return np.zeros_like(x) if length == 1 else x * (in_size - 1) / (length - 1)
    if mode == "pytorch_half_pixel":
        return np.full_like(x, -0.5) if length == 1 else (x + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        offset = in_size / 2 * (1 - out_size / length)
        return offset + (x + 0.5) / scale - 0.5
    return (x + 0.5) / scale - 0.5  # half_pixel


def nearest_index(src: np.ndarray, mode: str, in_size: int) -> np.ndarray:
    """Round source coordinates to a pixel per ``nearest_mode``, clamped into the input."""
    lo = np.floor(src)
    frac = src - lo
    if mode == "floor":
        idx = lo
    elif mode == "ceil":
        idx = np.ceil(src)
    elif mode == "round_prefer_ceil":
        idx = np.where(frac >= 0.5, lo + 1, lo)
    else:  # round_prefer_floor
        idx = np.where(frac > 0.5, lo + 1, lo)
    return np.clip(idx, 0, in_size - 1).astype(np.intp)


def _resize_axis(x: np.ndarray, axis: int, out_size: int, scale: float,
                 attrs: dict[str, Any]) -> np.ndarray:
    in_size = x.shape[axis]
    src = source_coords(attrs["coordinate_transformation_mode"], out_size, in_size, scale)
    if attrs["mode"] == "nearest":
        return np.take(x, nearest_index(src, attrs["nearest_mode"], in_size), axis=axis)
    lo = np.floor(src)
    w = src - lo
    i0 = np.clip(lo, 0, in_size - 1).astype(np.intp)
    i1 = np.clip(lo + 1, 0, in_size - 1).astype(np.intp)
    shape = [1] * x.ndim
    shape[axis] = out_size
    w = w.reshape(shape)
    return np.take(x, i0, axis=axis) * (1 - w) + np.take(x, i1, axis=axis) * w


def _reference(inputs: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    x = inputs[0]
    ctx = InferContext("Resize", "ref", [TensorType.of(x)], attrs)
    out = _out_sizes(ctx, x.shape)
    y = x
    for axis, (d, o) in enumerate(zip(x.shape, out, strict=True)):
        scale = attrs["scales"][axis] if attrs["scales"] is not None else o / d
        if o == d and scale == 1.0:
            continue  # every coordinate mode maps x to itself
        y = _resize_axis(y, axis, int(o), scale, attrs)
    return y.astype(x.dtype, copy=False)


def _flops(ctx: InferContext) -> int:
    if ctx.attrs.get("mode") != "linear":
        return 0
    x, y = ctx.inputs[0], ctx.outputs[0]
    scales = ctx.attrs.get("scales")
    axes = sum(1 for i, (d, o) in enumerate(zip(x.shape, y.shape, strict=True))
               if d != o or (scales is not None and scales[i] != 1.0))
    return 4 * axes * math.prod(y.shape)  # bilinear: 4 taps, a multiply-add each


RESIZE = register(OpDef(
    name="Resize",
    doc="resize by scales (out = floor(in*scale)) or to sizes: nearest pixel or N-linear "
        "interpolation (the ONNX Upsample op is this with scales)",
    inputs=(Input("X"),),
    attrs=(
        Attr("mode", "str", "nearest", "interpolation", choices=("nearest", "linear")),
        Attr("scales", "floats", None, "per-axis scale factor (one per input axis)"),
        Attr("sizes", "ints", None, "per-axis output size (one per input axis)"),
        Attr("coordinate_transformation_mode", "str", "half_pixel",
             "how an output coordinate maps back to the input", choices=COORD_MODES),
        Attr("nearest_mode", "str", "round_prefer_floor", "rounding of nearest mode",
             choices=NEAREST_MODES),
    ),
    infer=_infer,
    reference=_reference,
    flops=_flops,
    # one kind per op: linear reads several inputs per output, so the conservative kind
    fusion=FusionKind.OPAQUE,
))
