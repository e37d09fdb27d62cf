"""Work-group tiled matrix products for GPUs: convolutions as implicit GEMMs, and 2-D
Gemm/MatMul.

The generic lowering gives each work-item one output and its whole reduction, so every
operand element is fetched from global memory once per output that uses it. This schedule
is the classic cure. Each work-group owns a ``TM x TN`` tile of the output. Its
``(TM/RM)·(TN/RN)`` work-items stage a ``TR``-deep slice of both operands in shared memory
(``A``: ``TR x TM``, ``B``: ``TR x TN``; consecutive work-items fetch consecutive addresses,
so the loads coalesce), meet at a barrier, and each accumulates its own ``RM x RN`` outputs
from the staged slices (one ``float4`` of ``B`` and four of ``A`` per step) before the next
barrier. Every operand element then leaves global memory once per tile, not once per output:
``TN`` (or ``TM``) times fewer fetches.

Each problem is a product ``C[m, n] = sum_r A(m, r) · B(r, n)`` per group ``g``:

* **Conv** (NCHW, any stride, padding and dilation; groups with at least
  ``MIN_ROWS`` filters each): ``m`` is the filter within the group, ``n`` the output pixel
  with the batch folded in (``n = (image, oh, ow)``), ``r`` the tap ``(channel, fh, fw)``.
  ``B`` is the im2col of X, computed while staging (zero outside the image). Weights stored
  at compile time are repacked as ``[G, R, Kg]``, so staging reads them along ``m``.
* **Gemm/MatMul** (2-D): ``m`` the row, ``n`` the column, ``r`` the depth; with transA and
  transB, and a stored B repacked as ``[R, N]``.

The bias, Gemm's alpha and beta·C, and the fused elementwise consumers run on the
accumulators before the single store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cnncompiler.ir.graph import Node
from cnncompiler.ir.layout import parse_layout
from cnncompiler.kernel import ir as K
from cnncompiler.kernel.common import all_of, in_range, shape_of, window_needs_checks

#: outputs per work-item along m (rows) and n (one float4 of columns)
RM = RN = 4
#: depth of the operand slices staged per barrier
TR = 16
#: the fewest rows (filters per group) and depth worth a tile: a depthwise conv's single
#: filter per group would leave most of each tile idle
MIN_ROWS = 8
MIN_DEPTH = 8


@dataclass(frozen=True)
class WorkGroupLimits:
    """What one work-group may use on the device: work-items and shared-memory bytes.
    The defaults suit every OpenCL 1.2 GPU (256 work-items, 32 KiB of local memory)."""

    max_items: int = 256
    local_bytes: int = 32768


def tile_shape(rows: int, cols: int, limits: WorkGroupLimits) -> tuple[int, int] | None:
    """``(TM, TN)``: powers of two in 16..64 that cover small problems without idle
    work-items, shrunk until the work-group and its staged slices fit the device."""
    tm = 64 if rows > 32 else 32 if rows > 16 else 16
    tn = 64 if cols > 32 else 32 if cols > 16 else 16

    def fits(tm: int, tn: int) -> bool:
        return (tm // RM) * (tn // RN) <= limits.max_items and TR * (tm + tn) * 4 <= \
            limits.local_bytes

    while not fits(tm, tn) and max(tm, tn) > 16:
        if tn >= tm:
            tn //= 2
        else:
            tm //= 2
    return (tm, tn) if fits(tm, tn) else None


# ------------------------------------------------------------------ problems
@dataclass
class Operand:
    """How a work-item stages one element of an operand: ``setup(g, o)`` runs once per
    staged row/column ``o`` (outside the reduction loop) and returns its statements and a
    context; ``value(ctx, r)`` is the element at depth ``r`` (already zero outside the
    operand where ``value`` itself must guard, like a conv's padding). ``along`` says
    which index is contiguous in memory ("outer": m or n; "depth": r), which decides how
    the work-items share out the staging so that their loads coalesce."""

    setup: Callable[[K.Expr, K.Expr], tuple[list[K.Stmt], object]]
    value: Callable[[object, K.Expr], K.Expr]
    along: str


@dataclass
class Product:
    """One tiled product: extents, the two operands and the epilogue
    ``finish(g, m, n, acc) -> statements`` storing output (g, m, n)."""

    groups: int
    rows: int      # M per group
    cols: int      # N
    depth: int     # R
    a: Operand     # A(m, r)
    b: Operand     # B(r, n)
    finish: Callable[[K.Expr, K.Expr, K.Expr, K.Expr], list[K.Stmt]]


def _extents(node: Node) -> tuple[int, int, int]:
    """(rows, columns, depth) of the product ``node`` computes per group."""
    if node.op == "Conv":
        k_out, cg, fh, fw = shape_of(node.inputs[1])
        n_img, _, oh_, ow_ = shape_of(node.outputs[0])
        return k_out // node.attrs["group"], n_img * oh_ * ow_, cg * fh * fw
    a, b = shape_of(node.inputs[0]), shape_of(node.inputs[1])
    m_, r_ = a[::-1] if node.op == "Gemm" and node.attrs["transA"] else a
    n_ = b[0] if node.op == "Gemm" and node.attrs["transB"] else b[1]
    return m_, n_, r_


def gpu_tiled_problem(kb, node: Node, limits: WorkGroupLimits) -> str | None:
    """Why :func:`gpu_tiled` does not compute ``node`` (the fused group's first member)
    within ``limits``, or None if it does."""
    if node.op not in ("Conv", "Gemm", "MatMul"):
        return f"{node.op} is not a convolution or matrix product"
    if node.outputs[0].type.dtype.value != "float32":
        return "only float32 has this schedule"
    if shape_of(kb.output) != shape_of(node.outputs[0]):
        return "the fused group's output is not shaped like the product"
    if any(v.name not in kb.buffers for v in node.inputs[:2]):
        return "an operand is computed inside the fused group"
    if node.op == "Conv":
        x = node.inputs[0]
        if len(shape_of(x)) != 4:
            return "only 2-D convolutions have this schedule"
        if any(parse_layout(node.attrs.get(a)).block is not None for a in ("layout",
                                                                           "x_layout")):
            return "the conv runs in a blocked layout"
    elif len(shape_of(node.inputs[0])) != 2 or len(shape_of(node.inputs[1])) != 2:
        return "only 2-D matrix products have this schedule"
    rows, cols, depth = _extents(node)
    if rows < MIN_ROWS or depth < MIN_DEPTH:
        return "too few rows or too little depth to fill a tile"
    if tile_shape(rows, cols, limits) is None:
        return f"no tile fits the device's work-groups ({limits})"
    return None


def gpu_tiled(kb, node: Node, limits: WorkGroupLimits) -> list[K.Stmt]:
    """The tiled kernel body of ``node`` and its fused consumers (see
    :func:`gpu_tiled_problem` for when it applies)."""
    rows, cols, _ = _extents(node)
    tile = tile_shape(rows, cols, limits)
    assert tile is not None, "gpu_tiled_problem checks that a tile fits"
    product = _conv_product(kb, node) if node.op == "Conv" else _gemm_product(kb, node)
    return _tiled(kb, product, *tile)


def _conv_product(kb, conv: Node) -> Product:
    x, w = conv.inputs[0], conv.inputs[1]
    n_img, c_in, h, wd = shape_of(x)
    _, k_out, oh_, ow_ = shape_of(conv.outputs[0])
    _, cg, fh, fw = shape_of(w)
    a = conv.attrs
    groups = a["group"]
    kg, depth, taps = k_out // groups, cg * fh * fw, fh * fw
    (sh, sw), (pt, pl) = a["strides"], a["pads"][:2]
    dh, dw = a.get("dilations") or (1, 1)
    pixels = oh_ * ow_
    checks = window_needs_checks(conv, (n_img, c_in, h, wd), (n_img, k_out, oh_, ow_),
                                 (fh, fw))
    xbuf = kb.buffers[x.name]

    def pixel_setup(g: K.Expr, p: K.Expr):
        img, rest = kb.fresh("img"), kb.fresh("pix")
        ih0, iw0 = kb.fresh("ih"), kb.fresh("iw")
        stmts = [K.Declare(img, p // pixels), K.Declare(rest, p % pixels),
                 K.Declare(ih0, rest // ow_ * sh - pt), K.Declare(iw0, rest % ow_ * sw - pl)]
        return stmts, (g, p, img, ih0, iw0)

    def pixel_value(ctx, r: K.Expr) -> K.Expr:
        g, p, img, ih0, iw0 = ctx
        c, tap = r // taps, r % taps
        ih, iw = ih0 + tap // fw * dh, iw0 + tap % fw * dw
        index = ((img * c_in + g * cg + c) * h + ih) * wd + iw
        return _guarded(xbuf, index, [in_range(ih, h), in_range(iw, wd)] if checks else [])

    if kb.data_of(w) is not None:   # [K, Cg, F, F] -> [G, R, Kg]: staged along the filters
        packed = kb.repack(w, "wT", lambda arr: arr.reshape(groups, kg, depth)
                           .transpose(0, 2, 1), "f32")
        weights = Operand(lambda g, m: ([], (g, m)),
                          lambda ctx, r: K.Load(packed, (ctx[0] * depth + r) * kg + ctx[1]),
                          "outer")
    else:
        wbuf = kb.buffers[w.name]
        weights = Operand(lambda g, m: ([], (g, m)),
                          lambda ctx, r: K.Load(wbuf, (ctx[0] * kg + ctx[1]) * depth + r),
                          "depth")

    def finish(g: K.Expr, m: K.Expr, p: K.Expr, acc: K.Expr) -> list[K.Stmt]:
        k = g * kg + m if groups > 1 else m
        img, rest = p // pixels, p % pixels
        idx = [img, k, rest // ow_, rest % ow_]
        pre: list[K.Stmt] = []
        if len(conv.inputs) > 2 and conv.inputs[2] is not None:
            pre, bias = kb.load(conv.inputs[2], [k])
            acc = acc + bias
        return pre + _epilogue(kb, conv, idx, acc, (n_img, k_out, oh_, ow_))

    return Product(groups, kg, n_img * pixels, depth, weights,
                   Operand(pixel_setup, pixel_value, "outer"), finish)


def _gemm_product(kb, node: Node) -> Product:
    from cnncompiler.kernel.gemm import gemm_scale

    a, b = node.inputs[0], node.inputs[1]
    ta = node.op == "Gemm" and bool(node.attrs["transA"])
    tb = node.op == "Gemm" and bool(node.attrs["transB"])
    m_, r_ = shape_of(a)[::-1] if ta else shape_of(a)
    n_ = shape_of(b)[0] if tb else shape_of(b)[1]
    abuf = kb.buffers[a.name]
    rows = Operand(lambda g, m: ([], m),
                   (lambda m, r: K.Load(abuf, r * m_ + m)) if ta else
                   (lambda m, r: K.Load(abuf, m * r_ + r)),
                   "outer" if ta else "depth")
    if kb.data_of(b) is not None:   # stored: repacked [R, N], staged along the columns
        packed = kb.repack(b, "b", np.transpose if tb else (lambda arr: arr), "f32")
        cols = Operand(lambda g, n: ([], n), lambda n, r: K.Load(packed, r * n_ + n), "outer")
    else:
        bbuf = kb.buffers[b.name]
        cols = Operand(lambda g, n: ([], n),
                       (lambda n, r: K.Load(bbuf, n * r_ + r)) if tb else
                       (lambda n, r: K.Load(bbuf, r * n_ + n)),
                       "depth" if tb else "outer")

    def finish(g: K.Expr, m: K.Expr, n: K.Expr, acc: K.Expr) -> list[K.Stmt]:
        pre, value = gemm_scale(kb, node, [m, n], acc)
        return pre + _epilogue(kb, node, [m, n], value, (m_, n_))

    return Product(1, m_, n_, r_, rows, cols, finish)


def _guarded(buffer: K.Buffer, index: K.Expr, conds: list[K.Expr]) -> K.Expr:
    cond = all_of(conds)
    load = K.Load(buffer, index)
    return load if cond is None else K.select(cond, load, 0.0)


def _epilogue(kb, anchor: Node, idx: list[K.Expr], value: K.Expr,
              shape: tuple[int, ...]) -> list[K.Stmt]:
    """Store the fused group's output at ``idx``, given the anchor's own ``value`` there:
    the consumers' expressions with their reads of the anchor's result replaced by it."""
    y = anchor.outputs[0]
    if kb.members[-1] is anchor:
        return [K.Store(kb.out, K.flat_index(idx, shape), value)]
    own = K.Buffer(f"{y.name}.value", kb.out.dtype, 0)   # stands for the anchor's result
    saved = kb.buffers.get(y.name)
    kb.buffers[y.name] = own
    try:
        pre, result = kb.element(kb.output, idx)
    finally:
        if saved is None:
            del kb.buffers[y.name]
        else:
            kb.buffers[y.name] = saved
    stmts = pre + [K.Store(kb.out, K.flat_index(idx, shape), result)]
    # consumers of an elementwise group read the anchor at their own element
    return K.rewrite(stmts, lambda leaf: leaf,
                     lambda e: value if isinstance(e, K.Load) and e.buffer is own else None)


# ------------------------------------------------------------------ the schedule
def _tiled(kb, p: Product, tm: int, tn: int) -> list[K.Stmt]:
    items = (tm // RM) * (tn // RN)
    m_tiles, n_tiles = -(-p.rows // tm), -(-p.cols // tn)
    a_tile = K.Buffer(kb.fresh("a_tile").name, "f32", TR * tm)
    b_tile = K.Buffer(kb.fresh("b_tile").name, "f32", TR * tn)
    group, item = kb.fresh("wg"), kb.fresh("wi")
    g, m0, n0 = kb.fresh("g"), kb.fresh("m0"), kb.fresh("n0")
    body: list[K.Stmt] = [
        K.Declare(g, group // (m_tiles * n_tiles)),
        K.Declare(m0, group // n_tiles % m_tiles * tm),
        K.Declare(n0, group % n_tiles * tn),
    ]
    r0 = kb.fresh("r0")
    stage: list[K.Stmt] = []
    for operand, tile, extent, start, size in ((p.a, a_tile, p.rows, m0, tm),
                                               (p.b, b_tile, p.cols, n0, tn)):
        setup, loads = _staging(kb, operand, tile, extent, p.depth, g, start, size, item,
                                items, r0)
        body += setup
        stage += loads
    # the work-item's outputs: rows tm_*RM.., columns tn_*RN.. of the tile
    row0, col0 = kb.fresh("row"), kb.fresh("col")
    body += [K.Declare(row0, item // (tn // RN) * RM), K.Declare(col0, item % (tn // RN) * RN)]
    acc = [kb.fresh(f"acc{i}_", K.vector("f32", RN)) for i in range(RM)]
    body += [K.Declare(v, K.broadcast(0.0, RN)) for v in acc]
    steps: list[K.Stmt] = []
    for rr in range(TR):
        bv = K.Load(b_tile, col0 + rr * tn, RN)
        av = K.Load(a_tile, row0 + rr * tm, RM)
        steps += [K.Assign(acc[i], K.fma(K.Broadcast(K.Extract(av, i), RN), bv, acc[i]))
                  for i in range(RM)]
    chunks = -(-p.depth // TR)
    body.append(K.Loop(r0, K.Const(0), K.Const(chunks),
                       stage + [K.Barrier()] + steps + [K.Barrier()]))
    for i in range(RM):
        m = m0 + row0 + i
        for j in range(RN):
            n = n0 + col0 + j
            store = p.finish(g, m, n, K.Extract(acc[i], j))
            conds = ([m.lt(p.rows)] if p.rows % tm else []) + \
                ([n.lt(p.cols)] if p.cols % tn else [])
            body += [K.If(all_of(conds), store)] if conds else store
    workitems = K.Loop(item, K.Const(0), K.Const(items), body, "workitems")
    return [K.Loop(group, K.Const(0), K.Const(p.groups * m_tiles * n_tiles),
                   [K.Shared(a_tile), K.Shared(b_tile), workitems], "parallel")]


def _staging(kb, operand: Operand, tile: K.Buffer, extent: int, depth: int, g: K.Expr,
             start: K.Expr, size: int, item: K.Var, items: int, r0: K.Var
             ) -> tuple[list[K.Stmt], list[K.Stmt]]:
    """Setup statements (before the reduction loop) and the stores staging this work-item's
    share of the ``TR x size`` slice at depth ``r0·TR`` into ``tile``. Consecutive
    work-items take consecutive elements along the operand's contiguous index."""
    setup: list[K.Stmt] = []
    loads: list[K.Stmt] = []
    ctx = None
    for j in range(TR * size // items):
        if operand.along == "outer":   # items is a multiple of size: o fixed per work-item
            o, rr = item % size, item // size + j * (items // size)
        else:                          # items is a multiple of TR: rr fixed per work-item
            o, rr = item // TR + j * (items // TR), item % TR
        if ctx is None or operand.along != "outer":
            pos = kb.fresh("o")
            pre, ctx = operand.setup(g, start + pos)
            setup += [K.Declare(pos, o), *pre]
        r = r0 * TR + rr
        value = operand.value(ctx, r)
        conds = ([(start + pos).lt(extent)] if extent % size else []) + \
            ([r.lt(depth)] if depth % TR else [])
        if conds:
            value = K.select(all_of(conds), value, 0.0)
        loads.append(K.Store(tile, rr * size + pos, value))
    return setup, loads
