"""Layouts in the op set: the ``LayoutTransform`` op and the ``layout`` attribute.

``LayoutTransform(X) {src, dst}`` re-lays a 4-D activation from one physical layout to another
(NCHW, NHWC, NCHW{x}c; see :mod:`cnncompiler.ir.layout`): the logical tensor is unchanged.

Ops whose kernels a backend may want in another layout (Conv, the pools, BatchNormalization)
carry an optional ``layout`` attribute (absent = NCHW). Their definitions stay written for
NCHW; :func:`layout_infer`, :func:`layout_reference` and :func:`layout_flops` wrap them so
that input X and output Y are physical tensors in ``layout`` (weights, bias and per-channel
parameters stay in their logical form: packing weights is the backend's business). The
reference converts X to NCHW, runs the NCHW reference and converts back: exact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from cnncompiler.ir.layout import Layout, convert, layout_problem, parse_layout
from cnncompiler.ir.types import TensorType
from cnncompiler.ops.opdef import Attr, FusionKind, InferContext, Input, OpDef, no_flops
from cnncompiler.ops.registry import register

LAYOUT_ATTR = Attr("layout", "str", None,
                   "physical layout of X and Y: NCHW (absent), NHWC or NCHW{x}c such as "
                   "NCHW8c; weights stay logical", check=layout_problem)


X_LAYOUT_ATTR = Attr("x_layout", "str", None,
                     "physical layout of X when it differs from `layout` (Y's): a conv can "
                     "read a 3-channel NCHW image and write NCHW8c", check=layout_problem)


def node_layout(attrs: dict[str, Any]) -> Layout:
    """The layout an op with a ``layout`` attribute runs in (NCHW when absent): Y's."""
    return parse_layout(attrs.get("layout"))


def input_layout(attrs: dict[str, Any]) -> Layout:
    """The layout X is read in: ``x_layout`` where the op has one and it is set, else
    ``layout``."""
    return parse_layout(attrs.get("x_layout") or attrs.get("layout"))


def _logical(ctx: InferContext, lay: Layout, t: TensorType | None, what: str) -> TensorType:
    if t is None:
        raise ctx.fail(f"{what} is required")
    try:
        return t.with_shape(lay.logical_shape(t.shape))
    except ValueError as e:
        raise ctx.fail(f"{what} in layout {lay}: {e}") from None


def layout_infer(infer: Callable[[InferContext], Any]) -> Callable[[InferContext], Any]:
    """``infer`` of an NCHW op, made to read X and give Y in the node's ``layout``."""

    def wrapped(ctx: InferContext) -> Any:
        lay, xlay = node_layout(ctx.attrs), input_layout(ctx.attrs)
        if lay.is_nchw and xlay.is_nchw:
            return infer(ctx)
        x = _logical(ctx, xlay, ctx.inputs[0] if ctx.inputs else None, "input X")
        out = infer(InferContext(ctx.op, ctx.node, [x, *ctx.inputs[1:]], ctx.attrs,
                                 ctx.num_outputs))
        y = out if isinstance(out, TensorType) else out[0]
        try:
            y = y.with_shape(lay.physical_shape(y.shape))
        except ValueError as e:
            raise ctx.fail(f"output Y [N, C, H, W] = {list(y.shape)}: {e}") from None
        return y if isinstance(out, TensorType) else [y, *out[1:]]

    wrapped.__doc__ = infer.__doc__
    return wrapped


def layout_reference(reference: Callable[[list, dict[str, Any]], Any]
                     ) -> Callable[[list, dict[str, Any]], Any]:
    """``reference`` of an NCHW op, run on X and Y in the node's ``layout`` (exact)."""

    def wrapped(inputs: list, attrs: dict[str, Any]) -> Any:
        lay, xlay = node_layout(attrs), input_layout(attrs)
        if lay.is_nchw and xlay.is_nchw:
            return reference(inputs, attrs)
        y = reference([xlay.to_logical(inputs[0]), *inputs[1:]], attrs)
        return lay.to_physical(np.asarray(y))

    wrapped.__doc__ = reference.__doc__
    return wrapped


def layout_flops(flops: Callable[[InferContext], int]) -> Callable[[InferContext], int]:
    """``flops`` of an NCHW op, read off logical shapes."""

    def wrapped(ctx: InferContext) -> int:
        lay, xlay = node_layout(ctx.attrs), input_layout(ctx.attrs)
        if lay.is_nchw and xlay.is_nchw:
            return flops(ctx)
        x = _logical(ctx, xlay, ctx.inputs[0] if ctx.inputs else None, "input X")
        y = _logical(ctx, lay, ctx.outputs[0] if ctx.outputs else None, "output Y")
        return flops(InferContext(ctx.op, ctx.node, [x, *ctx.inputs[1:]], ctx.attrs,
                                  ctx.num_outputs, [y, *ctx.outputs[1:]]))

    return wrapped


# ------------------------------------------------------------------------- LayoutTransform
def _transform_infer(ctx: InferContext) -> TensorType:
    x = ctx.input(0)
    src, dst = parse_layout(ctx["src"]), parse_layout(ctx["dst"])
    logical = _logical(ctx, src, x, "input")
    try:
        return x.with_shape(dst.physical_shape(logical.shape))
    except ValueError as e:
        raise ctx.fail(f"cannot convert [N, C, H, W] = {list(logical.shape)} to {dst}: {e}") \
            from None


LAYOUT_TRANSFORM = register(OpDef(
    name="LayoutTransform",
    doc="re-lays a 4-D activation from layout `src` to layout `dst` (NCHW, NHWC, NCHW{x}c); "
        "the logical tensor is unchanged",
    inputs=(Input("X"),),
    attrs=(Attr("src", "str", doc="layout of X", check=layout_problem),
           Attr("dst", "str", doc="layout of Y", check=layout_problem)),
    infer=_transform_infer,
    reference=lambda inputs, a: np.array(convert(inputs[0], a["src"], a["dst"])),
    flops=no_flops,
    fusion=FusionKind.INJECTIVE,
))
