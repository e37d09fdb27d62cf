"""Lowerings of the reductions (Reduce*, ArgMax/ArgMin): a loop over the reduced axes with
a register accumulator per output element."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from cnncompiler.ir.graph import Node
from cnncompiler.kernel import ir as K
from cnncompiler.kernel.common import (
    Element,
    constant,
    infer_context,
    kdtype,
    shape_of,
)

if TYPE_CHECKING:
    from cnncompiler.kernel.lower import KernelBuilder


def _as_float(fn: Callable[[K.Expr], K.Expr]) -> Callable[[K.Expr], K.Expr]:
    """``fn`` of an int64 accumulator evaluated in float64 and truncated toward zero, as
    the reference's astype does (floats pass through)."""
    def wrapped(acc: K.Expr) -> K.Expr:
        if acc.dtype != "i64":
            return fn(acc)
        return K.Cast(fn(K.Cast(acc, "f64")), "i64")
    return wrapped


#: the lowest and highest int64 / float values: the start of a running max / min
LIMITS = {"i64": (-2**63, 2**63 - 1), "f32": (-math.inf, math.inf), "f64": (-math.inf, math.inf)}


def _extreme_step(high: bool, dtype: str) -> Callable[[K.Expr, K.Expr], K.Expr]:
    """acc <- max(acc, x) (or min); a bool maximum is "any", a bool minimum "all"; a float
    NaN wins and stays, as in numpy (llvm.maxnum alone would drop it)."""
    if dtype == "i1":
        return lambda a, x: K.Bin("or" if high else "and", a, x)
    pick = K.maximum if high else K.minimum
    if dtype == "i64":
        return pick

    def step(a: K.Expr, x: K.Expr) -> K.Expr:
        nan = K.Bin("or", K.Bin("!=", a, a), K.Bin("!=", x, x))
        return K.select(nan, a + x, pick(a, x))
    return step


def _reducer(op: str, dtype: str, count: int) -> tuple[K.Expr, Callable, Callable | None]:
    """(initial value, step(acc, x), finish(acc) or None) of the Reduce ``op`` on ``dtype``
    elements, ``count`` of them per output element."""
    if op in ("ReduceMax", "ReduceMin"):
        high = op == "ReduceMax"
        low, top = LIMITS.get(dtype, (0, 1))   # bools: any starts false, all starts true
        return constant(low if high else top, dtype), _extreme_step(high, dtype), None
    add = lambda a, x: a + x  # noqa: E731
    square = lambda a, x: a + x * x  # noqa: E731
    init, step, finish = {
        "ReduceSum": (0, add, None),
        "ReduceMean": (0, add, _as_float(lambda a: a / float(count))),
        "ReduceProd": (1, lambda a, x: a * x, None),
        "ReduceSumSquare": (0, square, None),
        "ReduceL1": (0, lambda a, x: a + K.call("abs", x), None),
        "ReduceL2": (0, square, _as_float(lambda a: K.call("sqrt", a))),
        "ReduceLogSum": (0, add, lambda a: K.call("log", a)),
    }[op]
    return constant(init, dtype), step, finish


def _reduction_loops(kb: KernelBuilder, node: Node, idx: list[K.Expr],
                     body: Callable[[K.Expr], list[K.Stmt]]) -> list[K.Stmt]:
    """Loops over the reduced axes of the input; ``body(x)`` gets the element read at the
    output index ``idx`` combined with the loop indices (no loop for a no-op reduction)."""
    from cnncompiler.ops.reduce_ops import reduce_axes

    x = node.inputs[0]
    xs = shape_of(x)
    axes = reduce_axes(infer_context(node), len(xs))
    loops = {d: kb.fresh("r") for d in axes}
    kept = iter(idx)
    where: list[K.Expr] = []
    for d in range(len(xs)):
        if d in loops:
            where.append(loops[d])
            if node.attrs["keepdims"]:
                next(kept)   # the size-1 output axis
        else:
            where.append(next(kept))
    stmts, value = kb.element(x, where)
    inner = stmts + body(value)
    for d in reversed(axes):
        inner = [K.Loop(loops[d], K.Const(0), K.Const(xs[d]), inner)]
    return inner


def lower_reduce(kb: KernelBuilder, node: Node, idx: list[K.Expr]) -> Element:
    """One register accumulator per output element, over the reduced axes."""
    x = node.inputs[0]
    dtype = kdtype(node.outputs[0])
    count = math.prod(shape_of(x)) // math.prod(shape_of(node.outputs[0]))
    init, step, finish = _reducer(node.op, dtype, count)
    acc = kb.fresh("acc", dtype)
    # the element goes to a variable first: a select reading a load directly would branch
    v = kb.fresh("v", kdtype(x))
    loops = _reduction_loops(kb, node, idx, lambda e: [K.Declare(v, e),
                                                       K.Assign(acc, step(acc, v))])
    return [K.Declare(acc, init), *loops], acc if finish is None else finish(acc)


def lower_reduce_log_sum_exp(kb: KernelBuilder, node: Node, idx: list[K.Expr]) -> Element:
    """log(sum(e^(x - m))) + m with m the maximum (0 where it is not finite), as the
    reference: two passes, so e^ never overflows."""
    dtype = kdtype(node.outputs[0])
    m, s = kb.fresh("m", dtype), kb.fresh("s", dtype)
    first = _reduction_loops(kb, node, idx, lambda v: [K.Assign(m, K.maximum(m, v))])
    finite = K.Bin("and", m.gt(-math.inf), m.lt(math.inf))
    shift = kb.fresh("shift", dtype)
    second = _reduction_loops(kb, node, idx,
                              lambda v: [K.Assign(s, s + K.call("exp", v - shift))])
    stmts = [K.Declare(m, K.Const(-math.inf, dtype)), *first,
             K.Declare(shift, K.select(finite, m, 0.0)), K.Declare(s, K.Const(0.0, dtype)),
             *second]
    return stmts, K.call("log", s) + shift


def lower_arg_extreme(kb: KernelBuilder, node: Node, idx: list[K.Expr]) -> Element:
    """ArgMax/ArgMin: the index of the first extreme along the axis (the last with
    select_last_index); a NaN counts as the extreme, as in numpy."""
    x = node.inputs[0]
    xs = shape_of(x)
    axis = node.attrs["axis"] % len(xs)
    dtype = kdtype(x)
    base = list(idx) if node.attrs["keepdims"] else [*idx[:axis], K.Const(0), *idx[axis:]]
    j = kb.fresh("j")
    s0, first = kb.element(x, [*base[:axis], K.Const(0), *base[axis + 1:]])
    sj, v = kb.element(x, [*base[:axis], j, *base[axis + 1:]])
    best, arg, cur = kb.fresh("best", dtype), kb.fresh("arg"), kb.fresh("v", dtype)
    last = node.attrs["select_last_index"]
    if node.op == "ArgMax":
        better = cur.ge(best) if last else cur.gt(best)
    else:
        better = cur.le(best) if last else cur.lt(best)
    if dtype in ("f32", "f64"):
        nan = K.Bin("!=", cur, cur)
        better = K.Bin("or", better, nan if last else K.Bin("and", nan, best.eq(best)))
    body = sj + [K.Declare(cur, v), K.Assign(arg, K.select(better, j, arg)),
                 K.Assign(best, K.select(better, cur, best))]
    stmts = s0 + [K.Declare(best, first), K.Declare(arg, K.Const(0)),
                  K.Loop(j, K.Const(1), K.Const(xs[axis]), body)]
    return stmts, arg
