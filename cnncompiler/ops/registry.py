"""The op registry: name -> :class:`OpDef`, and the helpers every pass calls through it."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any

from cnncompiler.errors import ShapeError, UnsupportedError
from cnncompiler.ir.types import TensorType
from cnncompiler.ops.opdef import Cost, InferContext, OpDef

_OPS: dict[str, OpDef] = {}


def register(opdef: OpDef) -> OpDef:
    if opdef.name in _OPS:
        raise ValueError(f"op {opdef.name} is defined twice")
    opdef.module = _defining_module()
    _OPS[opdef.name] = opdef
    return opdef


def _defining_module() -> str:
    """The module whose top-level code registers the op (through helpers such as ``unary``)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_name != "<module>":
        frame = frame.f_back
    return frame.f_globals.get("__name__", "") if frame is not None else ""


def get_op(name: str) -> OpDef:
    _load_builtin_ops()
    try:
        return _OPS[name]
    except KeyError:
        raise UnsupportedError(f"unknown op {name!r}; known ops: {', '.join(sorted(_OPS))}") \
            from None


def all_ops() -> dict[str, OpDef]:
    _load_builtin_ops()
    return dict(sorted(_OPS.items()))


def _load_builtin_ops() -> None:
    import cnncompiler.ops  # noqa: F401  (importing the package registers every op)


def infer_node(op: str, inputs: list[TensorType | None], attrs: Mapping[str, Any], node: str,
               num_outputs: int | None = None) -> list[TensorType]:
    """Output types of ``op`` applied to ``inputs`` (attrs are validated and completed)."""
    opdef = get_op(op)
    opdef.check_arity(len(inputs), node)
    full = opdef.normalize_attrs(dict(attrs), node)
    ctx = InferContext(op, node, list(inputs), full, num_outputs)
    out = opdef.infer(ctx)
    out = [out] if isinstance(out, TensorType) else list(out)
    for t in out:
        if any(isinstance(d, int) and d <= 0 for d in t.shape):
            raise ShapeError(f"output shape {list(t.shape)} has a non-positive dimension", node, op)
    return out


def node_cost(node, batch: int = 1) -> Cost:
    """FLOPs, trainable parameters read and bytes moved by ``node`` with the batch bound."""
    from cnncompiler.ir.graph import ValueKind

    def concrete(t: TensorType | None) -> TensorType | None:
        return None if t is None else t.with_shape(t.concrete(default=batch))

    ctx = InferContext(node.op, node.name, [concrete(v.type if v else None) for v in node.inputs],
                       node.attrs, len(node.outputs), [concrete(v.type) for v in node.outputs])
    flops = int(node.opdef.flops(ctx))
    params = sum(v.type.numel() for v in node.inputs
                 if v is not None and v.kind is ValueKind.PARAM)
    moved = sum(t.nbytes() for t in ctx.inputs if t is not None)
    moved += sum(t.nbytes() for t in ctx.outputs)
    return Cost(flops, params, moved)


def numel(shape) -> int:
    return math.prod(shape)
