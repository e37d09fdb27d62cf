"""Lowering: one graph node (plain, or ``Fused``) to a Kernel — the algorithm, before any
schedule. The kernel loops over the output's elements; each element's value is built by
walking back through the fused members (elementwise ops inline through their OpDef's
``scalar`` form; conv, gemm and pooling open reduction loops with a register accumulator).
Shapes must be concrete (the backend specialises on the batch).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from cnncompiler.errors import UnsupportedError
from cnncompiler.ir.graph import Node, Value
from cnncompiler.ir.layout import parse_layout
from cnncompiler.kernel import ir as K
from cnncompiler.kernel.common import (  # noqa: F401 - DTYPES is re-exported
    DTYPES,
    Element,
    all_of,
    clamp,
    in_range,
    kdtype,
    shape_of,
    window_needs_checks,
)
from cnncompiler.kernel.conv_nchwc import blocked_conv_problem, conv_nchwc
from cnncompiler.kernel.gemm import gemm_problem, gemm_rows, gemm_scale
from cnncompiler.kernel.gemm_tiled import gemm_tiled, matrix_rows, tiled_gemm_problem
from cnncompiler.kernel.gpu_tiled import WorkGroupLimits, gpu_tiled, gpu_tiled_problem
from cnncompiler.kernel.im2col import im2col_grad_rows, im2col_rows
from cnncompiler.kernel.lower_reduce import (
    lower_arg_extreme,
    lower_reduce,
    lower_reduce_log_sum_exp,
)
from cnncompiler.kernel.lower_tensor import (
    broadcast_index,
    lower_constant_of_shape,
    lower_depth_to_space,
    lower_expand,
    lower_gather,
    lower_shape,
    lower_slice,
    lower_space_to_depth,
    lower_split,
    lower_tile,
)
from cnncompiler.kernel.winograd import winograd_nchwc, winograd_problem

#: elements per parallel iteration of a flat elementwise kernel (a multiple of the vectors)
FLAT_BLOCK = 2048


class KernelBuilder:
    """Builds the kernel of one output of one node (``output``: its position among the
    node's outputs; a node with several, like Split, gets one kernel each); ``inputs`` are
    the values it reads from memory."""

    def __init__(self, node: Node, name: str, data: Mapping[str, np.ndarray] | None = None,
                 output: int = 0, target: str = "cpu", limits: WorkGroupLimits | None = None):
        self.node = node
        self.target = target
        self.limits = limits or WorkGroupLimits()   # a "gpu" target's work-group limits
        self.data = data or {}     # stored values' arrays (weights), for compile-time packing
        self.dropped: set[str] = set()
        self.name = name
        if node.op == "Fused":
            body = node.attrs["body"]
            self.members = list(body.nodes)
            self.outer = dict(zip((v.name for v in body.inputs), node.inputs))
            self.inputs = list(body.inputs)
            self.output = body.outputs[output]
        else:
            self.members = [node]
            self.inputs = [v for v in node.inputs if v is not None]
            self.outer = {v.name: v for v in self.inputs}
            self.output = node.outputs[output]
        self.producers = {v.name: n for n in self.members for v in n.outputs}
        self.buffers: dict[str, K.Buffer] = {}
        for i, v in enumerate(self.inputs):
            self.buffers.setdefault(v.name, K.Buffer(f"in{i}", kdtype(v),
                                                     math.prod(shape_of(v))))
        self.out = K.Buffer("out", kdtype(self.output), math.prod(shape_of(self.output)))
        # a multi-output elementwise group computes every output in one pass (output 0's
        # kernel writes them all: see :meth:`covers_all_outputs`)
        self.extra: list[tuple[Value, K.Buffer]] = []
        if output == 0 and node.op == "Fused" and len(node.outputs) > 1:
            body_outputs = node.attrs["body"].outputs[1:]
            if self.is_flat_elementwise(extra=body_outputs):
                self.extra = [(v, K.Buffer(f"out{k + 1}", kdtype(v), math.prod(shape_of(v))))
                              for k, v in enumerate(body_outputs)]
        self.names = K.Names()
        self.tables: dict[str, tuple[K.Buffer, object]] = {}

    def takes_gemm_rows(self, node: Node) -> bool:
        """Does the batched-FC schedule compute ``node`` (the group's first member)?"""
        a, b = node.inputs[0], node.inputs[1]
        return (a.name in self.buffers and b.name in self.buffers
                and gemm_problem(node, self.data_of(b)) is None
                and shape_of(self.output) == shape_of(node.outputs[0])
                and not any(b in m.inputs for m in self.members[1:]))

    def takes_gemm_tiled(self, node: Node) -> bool:
        """Does the run-time-operand GEMM schedule compute ``node`` (the group's first
        member)? Not a batch-1 product with a stored B: streaming the weights once per
        output (the generic lowering) is what that one needs."""
        a, b = node.inputs[0], node.inputs[1]
        return (a.name in self.buffers and b.name in self.buffers
                and tiled_gemm_problem(node) is None
                and shape_of(self.output) == shape_of(node.outputs[0])
                and not (self.data_of(b) is not None and matrix_rows(node) == 1))

    def is_flat_elementwise(self, extra: Sequence[Value] = ()) -> bool:
        """Is every member elementwise over operands of the output's shape (or single
        elements)? Then the kernel can walk all elements as one flat range: no short
        innermost rows (a 28-wide row is 3 vectors and a scalar tail of 4). ``extra``
        outputs computed alongside must have that shape too."""
        shape = shape_of(self.output)
        if not shape or shape[-1] == 1:   # a last dim of 1 would read as broadcast
            return False
        if any(shape_of(v) != shape for v in extra):
            return False
        for m in self.members:
            if m.opdef.scalar is None or m.opdef.per_channel_inputs:
                return False
            for v in (*m.inputs, *m.outputs):
                if v is not None and shape_of(v) != shape and math.prod(shape_of(v)) != 1:
                    return False
        return True

    def flat_elementwise(self) -> list[K.Stmt]:
        """The elementwise group over its flat element range, in parallel blocks. With
        extra outputs every value is computed before any is stored, so an output may be
        written over an input it is computed from (an optimiser slot updated in place)."""
        total = math.prod(shape_of(self.output))
        block, i = self.fresh("blk"), self.fresh("i")
        # operands of the output's shape read [0, ..., 0, i]: their flat offset is i
        idx: list[K.Expr] = [K.Const(0)] * (len(shape_of(self.output)) - 1) + [i]
        stmts, value = self.element(self.output, idx)
        stores = [K.Store(self.out, i, value)]
        if self.extra:
            results = []
            for v, buf in [(self.output, self.out), *self.extra]:
                pre, val = self.element(v, idx) if v is not self.output else ([], value)
                t = self.fresh("r", val.dtype)
                stmts += pre + [K.Declare(t, val)]
                results.append((buf, t))
            stores = [K.Store(buf, i, t) for buf, t in results]
        start = block * FLAT_BLOCK
        loop = K.Loop(i, start, K.minimum(start + FLAT_BLOCK, total), stmts + stores,
                      "vector")
        return [K.Loop(block, K.Const(0), K.Const(-(-total // FLAT_BLOCK)), [loop],
                       "parallel")]

    def data_of(self, v: Value) -> np.ndarray | None:
        """The array of a stored input (a weight), or None if ``v`` is computed at run time."""
        outer = self.outer.get(v.name)
        return self.data.get(outer.name) if outer is not None and outer.is_stored else None

    def repack(self, v: Value, name: str, transform: Callable[[np.ndarray], np.ndarray],
               dtype: str) -> K.Buffer:
        """Stored input ``v`` rearranged once at compile time: a table of ``dtype`` holding
        ``transform(array)``, which the kernel reads instead of ``v`` (no longer passed)."""
        weights = self.data_of(v)
        if weights is None:
            raise UnsupportedError(f"node '{self.node.name}' ({self.node.op}): input "
                                   f"{v.name!r} is computed at run time; its schedule repacks "
                                   f"it at compile time")
        self.dropped.add(v.name)
        return self.table(name, transform(np.asarray(weights)), dtype)

    def table(self, name: str, values, dtype: str = "i64") -> K.Buffer:
        """A compile-time lookup table (indices, or weights of ``dtype``) the kernel reads."""
        numpy_type = {"i64": np.int64, "f32": np.float32, "f64": np.float64}[dtype]
        array = np.ascontiguousarray(values, dtype=numpy_type)
        buf = K.Buffer(f"t{len(self.tables)}_{name}", dtype, array.size)
        self.tables[buf.name] = (buf, array)
        return buf

    # -------------------------------------------------------------------- kernel
    def build(self) -> K.Kernel:
        """The kernel, by the first schedule that takes the node. A ``"gpu"`` target skips
        the CPU row schedules (a conv or FC row per parallel iteration: a few hundred heavy
        work-items) for the generic nest, whose every dim but the last is parallel."""
        cpu = self.target == "cpu"
        flat = False
        anchor = self.producers[self.output.name]
        first = self.members[0]
        if len(self.members) == 1 and anchor.op in ROW_KERNELS:
            body = ROW_KERNELS[anchor.op](self, anchor)
        elif not cpu and gpu_tiled_problem(self, first, self.limits) is None:
            body = gpu_tiled(self, first, self.limits)
        elif (first.op == "Conv" and first.inputs[0].name in self.buffers
              and winograd_problem(first, self.data_of(first.inputs[1]) is not None) is None):
            body = winograd_nchwc(self, first)
        elif (first.op == "Conv" and first.inputs[0].name in self.buffers
              and blocked_conv_problem(first, self.data_of(first.inputs[1]) is not None)
              is None):
            body = conv_nchwc(self, first)
        elif first.op == "Conv" and first.inputs[0].name in self.buffers and cpu:
            body = conv_rows(self, first)
        elif first.op in ("Gemm", "MatMul") and cpu and self.takes_gemm_rows(first):
            body = gemm_rows(self, first)
        elif first.op in ("Gemm", "MatMul") and cpu and self.takes_gemm_tiled(first):
            body = gemm_tiled(self, first)
        elif cpu and self.is_flat_elementwise():
            flat = True
            body = self.flat_elementwise()
        else:
            shape = shape_of(self.output)
            idx: list[K.Expr] = [self.names.var("i") for _ in shape]
            # the two outer dims (batch, channels) share one parallel loop, so a batch of
            # one still splits across threads
            outer = self.names.var("nc") if len(shape) >= 2 else None
            if outer is not None:
                loop_vars = idx[2:]
                idx = [outer // shape[1], outer % shape[1], *idx[2:]]
            else:
                loop_vars = idx
            stmts, value = self.element(self.output, list(idx))
            body: list[K.Stmt] = stmts + [K.Store(self.out, K.flat_index(list(idx), shape),
                                                  value)]
            inner = shape[2:] if outer is not None else shape
            # every dim but the last is independent: "parallel" (a CPU splits the outermost
            # across threads; a GPU maps the nest onto NDRange dimensions)
            for d in reversed(range(len(inner))):
                kind = "vector" if d == len(inner) - 1 else "parallel"
                body = [K.Loop(loop_vars[d], K.Const(0), K.Const(inner[d]), body, kind)]
            if outer is not None:
                body = [K.Loop(outer, K.Const(0), K.Const(shape[0] * shape[1]), body,
                               "parallel")]
        inputs, buffers = [], []
        for v in self.inputs:
            if v.name not in self.dropped and all(self.buffers[v.name] is not b for b in buffers):
                inputs.append(self.outer[v.name].name)
                buffers.append(self.buffers[v.name])
        if self.extra and not flat:   # another schedule took it: one kernel per output
            self.extra = []
        buffers += [self.out] + [buf for _, buf in self.extra]
        buffers += [buf for buf, _ in self.tables.values()]
        return K.Kernel(self.name, buffers, body,
                        tables={buf.name: array for buf, array in self.tables.values()},
                        inputs=inputs, extra_outputs=[self.outer_name(v) for v, _ in self.extra])

    def outer_name(self, v: Value) -> str:
        """The graph value a body output stands for (the Fused node's output)."""
        body_outputs = [u.name for u in self.node.attrs["body"].outputs]
        return self.node.outputs[body_outputs.index(v.name)].name

    # ------------------------------------------------------------------- elements
    def element(self, v: Value, idx: list[K.Expr]) -> Element:
        """Statements and expression giving ``v`` at multi-index ``idx``."""
        if v.name in self.buffers:
            return [], K.Load(self.buffers[v.name], K.flat_index(idx, shape_of(v)))
        node = self.producers[v.name]
        opdef = node.opdef
        if opdef.scalar is not None:
            stmts, args = [], []
            for i, u in enumerate(node.inputs):
                s, e = self.element(u, self.operand_index(node, i, u, idx))
                stmts += s
                args.append(e)
            return stmts, opdef.scalar(args, node.attrs)
        lower_one = MULTI_OUTPUT_LOWERINGS.get(node.op)
        if lower_one is not None:   # which output is wanted matters: e.g. Split's k-th part
            k = [u.name for u in node.outputs].index(v.name)
            return lower_one(self, node, k, idx)
        if len(node.outputs) > 1:
            raise UnsupportedError(f"node '{node.name}' ({node.op}) has no kernel lowering "
                                   "for several outputs")
        lower = LOWERINGS.get(node.op)
        if lower is None:
            raise UnsupportedError(f"node '{node.name}' ({node.op}) has no kernel lowering")
        return lower(self, node, idx)

    def operand_index(self, node: Node, i: int, u: Value, idx: list[K.Expr]) -> list[K.Expr]:
        """Where operand ``u`` is read for output index ``idx`` (broadcasting rules)."""
        shape = shape_of(u)
        if node.opdef.per_channel_inputs and i > 0:   # [C] operands, at the logical channel
            return [parse_layout(node.attrs.get("layout")).logical_index(idx)[1]]
        offset = len(idx) - len(shape)
        return [K.Const(0) if shape[d] == 1 else idx[offset + d] for d in range(len(shape))]

    def load(self, v: Value, idx: list[K.Expr]) -> Element:
        return self.element(v, idx)

    def fresh(self, base: str, dtype: str = "i64") -> K.Var:
        return self.names.var(base, dtype)


def is_blocked(node: Node) -> bool:
    """Does ``node`` run in a channel-blocked layout (NCHW{x}c)?"""
    return parse_layout(node.attrs.get("layout")).block is not None


# ------------------------------------------------------------------ lowerings
def bias_init(kb: KernelBuilder, node: Node, channel: K.Expr, dtype: str) -> Element:
    """The accumulator's start: the optional bias input (input 2) at ``channel``, else 0."""
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        return kb.load(node.inputs[2], [channel])
    return [], K.Const(0.0, dtype)


def _window_taps(kb: KernelBuilder, node: Node, idx: list[K.Expr], kernel: tuple,
                 x_shape: tuple, pad_checks: bool):
    """Loops over the window taps of output (oh, ow); yields (loops, ih, iw, inside)."""
    a = node.attrs
    (sh, sw), (pt, pl) = a["strides"], a["pads"][:2]
    dh, dw = a.get("dilations") or (1, 1)
    ti, tj = kb.fresh("ki"), kb.fresh("kj")
    ih = idx[2] * sh + ti * dh - pt
    iw = idx[3] * sw + tj * dw - pl
    checks = [in_range(ih, x_shape[2]), in_range(iw, x_shape[3])] if pad_checks else []
    return ti, tj, ih, iw, all_of(checks)


def lower_conv(kb: KernelBuilder, node: Node, idx: list[K.Expr]) -> Element:
    x, w = node.inputs[0], node.inputs[1]
    xs, ws, ys = shape_of(x), shape_of(w), shape_of(node.outputs[0])
    k_out, cg, fh, fw = ws
    group = node.attrs["group"]
    checks = window_needs_checks(node, xs, ys, (fh, fw))
    ti, tj, ih, iw, inside = _window_taps(kb, node, idx, (fh, fw), xs, checks)
    c = kb.fresh("c")
    chan = idx[1] // (k_out // group) * cg + c if group > 1 else c
    dtype = kdtype(node.outputs[0])
    acc = kb.fresh("acc", dtype)
    stmts, init = bias_init(kb, node, idx[1], dtype)
    sx, xv = kb.load(x, [idx[0], chan, clamp(ih, xs[2]) if checks else ih,
                         clamp(iw, xs[3]) if checks else iw])
    sw_, wv = kb.load(w, [idx[1], c, ti, tj])
    term = xv * wv
    if inside is not None:
        term = K.select(inside, term, 0.0)
    body = sx + sw_ + [K.Assign(acc, acc + term)]
    loop = K.Loop(tj, K.Const(0), K.Const(fw), body, "unroll")
    loop = K.Loop(ti, K.Const(0), K.Const(fh), [loop], "unroll")
    loop = K.Loop(c, K.Const(0), K.Const(cg), [loop])
    return stmts + [K.Declare(acc, init), loop], acc


def lower_pool(kb: KernelBuilder, node: Node, idx: list[K.Expr]) -> Element:
    x = node.inputs[0]
    xs, ys = shape_of(x), shape_of(node.outputs[0])
    kernel = node.attrs["kernel_shape"]
    dtype = kdtype(node.outputs[0])
    checks = window_needs_checks(node, xs, ys, kernel)
    ti, tj, ih, iw, inside = _window_taps(kb, node, idx, kernel, xs, checks)
    # NCHW and NCHW{x}c have H, W at axes 2, 3; a channel block's lane index trails
    sx, xv = kb.load(x, [idx[0], idx[1], clamp(ih, xs[2]) if checks else ih,
                         clamp(iw, xs[3]) if checks else iw, *idx[4:]])
    acc = kb.fresh("acc", dtype)
    if node.op == "MaxPool":
        step = K.maximum(acc, xv)
        body = sx + [K.Assign(acc, step if inside is None else K.select(inside, step, acc))]
        init, result = K.Const(-math.inf, dtype), acc
        extra: list[K.Stmt] = []
    else:
        pt, pl, pb, pr = node.attrs["pads"]
        cnt = kb.fresh("cnt", dtype)
        if node.attrs["count_include_pad"]:
            counted = all_of([ih.ge(-pt), ih.lt(xs[2] + pb), iw.ge(-pl), iw.lt(xs[3] + pr)])
        else:
            counted = inside
        one = K.Const(1.0, dtype) if counted is None else K.select(counted, 1.0, 0.0)
        add = xv if inside is None else K.select(inside, xv, 0.0)
        body = sx + [K.Assign(acc, acc + add), K.Assign(cnt, cnt + one)]
        init, result = K.Const(0.0, dtype), acc / cnt
        extra = [K.Declare(cnt, K.Const(0.0, dtype))]
    loop = K.Loop(tj, K.Const(0), K.Const(kernel[1]), body, "unroll")
    loop = K.Loop(ti, K.Const(0), K.Const(kernel[0]), [loop], "unroll")
    return [K.Declare(acc, init), *extra, loop], result


def lower_max_pool_grad(kb: KernelBuilder, node: Node, idx: list[K.Expr]) -> Element:
    """MaxPoolGrad's dX[n, c, h, w] (NCHW), gathered rather than scattered so each output
    element is written once: every window (oh, ow) that holds (h, w) adds its dY when
    X[n, c, h, w] is the window's first max: it equals Y and every earlier tap of the window
    (row-major; padding never counts) is below Y.

    Finding the windows, per axis (p = h + pad, the padded position; F the window extent):
    where windows do not overlap (S >= F) the one candidate is p // S, holding the cell if
    p % S < F; where they overlap, each kernel tap i gives the candidate (p - i*D) / S,
    holding the cell if that divides exactly, which keeps the cell's tap a constant. Every
    loop has constant bounds (LLVM unrolls them) and the earlier-tap test is a branch-free
    max over the window's taps."""
    x, y, dy = node.inputs
    xs, ys = shape_of(x), shape_of(y)
    a = node.attrs
    kernel, strides, pads, dils = a["kernel_shape"], a["strides"], a["pads"][:2], \
        a.get("dilations") or (1, 1)
    dtype = kdtype(node.outputs[0])
    n, c, h, w = idx
    loops: list[tuple[K.Var, int]] = []   # (variable, trip count), outermost first
    holds: list[K.Expr] = []
    where, taps = [], []                   # per axis: the window index, the cell's tap
    for pos, k, s, p, d, out in zip((h, w), kernel, strides, pads, dils, ys[2:]):
        extent = (k - 1) * d + 1
        if s >= extent:
            win, offset = (pos + p) // s, (pos + p) % s
            holds += [win.lt(out), offset.lt(extent)]
            if d > 1:   # a dilated window skips the cells between its taps
                holds.append((offset % d).eq(0))
        else:
            i = kb.fresh("tap")
            loops.append((i, k))
            offset = i * d
            at = pos + (p - offset)
            win = at // s
            holds += [at.ge(0), win.lt(out), (at % s).eq(0)]
        where.append(win)
        taps.append(offset // d if d > 1 else offset)
    oh, ow = where
    own = taps[0] * kernel[1] + taps[1]   # the cell's tap, row-major
    # the window's taps before the cell's: real cells only
    t = kb.fresh("t")
    (kh, kw), (sh, sw), (pt, pl), (dh, dw) = kernel, strides, pads, dils
    eh, ew = oh * sh + (t // kw) * dh - pt, ow * sw + (t % kw) * dw - pl
    counted = all_of([t.lt(own), in_range(eh, xs[2]), in_range(ew, xs[3])])
    se, xe = kb.load(x, [n, c, clamp(eh, xs[2]), clamp(ew, xs[3])])
    sx, xv = kb.load(x, [n, c, h, w])
    sy, yv = kb.load(y, [n, c, oh, ow])
    sg, gv = kb.load(dy, [n, c, oh, ow])
    # loads go to variables first: a Select with a Load in an arm would become a branch
    acc, earlier = kb.fresh("acc", dtype), kb.fresh("em", dtype)
    cell, top, grad, tap = (kb.fresh(v, dtype) for v in ("xc", "y", "g", "xt"))
    first = K.Bin("and", cell.eq(top), earlier.lt(top))
    body: list[K.Stmt] = [K.If(all_of(holds), sy + sg + [
        K.Declare(top, yv), K.Declare(grad, gv),
        K.Declare(earlier, K.Const(-math.inf, dtype)),
        K.Loop(t, K.Const(0), K.Const(kh * kw), se + [
            K.Declare(tap, xe),
            K.Assign(earlier, K.select(counted, K.maximum(earlier, tap), earlier))],
            "unroll"),
        K.Assign(acc, acc + K.select(first, grad, 0.0)),
    ])]
    for var, trips in reversed(loops):
        body = [K.Loop(var, K.Const(0), K.Const(trips), body, "unroll")]
    return sx + [K.Declare(cell, xv), K.Declare(acc, K.Const(0.0, dtype)), *body], acc


def lower_global_pool(kb: KernelBuilder, node: Node, idx: list[K.Expr]) -> Element:
    x = node.inputs[0]
    xs = shape_of(x)
    dtype = kdtype(node.outputs[0])
    h, w = kb.fresh("h"), kb.fresh("w")
    sx, xv = kb.load(x, [idx[0], idx[1], h, w, *idx[4:]])
    acc = kb.fresh("acc", dtype)
    if node.op == "GlobalMaxPool":
        init, step, result = K.Const(-math.inf, dtype), K.maximum(acc, xv), acc
    else:
        init, step, result = K.Const(0.0, dtype), acc + xv, acc / float(xs[2] * xs[3])
    loop = K.Loop(h, K.Const(0), K.Const(xs[2]), [K.Loop(w, K.Const(0), K.Const(xs[3]),
                                                          sx + [K.Assign(acc, step)])])
    return [K.Declare(acc, init), loop], result


def matmul_operand_index(a_shape: tuple[int, ...], b_shape: tuple[int, ...],
                         idx: list[K.Expr], k: K.Expr) -> tuple[list[K.Expr], list[K.Expr]]:
    """Where numpy's ``matmul`` reads A and B for output index ``idx`` and depth ``k``: a
    1-D A is a row ([K]: no M axis in the output), a 1-D B a column (no N axis); the
    batch axes (all but the last two) broadcast."""
    rest = list(idx)
    col = rest.pop() if len(b_shape) > 1 else None
    row = rest.pop() if len(a_shape) > 1 else None
    a_idx = [*broadcast_index(a_shape[:-2], rest), row, k] if row is not None else [k]
    b_idx = [*broadcast_index(b_shape[:-2], rest), k, col] if col is not None else [k]
    return a_idx, b_idx


def lower_gemm(kb: KernelBuilder, node: Node, idx: list[K.Expr]) -> Element:
    """Gemm (2-D, optional transposes, alpha, beta*C) and MatMul (numpy ``matmul``: any
    rank, batch axes broadcast): one dot product over the depth per output element."""
    a, b = node.inputs[0], node.inputs[1]
    dtype = kdtype(node.outputs[0])
    k = kb.fresh("k")
    if node.op == "MatMul":
        depth = shape_of(a)[-1]
        a_idx, b_idx = matmul_operand_index(shape_of(a), shape_of(b), idx, k)
    else:
        at, bt = node.attrs["transA"], node.attrs["transB"]
        depth = shape_of(a)[0 if at else 1]
        a_idx = [k, idx[0]] if at else [idx[0], k]
        b_idx = [idx[1], k] if bt else [k, idx[1]]
    sa, av = kb.load(a, a_idx)
    packed = _column_weights(kb, node, b, b_idx)
    sb, bv = ([], K.Load(packed, b_idx[-1] * depth + k)) if packed is not None else \
        kb.load(b, b_idx)
    acc = kb.fresh("acc", dtype)
    stmts: list[K.Stmt] = [K.Declare(acc, K.Const(0.0, dtype)),
                           K.Loop(k, K.Const(0), K.Const(depth), sa + sb +
                                  [K.Assign(acc, acc + av * bv)])]
    sc, result = gemm_scale(kb, node, idx, acc)
    return stmts + sc, result


def _column_weights(kb: KernelBuilder, node: Node, b: Value, b_idx: list[K.Expr]
                    ) -> K.Buffer | None:
    """A stored 2-D B [K, N] that the dot products read down its columns (MatMul, Gemm with
    transB=0) is transposed once at compile time, so each output streams one contiguous row
    of weights (a batch-1 FC layer reads every weight exactly once, in order)."""
    weights = kb.data_of(b)
    transposed = node.op == "Gemm" and node.attrs["transB"]
    if (weights is None or np.ndim(weights) != 2 or transposed or b.name not in kb.buffers
            or any(b in m.inputs for m in kb.members if m is not node)):
        return None
    return kb.repack(b, "bT", np.transpose, kdtype(b))


def lower_view(kb: KernelBuilder, node: Node, idx: list[K.Expr]) -> Element:
    """Reshape/Flatten/Identity-like: same row-major order, different shape."""
    x = node.inputs[0]
    flat = K.flat_index(idx, shape_of(node.outputs[0]))
    if x.name in kb.buffers:
        return [], K.Load(kb.buffers[x.name], flat)
    return kb.element(x, K.unflat_index(flat, shape_of(x)))


def lower_transpose(kb: KernelBuilder, node: Node, idx: list[K.Expr]) -> Element:
    x = node.inputs[0]
    rank = len(shape_of(x))
    perm = node.attrs["perm"] or tuple(reversed(range(rank)))
    in_idx: list[K.Expr] = [K.Const(0)] * rank
    for d, p in enumerate(perm):
        in_idx[p] = idx[d]
    return kb.element(x, in_idx)


def lower_concat(kb: KernelBuilder, node: Node, idx: list[K.Expr]) -> Element:
    rank = len(shape_of(node.outputs[0]))
    axis = node.attrs["axis"] % rank
    stmts, parts, offset = [], [], 0
    for v in node.inputs:
        size = shape_of(v)[axis]
        local = list(idx)
        local[axis] = clamp(idx[axis] - offset, size)
        s, e = kb.element(v, local)
        stmts += s
        offset += size
        parts.append((offset, e))
    value = parts[-1][1]
    for end, e in reversed(parts[:-1]):
        value = K.select(idx[axis].lt(end), e, value)
    return stmts, value


def lower_pad(kb: KernelBuilder, node: Node, idx: list[K.Expr]) -> Element:
    x = node.inputs[0]
    xs = shape_of(x)
    begins = node.attrs["pads"][:len(xs)]
    local, checks = [], []
    for d, size in enumerate(xs):
        e = idx[d] - begins[d] if begins[d] else idx[d]
        if begins[d] or shape_of(node.outputs[0])[d] != size:
            checks.append(in_range(e, size))
            e = clamp(e, size)
        local.append(e)
    s, v = kb.element(x, local)
    inside = all_of(checks)
    return s, v if inside is None else K.select(inside, v, node.attrs["value"])


def lower_lrn(kb: KernelBuilder, node: Node, idx: list[K.Expr]) -> Element:
    x = node.inputs[0]
    xs = shape_of(x)
    dtype = kdtype(node.outputs[0])
    a = node.attrs
    size = a["size"]
    lo = (size - 1) // 2
    j = kb.fresh("j")
    ch = idx[1] + j - lo
    sx, xv = kb.load(x, [idx[0], clamp(ch, xs[1]), idx[2], idx[3]])
    acc = kb.fresh("sq", dtype)
    loop = K.Loop(j, K.Const(0), K.Const(size),
                  sx + [K.Assign(acc, acc + K.select(in_range(ch, xs[1]), xv * xv, 0.0))],
                  "unroll")
    sc, center = kb.load(x, idx)
    base = acc * (a["alpha"] / size) + a["bias"]
    if a["bias"] > 0:   # base > 0: pow as exp(beta log base), which vectorises
        denom = K.call("exp", K.call("log", base) * a["beta"])
    else:
        denom = K.call("pow", base, K.Const(a["beta"], dtype))
    return [K.Declare(acc, K.Const(0.0, dtype)), loop] + sc, center / denom


def lower_conv_transpose(kb: KernelBuilder, node: Node, idx: list[K.Expr]) -> Element:
    """Transposed conv as a gather: out[n,k,oh,ow] sums x[n,c,ih,iw] * W[c,k,i,j] over the
    taps with oh + P_top - i*D = ih*S (and likewise for columns)."""
    from cnncompiler.ir.types import TensorType
    from cnncompiler.ops.conv_transpose import conv_transpose_geometry
    from cnncompiler.ops.opdef import InferContext

    x, w = node.inputs[0], node.inputs[1]
    types = [None if v is None else TensorType(shape_of(v), v.type.dtype) for v in node.inputs]
    _, (sh, sw), pads, (dh, dw), _ = conv_transpose_geometry(
        InferContext(node.op, node.name, types, node.attrs))
    (_, _, h_, w_), (_, kg, fh, fw) = shape_of(x), shape_of(w)
    cg = shape_of(x)[1] // node.attrs["group"]
    dtype = kdtype(node.outputs[0])
    c, i, j = kb.fresh("c"), kb.fresh("ki"), kb.fresh("kj")
    th = idx[2] + pads[0] - i * dh
    tw = idx[3] + pads[1] - j * dw
    ih, iw = th // sh, tw // sw
    inside = all_of([(th % sh).eq(0), in_range(ih, h_), (tw % sw).eq(0), in_range(iw, w_)])
    chan = (idx[1] // kg) * cg + c if node.attrs["group"] > 1 else c
    sx, xv = kb.load(x, [idx[0], chan, clamp(ih, h_), clamp(iw, w_)])
    sw_, wv = kb.load(w, [chan, idx[1] % kg, i, j])
    acc = kb.fresh("acc", dtype)
    stmts, init = bias_init(kb, node, idx[1], dtype)
    body = sx + sw_ + [K.Assign(acc, acc + K.select(inside, xv * wv, 0.0))]
    loop = K.Loop(c, K.Const(0), K.Const(cg), [K.Loop(i, K.Const(0), K.Const(fh), [
        K.Loop(j, K.Const(0), K.Const(fw), body, "unroll")])])
    return stmts + [K.Declare(acc, init), loop], acc


def lower_layout_transform(kb: KernelBuilder, node: Node, idx: list[K.Expr]) -> Element:
    """A re-laying is a gather: physical index in ``dst`` -> logical -> physical in ``src``."""
    src, dst = parse_layout(node.attrs["src"]), parse_layout(node.attrs["dst"])
    return kb.element(node.inputs[0], list(src.physical_index(dst.logical_index(idx))))


def lower_resize(kb: KernelBuilder, node: Node, idx: list[K.Expr]) -> Element:
    """Nearest or N-linear resize through per-axis tables of source indices and weights,
    computed at compile time by the op's own coordinate functions."""
    from cnncompiler.ops.resize import nearest_index, source_coords

    x, a = node.inputs[0], node.attrs
    xs, ys = shape_of(x), shape_of(node.outputs[0])
    axes = []
    for d, (i, o) in enumerate(zip(xs, ys)):
        scale = a["scales"][d] if a["scales"] is not None else o / i
        if o == i and scale == 1.0:
            continue
        src = source_coords(a["coordinate_transformation_mode"], o, i, scale)
        if a["mode"] == "nearest":
            axes.append((d, [(kb.table(f"ax{d}", nearest_index(src, a["nearest_mode"], i)),
                              None)]))
        else:
            lo = np.floor(src)
            w = src - lo
            i0 = np.clip(lo, 0, i - 1).astype(np.int64)
            i1 = np.clip(lo + 1, 0, i - 1).astype(np.int64)
            ft = kdtype(node.outputs[0])
            axes.append((d, [(kb.table(f"lo{d}", i0), kb.table(f"w{d}", 1 - w, ft)),
                             (kb.table(f"hi{d}", i1), kb.table(f"w{d}b", w, ft))]))
    # every combination of taps over the resized axes (1 for nearest, 2^axes for linear)
    combos: list[tuple[list[K.Expr], K.Expr | None]] = [(list(idx), None)]
    for d, taps in axes:
        nxt = []
        for where, weight in combos:
            for index_table, weight_table in taps:
                w2 = list(where)
                w2[d] = K.Load(index_table, idx[d])
                tap_w = None if weight_table is None else K.Load(weight_table, idx[d])
                nxt.append((w2, tap_w if weight is None else
                            (weight if tap_w is None else weight * tap_w)))
        combos = nxt
    stmts, total = [], None
    for where, weight in combos:
        s, v = kb.element(x, where)
        stmts += s
        term = v if weight is None else v * weight
        total = term if total is None else total + term
    return stmts, total


LOWERINGS: dict[str, Callable[[KernelBuilder, Node, list[K.Expr]], Element]] = {
    "Conv": lower_conv, "MaxPool": lower_pool, "AveragePool": lower_pool,
    "MaxPoolGrad": lower_max_pool_grad,
    "GlobalAveragePool": lower_global_pool, "GlobalMaxPool": lower_global_pool,
    "Gemm": lower_gemm, "MatMul": lower_gemm, "Flatten": lower_view, "Reshape": lower_view,
    "Transpose": lower_transpose, "Concat": lower_concat, "Pad": lower_pad, "LRN": lower_lrn,
    "Resize": lower_resize, "ConvTranspose": lower_conv_transpose,
    "LayoutTransform": lower_layout_transform,
    "Squeeze": lower_view, "Unsqueeze": lower_view, "Slice": lower_slice,
    "Expand": lower_expand, "Tile": lower_tile, "Gather": lower_gather,
    "DepthToSpace": lower_depth_to_space, "SpaceToDepth": lower_space_to_depth,
    "Shape": lower_shape, "ConstantOfShape": lower_constant_of_shape,
    "ArgMax": lower_arg_extreme, "ArgMin": lower_arg_extreme,
    "ReduceLogSumExp": lower_reduce_log_sum_exp,
    **dict.fromkeys(("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd",
                     "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum"), lower_reduce),
}

#: ops with several outputs: ``lowering(kb, node, k, idx)`` is output ``k`` at ``idx``
MULTI_OUTPUT_LOWERINGS: dict[str, Callable[[KernelBuilder, Node, int, list[K.Expr]],
                                           Element]] = {"Split": lower_split}


def softmax_rows(kb: KernelBuilder, node: Node) -> list[K.Stmt]:
    """Softmax/LogSoftmax along ``axis``: per row (a position of the other axes) the max, the
    sum of exponentials, then the row. A row's elements lie ``inner`` apart: 1 for the last
    axis, H*W for the channels of NCHW (segmentation heads)."""
    x, y = node.inputs[0], node.outputs[0]
    shape = shape_of(y)
    dtype = kdtype(y)
    axis = node.attrs["axis"] % len(shape)
    width, inner = shape[axis], math.prod(shape[axis + 1:])
    rows = math.prod(shape) // width
    r, j = kb.fresh("r"), kb.fresh("j")
    if inner == 1:
        at = r * width + j
    else:
        at = (r // inner) * (width * inner) + r % inner + j * inner
    xin = kb.buffers[x.name]
    m, s = kb.fresh("m", dtype), kb.fresh("s", dtype)
    xv = K.Load(xin, at)
    body: list[K.Stmt] = [
        K.Declare(m, K.Const(-math.inf, dtype)),
        K.Loop(j, K.Const(0), K.Const(width), [K.Assign(m, K.maximum(m, xv))]),
        K.Declare(s, K.Const(0.0, dtype)),
        K.Loop(j, K.Const(0), K.Const(width), [K.Assign(s, s + K.call("exp", xv - m))]),
    ]
    if node.op == "Softmax":
        body.append(K.Loop(j, K.Const(0), K.Const(width),
                           [K.Store(kb.out, at, K.call("exp", xv - m) / s)], "vector"))
    else:
        # store x - max first and subtract log(sum) from that: fast-math reassociation of
        # x - m - log(s) into x - (m + log s) loses precision for large inputs
        shifted = K.Load(kb.out, at)
        body[2:] = [K.Loop(j, K.Const(0), K.Const(width), [K.Store(kb.out, at, xv - m)],
                           "vector"),
                    K.Declare(s, K.Const(0.0, dtype)),
                    K.Loop(j, K.Const(0), K.Const(width),
                           [K.Assign(s, s + K.call("exp", shifted))]),
                    K.Loop(j, K.Const(0), K.Const(width),
                           [K.Store(kb.out, at, shifted - K.call("log", s))], "vector")]
    return [K.Loop(r, K.Const(0), K.Const(rows), body, "parallel")]


ROW_KERNELS = {"Softmax": softmax_rows, "LogSoftmax": softmax_rows, "Im2Col": im2col_rows,
               "Im2ColGrad": im2col_grad_rows}


def conv_rows(kb: KernelBuilder, conv: Node) -> list[K.Stmt]:
    """Direct convolution scheduled by output rows.

    For each (n, k, oh) the row starts as the bias; then, per input channel, one pass over
    the output columns adds every kernel tap that stays inside the image, so each load and
    store of the output row carries up to F_h·F_w multiply-adds and the inner loop is a
    branch-free sum LLVM vectorises. Bounds are resolved here, at compile time: interior rows
    take all F_h kernel rows at once, border rows test each kernel row; column segments near
    the left/right edges take only their valid taps. The fused epilogue then runs over the
    finished row in place.
    """
    x, w = conv.inputs[0], conv.inputs[1]
    bias = conv.inputs[2] if len(conv.inputs) > 2 else None
    (n_, c_, h_, w_), (k_, cg, fh, fw) = shape_of(x), shape_of(w)
    y = conv.outputs[0]
    oh_, ow_ = shape_of(y)[2:]
    a = conv.attrs
    (sh, sw), (pt, pl), (dh, dw) = a["strides"], a["pads"][:2], a["dilations"]
    kg = k_ // a["group"]
    if (fh, fw, sh, sw) == (1, 1, 1, 1) and not any(a["pads"]):
        # a pointwise conv reads whole contiguous planes: one long row per (n, k)
        h_, w_, oh_, ow_ = 1, h_ * w_, 1, oh_ * ow_
    dtype = kdtype(y)
    xin, win = kb.buffers[x.name], kb.buffers[w.name]
    nk, oh, cb, i, col = (kb.fresh(s) for s in ("nk", "oh", "cb", "i", "ow"))
    n, k = nk // k_, nk % k_
    row = (nk * oh_ + oh) * ow_
    # input channels per pass (blocking them measured no faster here; kept as a knob)
    block = 1
    # output columns [lo_j, hi_j) whose input column ow*sw + j*dw - pl lies in [0, W)
    ranges = [(max(0, -(-(pl - j * dw) // sw)), min(ow_, (w_ - 1 + pl - j * dw) // sw + 1))
              for j in range(fw)]

    def segments() -> list[tuple[int, int, list[int]]]:
        """Column segments with the kernel columns valid over all of each."""
        cuts = sorted({0, ow_} | {p for lo, hi in ranges if lo < hi for p in (lo, hi)})
        out = []
        for lo, hi in zip(cuts, cuts[1:]):
            js = [j for j, (a_, b_) in enumerate(ranges) if a_ <= lo and hi <= b_]
            if js:
                out.append((lo, hi, js))
        return out

    def tap_pass(rows: list[K.Expr]) -> list[K.Stmt]:
        """out[row] += sum over this block's channels, kernel rows ``rows`` (index exprs)
        and the columns' valid taps."""
        stmts = []
        for lo, hi, js in segments():
            total: K.Expr = K.Load(kb.out, row + col)
            for u in range(block):
                c = cb * block + u if block > 1 else cb
                chan = (k // kg) * cg + c if a["group"] > 1 else c
                for ki in rows:
                    x_row = ((n * c_ + chan) * h_ + (oh * sh + ki * dh - pt)) * w_
                    for j in js:
                        wv = K.Load(win, ((k * cg + c) * fh + ki) * fw + j)
                        total = total + K.Load(xin, x_row + col * sw + (j * dw - pl)) * wv
            stmts.append(K.Loop(col, K.Const(lo), K.Const(hi),
                                [K.Store(kb.out, row + col, total)], "vector"))
        return stmts

    init: K.Expr = K.Const(0.0, dtype)
    if bias is not None:
        init = kb.element(bias, [k])[1]
    start = [K.Loop(col, K.Const(0), K.Const(ow_), [K.Store(kb.out, row + col, init)],
                    "vector")]
    finish: list[K.Stmt] = []
    if kb.members[-1] is not conv:   # the fused epilogue, reading the conv result in place
        kb.buffers[y.name] = kb.out
        stmts, value = kb.element(kb.output, [n, k, oh, col])
        finish = [K.Loop(col, K.Const(0), K.Const(ow_),
                         stmts + [K.Store(kb.out, row + col, value)], "vector")]
    # rows whose every kernel row is inside the image
    top = min(oh_, max(0, -(-pt // sh)))
    bottom = max(top, min(oh_, (h_ - 1 + pt - (fh - 1) * dh) // sh + 1))
    blocks = K.Const(cg // block)
    border = start + [K.Loop(cb, K.Const(0), blocks, [K.Loop(i, K.Const(0), K.Const(fh), [
        K.If(in_range(oh * sh + i * dh - pt, h_), tap_pass([i]))])])] + finish
    inner = start + [K.Loop(cb, K.Const(0), blocks,
                            tap_pass([K.Const(r) for r in range(fh)]))] + finish
    rows = [K.Loop(oh, K.Const(lo), K.Const(hi), body)
            for lo, hi, body in ((0, top, border), (top, bottom, inner), (bottom, oh_, border))
            if lo < hi]
    return [K.Loop(nk, K.Const(0), K.Const(n_ * k_), rows, "parallel")]


FLOATS = ("float32", "float64")
#: output dtypes a member's kernel computes exactly where that is more than float: moving
#: elements, comparing and selecting work on any dtype; integer arithmetic without division
#: (the kernel IR's integer "/" floors where Div truncates) and the int64 reductions (their
#: float parts in float64, truncated like the reference's astype) on int64
OUTPUT_DTYPES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose",
                     "Concat", "Split", "Slice", "Expand", "Tile", "Gather", "DepthToSpace",
                     "SpaceToDepth", "ConstantOfShape", "Cast", "Where", "Equal", "Less",
                     "Greater", "Not", "ReduceMax", "ReduceMin"),
                    (*FLOATS, "int64", "bool")),
    **dict.fromkeys(("Shape", "ArgMax", "ArgMin", "Pad", "Abs", "Neg", "Add", "Sub", "Mul",
                     "Max", "Min", "Pow", "ReduceSum", "ReduceMean", "ReduceProd",
                     "ReduceSumSquare", "ReduceL1", "ReduceL2"), (*FLOATS, "int64")),
}


def unsupported_reason(node: Node) -> str | None:
    """None if :func:`lower_node` can lower ``node``, else why not."""
    members = node.attrs["body"].nodes if node.op == "Fused" else [node]
    for m in members:
        if m.op in ROW_KERNELS:
            if len(members) > 1:
                return f"{m.op} fused with other ops has no kernel yet"
        elif len(m.outputs) > 1 and m.op not in MULTI_OUTPUT_LOWERINGS:
            return f"{m.op} with several outputs has no kernel lowering yet"
        elif (m.opdef.scalar is None and m.op not in LOWERINGS
              and m.op not in MULTI_OUTPUT_LOWERINGS):
            return f"{m.op} has no kernel lowering yet"
        elif m.op == "Pad" and m.attrs["mode"] != "constant":
            return f"Pad mode {m.attrs['mode']!r} has no kernel yet"
        elif m.op == "Resize" and (m.attrs["coordinate_transformation_mode"]
                                   == "half_pixel_symmetric"):
            return "Resize with half_pixel_symmetric has no kernel yet"
        elif any(m.attrs.get(attr) not in (None, "NCHW") for attr in ("layout", "x_layout")):
            why = _layout_problem(node, m, members)
            if why:
                return why
        for out in m.outputs:
            dtype = out.type.dtype.value
            if dtype not in OUTPUT_DTYPES.get(m.op, FLOATS):
                return f"{m.op} on {dtype} has no kernel yet"
    return None


def _layout_problem(node: Node, m: Node, members: list[Node]) -> str | None:
    """Why member ``m`` of ``node`` cannot run in its (non-NCHW) layout, or None."""
    if not is_blocked(m) and m.op != "Conv":
        return f"layout {m.attrs['layout']} has no kernel yet"
    if m.op != "Conv":
        return None   # pools and BatchNormalization index blocked tensors directly
    if m is not members[0]:
        return "a blocked Conv must be the first member of its fused group"
    w = m.inputs[1]
    if node.op == "Fused":   # the body's input stands for the Fused node's operand
        body_inputs = [v.name for v in node.attrs["body"].inputs]
        w = node.inputs[body_inputs.index(w.name)] if w.name in body_inputs else w
    return blocked_conv_problem(m, w.is_stored)


TARGETS = ("cpu", "gpu")


def lower_node(node: Node, name: str, data: Mapping[str, np.ndarray] | None = None,
               output: int = 0, target: str = "cpu",
               limits: WorkGroupLimits | None = None) -> K.Kernel:
    """The kernel computing output number ``output`` of ``node`` (a node with several
    outputs gets one kernel per output); ``data`` holds the graph's stored arrays (weights),
    which schedules may repack at compile time; ``target`` picks the schedules (``"cpu"``:
    few heavy parallel iterations; ``"gpu"``: many light ones, and work-group tiles within
    ``limits``)."""
    if target not in TARGETS:
        raise UnsupportedError(f"unknown kernel target {target!r}; known: {TARGETS}")
    if not 0 <= output < len(node.outputs):
        raise UnsupportedError(f"node '{node.name}' ({node.op}) has no output {output} "
                               f"(it has {len(node.outputs)})")
    return KernelBuilder(node, name, data, output, target, limits).build()
