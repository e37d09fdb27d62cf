"""Render kernel IR (:mod:`cnncompiler.kernel.ir`) as OpenCL C 1.2.

The same kernel IR the LLVM backend compiles becomes one ``__kernel`` per
:class:`~cnncompiler.kernel.ir.Kernel`::

    __kernel void name(__global const float* restrict in0, ..., __global float* restrict out,
                       [__global uchar* restrict cnnc_scratch])

Parameters are the kernel's buffers in order (``const`` where the kernel never stores to
them); the runtime binds each to a sub-buffer of the arena or to a weight buffer.

**Work-items.** The schedule's top-level ``parallel`` loop becomes the NDRange: each
work-item runs one iteration (``i = start + get_global_id(0)``). Directly nested parallel
loops with constant bounds (the generic element loop's spatial dims) become further NDRange
dimensions, up to three, so a GPU gets one work-item per output row or element instead of
one per channel. A kernel without a top-level parallel loop runs as a single work-item.
:class:`RenderedKernel` carries the global size the runtime launches.

**Types.** f32 -> ``float``, f64 -> ``double`` (the program then enables ``cl_khr_fp64``;
the runtime refuses devices without it), i64 -> ``long``, or (for GPUs) 32-bit ``int`` in
a kernel whose i64 values are all indices (no int64 data, every buffer under 2^29 elements, every
constant under 2^31; GPUs run 64-bit integer arithmetic as several 32-bit instructions),
i1 -> ``uchar`` in memory and
``int`` (0/1) in registers; ``f32x8`` -> ``float8`` (vload8/vstore8: element alignment is
enough), ``i1x8`` -> ``int8`` (lanes are -1/0, what OpenCL's vector comparisons give and
``select`` reads).

**Expressions** are emitted as one ``const`` temporary per node (per statement, so shared
sub-expressions are computed once, and deep accumulation chains never nest past a
compiler's bracket limit); constants and variables are written inline. Semantics follow the
LLVM renderer: integer ``//``, ``/`` and ``%`` floor (Python) for any signs; float ``//``
is ``floor(x / y)``; float ``%`` takes the divisor's sign; float max/min are ``fmax``/
``fmin`` (a NaN operand yields the other one); a ``Select`` whose arm may fault (a load, an
integer division) becomes an ``if``, so a padding guard never performs its load.

**Scratch.** A ``Local`` of at most ``PRIVATE_LIMIT`` bytes is a private array; a larger
one (Winograd's tile buffers) is a slice of one global scratch buffer, ``scratch_bytes`` per
work-item, indexed by the work-item's flat id: private memory that large does not exist on
GPUs and overflows CPU OpenCL stacks.

**Portability** (we test on PoCL; real GPUs must accept the same text): OpenCL C 1.2
only, no ``size_t`` arguments, no ``LL`` literals, loop-unroll hints only under
``__clang__``. Errors name the kernel, like the LLVM renderer's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from cnncompiler.errors import CnnCompilerError
from cnncompiler.kernel import ir as K

#: the largest Local kept in private memory (bytes per work-item)
PRIVATE_LIMIT = 4096
#: the most NDRange dimensions a kernel's nested parallel loops become
MAX_DIMS = 3

_C_TYPES = {"f32": "float", "f64": "double", "i64": "long", "i1": "int"}
_MEMORY_TYPES = {"f32": "float", "f64": "double", "i64": "long", "i1": "uchar"}
_BUILTINS = {"exp": "exp", "log": "log", "sqrt": "sqrt", "tanh": "tanh", "erf": "erf",
             "abs": "fabs", "floor": "floor", "ceil": "ceil", "pow": "pow", "fma": "fma"}
_INT_DIV = ("//", "%", "/")

_FLOOR_HELPERS = """\
{t} cnnc_floordiv{x}({t} a, {t} b) {{
    {t} q = a / b, r = a % b;
    return (r != 0 && ((r ^ b) < 0)) ? q - 1 : q;
}}
{t} cnnc_floormod{x}({t} a, {t} b) {{
    {t} r = a % b;
    return (r != 0 && ((r ^ b) < 0)) ? r + b : r;
}}
"""
#: helpers every program starts with: Python's floor division and modulo on long, and on
#: int (suffix ``_i``, for kernels with 32-bit indices)
PRELUDE = _FLOOR_HELPERS.format(t="long", x="") + _FLOOR_HELPERS.format(t="int", x="_i")

#: the largest index constant a kernel may hold and still compute its indices in 32 bits
NARROW_LIMIT = 2**31 - 1


class _Widen(Exception):
    """A constant too large for 32-bit indices: render the kernel again with 64-bit ones."""


@dataclass
class RenderedKernel:
    """One kernel's OpenCL C and how to launch it."""

    name: str
    source: str
    global_size: tuple[int, ...]
    #: global scratch each work-item needs (0: no scratch parameter)
    scratch_bytes: int = 0
    uses_fp64: bool = False
    #: buffers the kernel stores to (the others are passed ``const``)
    written: set[str] = field(default_factory=set)
    #: the work-group shape a kernel with a "workitems" loop must be launched with (None:
    #: any; the runtime or driver picks)
    local_size: tuple[int, ...] | None = None

    @property
    def work_items(self) -> int:
        return math.prod(self.global_size)


def c_type(dtype: str, narrow: bool = False) -> str:
    """The OpenCL C type of a register value of ``dtype`` (``f32x8`` -> ``float8``);
    ``narrow``: i64 values are 32-bit ``int`` (see the module docstring)."""
    lanes = K.lanes_of(dtype)
    base = "int" if narrow and K.scalar_of(dtype) == "i64" else _C_TYPES.get(K.scalar_of(dtype))
    if base is None:
        raise CnnCompilerError(f"unknown scalar type {dtype!r}")
    if lanes == 1:
        return base
    if lanes not in (2, 3, 4, 8, 16):
        raise CnnCompilerError(f"OpenCL has no vectors of {lanes} lanes ({dtype})")
    return f"{base}{lanes}"


def _float_literal(value: float, dtype: str) -> str:
    suffix = "f" if dtype == "f32" else ""
    if math.isnan(value):
        return "NAN" if dtype == "f32" else "(double)NAN"
    if math.isinf(value):
        inf = "INFINITY" if dtype == "f32" else "(double)INFINITY"
        return inf if value > 0 else f"(-{inf})"
    if dtype == "f32":   # the float nearest to value, written so C parses back the same float
        import numpy as np

        value = float(np.float32(value))
    text = repr(float(value))
    if "e" not in text and "." not in text:
        text += ".0"
    return f"({text}{suffix})" if text.startswith("-") else text + suffix


def literal(c: K.Const, narrow: bool = False) -> str:
    if c.dtype in ("f32", "f64"):
        return _float_literal(float(c.value), c.dtype)
    if c.dtype == "i1":
        return "1" if c.value else "0"
    value = int(c.value)
    if narrow:
        if abs(value) > NARROW_LIMIT:
            raise _Widen
        return str(value) if value >= 0 else f"(-{-value})"
    if value == -2**63:   # not writable as a literal: -(2^63) overflows before negation
        return "(-9223372036854775807L - 1L)"
    return f"{value}L" if value >= 0 else f"(-{-value}L)"


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.indent = 1

    def line(self, text: str) -> None:
        self.lines.append("    " * self.indent + text)


class _KernelRenderer:
    def __init__(self, kernel: K.Kernel, max_dims: int, narrow: bool = False) -> None:
        self.kernel = kernel
        self.max_dims = max_dims
        self.narrow = narrow   # i64 values as 32-bit int (see the module docstring)
        self.index_type = "int" if narrow else "long"
        self.suffix = "" if narrow else "L"
        self.out = _Writer()
        self.temps = 0
        self.memo: dict[int, str] = {}
        self.safe_memo: dict[int, bool] = {}
        self.scope: dict[str, str] = {}     # variable name -> dtype
        self.declared: list[dict[str, str]] = [{}]   # names declared per open C block
        self.counters: set[str] = set()     # loop counters known to be >= 0
        self.nonneg_memo: dict[int, bool] = {}   # valid while ``counters`` is unchanged
        self.names: dict[int, str] = {}     # id(Buffer) -> C name
        self.buffer_types: dict[int, str] = {}
        self.scratch_bytes = 0
        self.uses_fp64 = False
        self.flat_id = "0"
        self.in_group = False   # inside a workitems loop (Barriers allowed)

    def ctype(self, dtype: str) -> str:
        return c_type(dtype, self.narrow)

    def error(self, message: str) -> CnnCompilerError:
        return CnnCompilerError(f"kernel '{self.kernel.name}': {message}")

    # ------------------------------------------------------------------ kernel
    def render(self) -> RenderedKernel:
        kernel = self.kernel
        written = {id(s.buffer) for s in _walk(kernel.body) if isinstance(s, K.Store)}
        params = []
        used: set[str] = set()
        for buf in kernel.buffers:
            if id(buf) in self.names:
                raise self.error(f"buffer '{buf.name}' is a parameter twice")
            if buf.dtype not in _MEMORY_TYPES:
                raise self.error(f"buffer '{buf.name}' has unknown dtype {buf.dtype!r}")
            name = _c_name(buf.name, used)
            self.names[id(buf)] = name
            self.buffer_types[id(buf)] = buf.dtype
            const = "" if id(buf) in written else "const "
            params.append(f"__global {const}{_MEMORY_TYPES[buf.dtype]}* restrict {name}")
            self.uses_fp64 |= buf.dtype == "f64"

        grid, body = _grid(kernel.body, self.max_dims)
        shared, items = _work_group(body)
        if items is not None and not grid:
            raise self.error("a workitems loop must sit in a parallel loop over work-groups")
        sizes = []
        for d, loop in enumerate(grid):
            start, stop = int(loop.start.value), int(loop.stop.value)
            sizes.append(max(0, stop - start))
            var = loop.var.name
            # with work-groups, a grid index is the work-group's (the same for all of its
            # work-items, so the range check's return is taken by the whole group or none)
            position = "get_group_id" if items is not None else "get_global_id"
            t, x = self.index_type, self.suffix
            self.out.line(f"const {t} {var} = {start}{x} + ({t}){position}({d});")
            self.out.line(f"if ({var} >= {stop}{x}) return;")
            self.scope[var] = "i64"
            if start >= 0:
                self.counters.add(var)
        local_size = None
        if items is not None:
            group_size = self.work_items(items)
            local_size = (group_size,) + (1,) * (len(grid) - 1)
            sizes[0] *= group_size
            for s in shared:
                self.shared(s.buffer)
            body = items.body
            self.in_group = True
        if grid:   # the work-item's position in the whole range, for scratch slices
            terms = [f"(long)get_global_id({d})" for d in range(len(grid))]
            flat = terms[0]
            for d in range(1, len(grid)):
                flat = f"({flat}) * {sizes[d]}L + {terms[d]}"
            self.flat_id = flat
        self.block(body)
        if self.scratch_bytes:
            params.append("__global uchar* restrict cnnc_scratch")
        head = f"__kernel void {kernel.name}({', '.join(params)})"
        source = head + " {\n" + "\n".join(self.out.lines) + "\n}\n"
        written_names = {b.name for b in kernel.buffers if id(b) in written}
        return RenderedKernel(kernel.name, source, tuple(sizes) or (1,), self.scratch_bytes,
                              self.uses_fp64, written_names, local_size)

    def work_items(self, loop: K.Loop) -> int:
        """Open a "workitems" loop: its index is the work-item's local id; its constant trip
        count is the work-group size."""
        if not (isinstance(loop.start, K.Const) and int(loop.start.value) == 0
                and isinstance(loop.stop, K.Const) and int(loop.stop.value) > 0):
            raise self.error(f"workitems loop '{loop.var.name}' must run from 0 to a "
                             f"positive constant")
        t = self.index_type
        self.out.line(f"const {t} {loop.var.name} = ({t})get_local_id(0);")
        self.scope[loop.var.name] = "i64"
        self.counters.add(loop.var.name)
        return int(loop.stop.value)

    def shared(self, buf: K.Buffer) -> None:
        """A Shared buffer: ``__local`` memory, declared at kernel scope (OpenCL C 1.2
        allows ``__local`` variables nowhere else)."""
        if id(buf) in self.names:
            raise self.error(f"shared buffer '{buf.name}' is already defined")
        if buf.dtype not in _MEMORY_TYPES or buf.dtype == "i1":
            raise self.error(f"shared buffer '{buf.name}' has unsupported dtype {buf.dtype!r}")
        name = _c_name(buf.name, set(self.names.values()))
        self.names[id(buf)] = name
        self.buffer_types[id(buf)] = buf.dtype
        self.uses_fp64 |= buf.dtype == "f64"
        self.out.lines.insert(0, f"    __local {_MEMORY_TYPES[buf.dtype]} {name}[{buf.size}] "
                                 f"__attribute__((aligned(16)));")

    # ------------------------------------------------------------------ statements
    def block(self, stmts: Sequence[K.Stmt]) -> None:
        for stmt in stmts:
            self.memo = {}
            self.stmt(stmt)

    def stmt(self, s: K.Stmt) -> None:
        if isinstance(s, K.Store):
            self.store(s)
        elif isinstance(s, K.Declare):
            if s.init.dtype != s.var.dtype:
                raise self.error(f"variable '{s.var.name}' ({s.var.dtype}) initialised with "
                                 f"a {s.init.dtype} value")
            value = self.expr(s.init)
            if self.declared[-1].get(s.var.name) == s.var.dtype:   # declared again in the
                self.out.line(f"{s.var.name} = {value};")        # same C block: a reset
            else:
                self.out.line(f"{self.ctype(s.var.dtype)} {s.var.name} = {value};")
            self.declared[-1][s.var.name] = s.var.dtype
            self.scope[s.var.name] = s.var.dtype
        elif isinstance(s, K.Assign):
            dtype = self.scope.get(s.var.name)
            if dtype is None:
                raise self.error(f"assignment to undeclared variable '{s.var.name}'")
            if s.value.dtype != dtype:
                raise self.error(f"variable '{s.var.name}' ({dtype}) assigned a "
                                 f"{s.value.dtype} value")
            self.out.line(f"{s.var.name} = {self.expr(s.value)};")
        elif isinstance(s, K.Loop):
            self.loop(s)
        elif isinstance(s, K.If):
            cond = self.truth(s.cond)
            self.nested(f"if ({cond}) {{", s.then)
            if s.otherwise:
                self.nested("else {", s.otherwise)
        elif isinstance(s, K.Local):
            self.local(s.buffer)
        elif isinstance(s, K.Barrier):
            if not self.in_group:
                raise self.error("a Barrier outside a workitems loop")
            self.out.line("barrier(CLK_LOCAL_MEM_FENCE);")
        elif isinstance(s, K.Shared):
            raise self.error(f"shared buffer '{s.buffer.name}' must be declared just before "
                             f"its workitems loop")
        else:
            raise self.error(f"unsupported statement {type(s).__name__}")

    def nested(self, opener: str, body: Sequence[K.Stmt]) -> None:
        """``opener`` + body + ``}``, with the body's names going out of scope after it."""
        self.out.line(opener)
        self.out.indent += 1
        saved = dict(self.scope)
        self.declared.append({})
        self.block(body)
        self.declared.pop()
        self.scope = saved
        self.out.indent -= 1
        self.out.line("}")
        self.memo = {}

    def store(self, s: K.Store) -> None:
        dtype = self.buffer_types.get(id(s.buffer))
        if dtype is None:
            raise self.error(f"buffer '{s.buffer.name}' is not a parameter of the kernel")
        if K.scalar_of(s.value.dtype) != dtype or (K.lanes_of(s.value.dtype) > 1
                                                   and dtype == "i1"):
            raise self.error(f"store of a {s.value.dtype} value into {dtype} buffer "
                             f"'{s.buffer.name}'")
        index, value = self.index(s.buffer, s.index), self.expr(s.value)
        name = self.names[id(s.buffer)]
        lanes = K.lanes_of(s.value.dtype)
        if lanes > 1:
            self.out.line(f"vstore{lanes}({value}, 0, {name} + {index});")
        elif dtype == "i1":
            self.out.line(f"{name}[{index}] = (uchar)({value} != 0);")
        else:
            self.out.line(f"{name}[{index}] = {value};")

    def loop(self, s: K.Loop) -> None:
        if s.var.dtype != "i64":
            raise self.error(f"loop index '{s.var.name}' must be i64, not {s.var.dtype}")
        if s.kind == "workitems":
            raise self.error(f"workitems loop '{s.var.name}' must be the body of the "
                             f"innermost parallel loop (after its Shared buffers)")
        if s.kind not in ("serial", "parallel", "vector", "unroll", "rolled"):
            raise self.error(f"unknown loop kind {s.kind!r} on loop '{s.var.name}'")
        for bound in (s.start, s.stop):
            if bound.dtype != "i64":
                raise self.error(f"bounds of loop '{s.var.name}' must be i64")
        start, stop = self.expr(s.start), self.expr(s.stop)
        var = s.var.name
        if not isinstance(s.stop, K.Const):   # evaluated once, like the LLVM renderer does
            self.out.line(f"const {self.index_type} {var}_end = {stop};")
            stop = f"{var}_end"
        if s.kind == "rolled":   # ("unroll" gets no hint: where clang cannot honour one it
            #                         warns, and programs are built with -Werror)
            self.out.lines.append("#ifdef __clang__\n#pragma clang loop unroll(disable)\n"
                                  "#endif")
        saved, counters = dict(self.scope), set(self.counters)
        self.scope[var] = "i64"
        if self.nonneg(s.start):
            self.counters.add(var)
        else:
            self.counters.discard(var)
        self.nonneg_memo = {}
        self.nested(f"for ({self.index_type} {var} = {start}; {var} < {stop}; ++{var}) {{", s.body)
        self.scope, self.counters, self.nonneg_memo = saved, counters, {}

    def local(self, buf: K.Buffer) -> None:
        if id(buf) in self.names:
            raise self.error(f"local buffer '{buf.name}' is already defined")
        if buf.dtype not in _MEMORY_TYPES:
            raise self.error(f"local buffer '{buf.name}' has unknown dtype {buf.dtype!r}")
        name = _c_name(buf.name, set(self.names.values()))
        self.names[id(buf)] = name
        self.buffer_types[id(buf)] = buf.dtype
        ctype = _MEMORY_TYPES[buf.dtype]
        size = buf.nbytes
        if size <= PRIVATE_LIMIT:
            self.out.line(f"{ctype} {name}[{buf.size}] __attribute__((aligned(32)));")
            return
        offset = self.scratch_bytes
        self.scratch_bytes += -(-size // 64) * 64   # each slice starts on a cache line
        self.out.line(f"__global {ctype}* restrict {name} = (__global {ctype}*)(cnnc_scratch"
                      f" + ({self.flat_id}) * SCRATCH_STRIDE + {offset}L);")

    # ------------------------------------------------------------------ expressions
    def temp(self, dtype: str, text: str) -> str:
        self.temps += 1
        name = f"cnnc_t{self.temps}"
        self.out.line(f"const {self.ctype(dtype)} {name} = {text};")
        return name

    def index(self, buffer: K.Buffer, index: K.Expr) -> str:
        if id(buffer) not in self.names:
            raise self.error(f"buffer '{buffer.name}' is not a parameter of the kernel")
        if index.dtype != "i64":
            raise self.error(f"index into '{buffer.name}' must be i64, not {index.dtype}")
        return self.expr(index)

    def truth(self, e: K.Expr) -> str:
        if K.lanes_of(e.dtype) > 1:
            raise self.error(f"a {e.dtype} vector used as a condition")
        value = self.expr(e)
        return value if e.dtype == "i1" else f"({value} != 0)"

    def expr(self, e: K.Expr) -> str:
        hit = self.memo.get(id(e))
        if hit is not None:
            return hit
        value = self._expr(e)
        self.memo[id(e)] = value
        return value

    def _expr(self, e: K.Expr) -> str:
        if isinstance(e, K.Const):
            self.uses_fp64 |= e.dtype == "f64"
            return literal(e, self.narrow)
        if isinstance(e, K.Var):
            dtype = self.scope.get(e.name)
            if dtype is None:
                raise self.error(f"variable '{e.name}' is used outside its loop or before "
                                 f"its Declare")
            if dtype != e.dtype:
                raise self.error(f"variable '{e.name}' is {dtype} but used as {e.dtype}")
            return e.name
        if isinstance(e, K.Load):
            index = self.index(e.buffer, e.index)
            name = self.names[id(e.buffer)]
            if e.lanes > 1:
                if e.buffer.dtype == "i1":
                    raise self.error(f"vector load from bool buffer '{e.buffer.name}'")
                return self.temp(e.dtype, f"vload{e.lanes}(0, {name} + {index})")
            if e.buffer.dtype == "i1":
                return self.temp("i1", f"({name}[{index}] != 0)")
            return self.temp(e.dtype, f"{name}[{index}]")
        if isinstance(e, K.Broadcast):
            return self.temp(e.dtype, f"({self.ctype(e.dtype)})({self.expr(e.value)})")
        if isinstance(e, K.Extract):
            if not 0 <= e.lane < K.lanes_of(e.value.dtype):
                raise self.error(f"lane {e.lane} of a {e.value.dtype} value")
            return self.temp(e.dtype, f"{self.expr(e.value)}.s{e.lane:x}")
        if isinstance(e, K.Bin):
            return self.temp(e.dtype, self.binary(e))
        if isinstance(e, K.Call):
            return self.temp(e.dtype, self.call(e))
        if isinstance(e, K.Select):
            return self.select(e)
        if isinstance(e, K.Cast):
            return self.temp(e.dtype, self.cast(e))
        raise self.error(f"unsupported expression {type(e).__name__}")

    def binary(self, e: K.Bin) -> str:
        op, dtype = e.op, e.a.dtype
        x, y = self.expr(e.a), self.expr(e.b)
        is_float = K.scalar_of(dtype) in ("f32", "f64")
        self.uses_fp64 |= K.scalar_of(dtype) == "f64"
        if op in K.COMPARE:
            return f"({x} {op} {y})"
        if op in K.LOGIC:
            if is_float:
                raise self.error(f"'{op}' of {dtype} values")
            return f"({x} {'&' if op == 'and' else '|'} {y})"
        if is_float:
            if op in ("+", "-", "*", "/"):
                return f"{x} {op} {y}"
            if op in ("max", "min"):
                return f"f{op}({x}, {y})"
            if op == "//":
                return f"floor({x} / {y})"
            if op == "%":   # Python semantics: the result has the sign of the divisor
                r = self.temp(dtype, f"fmod({x}, {y})")
                return f"(({r} != 0) && (({r} < 0) != ({y} < 0))) ? {r} + {y} : {r}"
            raise self.error(f"unsupported float operator {op!r}")
        if K.lanes_of(dtype) > 1:
            raise self.error(f"integer vector operator {op!r} is not supported")
        if dtype == "i1" and op in ("+", "-", "*", "max", "min"):
            raise self.error(f"arithmetic '{op}' on i1 values")
        if op in ("+", "-", "*"):
            return f"{x} {op} {y}"
        if op in ("max", "min"):
            return f"{op}({x}, {y})"
        if op in _INT_DIV:
            if self.nonneg(e.a) and self.nonneg(e.b):   # C's truncation is the floor then
                return f"{x} {'%' if op == '%' else '/'} {y}"
            fn = "cnnc_floormod" if op == "%" else "cnnc_floordiv"
            return f"{fn}{'_i' if self.narrow else ''}({x}, {y})"
        raise self.error(f"unsupported integer operator {op!r}")

    def call(self, e: K.Call) -> str:
        expected = K.ARITY.get(e.fn, 1)
        if len(e.args) != expected:
            raise self.error(f"{e.fn} takes {expected} argument(s), got {len(e.args)}")
        dtype = e.args[0].dtype
        if any(a.dtype != dtype for a in e.args):
            raise self.error(f"arguments of {e.fn} differ in type")
        if dtype != e.dtype:
            raise self.error(f"{e.fn} of {dtype} declared to return {e.dtype}")
        args = [self.expr(a) for a in e.args]
        if K.scalar_of(dtype) in ("f32", "f64"):
            self.uses_fp64 |= K.scalar_of(dtype) == "f64"
            if e.fn == "neg":
                return f"-{args[0]}"
            return f"{_BUILTINS[e.fn]}({', '.join(args)})"
        if dtype == "i64":
            x = args[0]
            if e.fn == "neg":
                return f"-{x}"
            if e.fn == "abs":   # OpenCL's abs(long) returns ulong
                return f"({x} < 0 ? -{x} : {x})"
            if e.fn in ("floor", "ceil"):
                return x
        raise self.error(f"{e.fn} of {dtype} values is not supported")

    def select(self, e: K.Select) -> str:
        if e.a.dtype != e.b.dtype:
            raise self.error(f"select arms differ: {e.a.dtype} vs {e.b.dtype}")
        lanes = K.lanes_of(e.a.dtype)
        if K.lanes_of(e.cond.dtype) > 1:   # lane-wise: both arms are evaluated, as on LLVM
            if K.lanes_of(e.cond.dtype) != lanes:
                raise self.error(f"select of {e.a.dtype} values on a {e.cond.dtype} mask")
            a, b, cond = self.expr(e.a), self.expr(e.b), self.expr(e.cond)
            return self.temp(e.a.dtype, f"select({b}, {a}, {cond})")
        cond = self.truth(e.cond)
        if self.speculatable(e.a) and self.speculatable(e.b):
            a, b = self.expr(e.a), self.expr(e.b)
            return self.temp(e.a.dtype, f"{cond} ? {a} : {b}")
        # an arm may fault (out-of-bounds load, division by zero): evaluate only the taken one
        self.temps += 1
        name = f"cnnc_t{self.temps}"
        self.out.line(f"{self.ctype(e.a.dtype)} {name};")
        memo = self.memo
        for opener, arm in ((f"if ({cond}) {{", e.a), ("else {", e.b)):
            self.out.line(opener)
            self.out.indent += 1
            self.memo = dict(memo)   # values made in one arm are not visible in the other
            self.out.line(f"{name} = {self.expr(arm)};")
            self.out.indent -= 1
            self.out.line("}")
        self.memo = memo
        return name

    def nonneg(self, e: K.Expr) -> bool:
        """Whether integer ``e`` is provably >= 0: constants, counters of loops starting
        at >= 0, and sums, products, quotients and remainders of those (index arithmetic)."""
        if isinstance(e, K.Const):
            return e.dtype == "i64" and int(e.value) >= 0
        if isinstance(e, K.Var):
            return e.name in self.counters
        known = self.nonneg_memo.get(id(e))
        if known is None:
            known = (isinstance(e, K.Bin) and e.dtype == "i64"
                     and e.op in ("+", "*", "//", "/", "%", "max", "min")
                     and self.nonneg(e.a) and self.nonneg(e.b))
            self.nonneg_memo[id(e)] = known
        return known

    def speculatable(self, e: K.Expr) -> bool:
        return K.speculatable(e, self.safe_memo)

    def cast(self, e: K.Cast) -> str:
        src, dst = e.value.dtype, e.dtype
        value = self.expr(e.value)
        if K.lanes_of(src) > 1 or K.lanes_of(dst) > 1:
            raise self.error(f"cannot cast {src} to {dst} (vector casts are not supported)")
        self.uses_fp64 |= "f64" in (src, dst)
        if src == dst:
            return value
        if dst == "i1":
            return f"({value} != 0)"
        return f"({self.ctype(dst)})({value})"


def _walk(stmts: Sequence[K.Stmt]):
    for s in stmts:
        yield s
        if isinstance(s, K.Loop):
            yield from _walk(s.body)
        elif isinstance(s, K.If):
            yield from _walk(s.then)
            yield from _walk(s.otherwise)


def _grid(body: list[K.Stmt], max_dims: int) -> tuple[list[K.Loop], list[K.Stmt]]:
    """The loops that become NDRange dimensions and the statements each work-item runs:
    a top-level parallel loop with constant bounds and the parallel loops nested directly
    inside it (each the only statement of its parent's body)."""
    grid: list[K.Loop] = []
    while (len(body) == 1 and isinstance(body[0], K.Loop) and body[0].kind == "parallel"
           and isinstance(body[0].start, K.Const) and isinstance(body[0].stop, K.Const)
           and len(grid) < max_dims):
        grid.append(body[0])
        body = body[0].body
    return grid, body


def _work_group(body: list[K.Stmt]) -> tuple[list[K.Shared], K.Loop | None]:
    """The Shared buffers and "workitems" loop making up ``body`` (the innermost grid
    loop's body), or ([], None) if it is not a work-group's body."""
    if body and isinstance(body[-1], K.Loop) and body[-1].kind == "workitems" and all(
            isinstance(s, K.Shared) for s in body[:-1]):
        return list(body[:-1]), body[-1]
    return [], None


def _narrow_indices(kernel: K.Kernel) -> bool:
    """Whether ``kernel``'s i64 values can be 32-bit ints: it holds no int64 data (no i64
    buffer, local or shared), and every buffer is small enough that offsets into it fit
    (constants are checked while rendering). Its i64 values are then loop counters and
    index arithmetic over buffers of fewer than 2^31 elements."""
    buffers = list(kernel.buffers) + [s.buffer for s in _walk(kernel.body)
                                      if isinstance(s, (K.Local, K.Shared))]
    return all(b.dtype != "i64" and b.size <= NARROW_LIMIT // 4 for b in buffers)


def _c_name(name: str, used: set[str]) -> str:
    base = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name) or "buf"
    if base[0].isdigit():
        base = "b" + base
    candidate, n = base, 1
    while candidate in used:
        n += 1
        candidate = f"{base}_{n}"
    used.add(candidate)
    return candidate


def render_kernel(kernel: K.Kernel, max_dims: int = MAX_DIMS,
                  int_indices: bool = True) -> RenderedKernel:
    """One kernel as OpenCL C (see the module docstring for the mapping); at most
    ``max_dims`` nested parallel loops become NDRange dimensions (a CPU device wants one:
    a few heavy work-items per core, not one per element). ``int_indices``: compute
    indices in 32 bits where the kernel allows (for GPUs; a CPU's 64-bit arithmetic is
    native, and 32-bit offsets then cost sign extensions: ResNet-18 ran ~10% slower so on
    PoCL)."""
    narrow = int_indices and _narrow_indices(kernel)
    while True:
        renderer = _KernelRenderer(kernel, max_dims, narrow)
        with K.deep_recursion():
            try:
                rendered = renderer.render()
                break
            except _Widen:   # an index constant needs 64 bits after all
                narrow = False
            except CnnCompilerError:
                raise
            except (TypeError, ValueError, KeyError, AttributeError) as exc:
                raise renderer.error(f"cannot be rendered as OpenCL C: {exc}") from exc
    if rendered.scratch_bytes:
        rendered.source = f"#define SCRATCH_STRIDE {rendered.scratch_bytes}L\n" + \
            rendered.source + "#undef SCRATCH_STRIDE\n"
    return rendered


def program_source(kernels: Sequence[RenderedKernel]) -> str:
    """One OpenCL C program holding every kernel, with the prelude (and fp64 if needed)."""
    head = []
    if any(k.uses_fp64 for k in kernels):
        head.append("#pragma OPENCL EXTENSION cl_khr_fp64 : enable")
    return "\n".join([*head, PRELUDE, *(k.source for k in kernels)])
