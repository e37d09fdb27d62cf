"""Tensor plumbing from ONNX exports: Squeeze, Unsqueeze, Slice, Gather, Expand, Tile, Cast,
Shape, ConstantOfShape, DepthToSpace, SpaceToDepth (latest-opset semantics).

Exporters emit these around the layers proper (shape arithmetic, channel shuffles, pixel
shuffle in super-resolution and segmentation heads). Like the ops in ``shape_ops`` they compute
nothing (0 FLOPs) and are INJECTIVE: each output element is one input element. What ONNX passes
as constant tensor inputs (axes, starts/ends, repeats, target shapes) are attributes here.
A symbolic dim (the batch "N") passes through when the output keeps it whole, and is refused
with a message saying why when the result would depend on its value.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cnncompiler.ir.types import Dim, DType, TensorType
from cnncompiler.kernel import ir as K
from cnncompiler.ops.broadcast import broadcast_shapes
from cnncompiler.ops.opdef import Attr, FusionKind, InferContext, Input, OpDef
from cnncompiler.ops.registry import register
from cnncompiler.ops.shape_ops import normalize_axis

# |start| / |end| at or beyond this means "past the end of any axis" (exporters use
# INT32_MAX, INT64_MAX and the INT_MIN counterparts to slice to the end of unknown axes)
HUGE = 2**31 - 1
DTYPE_NAMES = tuple(d.value for d in DType)


def _axes_list(ctx: InferContext, axes: tuple[int, ...], rank: int, name: str = "axes"
               ) -> list[int]:
    out = [normalize_axis(ctx, a, rank, name) for a in axes]
    if len(set(out)) != len(out):
        raise ctx.bad_attr(f"attribute '{name}' = {list(axes)} names an axis twice")
    return out


def _ctx(op: str, x: np.ndarray, attrs: dict[str, Any]) -> InferContext:
    """The context a reference uses to share its attribute arithmetic with ``infer``."""
    return InferContext(op, "ref", [TensorType.of(x)], attrs)


# --------------------------------------------------------------------------------- Squeeze
def squeeze_axes(ctx: InferContext, shape: tuple[Dim, ...]) -> list[int]:
    if ctx["axes"] is None:
        if any(isinstance(d, str) for d in shape):
            raise ctx.fail(f"Squeeze without 'axes' on {list(shape)}: whether the symbolic "
                           "dim is 1 is unknown, so give the axes to remove explicitly")
        return [i for i, d in enumerate(shape) if d == 1]
    axes = _axes_list(ctx, ctx["axes"], len(shape))
    for a in axes:
        if shape[a] != 1:
            raise ctx.fail(f"cannot squeeze axis {a} of shape {list(shape)}: its size is "
                           f"{shape[a]}, not 1")
    return axes


def _squeeze_infer(ctx: InferContext) -> TensorType:
    x = ctx.input(0)
    axes = set(squeeze_axes(ctx, x.shape))
    return x.with_shape(d for i, d in enumerate(x.shape) if i not in axes)


def _squeeze_reference(inputs: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    x = inputs[0]
    return np.squeeze(x, axis=tuple(squeeze_axes(_ctx("Squeeze", x, attrs), x.shape)))


SQUEEZE = register(OpDef(
    name="Squeeze",
    doc="remove size-1 axes (the given ones, or all of them)",
    inputs=(Input("data"),),
    attrs=(Attr("axes", "ints", None, "axes to remove, each of size 1 (default: every size-1 "
                "axis)"),),
    infer=_squeeze_infer,
    reference=_squeeze_reference,
    fusion=FusionKind.INJECTIVE,
    view=True,
))


# ------------------------------------------------------------------------------- Unsqueeze
def unsqueeze_shape(ctx: InferContext, shape: tuple[Dim, ...]) -> tuple[Dim, ...]:
    axes = ctx["axes"]
    rank = len(shape) + len(axes)
    new = set(_axes_list(ctx, axes, rank))  # relative to the output rank
    rest = iter(shape)
    return tuple(1 if i in new else next(rest) for i in range(rank))


def _unsqueeze_infer(ctx: InferContext) -> TensorType:
    x = ctx.input(0)
    return x.with_shape(unsqueeze_shape(ctx, x.shape))


def _unsqueeze_reference(inputs: list[np.ndarray | None], attrs: dict[str, Any]
                         ) -> np.ndarray:
    x = inputs[0]
    return x.reshape(unsqueeze_shape(_ctx("Unsqueeze", x, attrs), x.shape))


UNSQUEEZE = register(OpDef(
    name="Unsqueeze",
    doc="insert size-1 axes at the given positions of the output",
    inputs=(Input("data"),),
    attrs=(Attr("axes", "ints", doc="positions in the output (negative counts from the "
                "output's end)"),),
    infer=_unsqueeze_infer,
    reference=_unsqueeze_reference,
    fusion=FusionKind.INJECTIVE,
    view=True,
))


# ----------------------------------------------------------------------------------- Slice
def slice_range(start: int, end: int, step: int, dim: int) -> tuple[int, int, int]:
    """ONNX's effective (start, end, count) on an axis of size ``dim``; ``end`` may be -1
    for a negative step (one before index 0, which Python slices cannot spell)."""
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        start = min(max(start, 0), dim)
        end = min(max(end, 0), dim)
        count = max(0, -(-(end - start) // step))
    else:
        start = min(max(start, 0), dim - 1)
        end = min(max(end, -1), dim - 1)
        count = max(0, -(-(start - end) // -step))
    return start, end, count


def slice_plan(ctx: InferContext, rank: int) -> list[tuple[int, int, int, int]]:
    """(axis, start, end, step) of each sliced axis, attributes checked."""
    starts, ends, axes, steps = ctx["starts"], ctx["ends"], ctx["axes"], ctx["steps"]
    if len(starts) != len(ends):
        raise ctx.bad_attr(f"'starts' {list(starts)} and 'ends' {list(ends)} must have the "
                           "same length")
    if axes is None:
        if len(starts) > rank:
            raise ctx.bad_attr(f"'starts' has {len(starts)} entries, more than the rank "
                               f"{rank} (give 'axes')")
        axes = tuple(range(len(starts)))
    elif len(axes) != len(starts):
        raise ctx.bad_attr(f"'axes' {list(axes)} must have one entry per start "
                           f"({len(starts)})")
    if steps is None:
        steps = (1,) * len(starts)
    elif len(steps) != len(starts):
        raise ctx.bad_attr(f"'steps' {list(steps)} must have one entry per start "
                           f"({len(starts)})")
    if 0 in steps:
        raise ctx.bad_attr(f"attribute 'steps' = {list(steps)}: a step cannot be 0")
    return list(zip(_axes_list(ctx, axes, rank), starts, ends, steps))


def _full_symbolic_slice(start: int, end: int, step: int) -> bool:
    """Whether (start, end, step) keeps every element of an axis of any size (in order or
    reversed), so a symbolic dim survives it."""
    if step == 1:
        return (start == 0 or start <= -HUGE) and end >= HUGE
    if step == -1:
        return (start == -1 or start >= HUGE) and end <= -HUGE
    return False


def _slice_infer(ctx: InferContext) -> TensorType:
    x = ctx.input(0)
    shape = list(x.shape)
    for axis, start, end, step in slice_plan(ctx, x.rank):
        dim = shape[axis]
        if isinstance(dim, str):
            if not _full_symbolic_slice(start, end, step):
                raise ctx.fail(f"cannot slice the symbolic axis {axis} ({dim!r}) with start "
                               f"{start}, end {end}, step {step}: the result would depend on "
                               f"its value (only a full slice, 0 to INT_MAX with step 1 or "
                               f"-1 to INT_MIN with step -1, keeps it)")
            continue
        _, _, count = slice_range(start, end, step, dim)
        if count == 0:
            raise ctx.fail(f"slice start {start}, end {end}, step {step} selects nothing on "
                           f"axis {axis} of size {dim} (empty tensors are not supported)")
        shape[axis] = count
    return x.with_shape(shape)


def _slice_reference(inputs: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    x = inputs[0]
    index: list[slice] = [slice(None)] * x.ndim
    for axis, start, end, step in slice_plan(_ctx("Slice", x, attrs), x.ndim):
        s, e, _ = slice_range(start, end, step, x.shape[axis])
        index[axis] = slice(s, None if e < 0 else e, step)
    return x[tuple(index)].copy()


SLICE = register(OpDef(
    name="Slice",
    doc="x[start:end:step] on the given axes, with ONNX's clamping of out-of-range bounds",
    inputs=(Input("data"),),
    attrs=(
        Attr("starts", "ints", doc="first index per sliced axis (negative counts from the end)"),
        Attr("ends", "ints", doc="end (exclusive) per sliced axis; INT_MAX / INT_MIN slice "
             "to the end"),
        Attr("axes", "ints", None, "the sliced axes (default 0, 1, ..., len(starts) - 1)"),
        Attr("steps", "ints", None, "stride per sliced axis, non-zero (default 1)"),
    ),
    infer=_slice_infer,
    reference=_slice_reference,
    fusion=FusionKind.INJECTIVE,
))


# ---------------------------------------------------------------------------------- Gather
def _gather_infer(ctx: InferContext) -> TensorType:
    data, indices = ctx.input(0), ctx.input(1)
    if data.rank == 0:
        raise ctx.fail("Gather needs data of rank >= 1, got a scalar")
    if indices.dtype is not DType.int64:
        raise ctx.fail(f"indices must be int64, got {indices.dtype}")
    axis = normalize_axis(ctx, ctx["axis"], data.rank)
    return data.with_shape(data.shape[:axis] + indices.shape + data.shape[axis + 1:])


def _gather_reference(inputs: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    data, indices = inputs[0], inputs[1]
    axis = normalize_axis(_ctx("Gather", data, attrs), attrs["axis"], data.ndim)
    n = data.shape[axis]
    bad = (indices < -n) | (indices >= n)
    if np.any(bad):
        raise _ctx("Gather", data, attrs).fail(
            f"index {int(indices[bad].flat[0])} is out of range for axis {axis} of size {n}")
    return np.take(data, indices, axis=axis)


GATHER = register(OpDef(
    name="Gather",
    doc="pick entries of data along one axis by int64 indices (negative count from the end); "
        "out shape = data.shape[:axis] + indices.shape + data.shape[axis+1:]",
    inputs=(Input("data"), Input("indices")),
    attrs=(Attr("axis", "int", 0, "the axis indexed (negative counts from the end)"),),
    infer=_gather_infer,
    reference=_gather_reference,
    fusion=FusionKind.INJECTIVE,
))


# ---------------------------------------------------------------------------------- Expand
def _all_positive(values: tuple[int, ...]) -> str | None:
    if any(v < 1 for v in values):
        return "every entry must be >= 1 (empty tensors are not supported)"
    return None


def _expand_infer(ctx: InferContext) -> TensorType:
    x = ctx.input(0)
    return x.with_shape(broadcast_shapes(ctx, x.shape, ctx["shape"]))


def _expand_reference(inputs: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    x = inputs[0]
    return np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(attrs["shape"]))).copy()


EXPAND = register(OpDef(
    name="Expand",
    doc="broadcast the input against 'shape' (numpy rule, both ways: a 1 in 'shape' keeps "
        "the input's dim)",
    inputs=(Input("input"),),
    attrs=(Attr("shape", "ints", doc="the shape to broadcast with", check=_all_positive),),
    infer=_expand_infer,
    reference=_expand_reference,
    fusion=FusionKind.INJECTIVE,
))


# ------------------------------------------------------------------------------------ Tile
def _tile_infer(ctx: InferContext) -> TensorType:
    x = ctx.input(0)
    repeats = ctx["repeats"]
    if len(repeats) != x.rank:
        raise ctx.bad_attr(f"attribute 'repeats' = {list(repeats)} must have one entry per "
                           f"input axis ({x.rank})")
    out: list[Dim] = []
    for i, (d, r) in enumerate(zip(x.shape, repeats)):
        if isinstance(d, str) and r != 1:
            raise ctx.fail(f"cannot repeat the symbolic axis {i} ({d!r}) {r} times: "
                           f"{r} x {d} is not a shape dimension")
        out.append(d if isinstance(d, str) else d * r)
    return x.with_shape(out)


TILE = register(OpDef(
    name="Tile",
    doc="repeat the whole tensor repeats[i] times along each axis i",
    inputs=(Input("input"),),
    attrs=(Attr("repeats", "ints", doc="repetitions per axis", check=_all_positive),),
    infer=_tile_infer,
    reference=lambda inputs, attrs: np.tile(inputs[0], tuple(attrs["repeats"])),
    fusion=FusionKind.INJECTIVE,
))


# ------------------------------------------------------------------------------------ Cast
def _cast_scalar(xs: list, attrs: dict[str, Any]):
    """The kernel IR's Cast converts like the reference: float -> int64 truncates, -> bool is
    != 0 (NaN is true)."""
    from cnncompiler.kernel.lower import DTYPES  # lazily: lower imports the graph IR

    return K.Cast(xs[0], DTYPES[attrs["to"]])


def _cast_reference(inputs: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    # float -> int64 truncates toward zero (C semantics), anything -> bool is "!= 0"
    return inputs[0].astype(DType(attrs["to"]).numpy)


CAST = register(OpDef(
    name="Cast",
    doc="convert the element type (float -> int64 truncates toward zero; -> bool is != 0)",
    inputs=(Input("input"),),
    attrs=(Attr("to", "str", doc="the target dtype", choices=DTYPE_NAMES),),
    infer=lambda ctx: ctx.input(0).with_dtype(ctx["to"]),
    reference=_cast_reference,
    fusion=FusionKind.ELEMENTWISE,
    scalar=_cast_scalar,
))


# ----------------------------------------------------------------------------------- Shape
def shape_bounds(ctx: InferContext, rank: int) -> tuple[int, int]:
    """ONNX's [start, end) over the axes: negative adds the rank, then clamp to [0, rank]."""
    def clamp(v: int) -> int:
        return min(max(v + rank if v < 0 else v, 0), rank)
    end = ctx["end"]
    return clamp(ctx["start"]), rank if end is None else clamp(end)


def _shape_infer(ctx: InferContext) -> TensorType:
    x = ctx.input(0)
    start, end = shape_bounds(ctx, x.rank)
    if end <= start:
        raise ctx.fail(f"start {ctx['start']} and end {ctx['end']} select no axis of the "
                       f"rank-{x.rank} input (empty tensors are not supported)")
    dims = x.shape[start:end]
    if any(isinstance(d, str) for d in dims):
        raise ctx.fail(f"the shape {list(dims)} is not static (it holds a symbolic dim), so it "
                       "cannot be a constant tensor; evaluate it at run time instead")
    return TensorType((end - start,), DType.int64)


def _shape_reference(inputs: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    x = inputs[0]
    start, end = shape_bounds(_ctx("Shape", x, attrs), x.ndim)
    return np.array(x.shape[start:end], dtype=np.int64)


SHAPE = register(OpDef(
    name="Shape",
    doc="the input's shape (axes start..end) as a 1-D int64 tensor; needs static dims",
    inputs=(Input("data"),),
    attrs=(
        Attr("start", "int", 0, "first axis (negative counts from the end; clamped)"),
        Attr("end", "int", None, "end axis, exclusive (default: the rank; clamped)"),
    ),
    infer=_shape_infer,
    reference=_shape_reference,
    fusion=FusionKind.OPAQUE,  # reads no element: a constant once shapes are known
))


# ------------------------------------------------------------------------- ConstantOfShape
def _constant_value(ctx: InferContext) -> DType:
    dtype = DType(ctx["dtype"])
    value = ctx["value"]
    if dtype is DType.int64 and not float(value).is_integer():
        raise ctx.bad_attr(f"attribute 'value' = {value} is not an integer, but the dtype "
                           "is int64")
    if dtype is DType.bool and value not in (0.0, 1.0):
        raise ctx.bad_attr(f"attribute 'value' = {value} must be 0 or 1 for dtype bool")
    return dtype


def _constant_of_shape_infer(ctx: InferContext) -> TensorType:
    return TensorType(tuple(ctx["shape"]), _constant_value(ctx))


def _constant_of_shape_reference(inputs: list[np.ndarray | None], attrs: dict[str, Any]
                                 ) -> np.ndarray:
    dtype = DType(attrs["dtype"]).numpy
    return np.full(tuple(attrs["shape"]), np.array(attrs["value"]).astype(dtype), dtype=dtype)


CONSTANT_OF_SHAPE = register(OpDef(
    name="ConstantOfShape",
    doc="a tensor of the given shape filled with one value (no inputs)",
    inputs=(),
    attrs=(
        Attr("shape", "ints", doc="the output shape ([] for a scalar)",
             check=_all_positive),
        Attr("value", "float", 0.0, "the fill value"),
        Attr("dtype", "str", "float32", "the output dtype", choices=DTYPE_NAMES),
    ),
    infer=_constant_of_shape_infer,
    reference=_constant_of_shape_reference,
    fusion=FusionKind.INJECTIVE,
))


# ----------------------------------------------------------- DepthToSpace / SpaceToDepth
def _blocks_infer(ctx: InferContext, to_space: bool) -> TensorType:
    x = ctx.require_rank(0, 4, "input [N, C, H, W]")
    b = ctx["blocksize"]
    n, c, h, w = x.shape
    for axis, d in ((1, c), (2, h), (3, w)):
        if isinstance(d, str):
            raise ctx.fail(f"axis {axis} of {list(x.shape)} is the symbol {d!r}; "
                           f"{ctx.op} needs C, H and W static")
    if to_space:
        if c % (b * b):
            raise ctx.fail(f"channels {c} are not divisible by blocksize^2 = {b * b}")
        return x.with_shape((n, c // (b * b), h * b, w * b))
    if h % b or w % b:
        raise ctx.fail(f"height {h} and width {w} must be divisible by blocksize {b}")
    return x.with_shape((n, c * b * b, h // b, w // b))


def _depth_to_space(inputs: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    x, b = inputs[0], attrs["blocksize"]
    n, c, h, w = x.shape
    if attrs["mode"] == "DCR":  # channel index = (row * b + col) * C' + depth
        tmp = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:  # CRD: channel index = (depth * b + row) * b + col
        tmp = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return tmp.reshape(n, c // (b * b), h * b, w * b)


def _space_to_depth(inputs: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    x, b = inputs[0], attrs["blocksize"]
    n, c, h, w = x.shape
    tmp = x.reshape(n, c, h // b, b, w // b, b)
    perm = (0, 3, 5, 1, 2, 4) if attrs["mode"] == "DCR" else (0, 1, 3, 5, 2, 4)
    return tmp.transpose(perm).reshape(n, c * b * b, h // b, w // b)


BLOCK_ATTRS = (
    Attr("blocksize", "int", doc="side of the square blocks moved", check=lambda v: None
         if v >= 1 else "must be >= 1"),
    Attr("mode", "str", "DCR", "channel order: depth-column-row or column-row-depth",
         choices=("DCR", "CRD")),
)

DEPTH_TO_SPACE = register(OpDef(
    name="DepthToSpace",
    doc="move channel blocks into b x b spatial blocks: [N, C, H, W] -> [N, C/b^2, H*b, W*b] "
        "(pixel shuffle)",
    inputs=(Input("input"),),
    attrs=BLOCK_ATTRS,
    infer=lambda ctx: _blocks_infer(ctx, to_space=True),
    reference=_depth_to_space,
    fusion=FusionKind.INJECTIVE,
))
SPACE_TO_DEPTH = register(OpDef(
    name="SpaceToDepth",
    doc="move b x b spatial blocks into channels: [N, C, H, W] -> [N, C*b^2, H/b, W/b]",
    inputs=(Input("input"),),
    attrs=BLOCK_ATTRS,
    infer=lambda ctx: _blocks_infer(ctx, to_space=False),
    reference=_space_to_depth,
    fusion=FusionKind.INJECTIVE,
))


# ---------------------------------------------------------------------- gradients
# These ops move elements without computing: each gradient moves them back (Squeeze and
# Unsqueeze undo each other, Slice scatters into zeros, Expand and Tile sum the copies).
# Gather would need a scatter-add op and has no rule; Shape's output is an integer constant
# and passes nothing back.
def _squeeze_grad(b, node, grads):
    x = node.inputs[0]
    ctx = InferContext("Squeeze", node.name, [x.type], node.attrs)
    return [b.op("Unsqueeze", grads[0], axes=tuple(squeeze_axes(ctx, x.type.shape)))]


def _unsqueeze_grad(b, node, grads):
    y = node.outputs[0]
    ctx = InferContext("Unsqueeze", node.name, [node.inputs[0].type], node.attrs)
    return [b.op("Squeeze", grads[0], axes=tuple(_axes_list(ctx, node.attrs["axes"], y.type.rank)))]


def _slice_grad(b, node, grads):
    """The gradient put back where the slice took it, zeros elsewhere: per sliced axis a
    negative step is undone by reversing, a step k > 1 by interleaving k - 1 zeros after
    each element (Unsqueeze, Pad, Reshape), then Pad restores the skipped ends."""
    from cnncompiler.errors import UnsupportedError

    (g,), x = grads, node.inputs[0]
    ctx = InferContext("Slice", node.name, [x.type], node.attrs)
    for axis, start, end, step in slice_plan(ctx, x.type.rank):
        dim = x.type.shape[axis]
        if isinstance(dim, str):          # a full slice of a symbolic axis
            if step < 0:
                g = b.op("Slice", g, starts=(-1,), ends=(-HUGE,), axes=(axis,), steps=(-1,))
            continue
        first, _, count = slice_range(start, end, step, dim)
        if step < 0:                      # the same cells, in increasing order
            g = b.op("Slice", g, starts=(-1,), ends=(-HUGE,), axes=(axis,), steps=(-1,))
            first, step = first + (count - 1) * step, -step
        if step > 1 and count > 1:
            shape = g.type.shape
            if any(isinstance(d, str) for d in shape[axis + 1:]):
                raise UnsupportedError(f"node '{node.name}' (Slice): the gradient of a strided "
                                       "slice needs static dims after the sliced axis")
            rank = len(shape)
            spread = b.op("Unsqueeze", g, axes=(axis + 1,))
            pads = [0] * (2 * (rank + 1))
            pads[rank + 1 + axis + 1] = step - 1
            spread = b.op("Pad", spread, pads=tuple(pads))
            target = (*(0 for _ in range(axis)), count * step, *shape[axis + 1:])
            g = b.op("Reshape", spread, shape=target)
            covered = count * step
        else:
            covered = count
        before, after = first, dim - first - covered
        if before or after:
            rank = g.type.rank
            pads = [0] * (2 * rank)
            pads[axis], pads[rank + axis] = before, after
            g = b.op("Pad", g, pads=tuple(pads))
    return [g]


def _expand_grad(b, node, grads):
    from cnncompiler.ops.gradients import unbroadcast

    return [unbroadcast(b, grads[0], node.inputs[0])]


def _tile_grad(b, node, grads):
    """The copies summed: g viewed as [r0, d0, r1, d1, ...], reduced over the r axes."""
    from cnncompiler.errors import UnsupportedError

    (g,), x, repeats = grads, node.inputs[0], node.attrs["repeats"]
    if all(r == 1 for r in repeats):
        return [g]
    if any(isinstance(d, str) for d in x.type.shape):
        raise UnsupportedError(f"node '{node.name}' (Tile): the gradient needs static dims, "
                               f"got {list(x.type.shape)}")
    split = tuple(v for r, d in zip(repeats, x.type.shape) for v in (r, d))
    summed = b.op("ReduceSum", b.op("Reshape", g, shape=split),
                  axes=tuple(range(0, 2 * x.type.rank, 2)), keepdims=False)
    return [summed]


def _cast_grad(b, node, grads):
    """Cast back to the input's float type; nothing flows into or out of int or bool."""
    x = node.inputs[0]
    if not (x.type.dtype.is_float and node.outputs[0].type.dtype.is_float):
        return [None]
    g = grads[0]
    return [g if g.type.dtype == x.type.dtype else b.op("Cast", g, to=x.type.dtype.value)]


def _block_grad(inverse: str):
    """DepthToSpace and SpaceToDepth (same mode and blocksize) are inverse permutations, so
    each one's gradient is the other."""
    def grad(b, node, grads):
        attrs = {k: node.attrs[k] for k in ("blocksize", "mode")}
        return [b.op(inverse, grads[0], **attrs)]
    return grad


def _no_grad(b, node, grads):
    return [None] * len(node.inputs)


SQUEEZE.grad, UNSQUEEZE.grad, SLICE.grad = _squeeze_grad, _unsqueeze_grad, _slice_grad
EXPAND.grad, TILE.grad, CAST.grad, SHAPE.grad = _expand_grad, _tile_grad, _cast_grad, _no_grad
DEPTH_TO_SPACE.grad = _block_grad("SpaceToDepth")
SPACE_TO_DEPTH.grad = _block_grad("DepthToSpace")
