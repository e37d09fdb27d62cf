"""Winograd F(4x4, 3x3) convolution on channel-blocked tensors (NCHW8c).

For a 3x3, stride-1, dilation-1, ungrouped conv with stored weights, each 4x4 block of
outputs (a *tile*) of one output channel is ``A^T [sum_c (G g_kc G^T) . (B^T d_c B)] A``
with ``d_c`` the 6x6 input window of channel ``c``: 36 multiplies per tile and channel pair
instead of 144 (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", with
the points 0, +-1, +-2 and infinity; float32 results stay within ~1e-6..1e-5 relative of
the exact conv on random data).

Schedule (X [N, C/8, H, W, 8], Y [N, K/8, OH, OW, 8], one output block = 8 lanes):

- the weights are transformed at compile time, ``U = G g G^T`` per (k, c) in float64, and
  packed ``[K/8, 36, C, 8]`` (8 output channels contiguous, like conv_nchwc's filters);
- the parallel loop runs over (n, group of ``RT`` tile rows); a unit cuts its tile rows
  into column blocks, and per block:
  1. input transform: ``V = B^T d B`` for every tile and input channel block, vectorised
     over the 8 channel lanes, into a thread-private scratch ``V[36][C/8][tiles][8]``
     (a :class:`~cnncompiler.kernel.ir.Local`). Out-of-image inputs are zeros: columns are
     resolved at compile time (border tiles get their own code), rows by one test per tile
     row (a masked copy of the code runs only at the top/bottom borders);
  2. per pair of output channel blocks and per position of the 6x6 tile, a register-blocked
     GEMM over C: 2 x 6 accumulators (2 output blocks x 6 tiles, as in conv_nchwc), each
     step one U vector per output block and one broadcast V scalar per tile, into a second
     scratch ``M[36][2][tiles][8]``;
  3. output transform ``A^T m A`` of each tile to its 4x4 outputs plus the bias, tiles and
     rows clipped where OH/OW are not multiples of 4;
- the fused epilogue (ReLU, residual Add...) of conv_nchwc then runs over the unit's
  finished output rows.

``CNNC_WINOGRAD=0`` in the environment turns this schedule off (every conv then runs on
the direct one); it is read each time a kernel is built. Where Winograd applies but is not
faster (see :func:`winograd_problem`), the direct schedule is kept as well.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from cnncompiler.ir.graph import Node
from cnncompiler.ir.layout import parse_layout
from cnncompiler.kernel import ir as K
from cnncompiler.kernel.conv_nchwc import BlockedConv, epilogue

#: output tile edge (F(M x M, 3 x 3)); the input tile is M + 2
M_TILE = 4
ALPHA = M_TILE + 2
POSITIONS = ALPHA * ALPHA

# Lavin-Gray F(4, 3) transforms (points 0, 1, -1, 2, -2, infinity)
BT = np.array([[4, 0, -5, 0, 1, 0],
               [0, -4, -4, 1, 1, 0],
               [0, 4, -4, -1, 1, 0],
               [0, -2, -1, 2, 1, 0],
               [0, 2, -1, -2, 1, 0],
               [0, 4, 0, -5, 0, 1]], dtype=np.float64)
G = np.array([[1 / 4, 0, 0],
              [-1 / 6, -1 / 6, -1 / 6],
              [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6],
              [1 / 24, -1 / 12, 1 / 6],
              [0, 0, 1]], dtype=np.float64)
AT = np.array([[1, 1, 1, 1, 1, 0],
               [0, 1, -1, 2, -2, 0],
               [0, 1, 1, 4, 4, 0],
               [0, 1, -1, 8, -8, 1]], dtype=np.float64)

#: register tile of the GEMM: (output channel blocks, tiles); 12 accumulators + 2 U vectors
#: + 1 broadcast on AVX2's 16 registers
GEMM_TILE = (2, 6)
#: tiles per column block (amortises reading all of U once per block) ...
BLOCK_TILES = 18
#: ... as long as the block's V scratch stays below this many bytes
V_BYTES = 1 << 20


def enabled() -> bool:
    """Whether the environment allows Winograd convs (``CNNC_WINOGRAD``, default on)."""
    return os.environ.get("CNNC_WINOGRAD", "1").strip() != "0"


def winograd_problem(conv: Node, weights_known: bool | None = None) -> str | None:
    """Why :func:`winograd_nchwc` should not compute ``conv`` (None if it should).

    ``weights_known``: whether the filters are stored arrays (default: the conv's weight
    input is stored; a fused body passes what its outer operand is)."""
    if not enabled():
        return "Winograd convs are turned off (CNNC_WINOGRAD=0)"
    if conv.op != "Conv":
        return f"{conv.op} is not a Conv"
    layout = parse_layout(conv.attrs.get("layout"))
    if layout.block is None or layout.name != f"NCHW{layout.block}c":
        return f"layout {layout.name} is not channel-blocked"
    if weights_known is None:
        weights_known = conv.inputs[1].is_stored
    if not weights_known:
        return "the weights are computed at run time (Winograd transforms them at compile time)"
    a = conv.attrs
    ws = conv.inputs[1].type.shape
    if tuple(ws[2:]) != (3, 3):
        return f"kernel {tuple(ws[2:])} is not 3x3"
    if tuple(a["strides"]) != (1, 1) or tuple(a["dilations"]) != (1, 1):
        return "strided or dilated conv"
    if a["group"] != 1:
        return "grouped conv"
    g = BlockedConv.of(conv)
    if g.c % g.lanes or g.k % g.lanes:
        return f"channel counts {g.c}, {g.k} are not multiples of {g.lanes}"
    return None


def transform_weights(w: np.ndarray, lanes: int) -> np.ndarray:
    """OIHW 3x3 filters -> ``U = G g G^T`` (float64), packed [K/8, 36, C, 8]."""
    k, c = w.shape[:2]
    u = np.einsum("ai,kcij,bj->kcab", G, np.asarray(w, np.float64), G)   # [K, C, 6, 6]
    return u.reshape(k // lanes, lanes, c, POSITIONS).transpose(0, 3, 2, 1)


# ------------------------------------------------------------------ 1-D transforms
# Values are vector expressions, or None for a compile-time zero (padding).
def _add(a, b):
    return b if a is None else a if b is None else a + b


def _sub(a, b):
    if b is None:
        return a
    return K.call("neg", b) if a is None else a - b


def _axpy(c: float, x, y):
    """``c * x + y``."""
    if x is None:
        return y
    if y is None:
        return x * c if c != 1 else x
    return K.fma(K.broadcast(float(c), K.lanes_of(x.dtype)), x, y)


def input_1d(d: list) -> list:
    """``B^T d`` for 6 values (14 operations)."""
    d0, d1, d2, d3, d4, d5 = d
    a, b = _add(d3, d4), _add(d1, d2)
    c, e = _sub(d4, d3), _sub(d1, d2)
    f, h = _sub(d4, d2), _sub(d3, d1)
    return [_axpy(4, d0, _axpy(-5, d2, d4)), _axpy(-4, b, a), _axpy(4, e, c),
            _axpy(2, h, f), _axpy(-2, h, f), _axpy(4, d1, _axpy(-5, d3, d5))]


def output_1d(m: list, bias=None) -> list:
    """``A^T m`` for 6 values (10 operations), plus ``bias`` on every output."""
    m0, m1, m2, m3, m4, m5 = m
    a, b = _add(m1, m2), _sub(m1, m2)
    c, d = _add(m3, m4), _sub(m3, m4)
    a, b = _add(a, bias), _add(b, bias)
    return [_add(_add(m0, a), c), _axpy(2, d, b), _axpy(4, c, a), _add(_axpy(8, d, b), m5)]


# ------------------------------------------------------------------ schedule
@dataclass(frozen=True)
class Plan:
    rt: int                            # tile rows per unit of the parallel loop
    blocks: list[tuple[int, int]]      # column blocks of a tile row: (first tile, tiles)
    capacity: int                      # tiles of the largest block (V's and M's tile axis)
    rows: int                          # output channel blocks per GEMM register tile
    width: int                         # tiles per GEMM register tile (at most)


def plan(g: BlockedConv) -> Plan:
    th, tw = -(-g.oh // M_TILE), -(-g.ow // M_TILE)
    most = max(1, min(BLOCK_TILES, V_BYTES // (POSITIONS * g.c * 4)))
    if tw >= most:
        rt = 1
        count = -(-tw // most)
    else:
        rt = max(1, min(th, most // tw))
        rt = -(-th // -(-th // rt))     # as even as the units allow
        count = 1
    base, extra = divmod(tw, count)
    blocks, start = [], 0
    for i in range(count):
        width = base + (1 if i < extra else 0)
        blocks.append((start, width))
        start += width
    rows, width = GEMM_TILE
    if (g.k // g.lanes) % rows:
        rows, width = 1, rows * width
    return Plan(rt, blocks, rt * max(w for _, w in blocks), rows, width)


def even_groups(total: int, most: int) -> list[tuple[int, int, int]]:
    """``total`` tiles in groups of at most ``most``, as equal as possible: runs of
    (first tile, group width, group count)."""
    count = -(-total // most)
    base, extra = divmod(total, count)
    runs = []
    if extra:
        runs.append((0, base + 1, extra))
    if count - extra:
        runs.append((extra * (base + 1), base, count - extra))
    return runs


def winograd_nchwc(kb, conv: Node) -> list[K.Stmt]:
    """Statements of a kernel computing ``conv`` (the first member of ``kb``) by Winograd
    F(4x4, 3x3); see the module docstring."""
    g = BlockedConv.of(conv)
    x, w = conv.inputs[0], conv.inputs[1]
    bias = conv.inputs[2] if len(conv.inputs) > 2 else None
    dtype = K.scalar_of(kb.out.dtype)
    L = g.lanes
    vec = K.vector(dtype, L)
    weights = kb.data_of(w)
    if weights is None:
        raise ValueError(f"node '{conv.name}': Winograd needs stored weights")
    u = kb.table("wino_u", transform_weights(np.asarray(weights), L), dtype)
    kb.drop_input(w)
    xin = kb.buffers[x.name]
    bias_buf = kb.buffers[bias.name] if bias is not None else None
    p = plan(g)
    m, a, P = M_TILE, ALPHA, POSITIONS
    cbs, kbs = g.c // L, g.k // L
    th, tw = -(-g.oh // m), -(-g.ow // m)
    units = -(-th // p.rt)
    NT = p.capacity
    v = K.Buffer("wino_v", dtype, P * cbs * NT * L)
    mbuf = K.Buffer("wino_m", dtype, P * p.rows * NT * L)
    # element strides
    x_cb, x_h, x_w = g.h * g.w * L, g.w * L, L
    v_pos, v_cb = cbs * NT * L, NT * L          # V[pos][cb][tile][lane]
    m_pos, m_r = p.rows * NT * L, NT * L        # M[pos][r][tile][lane]
    u_k, u_pos = P * g.c * L, g.c * L           # U[kb][pos][c][lane]
    y_k, y_h = g.oh * g.ow * L, g.ow * L

    unit = kb.fresh("unit")
    n, ty0 = kb.fresh("n"), kb.fresh("ty0")
    body: list[K.Stmt] = [K.Local(v), K.Local(mbuf),
                          K.Declare(n, unit // units), K.Declare(ty0, unit % units * p.rt)]

    def col_ok(tx: int, j: int) -> bool:
        return 0 <= tx * m + j - g.pl < g.w

    def border(tx: int) -> bool:
        return not all(col_ok(tx, j) for j in range(a))

    # can a tile row read outside the image (or lie past the last tile row)?
    row_checks = any(not (0 <= ty * m - g.pt and ty * m - g.pt + a - 1 < g.h)
                     for ty in range(units * p.rt))

    def let(stmts: list[K.Stmt], e, name: str = "t"):
        if e is None:
            return None
        var = kb.fresh(name, vec)
        stmts.append(K.Declare(var, e))
        return var

    # ---------------------------------------------------------- 1. input transform
    def input_tile(tx: int | None, rows_at, masks, x_col: K.Expr, v_at: K.Expr) -> list[K.Stmt]:
        """Transform one tile of one channel block: ``rows_at[i]`` is X's offset of window
        row ``i`` at the tile's first column ``x_col``; ``masks[i]`` (or None) says whether
        the row is in the image; ``tx`` a compile-time tile column (None: interior)."""
        s: list[K.Stmt] = []
        rows_t = []
        for i in range(a):
            d = []
            for j in range(a):
                if tx is not None and not col_ok(tx, j):
                    d.append(None)
                    continue
                load = K.Load(xin, rows_at[i] + x_col + j * x_w, L)
                if masks is not None:
                    load = K.select(masks[i], let(s, load, "d"), 0.0)
                d.append(load)
            rows_t.append([let(s, e) for e in input_1d(d)])
        for j in range(a):
            col = input_1d([rows_t[i][j] for i in range(a)])
            for i in range(a):
                value = col[i] if col[i] is not None else K.broadcast(0.0, L, dtype)
                s.append(K.Store(v, v_at + (i * a + j) * v_pos, value))
        return s

    def input_block(tx0: K.Expr, tx_first: int | None, width: int) -> list[K.Stmt]:
        """V for the ``width`` tile columns from ``tx0`` of the unit's tile rows;
        ``tx_first`` is tx0 when it is known at compile time (a block with border tiles)."""
        tyr, cb = kb.fresh("tyr"), kb.fresh("cb")
        ty, ih0 = kb.fresh("ty"), kb.fresh("ih")
        head: list[K.Stmt] = [K.Declare(ty, ty0 + tyr), K.Declare(ih0, ty * m - g.pt)]

        def tiles(rows_at, masks) -> list[K.Stmt]:
            xcb, vcb = kb.fresh("xcb"), kb.fresh("vcb")
            inner: list[K.Stmt] = [
                K.Declare(xcb, cb * x_cb),
                K.Declare(vcb, cb * v_cb + tyr * (width * L))]
            at = [xcb + r for r in rows_at]
            runs: list[tuple[int, int, bool]] = []   # (first, count, border) in the block
            for t in range(width):
                special = tx_first is not None and border(tx_first + t)
                if runs and not special and not runs[-1][2]:
                    runs[-1] = (runs[-1][0], runs[-1][1] + 1, False)
                else:
                    runs.append((t, 1, special))
            for first, count, special in runs:
                if special:
                    tx = tx_first + first
                    inner += input_tile(tx, at, masks, K.Const((tx * m - g.pl) * x_w),
                                        vcb + first * L)
                    continue
                tc = kb.fresh("tc")
                xc, vt = kb.fresh("xc"), kb.fresh("vt")
                tile_body = [K.Declare(xc, ((tx0 + tc) * m - g.pl) * x_w),
                             K.Declare(vt, vcb + tc * L)]
                tile_body += input_tile(None, at, masks, xc, vt)
                inner.append(K.Loop(tc, K.Const(first), K.Const(first + count), tile_body,
                                    "rolled"))
            return [K.Loop(cb, K.Const(0), K.Const(cbs), inner, "rolled")]

        x_img = n * (cbs * x_cb)
        if not row_checks:
            xr = kb.fresh("xr")
            head.append(K.Declare(xr, x_img + ih0 * x_h))
            head += tiles([xr + i * x_h for i in range(a)], None)
        else:
            ok = K.Bin("and", ih0.ge(0), (ih0 + (a - 1)).lt(g.h))
            ok = K.Bin("and", ok, ty.lt(th))
            xr = kb.fresh("xr")
            fast = [K.Declare(xr, x_img + ih0 * x_h)]
            fast += tiles([xr + i * x_h for i in range(a)], None)
            masked: list[K.Stmt] = []
            rows_at, masks = [], []
            for i in range(a):
                ih = ih0 + i
                r, mk = kb.fresh("xr"), kb.fresh("in", "i1")
                masked += [K.Declare(r, x_img + K.maximum(K.minimum(ih, g.h - 1), 0) * x_h),
                           K.Declare(mk, K.Bin("and", K.Bin("and", ih.ge(0), ih.lt(g.h)),
                                                ty.lt(th)))]
                rows_at.append(r)
                masks.append(mk)
            masked += tiles(rows_at, masks)
            head.append(K.If(ok, fast, masked))
        return [K.Loop(tyr, K.Const(0), K.Const(p.rt), head, "rolled")]

    # ---------------------------------------------------------- 2. GEMM per position
    def gemm(k0: K.Expr, tiles: int) -> list[K.Stmt]:
        pos, ub, vb, mb = kb.fresh("pos"), kb.fresh("ub"), kb.fresh("vb"), kb.fresh("mb")
        s: list[K.Stmt] = [K.Declare(ub, k0 * u_k + pos * u_pos), K.Declare(vb, pos * v_pos),
                           K.Declare(mb, pos * m_pos)]
        for first, width, count in even_groups(tiles, p.width):
            grp = kb.fresh("grp")
            t0 = kb.fresh("t0")
            acc = [[kb.fresh(f"acc{r}_{t}_", vec) for t in range(width)] for r in range(p.rows)]
            gb: list[K.Stmt] = [K.Declare(t0, first + grp * width)]
            gb += [K.Declare(acc[r][t], K.broadcast(0.0, L, dtype))
                   for r in range(p.rows) for t in range(width)]
            cb, lane = kb.fresh("cb"), kb.fresh("cl")
            uc, vc, uo, vo = kb.fresh("uc"), kb.fresh("vc"), kb.fresh("uo"), kb.fresh("vo")
            inner: list[K.Stmt] = [K.Declare(uo, uc + lane * L), K.Declare(vo, vc + lane)]
            wv = [K.Load(u, uo + r * u_k, L) for r in range(p.rows)]
            for t in range(width):
                xv = K.Broadcast(K.Load(v, vo + t * L), L)
                inner += [K.Assign(acc[r][t], K.fma(xv, wv[r], acc[r][t]))
                          for r in range(p.rows)]
            gb.append(K.Loop(cb, K.Const(0), K.Const(cbs), [
                K.Declare(uc, ub + cb * (L * L)), K.Declare(vc, vb + cb * v_cb + t0 * L),
                K.Loop(lane, K.Const(0), K.Const(L), inner, "rolled")], "rolled"))
            mo = kb.fresh("mo")
            gb.append(K.Declare(mo, mb + t0 * L))
            gb += [K.Store(mbuf, mo + (r * m_r + t * L), acc[r][t])
                   for r in range(p.rows) for t in range(width)]
            s.append(K.Loop(grp, K.Const(0), K.Const(count), gb, "rolled"))
        return [K.Loop(pos, K.Const(0), K.Const(P), s, "rolled")]

    # ---------------------------------------------------------- 3. output transform
    def output_tile(k0: K.Expr, r: K.Expr, oh0: K.Expr, tx: K.Expr, t: K.Expr, cols: int
                    ) -> list[K.Stmt]:
        s: list[K.Stmt] = []
        mt, yt = kb.fresh("mt"), kb.fresh("yt")
        s += [K.Declare(mt, t * L + r * m_r),
              K.Declare(yt, (n * kbs + k0 + r) * y_k + oh0 * y_h + tx * (m * L))]
        bv = None
        if bias_buf is not None:
            bv = let(s, K.Load(bias_buf, (k0 + r) * L, L), "bias")
        mv = [[let(s, K.Load(mbuf, mt + (i * a + j) * m_pos, L), "m") for j in range(a)]
              for i in range(a)]
        cols_t = [[let(s, e) for e in output_1d([mv[i][j] for i in range(a)])]
                  for j in range(a)]
        for i in range(m):
            out = output_1d([cols_t[j][i] for j in range(a)], bv)
            stores = [K.Store(kb.out, yt + i * y_h + j * L, out[j]) for j in range(cols)]
            if g.oh % m and i >= g.oh % m:
                s.append(K.If((oh0 + i).lt(g.oh), stores))
            else:
                s += stores
        return s

    def output_block(k0: K.Expr, tx0: K.Expr, tx_first: int | None, width: int
                     ) -> list[K.Stmt]:
        tyr, r = kb.fresh("tyr"), kb.fresh("r")
        ty, oh0 = kb.fresh("ty"), kb.fresh("oh")
        s: list[K.Stmt] = []
        last_partial = g.ow % m and tx_first is not None and tx_first + width == tw
        full = width - 1 if last_partial else width
        if full:
            tc = kb.fresh("tc")
            s.append(K.Loop(tc, K.Const(0), K.Const(full),
                            output_tile(k0, r, oh0, tx0 + tc, tyr * width + tc, m), "rolled"))
        if last_partial:
            s += output_tile(k0, r, oh0, K.Const(tw - 1), tyr * width + (width - 1),
                             g.ow % m)
        inner = [K.Loop(r, K.Const(0), K.Const(p.rows), s, "rolled")]
        if units * p.rt > th:
            inner = [K.If(ty.lt(th), inner)]
        return [K.Loop(tyr, K.Const(0), K.Const(p.rt),
                       [K.Declare(ty, ty0 + tyr), K.Declare(oh0, ty * m)] + inner, "rolled")]

    # ---------------------------------------------------------- the unit's column blocks
    def block(tx0: K.Expr, tx_first: int | None, width: int) -> list[K.Stmt]:
        kp, k0 = kb.fresh("kp"), kb.fresh("k0")
        s = input_block(tx0, tx_first, width)
        s.append(K.Loop(kp, K.Const(0), K.Const(kbs // p.rows),
                        [K.Declare(k0, kp * p.rows)] + gemm(k0, p.rt * width)
                        + output_block(k0, tx0, tx_first, width), "rolled"))
        return s

    specials = {i for i, (tx0, width) in enumerate(p.blocks)
                if any(border(t) for t in range(tx0, tx0 + width))
                or (g.ow % m and tx0 + width == tw)}
    i = 0
    while i < len(p.blocks):
        tx0, width = p.blocks[i]
        if i in specials:
            body += block(K.Const(tx0), tx0, width)
            i += 1
            continue
        j = i
        while j + 1 < len(p.blocks) and j + 1 not in specials and p.blocks[j + 1][1] == width:
            j += 1
        if j == i:
            body += block(K.Const(tx0), None, width)
        else:
            bi = kb.fresh("blk")
            body.append(K.Loop(bi, K.Const(0), K.Const(j - i + 1),
                               block(tx0 + bi * width, None, width), "rolled"))
        i = j + 1

    # ---------------------------------------------------------- fused epilogue
    kv, oh = kb.fresh("kblk"), kb.fresh("oh")
    tail = epilogue(kb, conv, n, kv, oh, 1, g)
    if tail:
        body.append(K.Loop(kv, K.Const(0), K.Const(kbs), [
            K.Loop(oh, ty0 * m, K.minimum(ty0 * m + p.rt * m, g.oh), tail)]))
    return [K.Loop(unit, K.Const(0), K.Const(g.n * units), body, "parallel")]
