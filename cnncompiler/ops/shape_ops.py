"""Data movement ops: Concat, Split, Flatten, Reshape, Transpose, Pad (ONNX semantics).

None of them computes anything (0 FLOPs): each output element is one input element (or a pad
value), so they are INJECTIVE and fuse into their neighbours. What ONNX passes as tensor
inputs (shape, pads, split sizes) are attributes here: static in every CNN we compile.
A symbolic dim (the batch "N") is carried through when the result is still a whole number of
batches, and refused with the arithmetic when it is not.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cnncompiler.ir.types import Dim, TensorType
from cnncompiler.ops.opdef import Attr, FusionKind, InferContext, Input, OpDef
from cnncompiler.ops.registry import register


def normalize_axis(ctx: InferContext, axis: int, rank: int, name: str = "axis",
                   allow_end: bool = False) -> int:
    """``axis`` in [-rank, rank) (or up to rank inclusive with ``allow_end``) -> [0, rank)."""
    hi = rank + 1 if allow_end else rank
    if not -rank <= axis < hi:
        raise ctx.bad_attr(f"attribute '{name}' = {axis} is out of range for rank {rank} "
                           f"(expected {-rank} <= {name} <= {hi - 1})")
    return axis + rank if axis < 0 else axis


def _static_product(dims) -> tuple[int, list[str]]:
    """Product of the int dims and the list of symbolic ones."""
    return (math.prod(d for d in dims if isinstance(d, int)),
            [d for d in dims if isinstance(d, str)])


# ---------------------------------------------------------------------------------- Concat
def _concat_infer(ctx: InferContext) -> TensorType:
    if not ctx.inputs:
        raise ctx.fail("Concat needs at least one input, got none")
    types = [ctx.input(i) for i in range(len(ctx.inputs))]
    dtype = ctx.same_dtype(*range(len(types)))
    first = types[0]
    for i, t in enumerate(types[1:], 1):
        if t.rank != first.rank:
            raise ctx.fail(f"all inputs must have the same rank: input 0 is "
                           f"{list(first.shape)}, input {i} is {list(t.shape)}")
    if first.rank == 0:
        raise ctx.fail("Concat inputs must have rank >= 1, got scalars")
    axis = normalize_axis(ctx, ctx["axis"], first.rank)
    for i, t in enumerate(types[1:], 1):
        for d in range(first.rank):
            if d != axis and t.shape[d] != first.shape[d]:
                raise ctx.fail(f"inputs differ off the concat axis {axis}: input 0 is "
                               f"{list(first.shape)}, input {i} is {list(t.shape)} "
                               f"(dimension {d}: {first.shape[d]} vs {t.shape[d]})")
    sizes = [t.shape[axis] for t in types]
    if any(isinstance(s, str) for s in sizes):
        if len(types) > 1:
            raise ctx.fail(f"cannot concatenate along axis {axis}: its sizes {sizes} include "
                           "a symbolic dimension")
    total: Dim = sizes[0] if len(sizes) == 1 else sum(sizes)
    shape = list(first.shape)
    shape[axis] = total
    return TensorType(tuple(shape), dtype)


CONCAT = register(OpDef(
    name="Concat",
    doc="join tensors along one axis (every other dim must agree), e.g. Inception branches",
    inputs=(Input("inputs", variadic=True),),
    attrs=(Attr("axis", "int", doc="the axis to join along (negative counts from the end)"),),
    infer=_concat_infer,
    reference=lambda inputs, attrs: np.concatenate(inputs, axis=attrs["axis"]),
    fusion=FusionKind.INJECTIVE,
))


# ----------------------------------------------------------------------------------- Split
def split_sizes(ctx: InferContext, dim: int, num_outputs: int | None) -> list[int]:
    """Chunk sizes along the split axis: ``split``, or ``n`` chunks of ceil(dim/n) (last
    one smaller, ONNX opset 18) with n from ``num_outputs`` or the node's output count."""
    split, n_attr = ctx["split"], ctx["num_outputs"]
    if split is not None and n_attr is not None:
        raise ctx.bad_attr("give either 'split' or 'num_outputs', not both")
    if split is not None:
        if any(s < 0 for s in split):
            raise ctx.bad_attr(f"attribute 'split' = {list(split)} has negative sizes")
        if sum(split) != dim:
            raise ctx.fail(f"split sizes {list(split)} sum to {sum(split)}, but the axis has "
                           f"size {dim}")
        if num_outputs is not None and num_outputs != len(split):
            raise ctx.fail(f"split sizes {list(split)} make {len(split)} outputs, but the "
                           f"node has {num_outputs}")
        return list(split)
    n = n_attr if n_attr is not None else num_outputs
    if n is None:
        raise ctx.bad_attr("Split needs 'split' sizes, 'num_outputs', or a known number of "
                           "outputs")
    if n < 1:
        raise ctx.bad_attr(f"the number of outputs must be >= 1, got {n}")
    if num_outputs is not None and n != num_outputs:
        raise ctx.fail(f"num_outputs = {n}, but the node has {num_outputs} outputs")
    chunk = -(-dim // n)
    last = dim - chunk * (n - 1)
    if last <= 0:
        raise ctx.fail(f"cannot split size {dim} into {n} chunks of ceil({dim}/{n}) = "
                       f"{chunk}: the last chunk would have size {last}")
    return [chunk] * (n - 1) + [last]


def _split_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.input(0)
    if x.rank == 0:
        raise ctx.fail("cannot split a scalar")
    axis = normalize_axis(ctx, ctx["axis"], x.rank)
    dim = x.shape[axis]
    if isinstance(dim, str):
        raise ctx.fail(f"cannot split along axis {axis}: its size is the symbol {dim!r}")
    out = []
    for s in split_sizes(ctx, dim, ctx.num_outputs):
        shape = list(x.shape)
        shape[axis] = s
        out.append(x.with_shape(shape))
    return out


def _split_reference(inputs: list[np.ndarray | None], attrs: dict[str, Any]) -> tuple:
    x = inputs[0]
    ctx = InferContext("Split", "ref", [TensorType.of(x)], attrs)
    axis = normalize_axis(ctx, attrs["axis"], x.ndim)
    sizes = split_sizes(ctx, x.shape[axis], None)
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


SPLIT = register(OpDef(
    name="Split",
    doc="cut a tensor into pieces along one axis (sizes given, or n near-equal chunks)",
    inputs=(Input("input"),),
    attrs=(
        Attr("axis", "int", 0, "the axis to cut (negative counts from the end)"),
        Attr("split", "ints", None, "size of each piece"),
        Attr("num_outputs", "int", None, "number of near-equal pieces (last one smaller)"),
    ),
    infer=_split_infer,
    reference=_split_reference,
    fusion=FusionKind.INJECTIVE,
    outputs=("outputs",),
    variadic_outputs=True,
))


# --------------------------------------------------------------------------------- Flatten
def _merged(ctx: InferContext, dims: tuple[Dim, ...], side: str) -> Dim:
    static, symbols = _static_product(dims)
    if not symbols:
        return static
    if static == 1 and len(symbols) == 1:
        return symbols[0]
    raise ctx.fail(f"cannot flatten {side} dims {list(dims)} into one: the product of a "
                   f"symbolic {symbols[0]!r} and {static} is not a shape dimension "
                   "(flatten with the symbol alone on one side, e.g. axis=1 for [N, ...])")


def _flatten_infer(ctx: InferContext) -> TensorType:
    x = ctx.input(0)
    axis = normalize_axis(ctx, ctx["axis"], x.rank, allow_end=True)
    return x.with_shape((_merged(ctx, x.shape[:axis], "leading"),
                         _merged(ctx, x.shape[axis:], "trailing")))


def _flatten_reference(inputs: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    x = inputs[0]
    axis = attrs["axis"] + x.ndim if attrs["axis"] < 0 else attrs["axis"]
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


FLATTEN = register(OpDef(
    name="Flatten",
    doc="reshape to 2-D [prod(d[:axis]), prod(d[axis:])]: the conv -> fully connected hand-off",
    inputs=(Input("input"),),
    attrs=(Attr("axis", "int", 1, "dims before it form the rows, the rest the columns"),),
    infer=_flatten_infer,
    reference=_flatten_reference,
    fusion=FusionKind.INJECTIVE,
    view=True,
))


# --------------------------------------------------------------------------------- Reshape
def reshape_target(ctx: InferContext, in_shape: tuple[Dim, ...], shape: tuple[int, ...]
                   ) -> tuple[Dim, ...]:
    """The output shape of an ONNX Reshape: 0 copies the input dim, -1 is inferred."""
    if ctx["allowzero"] and 0 in shape:
        raise ctx.bad_attr(f"attribute 'shape' = {list(shape)} with allowzero=1 asks for an "
                           "empty tensor, which is not supported")
    if any(s < -1 for s in shape):
        raise ctx.bad_attr(f"attribute 'shape' = {list(shape)}: entries must be >= -1")
    if shape.count(-1) > 1:
        raise ctx.bad_attr(f"attribute 'shape' = {list(shape)} has more than one -1")
    out: list[Dim] = []
    for i, s in enumerate(shape):
        if s == 0:
            if i >= len(in_shape):
                raise ctx.bad_attr(f"attribute 'shape' = {list(shape)}: 0 at position {i} "
                                   f"copies an input dim, but the input {list(in_shape)} has "
                                   f"rank {len(in_shape)}")
            out.append(in_shape[i])
        else:
            out.append(s)
    in_static, in_syms = _static_product(in_shape)
    out_static, out_syms = _static_product([d for d in out if d != -1])
    what = f"cannot reshape {list(in_shape)} to {list(shape)}"
    if -1 in out:
        at = out.index(-1)
        if in_syms and not out_syms:
            # the -1 absorbs the symbol: fine if it stays a whole batch
            if in_static != out_static:
                raise ctx.fail(f"{what}: -1 would be {in_syms[0]}*{in_static}/{out_static}, "
                               f"not the symbol {in_syms[0]!r} alone; the static parts must "
                               f"match ({in_static} vs {out_static})")
            out[at] = in_syms[0]
            return tuple(out)
        if in_syms != out_syms:
            raise ctx.fail(f"{what}: the symbolic dim {in_syms or out_syms} must be kept "
                           "(copy it with 0)")
        if out_static == 0 or in_static % out_static:
            raise ctx.fail(f"{what}: {in_static} elements are not divisible by the "
                           f"{out_static} of the given dims, so -1 has no integer value")
        out[at] = in_static // out_static
        return tuple(out)
    if in_syms != out_syms:
        raise ctx.fail(f"{what}: the input has the symbolic dim {in_syms} and the output "
                       f"{out_syms} (copy the symbol with 0, or use -1 for it)")
    if in_static != out_static:
        extra = f" x {in_syms[0]}" if in_syms else ""
        raise ctx.fail(f"{what}: the input has {in_static}{extra} elements, the target "
                       f"{list(out)} has {out_static}{extra}")
    return tuple(out)


def _reshape_infer(ctx: InferContext) -> TensorType:
    x = ctx.input(0)
    return x.with_shape(reshape_target(ctx, x.shape, ctx["shape"]))


def _reshape_reference(inputs: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    x = inputs[0]
    ctx = InferContext("Reshape", "ref", [TensorType.of(x)], attrs)
    return x.reshape(reshape_target(ctx, x.shape, attrs["shape"]))


RESHAPE = register(OpDef(
    name="Reshape",
    doc="same elements, new shape; in 'shape' 0 copies the input dim and one -1 is inferred",
    inputs=(Input("data"),),
    attrs=(
        Attr("shape", "ints", doc="target shape (0 = copy the input dim, -1 = infer)"),
        Attr("allowzero", "int", 0, "ONNX: 1 makes 0 a literal zero size (unsupported)",
             choices=(0, 1)),
    ),
    infer=_reshape_infer,
    reference=_reshape_reference,
    fusion=FusionKind.INJECTIVE,
    view=True,
))


# ------------------------------------------------------------------------------- Transpose
def transpose_perm(ctx: InferContext, rank: int) -> tuple[int, ...]:
    perm = ctx["perm"]
    if perm is None:
        return tuple(reversed(range(rank)))
    if sorted(perm) != list(range(rank)):
        raise ctx.bad_attr(f"attribute 'perm' = {list(perm)} is not a permutation of "
                           f"{list(range(rank))} (the input has rank {rank})")
    return tuple(perm)


def _transpose_infer(ctx: InferContext) -> TensorType:
    x = ctx.input(0)
    return x.with_shape(tuple(x.shape[p] for p in transpose_perm(ctx, x.rank)))


def _transpose_reference(inputs: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    x = inputs[0]
    perm = attrs["perm"]
    return np.transpose(x, None if perm is None else tuple(perm))


TRANSPOSE = register(OpDef(
    name="Transpose",
    doc="permute the axes: output dim i is input dim perm[i] (default: reverse them)",
    inputs=(Input("data"),),
    attrs=(Attr("perm", "ints", None, "the axis order (default reversed)"),),
    infer=_transpose_infer,
    reference=_transpose_reference,
    fusion=FusionKind.INJECTIVE,
))


# ------------------------------------------------------------------------------------- Pad
PAD_MODES = ("constant", "reflect", "edge", "wrap")


def _pad_infer(ctx: InferContext) -> TensorType:
    x = ctx.input(0)
    pads, mode = ctx["pads"], ctx["mode"]
    r = x.rank
    if len(pads) != 2 * r:
        raise ctx.bad_attr(f"attribute 'pads' = {list(pads)} must have 2 * rank = {2 * r} "
                           "entries [x1_begin, x2_begin, ..., x1_end, x2_end, ...]")
    out: list[Dim] = []
    for i, d in enumerate(x.shape):
        begin, end = pads[i], pads[i + r]
        if isinstance(d, str):
            if begin or end:
                raise ctx.fail(f"cannot pad the symbolic axis {i} ({d!r}) by "
                               f"({begin}, {end}); its pads must be 0")
            out.append(d)
            continue
        size = d + begin + end
        if size <= 0:
            raise ctx.fail(f"axis {i}: {d} + {begin} + {end} = {size} leaves nothing")
        kept = d + min(begin, 0) + min(end, 0)
        if mode == "reflect" and max(begin, end) > kept - 1:
            raise ctx.fail(f"axis {i}: reflect padding ({begin}, {end}) must be < the size "
                           f"{kept} it reflects")
        if mode in ("edge", "wrap") and max(begin, end) > 0 and kept < 1:
            raise ctx.fail(f"axis {i}: {mode} padding needs a non-empty axis after cropping")
        if mode == "wrap" and max(begin, end) > kept:
            raise ctx.fail(f"axis {i}: wrap padding ({begin}, {end}) must be <= the size {kept}")
        out.append(size)
    return x.with_shape(tuple(out))


def _pad_reference(inputs: list[np.ndarray | None], attrs: dict[str, Any]) -> np.ndarray:
    x = inputs[0]
    pads, mode, r = attrs["pads"], attrs["mode"], x.ndim
    # negative pads crop first; the rest is padded from what remains
    crop = tuple(slice(max(-pads[i], 0), x.shape[i] - max(-pads[i + r], 0)) for i in range(r))
    x = x[crop]
    width = tuple((max(pads[i], 0), max(pads[i + r], 0)) for i in range(r))
    if mode == "constant":
        return np.pad(x, width, mode="constant", constant_values=attrs["value"])
    return np.pad(x, width, mode=mode)


PAD = register(OpDef(
    name="Pad",
    doc="pad (or, with negative pads, crop) each axis: constant value, reflection, edge "
        "replication or wrap-around",
    inputs=(Input("data"),),
    attrs=(
        Attr("pads", "ints", doc="[x1_begin, x2_begin, ..., x1_end, x2_end, ...]; "
             "negative crops"),
        Attr("mode", "str", "constant", "how to fill", choices=PAD_MODES),
        Attr("value", "float", 0.0, "the fill value of constant mode"),
    ),
    infer=_pad_infer,
    reference=_pad_reference,
    fusion=FusionKind.INJECTIVE,
))


# ---------------------------------------------------------------------- gradients
def _reshape_back(b, node, grads):
    """Flatten/Reshape: the gradient is the output gradient in the input's shape (a
    symbolic batch dim is copied from the gradient)."""
    (g,), x = grads, node.inputs[0]
    shape = tuple(0 if isinstance(d, str) else d for d in x.type.shape)
    return [b.op("Reshape", g, shape=shape)] + [None] * (len(node.inputs) - 1)


def _transpose_grad(b, node, grads):
    perm = node.attrs["perm"] or tuple(reversed(range(node.inputs[0].type.rank)))
    inverse = tuple(sorted(range(len(perm)), key=lambda i: perm[i]))
    return [b.op("Transpose", grads[0], perm=inverse)]


FLATTEN.grad = RESHAPE.grad = _reshape_back
TRANSPOSE.grad = _transpose_grad


def _concat_grad(b, node, grads):
    """The output gradient cut back into the inputs' extents along the axis."""
    (g,), axis = grads, node.attrs["axis"]
    sizes = [v.type.shape[axis] for v in node.inputs]
    if len(sizes) == 1:
        return [g]
    return b.add_node("Split", [g], {"axis": axis, "split": tuple(sizes)})


def _split_grad(b, node, grads):
    """The pieces' gradients joined again; a piece that does not reach the loss adds
    zeros of its shape."""
    from cnncompiler.ops.gradients import scalar

    parts = [g if g is not None else b.op("Mul", v, scalar(b, 0.0, v))
             for g, v in zip(grads, node.outputs)]
    return [b.op("Concat", *parts, axis=node.attrs["axis"])]


def _pad_grad(b, node, grads):
    """Constant padding: the gradient is the output gradient with the padding cut off."""
    from cnncompiler.errors import UnsupportedError

    if node.attrs["mode"] != "constant":
        raise UnsupportedError(f"node '{node.name}' (Pad): the gradient of mode "
                               f"{node.attrs['mode']!r} is not implemented yet")
    (g,), x, pads = grads, node.inputs[0], node.attrs["pads"]
    rank = x.type.rank
    axes = tuple(d for d in range(rank) if pads[d] or pads[rank + d])
    if not axes:
        return [g]
    starts = tuple(pads[d] for d in axes)
    ends = tuple(pads[d] + x.type.shape[d] for d in axes)
    return [b.op("Slice", g, starts=starts, ends=ends, axes=axes)]


CONCAT.grad, SPLIT.grad, PAD.grad = _concat_grad, _split_grad, _pad_grad
