"""`OpDef`: the one definition of an op that every pass and backend reads.

An op is defined once, with
- its inputs (which are weights) and outputs,
- an attribute schema with defaults and validation,
- ``infer``: input types -> output types (shape inference, with errors that show the arithmetic),
- ``reference``: a numpy implementation that runs in float64 (the oracle of every backend),
- ``flops``: the cost model used by ``summary``, profiling and benchmarks,
- its fusion kind, read by the fusion pass,
- ``grad``: the vector-Jacobian product, emitted as ops (filled in by the autodiff work).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from cnncompiler.errors import AttributeValueError, ShapeError
from cnncompiler.ir.types import DType, TensorType


class FusionKind(Enum):
    """How an op combines with its neighbours (TVM's op patterns)."""

    ELEMENTWISE = "elementwise"        # out[i] = f(in[i], ...): ReLU, Add, BatchNorm (inference)
    BROADCAST = "broadcast"            # elementwise after numpy broadcasting of operands
    INJECTIVE = "injective"            # each output element reads one input element: reshape, pad
    REDUCTION = "reduction"            # reduces axes: softmax, global pooling
    OUTPUT_FUSABLE = "output_fusable"  # conv/gemm/pool: an elementwise epilogue fuses into them
    OPAQUE = "opaque"                  # does not fuse


REQUIRED = object()  # sentinel: the attribute has no default


_KINDS: dict[str, Callable[[Any], Any]] = {}


def _as_int(x: Any) -> int:
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        raise TypeError("expected an int")
    return int(x)


def _as_float(x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise TypeError("expected a number")
    return float(x)


def _as_bool(x: Any) -> bool:
    if isinstance(x, (bool, np.bool_)) or (isinstance(x, (int, np.integer)) and x in (0, 1)):
        return bool(x)
    raise TypeError("expected a bool (or 0/1)")


def _as_str(x: Any) -> str:
    if isinstance(x, bytes):
        x = x.decode()
    if not isinstance(x, str):
        raise TypeError("expected a string")
    return x


def _seq(conv: Callable[[Any], Any]) -> Callable[[Any], tuple]:
    def convert(x: Any) -> tuple:
        if isinstance(x, (str, bytes)) or not isinstance(x, (Sequence, np.ndarray)):
            x = (x,)
        return tuple(conv(e) for e in x)

    return convert


def _as_graph(x: Any) -> Any:
    from cnncompiler.ir.graph import Graph

    if not isinstance(x, Graph):
        raise TypeError("expected a Graph")
    return x


_KINDS.update(int=_as_int, float=_as_float, bool=_as_bool, str=_as_str,
              ints=_seq(_as_int), floats=_seq(_as_float), graph=_as_graph)


@dataclass(frozen=True)
class Attr:
    """One attribute: name, kind (int, float, bool, str, ints, floats), default, validation.

    ``default=None`` makes the attribute optional with no value; ``check`` returns an error
    text for a bad value (or None), ``choices`` lists the allowed values.
    """

    name: str
    kind: str
    default: Any = REQUIRED
    doc: str = ""
    choices: tuple | None = None
    check: Callable[[Any], str | None] | None = None

    def convert(self, value: Any, node: str, op: str) -> Any:
        if value is None:
            if self.default is REQUIRED:
                raise AttributeValueError(f"attribute '{self.name}' is required", node, op)
            return None
        try:
            v = _KINDS[self.kind](value)
        except TypeError as e:
            raise AttributeValueError(f"attribute '{self.name}' = {value!r}: {e} "
                                      f"(kind {self.kind})", node, op) from None
        if self.choices is not None and v not in self.choices:
            raise AttributeValueError(f"attribute '{self.name}' = {v!r} is not one of "
                                      f"{list(self.choices)}", node, op)
        if self.check is not None:
            problem = self.check(v)
            if problem:
                raise AttributeValueError(f"attribute '{self.name}' = {v!r}: {problem}", node, op)
        return v


@dataclass(frozen=True)
class Input:
    """One operand. ``weight`` marks operands that are layer parameters (conv W and B)."""

    name: str
    optional: bool = False
    variadic: bool = False
    weight: bool = False


@dataclass
class InferContext:
    """What shape inference and cost functions see: the node, its input types and attrs."""

    op: str
    node: str
    inputs: list[TensorType | None]
    attrs: dict[str, Any]
    num_outputs: int | None = None
    outputs: list[TensorType] = field(default_factory=list)  # filled for cost functions

    def fail(self, message: str) -> ShapeError:
        """The error to raise: ``raise ctx.fail("...")`` names node and op."""
        return ShapeError(message, self.node, self.op)

    def bad_attr(self, message: str) -> AttributeValueError:
        return AttributeValueError(message, self.node, self.op)

    def __getitem__(self, name: str) -> Any:
        return self.attrs[name]

    def input(self, i: int) -> TensorType:
        t = self.inputs[i] if i < len(self.inputs) else None
        if t is None:
            raise self.fail(f"input {i} is required")
        return t

    def has_input(self, i: int) -> bool:
        return i < len(self.inputs) and self.inputs[i] is not None

    def require_rank(self, i: int, rank: int | Sequence[int], what: str = "") -> TensorType:
        t = self.input(i)
        ranks = (rank,) if isinstance(rank, int) else tuple(rank)
        if t.rank not in ranks:
            label = what or f"input {i}"
            want = " or ".join(str(r) for r in ranks)
            raise self.fail(f"{label} must have rank {want}, got shape {list(t.shape)}")
        return t

    def require_float(self, i: int) -> TensorType:
        t = self.input(i)
        if not t.dtype.is_float:
            raise self.fail(f"input {i} must be float32 or float64, got {t.dtype}")
        return t

    def same_dtype(self, *idx: int) -> DType:
        present = [self.inputs[i] for i in idx if self.has_input(i)]
        dtypes = {t.dtype for t in present}
        if len(dtypes) > 1:
            raise self.fail("inputs must share one dtype, got "
                            + ", ".join(str(t.dtype) for t in present))
        return present[0].dtype


@dataclass(frozen=True)
class Cost:
    """Work and traffic of one node: multiply-add counted as 2 FLOPs."""

    flops: int = 0
    params: int = 0
    bytes: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.params + other.params,
                    self.bytes + other.bytes)


def elementwise_flops(per_element: int = 1) -> Callable[[InferContext], int]:
    """Cost of an op doing ``per_element`` FLOPs per output element."""

    def flops(ctx: InferContext) -> int:
        return per_element * sum(math.prod(t.shape) for t in ctx.outputs)

    return flops


def no_flops(ctx: InferContext) -> int:
    return 0


@dataclass
class OpDef:
    """The single definition of an op. See the module docstring for what each field means.

    ``reference(inputs, attrs)`` takes numpy arrays (None for absent optional inputs) and
    returns one array or a tuple of arrays; it must be exact in float64.
    ``grad`` is the autodiff slot: ``grad(builder, node, output_grads) -> input_grads``.
    ``view`` marks ops whose output can alias the input buffer (reshape, flatten, identity).
    ``scalar(operands, attrs)`` is an elementwise op's value per element as a kernel-IR
    expression of its operands' values (what code generators inline into fused kernels);
    ``per_channel_inputs`` says operands after the first are [C] vectors on axis 1
    (BatchNormalization) rather than numpy-broadcast.
    """

    name: str
    doc: str
    inputs: tuple[Input, ...]
    attrs: tuple[Attr, ...]
    infer: Callable[[InferContext], TensorType | list[TensorType]]
    reference: Callable[[list[np.ndarray | None], dict[str, Any]], Any]
    fusion: FusionKind
    flops: Callable[[InferContext], int] = no_flops
    outputs: tuple[str, ...] = ("Y",)
    variadic_outputs: bool = False
    grad: Callable | None = None
    view: bool = False
    module: str = ""  # where it is defined (set by ``register``), e.g. "cnncompiler.ops.conv"
    scalar: Callable | None = None
    per_channel_inputs: bool = False

    def __post_init__(self) -> None:
        self._attr_index = {a.name: a for a in self.attrs}

    @property
    def attr_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.attrs)

    def normalize_attrs(self, attrs: dict[str, Any], node: str) -> dict[str, Any]:
        """Validate ``attrs`` against the schema; return them complete with defaults."""
        unknown = sorted(set(attrs) - set(self._attr_index))
        if unknown:
            raise AttributeValueError(
                f"unknown attribute(s) {unknown}; {self.name} takes {list(self.attr_names)}",
                node, self.name)
        out = {}
        for a in self.attrs:
            value = attrs.get(a.name)
            if value is None and a.default is not REQUIRED:
                value = a.default
                out[a.name] = None if value is None else a.convert(value, node, self.name)
            else:
                out[a.name] = a.convert(value, node, self.name)
        return out

    def check_arity(self, n: int, node: str) -> None:
        fixed = [i for i in self.inputs if not i.variadic]
        required = sum(1 for i in fixed if not i.optional)
        variadic = any(i.variadic for i in self.inputs)
        if n < required or (not variadic and n > len(self.inputs)):
            most = "any number of" if variadic else str(len(self.inputs))
            raise ShapeError(f"takes {required} to {most} inputs "
                             f"({', '.join(i.name for i in self.inputs)}), got {n}",
                             node, self.name)
