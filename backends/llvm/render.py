"""Render kernel IR (:mod:`cnncompiler.kernel.ir`) as an LLVM IR module (llvmlite.ir).

Each :class:`~cnncompiler.kernel.ir.Kernel` becomes one function

    void name(ptr noalias b0, ptr noalias b1, ...)

whose parameters are the kernel's buffers in order. Element types come from
``Buffer.dtype``: f32 -> float, f64 -> double, i64 -> i64, i1 -> i8 in memory (0 or 1)
and i1 in registers.

Translation rules (the renderer only translates; schedules are decided upstream):

* Declared variables (``Declare``) become entry-block allocas that LLVM's SROA/mem2reg
  promotes to registers; loop indices are ``i64`` phis. ``Loop.start``/``Loop.stop`` are
  evaluated once, before the loop.
* ``Local`` scratch arrays become 32-byte aligned entry-block allocas of ``[N x type]``
  (per call, so per thread).
* ``Loop.kind`` "unroll" attaches an ``llvm.loop.unroll.enable`` hint, "rolled" an
  ``llvm.loop.unroll.disable`` one; "vector" is left to
  LLVM's loop vectoriser and its cost model (a forced hint only produces warnings where it
  cannot apply); "parallel" renders serially (threading is the backend's job).
* Float arithmetic carries the fast-math flags in ``fastmath`` (default: everything of
  ``fast`` except ``nnan``/``ninf``): reassociation lets reductions vectorise, contraction
  turns multiply-adds into FMAs. ``nnan``/``ninf`` are left out on purpose: kernels use
  ``-inf`` as the neutral element of max-reductions, which ``ninf`` would make poison.
* Float ``//`` is ``floor(x / y)`` with a correctly rounded division (no ``arcp``: a
  reciprocal multiply can land just below an exact integer quotient).
* Integer ``//`` and ``%`` have Python (floor) semantics for any signs; LLVM removes the
  sign correction where it can prove the operands non-negative (loop indices). Integer
  ``/`` is floor division too.
* Float ``max``/``min`` use ``llvm.maxnum``/``llvm.minnum`` (a NaN operand yields the
  other operand); integer ones use compare + select.
* ``Select`` is a ``select`` instruction when both arms are safe to evaluate eagerly;
  when an arm contains a ``Load`` or an integer division by a non-constant it becomes a
  branch diamond, so a select guarding an out-of-bounds load (padding) never performs
  that load. Lowerings that want a branch-free select should clamp the index instead
  (``Load(x, select(inside, idx, 0))``).
* ``and``/``or`` evaluate both operands (no short circuit).
* exp/log/tanh/erf on f32 (scalars and vectors) are inlined IR from :mod:`.mathlib`
  (branch free, so loops over them vectorise; within ~2 ulp of libm, same inf/NaN/zero
  results); f64 exp/log/tanh/erf and pow call libm (``powf`` for f32, ``exp``... for f64);
  sqrt/abs/floor/ceil use LLVM intrinsics; neg is ``fneg``.

Errors a kernel can cause (unknown variable, mismatched types, unsupported construct)
raise :class:`~cnncompiler.errors.CnnCompilerError` naming the kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

from cnncompiler.errors import BackendUnavailableError, CnnCompilerError
from cnncompiler.kernel import ir as K
from cnncompiler.kernel.ir import deep_recursion

try:  # llvmlite is an optional dependency: the backend reports itself unavailable without it
    from llvmlite import ir
except ImportError:  # pragma: no cover - exercised only without llvmlite
    ir = None  # type: ignore[assignment]

#: ``fast`` without ``nnan``/``ninf`` (see the module docstring).
DEFAULT_FASTMATH: tuple[str, ...] = ("reassoc", "nsz", "arcp", "contract", "afn")

_LIBM = {"exp": "exp", "log": "log", "tanh": "tanh", "erf": "erf", "pow": "pow"}
_INTRINSIC = {"sqrt": "sqrt", "abs": "fabs", "floor": "floor", "ceil": "ceil"}
_FCMP = {"<": "<", "<=": "<=", ">": ">", ">=": ">=", "==": "=="}
_INT_DIV = ("//", "%", "/")


def _require_llvmlite() -> None:
    if ir is None:
        raise BackendUnavailableError(
            "the LLVM backend needs llvmlite (pip install llvmlite); it is not installed"
        )


def _value_type(dtype: str):
    """The LLVM type of a value of ``dtype`` held in a register (``f32x8`` -> <8 x float>)."""
    if K.lanes_of(dtype) > 1:
        return ir.VectorType(_value_type(K.scalar_of(dtype)), K.lanes_of(dtype))
    if dtype == "f32":
        return ir.FloatType()
    if dtype == "f64":
        return ir.DoubleType()
    if dtype == "i64":
        return ir.IntType(64)
    if dtype == "i1":
        return ir.IntType(1)
    raise CnnCompilerError(f"unknown scalar type {dtype!r}")


def _memory_type(dtype: str):
    """The LLVM type of an element of a buffer of ``dtype`` (bools are stored as bytes)."""
    return ir.IntType(8) if dtype == "i1" else _value_type(dtype)


def _alignment(dtype: str) -> int:
    return {"f32": 4, "f64": 8, "i64": 8, "i1": 1}[dtype]


def _metadata_string(module, text: str):
    return ir.MetaDataString(module, text)


def _loop_id(module, hints: Sequence[tuple[str, object]]):
    """A fresh self-referential loop-ID node ``!N = !{!N, !{"hint", value}...}``."""
    operands = []
    for key, value in hints:
        if isinstance(value, bool):
            operands.append(module.add_metadata(
                [_metadata_string(module, key), ir.Constant(ir.IntType(1), int(value))]))
        else:
            operands.append(module.add_metadata(
                [_metadata_string(module, key), ir.Constant(ir.IntType(32), int(value))]))
    node = ir.values.MDValue(module, [], name=str(len(module.metadata)))
    node.operands = (node, *operands)
    return node


_LOOP_HINTS: dict[str, tuple[tuple[str, object], ...]] = {
    "unroll": (("llvm.loop.unroll.enable", True),),
    "rolled": (("llvm.loop.unroll.disable", True),),
}


class _Declarations:
    """Lazily declared external functions and intrinsics of one module."""

    def __init__(self, module) -> None:
        self.module = module
        self.cache: dict[str, object] = {}

    def get(self, name: str, ret, args: Sequence, pure: bool = True):
        fn = self.cache.get(name)
        if fn is None:
            existing = self.module.globals.get(name)
            if existing is not None:
                fn = existing
            else:
                fn = ir.Function(self.module, ir.FunctionType(ret, list(args)), name=name)
                fn.attributes.add("nounwind")
                if pure:
                    fn.attributes.add("readnone")
            self.cache[name] = fn
        return fn


class _KernelRenderer:
    def __init__(self, module, decls: _Declarations, kernel: K.Kernel,
                 fastmath: tuple[str, ...], noalias: bool, threaded: bool = False) -> None:
        self.threaded = threaded
        self.depth = 0
        self.module = module
        self.decls = decls
        self.kernel = kernel
        self.fastmath = fastmath
        self.noalias = noalias
        self.buffers: dict[int, object] = {}  # id(Buffer) -> pointer argument
        self.scope: dict[str, tuple[str, object, str]] = {}  # name -> (kind, value, dtype)
        self.memo: dict[int, tuple[K.Expr, object]] = {}
        self.safe_memo: dict[int, bool] = {}

    # ------------------------------------------------------------------ errors
    def error(self, message: str) -> CnnCompilerError:
        return CnnCompilerError(f"kernel '{self.kernel.name}': {message}")

    # ------------------------------------------------------------------ function
    def render(self):
        kernel = self.kernel
        if kernel.name in self.module.globals:
            raise self.error("a function of this name is already in the module")
        ptr = ir.PointerType()
        extra = [ir.IntType(64)] * 2 if self.threaded else []  # (thread index, threads)
        fnty = ir.FunctionType(ir.VoidType(), [ptr] * len(kernel.buffers) + extra)
        fn = ir.Function(self.module, fnty, name=kernel.name)
        fn.attributes.add("nounwind")
        # Kernels are called from entry functions; inlining them there only costs compile
        # time (the exported copy stays), so keep them out of line.
        fn.attributes.add("noinline")
        seen: set[int] = set()
        for arg, buf in zip(fn.args, kernel.buffers):
            if id(buf) in seen:
                raise self.error(f"buffer '{buf.name}' is a parameter twice")
            seen.add(id(buf))
            if buf.dtype not in K.SCALAR_TYPES:
                raise self.error(f"buffer '{buf.name}' has unknown dtype {buf.dtype!r}")
            arg.name = _arg_name(buf.name)
            if self.noalias:
                arg.add_attribute("noalias")
            self.buffers[id(buf)] = arg
        entry = fn.append_basic_block("entry")
        self.fn = fn
        self.entry = entry
        self.alloca_builder = ir.IRBuilder(entry)
        body = fn.append_basic_block("body")
        self.builder = ir.IRBuilder(entry)
        self.builder.branch(body)
        self.builder.position_at_end(body)
        if self.threaded:
            self.tid, self.nthreads = fn.args[len(kernel.buffers):]
            split = any(isinstance(s, K.Loop) and s.kind == "parallel" for s in kernel.body)
            if not split:  # nothing to share: thread 0 runs it, the others skip it
                work = fn.append_basic_block("work")
                done = fn.append_basic_block("skip")
                self.builder.cbranch(self.builder.icmp_signed(
                    "==", self.tid, ir.Constant(ir.IntType(64), 0)), work, done)
                self.builder.position_at_end(done)
                self.builder.ret_void()
                self.builder.position_at_end(work)
        self.block(kernel.body)
        self.builder.ret_void()
        return fn

    # ------------------------------------------------------------------ statements
    def block(self, stmts: Sequence[K.Stmt]) -> None:
        for stmt in stmts:
            self.memo = {}
            self.stmt(stmt)

    def stmt(self, s: K.Stmt) -> None:
        b = self.builder
        if isinstance(s, K.Store):
            ptr = self.address(s.buffer, s.index)
            value = self.expr(s.value)
            if K.scalar_of(s.value.dtype) != s.buffer.dtype or (
                    K.lanes_of(s.value.dtype) > 1 and s.buffer.dtype == "i1"):
                raise self.error(f"store of a {s.value.dtype} value into {s.buffer.dtype} "
                                 f"buffer '{s.buffer.name}'")
            if s.buffer.dtype == "i1":
                value = b.zext(value, ir.IntType(8))
            b.store(value, ptr, align=_alignment(s.buffer.dtype))
        elif isinstance(s, K.Declare):
            if s.init.dtype != s.var.dtype:
                raise self.error(f"variable '{s.var.name}' ({s.var.dtype}) initialised with "
                                 f"a {s.init.dtype} value")
            value = self.expr(s.init)
            slot = self.alloca(s.var)
            b.store(value, slot)
            self.scope[s.var.name] = ("mutable", slot, s.var.dtype)
        elif isinstance(s, K.Assign):
            kind, slot, dtype = self.lookup(s.var)
            if kind != "mutable":
                raise self.error(f"assignment to loop index '{s.var.name}'")
            if s.value.dtype != dtype:
                raise self.error(f"variable '{s.var.name}' ({dtype}) assigned a "
                                 f"{s.value.dtype} value")
            b.store(self.expr(s.value), slot)
        elif isinstance(s, K.Loop):
            self.loop(s)
        elif isinstance(s, K.If):
            self.if_(s)
        elif isinstance(s, K.Local):
            self.local(s.buffer)
        elif isinstance(s, (K.Shared, K.Barrier)):
            raise self.error(f"{type(s).__name__} belongs to the gpu schedule's work-groups, "
                             f"which CPU threads do not run")
        else:
            raise self.error(f"unsupported statement {type(s).__name__}")

    def local(self, buf: K.Buffer) -> None:
        """A ``Local`` scratch array: an entry-block alloca, so one per call."""
        if id(buf) in self.buffers:
            raise self.error(f"local buffer '{buf.name}' is already defined")
        if buf.dtype not in K.SCALAR_TYPES:
            raise self.error(f"local buffer '{buf.name}' has unknown dtype {buf.dtype!r}")
        ab = self.alloca_builder
        ab.position_at_start(self.entry)
        slot = ab.alloca(ir.ArrayType(_memory_type(buf.dtype), buf.size), name=buf.name)
        slot.align = 32
        slot.type = ir.PointerType()   # opaque, like the parameters (indexed by element)
        self.buffers[id(buf)] = slot

    def alloca(self, var: K.Var):
        ab = self.alloca_builder
        ab.position_at_start(self.entry)
        return ab.alloca(_value_type(var.dtype), name=var.name)

    def lookup(self, var: K.Var):
        try:
            return self.scope[var.name]
        except KeyError:
            raise self.error(f"variable '{var.name}' is used outside its loop or before "
                             f"its Declare") from None

    def loop(self, s: K.Loop) -> None:
        b = self.builder
        if s.var.dtype != "i64":
            raise self.error(f"loop index '{s.var.name}' must be i64, not {s.var.dtype}")
        for bound in (s.start, s.stop):
            if bound.dtype != "i64":
                raise self.error(f"bounds of loop '{s.var.name}' must be i64")
        start = self.expr(s.start)
        stop = self.expr(s.stop)
        if self.threaded and s.kind == "parallel" and self.depth == 0:
            # this thread's share: [start + total*tid/n, start + total*(tid+1)/n)
            total = b.sub(stop, start)
            first = b.sdiv(b.mul(total, self.tid), self.nthreads)
            last = b.sdiv(b.mul(total, b.add(self.tid, ir.Constant(ir.IntType(64), 1))),
                          self.nthreads)
            start, stop = b.add(start, first), b.add(start, last)
        self.depth += 1
        name = s.var.name
        pre = b.block
        header = self.fn.append_basic_block(f"{name}.header")
        body = self.fn.append_basic_block(f"{name}.body")
        latch = self.fn.append_basic_block(f"{name}.latch")
        exit_ = self.fn.append_basic_block(f"{name}.exit")
        b.branch(header)
        b.position_at_end(header)
        index = b.phi(ir.IntType(64), name=name)
        index.add_incoming(start, pre)
        b.cbranch(b.icmp_signed("<", index, stop, name=f"{name}.cond"), body, exit_)
        b.position_at_end(body)
        saved = dict(self.scope)
        self.scope[name] = ("index", index, "i64")
        self.block(s.body)
        b.branch(latch)
        b.position_at_end(latch)
        nxt = b.add(index, ir.Constant(ir.IntType(64), 1), name=f"{name}.next", flags=("nsw",))
        index.add_incoming(nxt, latch)
        back = b.branch(header)
        hints = _LOOP_HINTS.get(s.kind)
        if hints is None and s.kind not in ("serial", "parallel", "vector"):
            raise self.error(f"unknown loop kind {s.kind!r} on loop '{name}'")
        if hints:
            back.set_metadata("llvm.loop", _loop_id(self.module, hints))
        b.position_at_end(exit_)
        self.depth -= 1
        self.scope = saved  # names declared in the body go out of scope
        self.memo = {}

    def if_(self, s: K.If) -> None:
        b = self.builder
        cond = self.truth(s.cond)
        then = self.fn.append_basic_block("if.then")
        merge = self.fn.append_basic_block("if.end")
        other = self.fn.append_basic_block("if.else") if s.otherwise else merge
        b.cbranch(cond, then, other)
        scope = dict(self.scope)
        b.position_at_end(then)
        self.block(s.then)
        b.branch(merge)
        self.scope = dict(scope)
        if s.otherwise:
            b.position_at_end(other)
            self.block(s.otherwise)
            b.branch(merge)
            self.scope = scope
        b.position_at_end(merge)
        self.memo = {}

    # ------------------------------------------------------------------ expressions
    def address(self, buffer: K.Buffer, index: K.Expr):
        arg = self.buffers.get(id(buffer))
        if arg is None:
            raise self.error(f"buffer '{buffer.name}' is not a parameter of the kernel")
        if index.dtype != "i64":
            raise self.error(f"index into '{buffer.name}' must be i64, not {index.dtype}")
        idx = self.expr(index)
        return self.builder.gep(arg, [idx], inbounds=True,
                                source_etype=_memory_type(buffer.dtype))

    def truth(self, e: K.Expr):
        """``e`` as an i1 condition (non-zero is true)."""
        value = self.expr(e)
        if K.scalar_of(e.dtype) == "i1":
            return value
        if K.lanes_of(e.dtype) > 1:
            raise self.error(f"a {e.dtype} vector used as a condition")
        if e.dtype in ("f32", "f64"):
            return self.builder.fcmp_unordered("!=", value, ir.Constant(value.type, 0.0))
        return self.builder.icmp_signed("!=", value, ir.Constant(value.type, 0))

    def expr(self, e: K.Expr):
        hit = self.memo.get(id(e))
        if hit is not None:
            return hit[1]
        value = self._expr(e)
        self.memo[id(e)] = (e, value)
        return value

    def _expr(self, e: K.Expr):
        b = self.builder
        if isinstance(e, K.Const):
            if e.dtype in ("f32", "f64"):
                return ir.Constant(_value_type(e.dtype), float(e.value))
            if e.dtype == "i1":
                return ir.Constant(ir.IntType(1), int(bool(e.value)))
            return ir.Constant(_value_type(e.dtype), int(e.value))
        if isinstance(e, K.Var):
            kind, value, dtype = self.lookup(e)
            if dtype != e.dtype:
                raise self.error(f"variable '{e.name}' is {dtype} but used as {e.dtype}")
            if kind == "index":
                return value
            return b.load(value, name=e.name, typ=_value_type(dtype))
        if isinstance(e, K.Load):
            ptr = self.address(e.buffer, e.index)
            if e.lanes > 1:   # contiguous lanes; element alignment (vmovups on x86)
                if e.buffer.dtype == "i1":
                    raise self.error(f"vector load from bool buffer '{e.buffer.name}'")
                return b.load(ptr, typ=_value_type(e.dtype), align=_alignment(e.buffer.dtype))
            value = b.load(ptr, typ=_memory_type(e.buffer.dtype),
                           align=_alignment(e.buffer.dtype))
            if e.buffer.dtype == "i1":
                value = b.icmp_unsigned("!=", value, ir.Constant(ir.IntType(8), 0))
            return value
        if isinstance(e, K.Broadcast):
            x = self.expr(e.value)
            vty = _value_type(e.dtype)
            i32 = ir.IntType(32)
            one = b.insert_element(ir.Constant(vty, ir.Undefined), x, ir.Constant(i32, 0))
            return b.shuffle_vector(one, one, ir.Constant(ir.VectorType(i32, e.lanes),
                                                          [0] * e.lanes))
        if isinstance(e, K.Extract):
            if not 0 <= e.lane < K.lanes_of(e.value.dtype):
                raise self.error(f"lane {e.lane} of a {e.value.dtype} value")
            return b.extract_element(self.expr(e.value), ir.Constant(ir.IntType(32), e.lane))
        if isinstance(e, K.Bin):
            return self.binary(e)
        if isinstance(e, K.Call):
            return self.call(e)
        if isinstance(e, K.Select):
            return self.select(e)
        if isinstance(e, K.Cast):
            return self.cast(self.expr(e.value), e.value.dtype, e.dtype)
        raise self.error(f"unsupported expression {type(e).__name__}")

    def binary(self, e: K.Bin):
        b = self.builder
        op, dtype = e.op, e.a.dtype
        x = self.expr(e.a)
        y = self.expr(e.b)
        is_float = K.scalar_of(dtype) in ("f32", "f64")
        if op in K.COMPARE:
            if is_float:
                if op == "!=":  # true for NaN, like Python
                    return b.fcmp_unordered("!=", x, y)
                return b.fcmp_ordered(_FCMP[op], x, y)
            return b.icmp_signed(op, x, y)
        if op in K.LOGIC:
            if is_float:
                raise self.error(f"'{op}' of {dtype} values")
            return b.and_(x, y) if op == "and" else b.or_(x, y)
        if is_float:
            fm = self.fastmath
            if op == "+":
                return b.fadd(x, y, flags=fm)
            if op == "-":
                return b.fsub(x, y, flags=fm)
            if op == "*":
                return b.fmul(x, y, flags=fm)
            if op == "/":
                return b.fdiv(x, y, flags=fm)
            if op in ("max", "min"):
                name = f"llvm.{'maxnum' if op == 'max' else 'minnum'}.{_suffix(dtype)}"
                fn = self.decls.get(name, x.type, [x.type, x.type])
                return b.call(fn, [x, y], fastmath=fm)
            if op == "%":  # Python semantics: result has the sign of the divisor
                r = b.frem(x, y, flags=fm)
                zero = ir.Constant(x.type, 0.0)
                fix = b.and_(b.fcmp_ordered("!=", r, zero),
                             b.xor(b.fcmp_ordered("<", r, zero), b.fcmp_ordered("<", y, zero)))
                return b.select(fix, b.fadd(r, y, flags=fm), r)
            if op == "//":
                # an exact quotient: with arcp, x / c becomes x * (1/c), which is just below
                # an integer for some exact multiples (41 * fl(1/41) < 1), and floor then
                # drops a whole unit
                q = b.fdiv(x, y, flags=_exact(fm))
                fn = self.decls.get(f"llvm.floor.{_suffix(dtype)}", x.type, [x.type])
                return b.call(fn, [q], fastmath=fm)
            raise self.error(f"unsupported float operator {op!r}")
        if K.lanes_of(dtype) > 1:
            raise self.error(f"integer vector operator {op!r} is not supported")
        if dtype == "i1" and op in ("+", "-", "*", "max", "min"):
            raise self.error(f"arithmetic '{op}' on i1 values")
        if op == "+":
            return b.add(x, y, flags=("nsw",))
        if op == "-":
            return b.sub(x, y, flags=("nsw",))
        if op == "*":
            return b.mul(x, y, flags=("nsw",))
        if op == "max":
            return b.select(b.icmp_signed(">", x, y), x, y)
        if op == "min":
            return b.select(b.icmp_signed("<", x, y), x, y)
        if op in _INT_DIV:
            return self.floor_divmod(op, x, y)
        raise self.error(f"unsupported integer operator {op!r}")

    def floor_divmod(self, op: str, x, y):
        """Python ``x // y`` / ``x % y`` (round toward -inf, remainder has y's sign)."""
        b = self.builder
        zero = ir.Constant(x.type, 0)
        q = b.sdiv(x, y)
        r = b.srem(x, y)
        # the truncating result is off by one when the remainder is non-zero and its sign
        # differs from the divisor's; instcombine drops this when signs are known
        fix = b.and_(b.icmp_signed("!=", r, zero), b.icmp_signed("<", b.xor(r, y), zero))
        if op == "%":
            return b.select(fix, b.add(r, y), r)
        return b.sub(q, b.zext(fix, x.type))

    def call(self, e: K.Call):
        b = self.builder
        fn_name = e.fn
        args = [self.expr(a) for a in e.args]
        expected = K.ARITY.get(fn_name, 1)
        if len(args) != expected:
            raise self.error(f"{fn_name} takes {expected} argument(s), got {len(args)}")
        dtype = e.args[0].dtype
        if any(a.dtype != dtype for a in e.args):
            raise self.error(f"arguments of {fn_name} differ in type")
        if dtype != e.dtype:
            raise self.error(f"{fn_name} of {dtype} declared to return {e.dtype}")
        x = args[0]
        fm = self.fastmath
        if K.scalar_of(dtype) == "f32" and fn_name in ("exp", "log", "tanh", "erf"):
            from cnncompiler.backends.llvm import mathlib  # imports llvmlite

            return b.call(mathlib.function(self.module, fn_name, x.type), [x])
        if fn_name == "fma" and K.scalar_of(dtype) in ("f32", "f64"):
            fn = self.decls.get(f"llvm.fma.{_suffix(dtype)}", x.type, [x.type] * 3)
            return b.call(fn, args, fastmath=fm)
        if K.scalar_of(dtype) in ("f32", "f64"):   # scalars and vectors
            if fn_name == "neg":
                return b.fneg(x, flags=fm)
            if fn_name in _INTRINSIC:
                fn = self.decls.get(f"llvm.{_INTRINSIC[fn_name]}.{_suffix(dtype)}",
                                    x.type, [x.type])
                return b.call(fn, [x], fastmath=fm)
            if K.lanes_of(dtype) > 1:
                raise self.error(f"{fn_name} of {dtype} vectors is not supported")
            libm = _LIBM[fn_name] + ("f" if dtype == "f32" else "")
            fn = self.decls.get(libm, x.type, [x.type] * len(args))
            return b.call(fn, args, fastmath=fm)
        if dtype == "i64":
            if fn_name == "neg":
                return b.sub(ir.Constant(x.type, 0), x, flags=("nsw",))
            if fn_name == "abs":
                neg = b.sub(ir.Constant(x.type, 0), x)
                return b.select(b.icmp_signed("<", x, ir.Constant(x.type, 0)), neg, x)
            if fn_name in ("floor", "ceil"):
                return x
        raise self.error(f"{fn_name} of {dtype} values is not supported")

    def select(self, e: K.Select):
        b = self.builder
        if e.a.dtype != e.b.dtype:
            raise self.error(f"select arms differ: {e.a.dtype} vs {e.b.dtype}")
        cond = self.truth(e.cond)
        if self.speculatable(e.a) and self.speculatable(e.b):
            return b.select(cond, self.expr(e.a), self.expr(e.b))
        # an arm may fault (out-of-bounds load, division by zero): branch around it
        then = self.fn.append_basic_block("sel.then")
        other = self.fn.append_basic_block("sel.else")
        merge = self.fn.append_basic_block("sel.end")
        b.cbranch(cond, then, other)
        memo = self.memo
        incoming = []
        for block, arm in ((then, e.a), (other, e.b)):
            b.position_at_end(block)
            self.memo = dict(memo)  # values made in one arm do not dominate the other
            value = self.expr(arm)
            incoming.append((value, b.block))
            b.branch(merge)
        self.memo = memo
        b.position_at_end(merge)
        phi = b.phi(_value_type(e.a.dtype))
        for value, block in incoming:
            phi.add_incoming(value, block)
        return phi

    def speculatable(self, e: K.Expr) -> bool:
        return K.speculatable(e, self.safe_memo)

    def cast(self, value, src: str, dst: str):
        b = self.builder
        if src == dst:
            return value
        if K.lanes_of(src) > 1 or K.lanes_of(dst) > 1:
            raise self.error(f"cannot cast {src} to {dst} (vector casts are not supported)")
        floats = ("f32", "f64")
        target = _value_type(dst)
        if src in floats and dst in floats:
            return b.fpext(value, target) if dst == "f64" else b.fptrunc(value, target)
        if src in floats:
            if dst == "i1":
                return b.fcmp_unordered("!=", value, ir.Constant(value.type, 0.0))
            return b.fptosi(value, target)
        if src == "i1":
            return b.uitofp(value, target) if dst in floats else b.zext(value, target)
        if src == "i64":
            if dst in floats:
                return b.sitofp(value, target)
            if dst == "i1":
                return b.icmp_signed("!=", value, ir.Constant(value.type, 0))
        raise self.error(f"cannot cast {src} to {dst}")


def _exact(fastmath: tuple[str, ...]) -> tuple[str, ...]:
    """``fastmath`` without the flags that let LLVM change a result's rounding."""
    return tuple(f for f in fastmath if f not in ("reassoc", "arcp", "afn", "fast"))


def _suffix(dtype: str) -> str:
    """Intrinsic name suffix: f32, f64, v8f32..."""
    base = "f32" if K.scalar_of(dtype) == "f32" else "f64"
    lanes = K.lanes_of(dtype)
    return f"v{lanes}{base}" if lanes > 1 else base


def _arg_name(name: str) -> str:
    return name or "buf"


# ---------------------------------------------------------------------- public API
def render_module(kernels: Sequence[K.Kernel], module_name: str = "cnncompiler", *,
                  fastmath: Sequence[str] = DEFAULT_FASTMATH, noalias: bool = True,
                  threaded: bool = False):
    """One llvmlite module holding one ``void name(ptr, ...)`` function per kernel.

    ``noalias`` marks every buffer parameter ``noalias``: callers must then never pass
    overlapping memory for two buffers of one call (in-place kernels get one buffer).
    ``threaded`` adds ``(i64 tid, i64 nthreads)`` parameters: each thread runs its share of
    the kernel's top-level parallel loop (kernels without one run on thread 0 only).
    """
    _require_llvmlite()
    module = ir.Module(name=module_name)
    decls = _Declarations(module)
    flags = tuple(fastmath)
    with deep_recursion():
        for kernel in kernels:
            renderer = _KernelRenderer(module, decls, kernel, flags, noalias, threaded)
            try:
                renderer.render()
            except CnnCompilerError:
                raise
            except (TypeError, ValueError, KeyError, AssertionError) as exc:
                raise renderer.error(f"cannot be rendered for LLVM: {exc}") from exc
    return module


def _barrier(module):
    """``void cnnc_barrier(ptr state, i64 n)``: a generation-counting barrier for ``n``
    threads (state[0] = arrivals, state[1] = generation). Waiters yield the CPU while they
    spin, so a busy other core slows the model down instead of stalling it."""
    existing = module.globals.get("cnnc_barrier")
    if existing is not None:
        return existing
    i64, ptr = ir.IntType(64), ir.PointerType()
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [ptr, i64]), name="cnnc_barrier")
    fn.attributes.add("noinline")
    state, n = fn.args
    sched_yield = ir.Function(module, ir.FunctionType(ir.IntType(32), []), name="sched_yield")
    entry, release, wait, pause, done = (fn.append_basic_block(x) for x in
                                         ("entry", "release", "wait", "yield", "done"))
    b = ir.IRBuilder(entry)
    gen_ptr = b.gep(state, [ir.Constant(i64, 1)], source_etype=i64)
    gen = b.load_atomic(gen_ptr, "acquire", 8, typ=i64)
    old = b.atomic_rmw("add", state, ir.Constant(i64, 1), "acq_rel")
    b.cbranch(b.icmp_signed("==", old, b.sub(n, ir.Constant(i64, 1))), release, wait)
    b.position_at_end(release)   # the last to arrive resets the count and opens the gate
    b.atomic_rmw("xchg", state, ir.Constant(i64, 0), "monotonic")  # (store_atomic needs
    #                                                      typed pointers in llvmlite 0.50)
    b.atomic_rmw("add", gen_ptr, ir.Constant(i64, 1), "release")
    b.ret_void()
    b.position_at_end(wait)
    now = b.load_atomic(gen_ptr, "acquire", 8, typ=i64)
    b.cbranch(b.icmp_signed("!=", now, gen), done, pause)
    b.position_at_end(pause)
    b.call(sched_yield, [])
    b.branch(wait)
    b.position_at_end(done)
    b.ret_void()
    return fn


def add_entry(module, name: str, calls: Sequence[tuple[str, Sequence[tuple[int, int]]]],
              num_args: int, threaded: bool = False):
    """Define ``void name(ptr args)`` that runs several kernels in one native call (kernels
    not defined in ``module`` are declared: another object defines them).

    ``args`` points at ``num_args`` pointers. Each call is ``(kernel name, bindings)``
    with one ``(arg_index, byte_offset)`` per kernel buffer: the kernel gets
    ``(char*)args[arg_index] + byte_offset``. Calls run in order.
    """
    _require_llvmlite()
    if name in module.globals:
        raise CnnCompilerError(f"entry '{name}': a function of this name is already defined")
    ptr = ir.PointerType()
    i64 = ir.IntType(64)
    params = [ptr, i64, i64, ptr] if threaded else [ptr]  # args, tid, nthreads, barrier
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), params), name=name)
    fn.attributes.add("nounwind")
    fn.args[0].name = "args"
    barrier = _barrier(module) if threaded else None
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    bases: dict[int, object] = {}

    def base(index: int):
        if index not in bases:
            if not 0 <= index < num_args:
                raise CnnCompilerError(
                    f"entry '{name}': argument index {index} outside 0..{num_args - 1}")
            slot = b.gep(fn.args[0], [ir.Constant(ir.IntType(64), index)], inbounds=True,
                         source_etype=ptr)
            bases[index] = b.load(slot, name=f"arg{index}", typ=ptr, align=8)
        return bases[index]

    for kernel_name, bindings in calls:
        target = module.globals.get(kernel_name)
        if target is None:   # defined in another module (object) the JIT links with this one
            extra = [i64, i64] if threaded else []
            target = ir.Function(module, ir.FunctionType(ir.VoidType(),
                                                         [ptr] * len(bindings) + extra),
                                 name=kernel_name)
        if not isinstance(target, ir.Function):
            raise CnnCompilerError(f"entry '{name}': '{kernel_name}' is not a function in "
                                   f"module '{module.name}'")
        if len(bindings) + (2 if threaded else 0) != len(target.args):
            raise CnnCompilerError(f"entry '{name}': kernel '{kernel_name}' takes "
                                   f"{len(target.args)} buffers, got {len(bindings)}")
        pointers = []
        for index, offset in bindings:
            p = base(int(index))
            if offset:
                p = b.gep(p, [ir.Constant(ir.IntType(64), int(offset))], inbounds=True,
                          source_etype=ir.IntType(8))
            pointers.append(p)
        if threaded:
            b.call(target, [*pointers, fn.args[1], fn.args[2]])
            b.call(barrier, [fn.args[3], fn.args[2]])  # the next kernel reads this one's output
        else:
            b.call(target, pointers)
    b.ret_void()
    return fn
