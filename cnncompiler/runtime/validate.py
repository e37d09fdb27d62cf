"""Input validation at the model boundary: no backend ever sees a wrong shape, dtype or layout."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cnncompiler.errors import InputError
from cnncompiler.ir.graph import Value


def bind_inputs(inputs: Sequence[Value], args: Sequence[Any], kwargs: Mapping[str, Any]
                ) -> tuple[list[np.ndarray], dict[str, int]]:
    """Match positional/named arrays to graph inputs; check and return them C-contiguous,
    with the values of symbolic dims (e.g. {"N": 8})."""
    names = [v.name for v in inputs]
    if args and kwargs:
        raise InputError("pass inputs either positionally or by name, not both")
    if args:
        if len(args) != len(inputs):
            raise InputError(f"the model takes {len(inputs)} input(s) ({', '.join(names)}), "
                             f"got {len(args)}")
        given = dict(zip(names, args))
    else:
        unknown = sorted(set(kwargs) - set(names))
        missing = [n for n in names if n not in kwargs]
        if unknown or missing:
            parts = []
            if unknown:
                parts.append(f"unknown input(s) {unknown}")
            if missing:
                parts.append(f"missing input(s) {missing}")
            raise InputError("; ".join(parts) + f"; the model's inputs are {names}")
        given = dict(kwargs)
    bindings: dict[str, int] = {}
    arrays = []
    for v in inputs:
        arrays.append(_check(v, given[v.name], bindings))
    return arrays, bindings


def _check(v: Value, x: Any, bindings: dict[str, int]) -> np.ndarray:
    want = v.type.dtype.numpy
    if isinstance(x, np.ndarray):
        if x.dtype != want:
            raise InputError(f"input '{v.name}' has dtype {x.dtype}, the model expects {want}; "
                             f"convert it with .astype(np.{want})")
    else:
        try:
            x = np.asarray(x, dtype=want)
        except (TypeError, ValueError) as e:
            raise InputError(f"input '{v.name}' cannot be read as a {want} array: {e}") from None
    expected = v.type.shape
    if x.ndim != len(expected):
        raise InputError(f"input '{v.name}' has shape {list(x.shape)} (rank {x.ndim}), the model "
                         f"expects {_fmt(expected)} (rank {len(expected)})")
    for axis, (got, dim) in enumerate(zip(x.shape, expected)):
        if isinstance(dim, str):
            if got < 1:
                raise InputError(f"input '{v.name}': dimension {axis} ({dim}) must be >= 1")
            if bindings.setdefault(dim, got) != got:
                raise InputError(f"input '{v.name}': dimension {axis} ({dim}) is {got} but "
                                 f"another input set {dim}={bindings[dim]}")
        elif got != dim:
            raise InputError(f"input '{v.name}' has shape {list(x.shape)}, the model expects "
                             f"{_fmt(expected)} (dimension {axis}: {got} != {dim})")
    return np.require(x, requirements="C")  # keeps 0-d arrays 0-d


def _fmt(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"
