"""Small pieces every lowering shares: kernel dtypes and shapes of graph values, index
guards, constants, and the op's own shape arithmetic on concrete types."""

from __future__ import annotations

from cnncompiler.errors import UnsupportedError
from cnncompiler.ir.graph import Node, Value
from cnncompiler.kernel import ir as K

DTYPES = {"float32": "f32", "float64": "f64", "int64": "i64", "bool": "i1"}
Element = tuple[list[K.Stmt], K.Expr]


def kdtype(v: Value) -> str:
    return DTYPES[v.type.dtype.value]


def shape_of(v: Value) -> tuple[int, ...]:
    if not v.type.is_static:
        raise UnsupportedError(f"value {v.name!r} has a symbolic shape {v.type}; bind the batch")
    return v.type.shape


def clamp(e: K.Expr, size: int) -> K.Expr:
    return K.maximum(K.minimum(e, size - 1), 0)


def in_range(e: K.Expr, size: int) -> K.Expr:
    return K.Bin("and", e.ge(0), e.lt(size))


def all_of(conds: list[K.Expr]) -> K.Expr | None:
    out = None
    for c in conds:
        out = c if out is None else K.Bin("and", out, c)
    return out


def window_needs_checks(node: Node, x_shape: tuple, out_shape: tuple, kernel: tuple) -> bool:
    """Whether a 2-D window op (conv, pool) reads outside its input anywhere: padding, or
    a last window running past the edge. Without that its taps need no bounds guards."""
    a = node.attrs
    dh, dw = a.get("dilations") or (1, 1)
    last_h = (out_shape[2] - 1) * a["strides"][0] + (kernel[0] - 1) * dh - a["pads"][0]
    last_w = (out_shape[3] - 1) * a["strides"][1] + (kernel[1] - 1) * dw - a["pads"][1]
    return any(a["pads"][:2]) or last_h >= x_shape[2] or last_w >= x_shape[3]


def constant(value: float, dtype: str) -> K.Expr:
    """``value`` as a kernel constant of ``dtype`` (bools are 0/1 of type i1)."""
    if dtype == "i1":
        return K.Const(int(bool(value)), "i1")
    return K.Const(float(value) if dtype in ("f32", "f64") else int(value), dtype)


def infer_context(node: Node):
    """The op's own InferContext on the node's now concrete input types, so a lowering reuses
    the op's attribute arithmetic (slice bounds, reduced axes) instead of repeating it."""
    from cnncompiler.ir.types import TensorType
    from cnncompiler.ops.opdef import InferContext

    types = [None if v is None else TensorType(shape_of(v), v.type.dtype) for v in node.inputs]
    return InferContext(node.op, node.name, types, node.attrs)
