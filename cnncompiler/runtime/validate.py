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


class InputBinder:
    """:func:`bind_inputs` for one model's inputs, with a fast path for the usual call: one
    C-contiguous ndarray per input, positionally, of the very dtype the model expects and
    of its shape (symbolic dims >= 1 and consistent across inputs), checked with a few
    comparisons per input. Anything else, including every wrong input, takes
    :func:`bind_inputs`, which converts or explains."""

    def __init__(self, inputs: Sequence[Value]):
        self.inputs = list(inputs)
        self._expected = [(tuple(v.type.shape), v.type.dtype.numpy, v.type.is_static)
                          for v in self.inputs]

    def __call__(self, args: Sequence[Any], kwargs: Mapping[str, Any]
                 ) -> tuple[list[np.ndarray], dict[str, int]]:
        if args and not kwargs and len(args) == len(self._expected):
            bindings = self._fast(args)
            if bindings is not None:
                return list(args), bindings
        return bind_inputs(self.inputs, args, kwargs)

    def _fast(self, args: Sequence[Any]) -> dict[str, int] | None:
        """The symbolic dims' values if ``args`` pass every check plainly, else None."""
        bindings: dict[str, int] = {}
        for x, (shape, dtype, static) in zip(args, self._expected):
            if type(x) is not np.ndarray or x.dtype != dtype or not x.flags.c_contiguous:
                return None
            if static:
                if x.shape != shape:
                    return None
                continue
            if len(x.shape) != len(shape):
                return None
            for got, dim in zip(x.shape, shape):
                if isinstance(dim, str):
                    if got < 1 or bindings.setdefault(dim, got) != got:
                        return None
                elif got != dim:
                    return None
        return bindings
