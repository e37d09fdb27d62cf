"""Lowerings of the tensor plumbing ops (Slice, Split, Expand, Tile, Gather, DepthToSpace,
Shape...): each output element reads one input element, at an index the op's own
attribute arithmetic gives."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cnncompiler.ir.graph import Node
from cnncompiler.kernel import ir as K
from cnncompiler.kernel.common import (
    Element,
    constant,
    infer_context,
    kdtype,
    shape_of,
)

if TYPE_CHECKING:
    from cnncompiler.kernel.lower import KernelBuilder


def lower_slice(kb: KernelBuilder, node: Node, idx: list[K.Expr]) -> Element:
    """A sliced axis reads start + i * step, with ONNX's clamped start."""
    from cnncompiler.ops.tensor_ops import slice_plan, slice_range

    x = node.inputs[0]
    xs = shape_of(x)
    local = list(idx)
    for axis, start, end, step in slice_plan(infer_context(node), len(xs)):
        first, _, _ = slice_range(start, end, step, xs[axis])
        e = idx[axis] * step if step != 1 else idx[axis]
        local[axis] = e + first if first else e
    return kb.element(x, local)


def lower_split(kb: KernelBuilder, node: Node, k: int, idx: list[K.Expr]) -> Element:
    """Output ``k`` of Split is the input's slice along the axis that starts after the
    earlier outputs."""
    x = node.inputs[0]
    axis = node.attrs["axis"] % len(shape_of(x))
    offset = sum(shape_of(node.outputs[j])[axis] for j in range(k))
    local = list(idx)
    if offset:
        local[axis] = idx[axis] + offset
    return kb.element(x, local)


def broadcast_index(shape: tuple[int, ...], idx: list[K.Expr]) -> list[K.Expr]:
    """Where an operand of ``shape`` is read for output index ``idx`` (numpy broadcasting)."""
    offset = len(idx) - len(shape)
    return [K.Const(0) if shape[d] == 1 else idx[offset + d] for d in range(len(shape))]


def lower_expand(kb: KernelBuilder, node: Node, idx: list[K.Expr]) -> Element:
    x = node.inputs[0]
    return kb.element(x, broadcast_index(shape_of(x), idx))


def lower_tile(kb: KernelBuilder, node: Node, idx: list[K.Expr]) -> Element:
    x = node.inputs[0]
    xs = shape_of(x)
    reps = node.attrs["repeats"]
    return kb.element(x, [i % s if r != 1 else i for i, s, r in zip(idx, xs, reps)])


def lower_depth_to_space(kb: KernelBuilder, node: Node, idx: list[K.Expr]) -> Element:
    """out[n, c, h*b + i, w*b + j] reads channel (i*b + j)*C_out + c (DCR) or
    (c*b + i)*b + j (CRD) of x[n, :, h, w]."""
    b = node.attrs["blocksize"]
    c_out = shape_of(node.outputs[0])[1]
    n, c, oh, ow = idx
    i, j = oh % b, ow % b
    if node.attrs["mode"] == "DCR":
        chan = (i * b + j) * c_out + c
    else:
        chan = (c * b + i) * b + j
    return kb.element(node.inputs[0], [n, chan, oh // b, ow // b])


def lower_space_to_depth(kb: KernelBuilder, node: Node, idx: list[K.Expr]) -> Element:
    """The inverse move: out channel (i*b + j)*C + c (DCR) or (c*b + i)*b + j (CRD) at
    (h, w) reads x[n, c, h*b + i, w*b + j]."""
    x = node.inputs[0]
    b = node.attrs["blocksize"]
    c_in = shape_of(x)[1]
    n, oc, h, w = idx
    if node.attrs["mode"] == "DCR":
        c, i, j = oc % c_in, oc // c_in // b, oc // c_in % b
    else:
        c, i, j = oc // (b * b), oc // b % b, oc % b
    return kb.element(x, [n, c, h * b + i, w * b + j])


def lower_gather(kb: KernelBuilder, node: Node, idx: list[K.Expr]) -> Element:
    """data[..., indices[...], ...]: the index is read per element; (i + n) % n wraps negative
    indices and keeps any other into the axis, so a bad run-time index never reads outside
    the buffer (the reference raises on those; a kernel cannot)."""
    data, indices = node.inputs[0], node.inputs[1]
    ds, rank_i = shape_of(data), len(shape_of(indices))
    axis = node.attrs["axis"] % len(ds)
    si, i = kb.element(indices, idx[axis:axis + rank_i])
    n = ds[axis]
    sd, v = kb.element(data, [*idx[:axis], (i + n) % n, *idx[axis + rank_i:]])
    return si + sd, v


def lower_shape(kb: KernelBuilder, node: Node, idx: list[K.Expr]) -> Element:
    """The (now concrete) dims of the input, from a compile-time table."""
    from cnncompiler.ops.tensor_ops import shape_bounds

    xs = shape_of(node.inputs[0])
    start, end = shape_bounds(infer_context(node), len(xs))
    return [], K.Load(kb.table("shape", xs[start:end]), idx[0])


def lower_constant_of_shape(kb: KernelBuilder, node: Node, idx: list[K.Expr]) -> Element:
    return [], constant(node.attrs["value"], kdtype(node.outputs[0]))
