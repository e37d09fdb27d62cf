"""ONNX op -> IR converters, for the ONNX ops whose syntax differs from our definitions.

Semantics live in the OpDefs; this module only translates syntax that changed across opsets:
operands that became inputs (Clip min/max, Pad pads, Split split, axes, Resize scales),
``auto_pad``, ``ceil_mode`` (our ``rounding``), pre-13 Softmax's 2-D coercion, Upsample,
CastLike, Dropout's inference mask; and a few ONNX ops we have no op for, composed of ours
(InstanceNormalization).
Ops not listed here map one to one (``importer.default_converter``); ONNX ops that are neither
here nor ours but are ONNX functions are expanded through their bodies (``functions.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from cnncompiler.frontends.onnx.importer import (
    ONNX_DTYPES,
    NodeContext,
    default_converter,
    is_symbolic,
)
from cnncompiler.ir.types import DType

Converter = Callable[[NodeContext], list]
CONVERTERS: dict[str, Converter] = {}


def converts(*op_types: str) -> Callable[[Converter], Converter]:
    def register(fn: Converter) -> Converter:
        for op in op_types:
            CONVERTERS[op] = fn
        return fn

    return register


def _spatial(ctx: NodeContext, what: str = "input") -> tuple:
    x = ctx.type(0)
    if x.rank != 4:
        raise ctx.unsupported(f"only 2-D (NCHW, rank-4) {what} is supported; got shape "
                              f"{list(x.shape)}")
    return x.shape[2:]


def window_pads(ctx: NodeContext, kernel: list[int], strides: list[int],
                dilations: list[int]) -> tuple[int, ...]:
    """Explicit [top, left, bottom, right] pads, resolving ``auto_pad``."""
    auto = ctx.attr("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        return tuple(ctx.attr("pads", [0, 0, 0, 0]))
    if auto == "VALID":
        return (0, 0, 0, 0)
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise ctx.fail(f"unknown auto_pad {auto!r}")
    begin, end = [], []
    for size, k, s, d in zip(_spatial(ctx), kernel, strides, dilations):
        if isinstance(size, str):
            raise ctx.unsupported("auto_pad needs concrete spatial sizes")
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else large)
        end.append(large if auto == "SAME_UPPER" else small)
    return (*begin, *end)


def _window_attrs(ctx: NodeContext, kernel: list[int]) -> dict:
    strides = list(ctx.attr("strides", [1, 1]))
    dilations = list(ctx.attr("dilations", [1, 1]))
    return dict(kernel_shape=kernel, strides=strides, dilations=dilations,
                pads=window_pads(ctx, kernel, strides, dilations))


@converts("Conv")
def conv(ctx: NodeContext) -> list:
    _spatial(ctx)
    kernel = list(ctx.attr("kernel_shape") or ctx.type(1).shape[2:])
    attrs = _window_attrs(ctx, kernel)
    return ctx.emit("Conv", [0, 1, 2], dict(attrs, group=ctx.attr("group", 1), rounding="floor"))


@converts("ConvTranspose")
def conv_transpose(ctx: NodeContext) -> list:
    _spatial(ctx)
    return default_converter(ctx)


@converts("MaxPool", "AveragePool")
def pool(ctx: NodeContext) -> list:
    _spatial(ctx)
    attrs = _window_attrs(ctx, list(ctx.attr("kernel_shape")))
    attrs["rounding"] = "ceil" if ctx.attr("ceil_mode", 0) else "floor"
    if ctx.op_type == "MaxPool":
        if ctx.attr("storage_order", 0):
            raise ctx.unsupported("storage_order=1 (column-major Indices) is not supported")
    else:
        if any(d != 1 for d in attrs.pop("dilations")):
            raise ctx.unsupported("dilated AveragePool is not supported")
        attrs["count_include_pad"] = bool(ctx.attr("count_include_pad", 0))
    return ctx.emit(ctx.op_type, [0], attrs)


@converts("BatchNormalization")
def batch_norm(ctx: NodeContext) -> list:
    if ctx.opset < 9 and ctx.attr("spatial", 1) != 1:
        raise ctx.unsupported("spatial=0 (per-activation statistics) is not supported")
    if ctx.attr("training_mode", 0):
        raise ctx.unsupported("training_mode=1 is not supported at inference")
    return ctx.emit("BatchNormalization", [0, 1, 2, 3, 4],
                    dict(epsilon=ctx.attr("epsilon", 1e-5), momentum=ctx.attr("momentum", 0.9)))


def _passthrough(ctx: NodeContext) -> list:
    """Identity-like at inference: the output is the input itself, no node."""
    x = ctx.known(0)
    return [x if x is not None else ctx.importer.value_of(ctx.node.input[0], ctx)]


@converts("Identity")
def identity(ctx: NodeContext) -> list:
    return _passthrough(ctx)


@converts("Dropout")
def dropout(ctx: NodeContext) -> list:
    if ctx.opset >= 12 and ctx.has_input(2):
        training = ctx.known(2)
        if training is None or bool(np.asarray(training).ravel()[0]):
            raise ctx.unsupported("training_mode must be a constant false at inference")
    out = _passthrough(ctx)
    if len(ctx.node.output) > 1 and ctx.node.output[1] in ctx.importer.used:
        # at inference nothing is dropped: the mask is all true (ones of T before opset 10)
        x = ctx.type(0)
        if not x.is_static:
            raise ctx.unsupported("the mask output of a tensor with a symbolic dim; give "
                                  "batch=...")
        out.append(np.ones(x.shape, np.bool_ if ctx.opset >= 10 else x.dtype.numpy))
    return out


@converts("Clip")
def clip(ctx: NodeContext) -> list:
    if ctx.opset < 11:
        lo, hi = ctx.attr("min"), ctx.attr("max")
    else:
        lo = ctx.static_floats(1, "min")[0] if ctx.has_input(1) else None
        hi = ctx.static_floats(2, "max")[0] if ctx.has_input(2) else None
    return ctx.emit("Clip", [0], dict(min=lo, max=hi))


@converts("Pad")
def pad(ctx: NodeContext) -> list:
    rank = ctx.type(0).rank
    if ctx.opset < 11:
        pads, value = list(ctx.attr("pads")), ctx.attr("value", 0.0)
    else:
        pads = ctx.static_ints(1, "pads")
        value = float(ctx.require_known(2, "constant_value").ravel()[0]) \
            if ctx.has_input(2) else 0.0
        if ctx.has_input(3):  # opset 18: pads only for the listed axes
            axes = [a % rank for a in ctx.static_ints(3, "axes")]
            full = [0] * (2 * rank)
            for j, a in enumerate(axes):
                full[a], full[a + rank] = pads[j], pads[j + len(axes)]
            pads = full
    return ctx.emit("Pad", [0], dict(pads=pads, mode=ctx.attr("mode", "constant"), value=value))


@converts("Reshape")
def reshape(ctx: NodeContext) -> list:
    if ctx.opset < 5:
        shape = list(ctx.attr("shape"))
    else:
        shape = ctx.importer.decode(ctx.require_known(1, "shape"))
    x = ctx.type(0)
    if any(isinstance(d, str) for d in shape):
        shape = _symbolic_target(ctx, shape, x.shape)
    return ctx.emit("Reshape", [0], dict(shape=[int(d) for d in shape],
                                         allowzero=ctx.attr("allowzero", 0)))


def _symbolic_target(ctx: NodeContext, shape: list, source: tuple) -> list:
    """A target shape holding the batch symbol: copy it (0) where it sits at the same axis,
    else let Reshape infer it (-1)."""
    out = []
    for i, d in enumerate(shape):
        if isinstance(d, str):
            if i < len(source) and source[i] == d:
                d = 0
            elif -1 in shape or -1 in out:
                raise ctx.unsupported(f"target shape {shape} has the symbolic dim {d!r} and a -1;"
                                      " give a concrete batch (batch=...)")
            else:
                d = -1
        out.append(d)
    return out


def _scales_or_sizes(ctx: NodeContext, scales_at: int, sizes_at: int | None) -> dict:
    scales = ctx.known(scales_at) if ctx.has_input(scales_at) else None
    if scales is not None and scales.size == 0:
        scales = None
    sizes = None
    if sizes_at is not None and ctx.has_input(sizes_at):
        sizes = ctx.require_known(sizes_at, "sizes")
        if sizes.size == 0:
            sizes = None
    if scales is None and sizes is None:
        if ctx.has_input(scales_at) and ctx.known(scales_at) is None:
            raise ctx.unsupported("scales must be constant at import time")
        raise ctx.fail("Resize needs scales or sizes")
    if sizes is not None:
        if is_symbolic(sizes):
            raise ctx.unsupported("sizes depends on the symbolic batch; give batch=...")
        return dict(sizes=[int(s) for s in sizes])
    return dict(scales=[float(s) for s in scales])


def _with_axes(ctx: NodeContext, attrs: dict) -> dict:
    """Resize-18 ``axes``: expand per-axis scales/sizes to every axis."""
    axes = ctx.attr("axes")
    if not axes:
        return attrs
    x = ctx.type(0)
    if "scales" in attrs:
        full = [1.0] * x.rank
        for a, s in zip(axes, attrs["scales"]):
            full[a % x.rank] = s
        return dict(scales=full)
    full = list(x.shape)
    for a, s in zip(axes, attrs["sizes"]):
        full[a % x.rank] = s
    if any(isinstance(d, str) for d in full):
        raise ctx.unsupported("sizes with axes on a symbolic batch; give batch=...")
    return dict(sizes=full)


@converts("Resize")
def resize(ctx: NodeContext) -> list:
    mode = ctx.attr("mode", "nearest")
    if mode not in ("nearest", "linear"):
        raise ctx.unsupported(f"mode {mode!r} is not supported (nearest, linear)")
    if ctx.attr("antialias", 0):
        raise ctx.unsupported("antialias=1 is not supported")
    if ctx.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise ctx.unsupported("keep_aspect_ratio_policy other than 'stretch' is not supported")
    if ctx.opset < 11:
        attrs = _scales_or_sizes(ctx, 1, None)
        ctm, nearest = "asymmetric", "floor"
    else:
        attrs = _with_axes(ctx, _scales_or_sizes(ctx, 2, 3))
        ctm = ctx.attr("coordinate_transformation_mode", "half_pixel")
        nearest = ctx.attr("nearest_mode", "round_prefer_floor")
        if ctm == "tf_crop_and_resize":
            raise ctx.unsupported("coordinate_transformation_mode 'tf_crop_and_resize' is not "
                                  "supported")
    return ctx.emit("Resize", [0], dict(attrs, mode=mode, coordinate_transformation_mode=ctm,
                                        nearest_mode=nearest))


@converts("Upsample")
def upsample(ctx: NodeContext) -> list:
    """Deprecated Upsample = Resize with asymmetric coordinates and floor rounding."""
    mode = ctx.attr("mode", "nearest")
    mode = {"bilinear": "linear"}.get(mode, mode)
    if mode not in ("nearest", "linear"):
        raise ctx.unsupported(f"mode {mode!r} is not supported")
    scales = ctx.attr("scales") if ctx.opset < 9 else list(ctx.require_known(1, "scales"))
    return ctx.emit("Resize", [0], dict(scales=[float(s) for s in scales], mode=mode,
                                        coordinate_transformation_mode="asymmetric",
                                        nearest_mode="floor"))


@converts("Split")
def split(ctx: NodeContext) -> list:
    attrs = dict(axis=ctx.attr("axis", 0))
    sizes = ctx.attr("split") if ctx.opset < 13 else (
        ctx.static_ints(1, "split") if ctx.has_input(1) else None)
    n = len(ctx.node.output)
    if sizes:
        attrs["split"] = list(sizes)
    else:
        attrs["num_outputs"] = ctx.attr("num_outputs", n)
    return ctx.emit("Split", [0], attrs, num_outputs=n)


def _axes(ctx: NodeContext, since: int) -> list[int] | None:
    """``axes`` as an attribute before opset ``since``, as input 1 from then on."""
    if ctx.opset < since:
        axes = ctx.attr("axes")
        return None if axes is None else list(axes)
    return ctx.static_ints(1, "axes") if ctx.has_input(1) else None


@converts("Squeeze", "Unsqueeze")
def squeeze(ctx: NodeContext) -> list:
    axes = _axes(ctx, 13)
    if axes is None and ctx.op_type == "Squeeze":  # all size-1 dims, never the symbolic batch
        axes = [i for i, d in enumerate(ctx.type(0).shape) if d == 1]
    return ctx.emit(ctx.op_type, [0], dict(axes=axes))


@converts("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
          "ReduceL2", "ReduceLogSum", "ReduceSumSquare", "ReduceLogSumExp")
def reduce(ctx: NodeContext) -> list:
    since = 13 if ctx.op_type == "ReduceSum" else 18
    return ctx.emit(ctx.op_type, [0], dict(axes=_axes(ctx, since),
                                           keepdims=ctx.attr("keepdims", 1),
                                           noop_with_empty_axes=ctx.attr("noop_with_empty_axes",
                                                                         0)))


@converts("Softmax", "LogSoftmax")
def softmax(ctx: NodeContext) -> list:
    x = ctx.type(0)
    axis = ctx.attr("axis", -1 if ctx.opset >= 13 else 1)
    axis = axis + x.rank if axis < 0 else axis
    if ctx.opset >= 13 or axis == x.rank - 1:
        return ctx.emit(ctx.op_type, [0], dict(axis=axis))
    # before opset 13 the input is coerced to 2-D [prod(:axis), prod(axis:)]
    flat = ctx.emit("Flatten", [0], dict(axis=axis))[0]
    y = ctx.emit(ctx.op_type, [flat], dict(axis=-1))[0]
    target = [0 if isinstance(d, str) else d for d in x.shape]
    return ctx.emit("Reshape", [y], dict(shape=target), outputs=list(ctx.node.output))


@converts("Constant")
def constant(ctx: NodeContext) -> list:
    a = ctx.attrs
    if "value" in a:
        value = np.asarray(a["value"])
    elif "value_float" in a or "value_int" in a:
        value = np.asarray(a.get("value_float", a.get("value_int")),
                           np.float32 if "value_float" in a else np.int64)
    elif "value_floats" in a or "value_ints" in a:
        value = np.asarray(a.get("value_floats", a.get("value_ints")),
                           np.float32 if "value_floats" in a else np.int64)
    else:
        raise ctx.unsupported(f"Constant with {sorted(a)} is not supported")
    if value.dtype == np.int32:
        value = value.astype(np.int64)
    if value.dtype not in (np.float32, np.float64, np.int64, np.bool_):
        raise ctx.unsupported(f"Constant of element type {value.dtype} is not supported")
    return [value]


@converts("ConstantOfShape")
def constant_of_shape(ctx: NodeContext) -> list:
    shape = ctx.static_ints(0, "shape")
    fill = ctx.attr("value")
    fill = np.zeros(1, np.float32) if fill is None else np.asarray(fill)
    if fill.dtype == np.int32:
        fill = fill.astype(np.int64)
    return [np.full(shape, fill.ravel()[0], dtype=fill.dtype)]


@converts("Shape")
def shape(ctx: NodeContext) -> list:
    """Evaluated at import time; a symbolic batch is carried as an encoded sentinel."""
    dims = list(ctx.type(0).shape)
    start, end = ctx.attr("start", 0), ctx.attr("end")
    return [ctx.importer.encode(dims[start:end])]


@converts("Size")
def size(ctx: NodeContext) -> list:
    t = ctx.type(0)
    if not t.is_static:
        raise ctx.unsupported("Size of a tensor with a symbolic dim; give batch=...")
    return [np.array(int(np.prod(t.shape)), np.int64)]


@converts("Cast")
def cast(ctx: NodeContext) -> list:
    to = ctx.attr("to")
    dtype = ONNX_DTYPES.get(to)
    if dtype is None:
        raise ctx.unsupported(f"Cast to {onnx.TensorProto.DataType.Name(to)} is not supported")
    return _cast(ctx, dtype)


@converts("CastLike")
def cast_like(ctx: NodeContext) -> list:
    """Cast to the element type of input 1 (only its type is read)."""
    return _cast(ctx, ctx.type(1).dtype)


def _cast(ctx: NodeContext, dtype: DType) -> list:
    x = ctx.known(0)
    if x is not None and is_symbolic(x) and dtype.value == "int64":
        return [x]
    if ctx.type(0).dtype == dtype:  # a no-op (function bodies cast to their stash type)
        return _passthrough(ctx)
    return ctx.emit("Cast", [0], dict(to=dtype.value))


@converts("Slice")
def slice_(ctx: NodeContext) -> list:
    if ctx.opset < 10:
        starts, ends, axes, steps = (ctx.attr("starts"), ctx.attr("ends"), ctx.attr("axes"),
                                     None)
    else:
        starts, ends = ctx.static_ints(1, "starts"), ctx.static_ints(2, "ends")
        axes = ctx.static_ints(3, "axes") if ctx.has_input(3) else None
        steps = ctx.static_ints(4, "steps") if ctx.has_input(4) else None
    return ctx.emit("Slice", [0], dict(starts=starts, ends=ends, axes=axes, steps=steps))


@converts("Expand")
def expand(ctx: NodeContext) -> list:
    target = ctx.importer.decode(ctx.require_known(1, "shape"))
    x = ctx.type(0)
    offset = len(target) - x.rank
    for i, d in enumerate(target):  # a symbolic dim is kept from the input via broadcasting
        if isinstance(d, str):
            j = i - offset
            if j < 0 or x.shape[j] != d:
                raise ctx.unsupported("Expand to a symbolic dim the input lacks; give batch=...")
            target[i] = 1
    return ctx.emit("Expand", [0], dict(shape=[int(d) for d in target]))


@converts("Tile")
def tile(ctx: NodeContext) -> list:
    return ctx.emit("Tile", [0], dict(repeats=ctx.static_ints(1, "repeats")))


@converts("Sum", "Mean", "Max", "Min")
def variadic(ctx: NodeContext) -> list:
    if ctx.num_inputs == 1 and ctx.op_type != "Mean":
        return _passthrough(ctx)
    return ctx.emit(ctx.op_type, list(range(ctx.num_inputs)))


@converts("InstanceNormalization")
def instance_norm(ctx: NodeContext) -> list:
    """Per-sample, per-channel normalization over the spatial axes, composed of our ops:
    (x - mean) / sqrt(var + epsilon) * scale + bias, scale and bias shaped [C, 1, ...]."""
    x = ctx.type(0)
    if x.rank < 3:
        raise ctx.fail(f"the input must have rank >= 3 (N, C, D1, ...); got shape "
                       f"{list(x.shape)}")
    tmp = f"{ctx.name}/"
    _, centered, std = _center_and_std(ctx, list(range(2, x.rank)), tmp + "mean")
    normalized = ctx.emit("Div", [centered, std], outputs=[tmp + "normalized"])[0]
    per_channel = [-1] + [1] * (x.rank - 2)
    scale = ctx.emit("Reshape", [1], dict(shape=per_channel), outputs=[tmp + "scale"])[0]
    bias = ctx.emit("Reshape", [2], dict(shape=per_channel), outputs=[tmp + "bias"])[0]
    scaled = ctx.emit("Mul", [normalized, scale], outputs=[tmp + "scaled"])[0]
    return ctx.emit("Add", [scaled, bias], outputs=list(ctx.node.output)[:1])


def _center_and_std(ctx: NodeContext, axes: list[int], mean_name: str
                    ) -> tuple[str, str, str]:
    """Input 0's mean over ``axes`` (named ``mean_name``), input 0 minus it, and its standard
    deviation sqrt(var + epsilon), the variance taken in a second pass over the centred
    values (both keep the reduced dims as 1)."""
    eps = np.asarray(ctx.attr("epsilon", 1e-5), ctx.type(0).dtype.numpy)
    tmp = f"{ctx.name}/"
    mean = ctx.emit("ReduceMean", [0], dict(axes=axes, keepdims=1), outputs=[mean_name])[0]
    centered = ctx.emit("Sub", [0, mean], outputs=[tmp + "centered"])[0]
    square = ctx.emit("Mul", [centered, centered], outputs=[tmp + "square"])[0]
    var = ctx.emit("ReduceMean", [square], dict(axes=axes, keepdims=1),
                   outputs=[tmp + "var"])[0]
    std = ctx.emit("Sqrt", [ctx.emit("Add", [var, eps], outputs=[tmp + "var_eps"])[0]],
                   outputs=[tmp + "std"])[0]
    return mean, centered, std


@converts("LayerNormalization")
def layer_norm(ctx: NodeContext) -> list:
    """LayerNormalization-17 composed of our ops, reducing over axes [axis, rank) in place.

    ONNX's function body flattens the input to 2-D, which a symbolic batch cannot go through
    when more than one dim precedes ``axis`` (the transformer/ConvNeXt [N, H, W, C] case); the
    composition here keeps the shape and computes the variance in two passes. Mean and
    InvStdDev (optional outputs) have the input's shape with the reduced dims set to 1.
    """
    x = ctx.type(0)
    axis = ctx.attr("axis", -1)
    if not -x.rank <= axis < x.rank:
        raise ctx.fail(f"axis {axis} is out of range for rank {x.rank}")
    axes = list(range(axis % x.rank, x.rank))
    outs = list(ctx.node.output)
    want = [bool(o) and o in ctx.importer.used for o in outs]
    tmp = f"{ctx.name}/"
    mean, centered, std = _center_and_std(
        ctx, axes, outs[1] if len(want) > 1 and want[1] else tmp + "mean")
    inv = ctx.emit("Reciprocal", [std],
                   outputs=[outs[2] if len(want) > 2 and want[2] else tmp + "inv_std"])[0]
    normalized = ctx.emit("Mul", [centered, inv], outputs=[tmp + "normalized"])[0]
    if ctx.has_input(2):
        scaled = ctx.emit("Mul", [normalized, 1], outputs=[tmp + "scaled"])[0]
        y = ctx.emit("Add", [scaled, 2], outputs=outs[:1])[0]
    else:
        y = ctx.emit("Mul", [normalized, 1], outputs=outs[:1])[0]
    return [y, mean, inv][:len(outs)]


@converts("Range")
def range_(ctx: NodeContext) -> list:
    """Evaluated at import time (shape arithmetic, detection grids); ONNX's function body is a
    Loop, which a run-time Range would need."""
    values = [ctx.require_known(i, what) for i, what in enumerate(("start", "limit", "delta"))]
    if any(is_symbolic(v) for v in values):
        raise ctx.unsupported("Range bounds depend on the symbolic batch; give batch=...")
    start, limit, delta = (np.asarray(v).reshape(()) for v in values)
    if delta == 0:
        raise ctx.fail("delta must not be 0")
    return [np.arange(start, limit, delta).astype(np.result_type(start, limit, delta))]


@converts("And", "Or", "Xor")
def logical(ctx: NodeContext) -> list:
    """Boolean And/Or/Xor as a Where on the first operand (the bodies of GreaterOrEqual and
    LessOrEqual use Or)."""
    for i in (0, 1):
        if ctx.type(i).dtype != DType.bool:
            raise ctx.fail(f"input {i} must be bool, got {ctx.type(i).dtype.value}")
    if ctx.op_type == "And":
        return ctx.emit("Where", [0, 1, np.array(False)])
    if ctx.op_type == "Or":
        return ctx.emit("Where", [0, np.array(True), 1])
    not_b = ctx.emit("Not", [1], outputs=[f"{ctx.name}/not_b"])[0]
    return ctx.emit("Where", [0, not_b, 1], outputs=list(ctx.node.output)[:1])
