"""Shared test helpers: run one op's reference, compare relative error."""

from __future__ import annotations

import numpy as np

from cnncompiler.ops.registry import get_op


def run_ref(op: str, inputs, **attrs):
    """Run op's reference with validated/defaulted attrs; return a tuple of outputs."""
    opdef = get_op(op)
    out = opdef.reference(list(inputs), opdef.normalize_attrs(attrs, "test"))
    return out if isinstance(out, tuple) else (out,)


def rel_err(out, ref) -> float:
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-300))
