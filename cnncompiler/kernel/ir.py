"""Kernel IR: the second IR level. Loop nests over flat buffers, scalar expressions,
loads, stores and register accumulators — what a fused graph node becomes before a renderer
(LLVM, OpenCL C) turns it into code. Schedules decide loop kinds (parallel, vector, unroll);
renderers only translate.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace

SCALAR_TYPES = ("f32", "f64", "i64", "i1")
ARITH = ("+", "-", "*", "/", "max", "min", "%", "//")
COMPARE = ("<", "<=", ">", ">=", "==", "!=")
LOGIC = ("and", "or")
FUNCS = ("exp", "log", "sqrt", "tanh", "erf", "abs", "floor", "ceil", "pow", "neg", "fma")
ARITY = {"pow": 2, "fma": 3}


# ------------------------------------------------------------------ vector types
# A schedule that wants explicit SIMD writes vector values: dtype "f32x8" is 8 f32 lanes
# (a ymm register on AVX2, a float8 in OpenCL C). Arithmetic, comparisons ("i1x8"), selects
# and calls work lane-wise on them; Load/Store with lanes > 1 move contiguous elements.
def vector(dtype: str, lanes: int) -> str:
    """The dtype of ``lanes`` lanes of scalar ``dtype`` (the scalar itself for 1 lane)."""
    return dtype if lanes == 1 else f"{dtype}x{lanes}"


def lanes_of(dtype: str) -> int:
    return int(dtype.split("x")[1]) if "x" in dtype else 1


def scalar_of(dtype: str) -> str:
    return dtype.split("x")[0]


class Expr:
    """A scalar expression. Python operators build Bin nodes; numbers adopt the other side's
    type, so ``x * 2`` works for both float and index expressions."""

    dtype: str

    def _wrap(self, other: ExprLike) -> Expr:
        return lift(other, self.dtype)

    def __add__(self, o): return Bin("+", self, self._wrap(o))
    def __radd__(self, o): return Bin("+", self._wrap(o), self)
    def __sub__(self, o): return Bin("-", self, self._wrap(o))
    def __rsub__(self, o): return Bin("-", self._wrap(o), self)
    def __mul__(self, o): return Bin("*", self, self._wrap(o))
    def __rmul__(self, o): return Bin("*", self._wrap(o), self)
    def __truediv__(self, o): return Bin("/", self, self._wrap(o))
    def __rtruediv__(self, o): return Bin("/", self._wrap(o), self)
    def __floordiv__(self, o): return Bin("//", self, self._wrap(o))
    def __mod__(self, o): return Bin("%", self, self._wrap(o))
    def __neg__(self): return Call("neg", (self,), self.dtype)
    def lt(self, o): return Bin("<", self, self._wrap(o))
    def le(self, o): return Bin("<=", self, self._wrap(o))
    def gt(self, o): return Bin(">", self, self._wrap(o))
    def ge(self, o): return Bin(">=", self, self._wrap(o))
    def eq(self, o): return Bin("==", self, self._wrap(o))


ExprLike = Expr | int | float | bool


def lift(x: ExprLike, dtype: str) -> Expr:
    if isinstance(x, Expr):
        return x
    if isinstance(x, bool):
        return Const(int(x), "i1")
    if dtype == "i1":
        dtype = "i64"
    if lanes_of(dtype) > 1:   # a splat: every lane holds the number
        return Broadcast(lift(x, scalar_of(dtype)), lanes_of(dtype))
    return Const(float(x) if dtype in ("f32", "f64") else int(x), dtype)


@dataclass(frozen=True, eq=False)
class Const(Expr):
    value: float | int
    dtype: str = "i64"


@dataclass(frozen=True, eq=False)
class Var(Expr):
    """A loop index or a declared mutable scalar (an accumulator kept in a register)."""

    name: str
    dtype: str = "i64"


#: bytes of one element of a buffer of each scalar type (bools are stored as bytes)
ITEM_BYTES = {"f32": 4, "f64": 8, "i64": 8, "i1": 1}


@dataclass(frozen=True, eq=False)
class Buffer:
    """A flat array parameter of a kernel: ``size`` elements of ``dtype``."""

    name: str
    dtype: str
    size: int

    @property
    def nbytes(self) -> int:
        return self.size * ITEM_BYTES[self.dtype]


@dataclass(frozen=True, eq=False)
class Load(Expr):
    """``buffer[index]``, or with ``lanes`` > 1 the vector ``buffer[index : index+lanes]``."""

    buffer: Buffer
    index: Expr
    lanes: int = 1

    @property
    def dtype(self) -> str:  # type: ignore[override]
        return vector(self.buffer.dtype, self.lanes)


@dataclass(frozen=True, eq=False)
class Broadcast(Expr):
    """A scalar copied into every lane of a vector."""

    value: Expr
    lanes: int

    @property
    def dtype(self) -> str:  # type: ignore[override]
        return vector(self.value.dtype, self.lanes)


@dataclass(frozen=True, eq=False)
class Extract(Expr):
    """Lane ``lane`` (a compile-time int) of a vector, as a scalar."""

    value: Expr
    lane: int

    @property
    def dtype(self) -> str:  # type: ignore[override]
        return scalar_of(self.value.dtype)


@dataclass(frozen=True, eq=False)
class Bin(Expr):
    op: str
    a: Expr
    b: Expr

    dtype: str = field(init=False)

    def __post_init__(self) -> None:
        if self.op not in ARITH + COMPARE + LOGIC:
            raise ValueError(f"unknown operator {self.op!r}")
        if self.a.dtype != self.b.dtype:
            raise TypeError(f"operands of {self.op!r} differ: {self.a.dtype} vs {self.b.dtype}")
        # computed once: long accumulation chains must not recurse to find their type
        compare = vector("i1", lanes_of(self.a.dtype))
        object.__setattr__(self, "dtype", compare if self.op in COMPARE else self.a.dtype)


@dataclass(frozen=True, eq=False)
class Call(Expr):
    fn: str
    args: tuple[Expr, ...]
    dtype: str = "f32"

    def __post_init__(self) -> None:
        if self.fn not in FUNCS:
            raise ValueError(f"unknown function {self.fn!r}")


@dataclass(frozen=True, eq=False)
class Select(Expr):
    cond: Expr
    a: Expr
    b: Expr
    dtype: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", self.a.dtype)


@dataclass(frozen=True, eq=False)
class Cast(Expr):
    value: Expr
    dtype: str = "f32"


class Stmt:
    pass


@dataclass(eq=False)
class Store(Stmt):
    """``buffer[index] = value``; a vector value fills ``lanes`` consecutive elements."""

    buffer: Buffer
    index: Expr
    value: Expr


@dataclass(eq=False)
class Declare(Stmt):
    var: Var
    init: Expr


@dataclass(eq=False)
class Assign(Stmt):
    var: Var
    value: Expr


@dataclass(eq=False)
class Loop(Stmt):
    """``for var in range(start, stop)``; ``kind`` is the schedule's decision: "serial",
    "parallel" (split across threads), "vector" (SIMD lanes), "unroll" or "rolled" (never
    unrolled: where unrolling would let the compiler merge loads of different iterations
    and keep them live, as in a register-blocked conv), or "workitems": the work-items of
    one GPU work-group, whose iterations run concurrently and meet at each :class:`Barrier`
    (the only statement, after :class:`Shared` ones, of the body of the innermost parallel
    loop, whose iterations are then the work-groups; only the OpenCL renderer takes it)."""

    var: Var
    start: Expr
    stop: Expr
    body: list[Stmt]
    kind: str = "serial"


@dataclass(eq=False)
class If(Stmt):
    cond: Expr
    then: list[Stmt]
    otherwise: list[Stmt] = field(default_factory=list)


@dataclass(eq=False)
class Local(Stmt):
    """A scratch array private to one call of the kernel (so to one thread): ``buffer`` is
    not a parameter; it is stack memory (32-byte aligned, uninitialised) that statements
    after this one may load and store."""

    buffer: Buffer


@dataclass(eq=False)
class Shared(Stmt):
    """Memory shared by the work-items of one work-group (OpenCL's ``__local``):
    uninitialised, declared before the "workitems" loop in the body of a work-group's
    loop. A GPU stages operand tiles there, each element fetched from global memory once
    per work-group instead of once per work-item that reads it."""

    buffer: Buffer


@dataclass(eq=False)
class Barrier(Stmt):
    """Every work-item of the work-group arrives here before any goes on, and their stores
    to Shared buffers before it are visible to all of them after it. Only inside a
    "workitems" loop, where every work-item reaches it (never under a condition that
    differs between work-items)."""


@dataclass(eq=False)
class Kernel:
    """One generated function: ``name(buffers...)`` running ``body``."""

    name: str
    buffers: list[Buffer]
    body: list[Stmt]
    flops: int = 0
    #: compile-time tables among ``buffers`` (e.g. Resize's source indices): buffer name ->
    #: numpy array the backend passes like a weight
    tables: dict = field(default_factory=dict)
    #: names of the graph values bound to the leading buffers, in order (then ``out``, then
    #: the tables); a lowering may leave an input out (a weight it repacked into a table)
    inputs: list[str] = field(default_factory=list)
    #: further outputs the kernel writes (a multi-output elementwise group: an optimiser's
    #: new weight and new slot), bound to the buffers right after ``out``, in order
    extra_outputs: list[str] = field(default_factory=list)


@contextlib.contextmanager
def deep_recursion(limit: int = 20000) -> Iterator[None]:
    """Expression trees are walked recursively; long folded chains need a deeper stack."""
    old = sys.getrecursionlimit()
    if old < limit:
        sys.setrecursionlimit(limit)
    try:
        yield
    finally:
        if old < limit:
            sys.setrecursionlimit(old)


def code_text(kernel: Kernel) -> str:
    """Everything a kernel's generated code depends on, as text: its buffers and loop nest
    (not its name, nor its tables' values, which are passed as arguments). Two kernels with
    equal code text compile to the same function."""
    with deep_recursion():
        return repr((kernel.buffers, kernel.body))


# ------------------------------------------------------------------ helpers
def maximum(a: Expr, b: ExprLike) -> Expr:
    return Bin("max", a, lift(b, a.dtype))


def minimum(a: Expr, b: ExprLike) -> Expr:
    return Bin("min", a, lift(b, a.dtype))


def call(fn: str, *args: Expr) -> Expr:
    return Call(fn, tuple(args), args[0].dtype)


def fma(a: Expr, b: Expr, c: Expr) -> Expr:
    """``a * b + c`` with one rounding (one FMA instruction per lane on AVX2)."""
    return Call("fma", (a, b, c), c.dtype)


def broadcast(x: ExprLike, lanes: int, dtype: str = "f32") -> Expr:
    return Broadcast(lift(x, dtype), lanes) if lanes > 1 else lift(x, dtype)


def select(cond: Expr, a: ExprLike, b: ExprLike) -> Expr:
    dtype = a.dtype if isinstance(a, Expr) else b.dtype if isinstance(b, Expr) else "f32"
    return Select(cond, lift(a, dtype), lift(b, dtype))


def speculatable(e: Expr, memo: dict[int, bool]) -> bool:
    """Whether evaluating ``e`` eagerly can never fault: no load (it may be the guarded,
    out-of-bounds one) and no integer division by anything but a constant other than 0 and
    -1. Renderers evaluate a Select's arms eagerly only when both are speculatable, and
    branch around them otherwise. ``memo`` caches results by ``id`` (expressions are DAGs)."""
    known = memo.get(id(e))
    if known is not None:
        return known
    if isinstance(e, Load):
        ok = False
    elif isinstance(e, Bin):
        ok = speculatable(e.a, memo) and speculatable(e.b, memo)
        if ok and e.op in ("//", "%", "/") and e.a.dtype not in ("f32", "f64"):
            ok = isinstance(e.b, Const) and int(e.b.value) not in (0, -1)
    elif isinstance(e, Call):
        ok = all(speculatable(a, memo) for a in e.args)
    elif isinstance(e, Select):
        ok = all(speculatable(x, memo) for x in (e.cond, e.a, e.b))
    elif isinstance(e, (Cast, Broadcast, Extract)):
        ok = speculatable(e.value, memo)
    else:
        ok = True
    memo[id(e)] = ok
    return ok


def rewrite(x, leaf, node=None):
    """``x`` (kernel IR: expressions, statements, lists of them) with every variable and
    buffer ``b`` replaced by ``leaf(b)``, and every expression ``e`` for which ``node(e)``
    is not None replaced by that; nodes nothing changed in are kept, and shared
    subexpressions stay shared."""
    memo: dict[int, object] = {}

    def sub(y):
        if isinstance(y, (Var, Buffer)):
            return leaf(y)
        if node is not None and isinstance(y, Expr) and (new := node(y)) is not None:
            return new
        if isinstance(y, (list, tuple)):
            items = [sub(i) for i in y]
            return type(y)(items) if any(a is not b for a, b in zip(items, y)) else y
        if not isinstance(y, (Expr, Stmt)):
            return y
        if id(y) not in memo:
            changes = {f.name: new for f in fields(y) if f.init
                       if (new := sub(getattr(y, f.name))) is not getattr(y, f.name)}
            memo[id(y)] = replace(y, **changes) if changes else y
        return memo[id(y)]

    return sub(x)


def substitute(e: Expr, values: dict[str, Expr]) -> Expr:
    """``e`` with the variables named in ``values`` replaced: a schedule builds an
    expression once over placeholder variables and then instantiates it per tile, instead
    of deriving it again."""
    return rewrite(e, lambda v: values.get(v.name, v) if isinstance(v, Var) else v)


def flat_index(indices: list[Expr], shape: tuple[int, ...]) -> Expr:
    """Row-major offset of ``indices`` in an array of ``shape``."""
    offset: Expr = Const(0)
    for i, (idx, dim) in enumerate(zip(indices, shape)):
        offset = idx if i == 0 else offset * dim + idx
    return offset


def unflat_index(flat: Expr, shape: tuple[int, ...]) -> list[Expr]:
    """The indices in an array of ``shape`` of row-major offset ``flat`` (flat_index's
    inverse)."""
    out: list[Expr] = []
    for d in range(len(shape)):
        stride = math.prod(shape[d + 1:])
        out.append((flat // stride) % shape[d] if d else flat // stride)
    return out


class Names:
    """Fresh variable names inside one kernel."""

    def __init__(self) -> None:
        self.count = 0

    def var(self, base: str, dtype: str = "i64") -> Var:
        self.count += 1
        return Var(f"{base}{self.count}", dtype)
