"""Winograd F(4x4, 3x3) convolution on channel-blocked tensors (NCHW8c).

For a 3x3, stride-1, dilation-1, ungrouped conv with stored weights, each 4x4 block of
outputs (a *tile*) of one output channel is ``A^T [sum_c (G g_kc G^T) . (B^T d_c B)] A``
with ``d_c`` the 6x6 input window of channel ``c``: 36 multiplies per tile and channel pair
instead of 144 (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", points
0, +-1, +-2 and infinity; the points +-1/2 are F(6x6, 3x3)'s). The transforms run in float32
(U is computed in float64). On random data the relative L2 error against the float64 conv
is 1e-6..3e-6 for 64..512 channels (about twice the direct conv's), the largest elementwise
error under 1e-5 of the largest output.

Schedule (X [N, C/8, H, W, 8], Y [N, K/8, OH, OW, 8], one output block = 8 lanes):

- the weights are transformed at compile time, ``U = G g G^T`` per (k, c), and packed
  ``[K/8, 36, C, 8]`` (8 output channels contiguous, like conv_nchwc's filters);
- input transform ``V = B^T d B`` for a block of tiles and every input channel block,
  vectorised over the 8 channel lanes, into a thread-private scratch ``V[pos][C/8][tile][8]``
  (a :class:`~cnncompiler.kernel.ir.Local`, so stack memory of each thread's call). Tiles
  that overlap the padding (or lie past the image) take a copy of the code whose loads are
  clamped into the image and whose out-of-image elements are zeros; the others load freely;
- per pair of output channel blocks and position of the 6x6 tile, a register-blocked GEMM
  over C: 2 x 6 accumulators (2 output blocks x 6 tiles, as in conv_nchwc), each step one U
  vector per output block and one broadcast V scalar per tile. The reduction runs in chunks
  of 64 channels so that a chunk's U stays in L1 while every group of tiles passes over it;
  the sums go to a second scratch ``M[pos][block][tile][8]``;
- output transform ``A^T m A`` to each tile's 4x4 outputs plus the bias, tiles and rows
  clipped where OH/OW are not multiples of 4;
- the fused epilogue of conv_nchwc (ReLU, residual Add...) then runs over the finished rows.

Two ways to walk the image (see :func:`winograd_nchwc`): *blocks* of up to 18 tiles of one
or more tile rows, all 36 positions at once (large images: every block reads all of U), and
*rows* of positions (small images with a large U, e.g. 512 channels at 28x28 and below):
all tiles of the image, one row of 6 positions at a time, so U is read once per image.

``CNNC_WINOGRAD=0`` in the environment turns this schedule off (every conv then runs on
the direct one); it is read each time a kernel is built. Where Winograd applies but is not
faster (few outputs per image and many channels, see :func:`winograd_problem`), the direct
schedule is kept as well.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from cnncompiler.errors import UnsupportedError
from cnncompiler.ir.graph import Node
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
#: input channel blocks per chunk of a GEMM's reduction
CHUNK_BLOCKS = 8
#: tiles per column block (amortises reading all of U once per block) ...
BLOCK_TILES = 18
#: ... as long as the block's V scratch stays below this many bytes
V_BYTES = 1 << 20
#: the position-row schedule where U has at least this many bytes and its scratch (one
#: row of V and of M: 6 positions, all tiles of an image) at most this many
ROWS_U_BYTES = 8 << 20
ROWS_SCRATCH_BYTES = 1 << 20


# When Winograd pays (the rule in winograd_problem). Measured on one core of an AMD EPYC
# (Zen 3, AVX2+FMA, 32 KiB L1d / 512 KiB L2 per core, 32 MiB L3), batch 1, pads 1, ms per
# conv, direct schedule (conv_nchwc) -> Winograd, best of 5 runs of the kernel alone:
#
#   C -> K      image    direct  Winograd        C -> K      image    direct  Winograd
#   64 -> 64    224x224   37.4    12.2 (3.1x)    64 -> 64    56x56     2.27    0.72 (3.2x)
#   64 -> 128   112x112   18.5     5.7 (3.2x)    128 -> 128  28x28     2.19    0.77 (2.8x)
#   128 -> 128  112x112   38.1    11.2 (3.4x)    256 -> 256  14x14     2.27    0.99 (2.3x)
#   128 -> 256  56x56     18.2     5.4 (3.4x)    512 -> 512  7x7       2.76    1.75 (1.6x)
#   256 -> 256  56x56     37.4    11.2 (3.4x)    512 -> 512  8x8       3.12    1.74 (1.8x)
#   256 -> 512  28x28     18.5     5.9 (3.1x)    512 -> 512  5x5       1.02    1.54 (0.7x)
#   512 -> 512  28x28     39.5    11.6 (3.4x)    256 -> 256  5x5       0.24    0.27 (0.9x)
#   512 -> 512  14x14     10.1     4.1 (2.5x)    512 -> 512  4x4       0.72    1.26 (0.6x)
#   16 -> 16    56x56     0.14    0.07 (2.0x)    128 -> 128  3x3       0.04    0.05 (0.8x)
#   8 -> 16     224x224   1.18    0.59 (2.0x)    64 -> 64    4x4       0.020   0.014 (1.4x)
#
# (left: the 3x3 layers of VGG-16, right: those of ResNet-18/50 and smaller images). The
# transformed filters are 4x the direct ones (36 instead of 9 values per channel pair) and
# every image reads all of them, so where an image has few outputs the multiplies Winograd
# saves no longer pay for streaming U from memory: below 7x7 outputs, Winograd only for
# small filter banks.
MIN_PIXELS = 7 * 7
SMALL_FILTERS = 64 * 64


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
    try:
        g = BlockedConv.of(conv)
    except UnsupportedError as e:
        return str(e)
    if not g.blocked or g.in_block != g.lanes:
        return "X and Y are not both channel-blocked (NCHW{x}c)"
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
    if g.c % g.lanes or g.k % g.lanes:
        return f"channel counts {g.c}, {g.k} are not multiples of {g.lanes}"
    if POSITIONS * g.c * 4 > V_BYTES:
        return f"{g.c} input channels: one tile's transformed input would not fit the scratch"
    if g.oh * g.ow < MIN_PIXELS and g.c * g.k > SMALL_FILTERS:
        return (f"only {g.oh}x{g.ow} outputs per image for {g.c}x{g.k} channels: reading the "
                f"transformed filters costs more than the multiplies save")
    return None


#: ``G g G^T`` as one matrix on a flattened 3x3 filter: u (36) = g (9) @ GG
GG = np.kron(G, G).T
#: rows per matrix product in :func:`transform_weights`: few enough that OpenBLAS never
#: starts its threads for one (on a busy 2-core machine that made a product 20x slower)
TRANSFORM_ROWS = 64


def transform_weights(w: np.ndarray, lanes: int, dtype: np.dtype = np.float64) -> np.ndarray:
    """OIHW 3x3 filters -> ``U = G g G^T`` (computed in float64), packed [K/8, 36, C, 8]
    in ``dtype``.

    One output channel block at a time, as a stack of small (rows x 9) @ (9 x 36) products
    written straight into its packed place: batched 6x3 @ 3x3 products, a float64
    intermediate of all of U and its transposed copy took 0.85 s of VGG-16's 1 s cached
    compile (now 0.4 s: U is 235 MB of fresh memory)."""
    k, c = w.shape[:2]
    u = np.empty((k // lanes, POSITIONS, c, lanes), dtype)
    rows = math.gcd(lanes * c, TRANSFORM_ROWS)
    for b in range(k // lanes):
        block = np.asarray(w[b * lanes:(b + 1) * lanes], np.float64).reshape(-1, rows, 9)
        u[b] = (block @ GG).reshape(lanes, c, POSITIONS).transpose(2, 1, 0)
    return u


# ------------------------------------------------------------------ 1-D transforms
# Values are vector expressions, or None for a known zero (an input row that the position
# row being built does not use).
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
    """How :func:`winograd_nchwc` walks one conv (see there)."""

    by_rows: bool       # the position-row schedule (see winograd_nchwc)
    units: int          # units of the parallel loop per image
    rt: int             # tile rows per unit (blocks) / per image (rows)
    blocks: int         # column blocks per tile row
    width: int          # tile columns per block (the last block may overhang the image)
    rows: int           # output channel blocks per GEMM register tile
    cols: int           # tiles per GEMM register tile (at most)

    @property
    def tiles(self) -> int:   # tiles per block: V's and M's tile axis
        return self.rt * self.width


def plan(g: BlockedConv) -> Plan:
    """Rows of positions where U is large (it is then read once per image) and an image's
    scratch small; else blocks of up to BLOCK_TILES tiles (whole tile rows of a small image,
    or equal column blocks of a long one) with V under V_BYTES."""
    th, tw = -(-g.oh // M_TILE), -(-g.ow // M_TILE)
    rows, cols = GEMM_TILE
    if (g.k // g.lanes) % rows:
        rows, cols = 1, rows * cols
    pairs = g.k // g.lanes // rows
    units = 2 if pairs % 2 == 0 else 1    # halves of the output channels
    if (POSITIONS * g.k * g.c * 4 >= ROWS_U_BYTES
            and ALPHA * (g.c + g.k // units) * th * tw * 4 <= ROWS_SCRATCH_BYTES):
        return Plan(True, units, th, 1, tw, rows, cols)
    most = max(1, min(BLOCK_TILES, V_BYTES // (POSITIONS * g.c * 4)))
    if tw >= most:
        rt, blocks = 1, -(-tw // most)
    else:
        rt, blocks = max(1, min(th, most // tw)), 1
        rt = -(-th // -(-th // rt))     # as even as the units allow
    return Plan(False, -(-th // rt), rt, blocks, -(-tw // blocks), rows, cols)


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
    F(4x4, 3x3); see the module docstring.

    Two schedules share the pieces below. *Blocks* (large images): a unit of the parallel
    loop is ``rt`` tile rows of one image, cut into column blocks; per block all 36
    positions of V are built, then per output pair the 36 GEMMs and the output transform
    finish the block's outputs. Each block reads all of U, so it only pays where U is small
    next to the work of a block. *Rows* (small images, large U): a unit is one image and half
    of the output channels; the 6 position rows ``i`` of the 6x6 tile run one after the
    other over every tile of the image: V holds row ``i`` only (6 positions, built from the
    3-4 input rows it needs), and each row's share ``A^T[:, i] (M[i, :] A)`` is added to the
    outputs in place. U is then read once per image.

    Tiles that overlap the padding (or lie past the image: the last block of a row and the
    last unit of an image may overhang) take a second copy of the input transform whose
    loads are clamped into the image and whose out-of-image elements are zeros.
    """
    g = BlockedConv.of(conv)
    x, w = conv.inputs[0], conv.inputs[1]
    bias = conv.inputs[2] if len(conv.inputs) > 2 else None
    dtype = K.scalar_of(kb.out.dtype)
    L = g.lanes
    vec = K.vector(dtype, L)
    u = kb.repack(w, "wino_u", lambda weights: transform_weights(
        weights, L, np.float32 if dtype == "f32" else np.float64), dtype)
    xin = kb.buffers[x.name]
    bias_buf = kb.buffers[bias.name] if bias is not None else None
    p = plan(g)
    m, a = M_TILE, ALPHA
    npos = a if p.by_rows else POSITIONS       # positions V and M hold at a time
    cbs, kbs = g.c // L, g.k // L
    th, tw = -(-g.oh // m), -(-g.ow // m)
    NT = p.tiles
    pairs = kbs // p.rows
    # M[pos][output block][tile][lane]: the rows schedule keeps every output block of its unit
    m_blocks = kbs // p.units if p.by_rows else p.rows
    v = K.Buffer("wino_v", dtype, npos * cbs * NT * L)
    mbuf = K.Buffer("wino_m", dtype, npos * m_blocks * NT * L)
    # element strides
    x_cb, x_h, x_w = g.h * g.w * L, g.w * L, L
    v_pos, v_cb = cbs * NT * L, NT * L          # V[pos][cb][tile][lane]
    m_pos, m_r = m_blocks * NT * L, NT * L
    u_k, u_pos = POSITIONS * g.c * L, g.c * L   # U[kb][pos][c][lane]
    y_k, y_h = g.oh * g.ow * L, g.ow * L

    unit, n, ty0 = kb.fresh("unit"), kb.fresh("n"), kb.fresh("ty0")
    body: list[K.Stmt] = [K.Local(v), K.Local(mbuf), K.Declare(n, unit // p.units),
                          K.Declare(ty0, K.Const(0) if p.by_rows else unit % p.units * p.rt)]

    # which tile rows / columns ever read outside the image or lie past its last tile
    row_span = th if p.by_rows else p.units * p.rt
    col_span = p.blocks * p.width
    rows_out = [ty for ty in range(row_span)
                if ty >= th or ty * m - g.pt < 0 or ty * m - g.pt + a > g.h]
    cols_out = [tx for tx in range(col_span)
                if tx >= tw or tx * m - g.pl < 0 or tx * m - g.pl + a > g.w]

    def let(stmts: list[K.Stmt], e, name: str = "t"):
        if e is None:
            return None
        var = kb.fresh(name, vec)
        stmts.append(K.Declare(var, e))
        return var

    # ---------------------------------------------------------- 1. input transform
    def input_tile(rows_at, cols_at, masks, v_at: K.Expr, prow) -> list[K.Stmt]:
        """Transform one tile of one channel block: the element (i, j) of the window is at
        ``rows_at[i] + cols_at[j]`` in X; ``masks[i][j]`` (or None) says whether it is in
        the image. ``prow``: only that row of positions (from the input rows it combines),
        or a dict {input row: coefficient vector} for a row chosen at run time."""
        s: list[K.Stmt] = []
        rows_t = []
        for i in range(a):
            if (isinstance(prow, int) and BT[prow][i] == 0
                    or isinstance(prow, dict) and i not in prow):
                rows_t.append([None] * a)
                continue
            d = []
            for j in range(a):
                load = K.Load(xin, rows_at[i] + cols_at[j], L)
                if masks is not None:
                    load = K.select(masks[i][j], let(s, load, "d"), 0.0)
                d.append(load)
            rows_t.append([let(s, e) for e in input_1d(d)])
        for j in range(a):
            if isinstance(prow, dict):
                value = None
                for i, coef in prow.items():
                    value = _add(value, rows_t[i][j] * coef) if value is None \
                        else K.fma(coef, rows_t[i][j], value)
                s.append(K.Store(v, v_at + j * v_pos, value))
                continue
            col = input_1d([rows_t[i][j] for i in range(a)])
            for i in range(a) if prow is None else [prow]:
                at = (i * a + j) if prow is None else j
                s.append(K.Store(v, v_at + at * v_pos, col[i]))
        return s

    def input_block(tx0: K.Expr, prow=None) -> list[K.Stmt]:
        """V for the block of the unit's tile rows from tile column ``tx0``."""
        tyr, cb, tc = kb.fresh("tyr"), kb.fresh("cb"), kb.fresh("tc")
        ty, ih0, xr = kb.fresh("ty"), kb.fresh("ih"), kb.fresh("xr")
        x_img = n * (cbs * x_cb)
        head: list[K.Stmt] = [K.Declare(ty, ty0 + tyr), K.Declare(ih0, ty * m - g.pt),
                              K.Declare(xr, x_img + ih0 * x_h)]
        masked_rows: list[K.Stmt] = []
        row_at, row_in = [], []
        if rows_out:
            for i in range(a):   # clamped row offsets, and whether each row is inside
                r, mk = kb.fresh("xr"), kb.fresh("in", "i1")
                ih = ih0 + i
                masked_rows += [
                    K.Declare(r, x_img + K.maximum(K.minimum(ih, g.h - 1), 0) * x_h),
                    K.Declare(mk, K.Bin("and", K.Bin("and", ih.ge(0), ih.lt(g.h)),
                                        ty.lt(th)))]
                row_at.append(r)
                row_in.append(mk)
        rows_ok = K.Bin("and", K.Bin("and", ih0.ge(0), (ih0 + (a - 1)).lt(g.h)), ty.lt(th))
        xcb, vcb, tx, xc, vt = (kb.fresh(s_) for s_ in ("xcb", "vcb", "tx", "xc", "vt"))
        tile: list[K.Stmt] = [K.Declare(tx, tx0 + tc), K.Declare(xc, (tx * m - g.pl) * x_w),
                              K.Declare(vt, vcb + tc * L)]
        fast = input_tile([xcb + xr + i * x_h for i in range(a)],
                          [xc + j * x_w for j in range(a)], None, vt, prow)
        if rows_out or cols_out:
            masked: list[K.Stmt] = []
            col_at, col_in = [], []
            for j in range(a):
                iw = tx * m - g.pl + j
                c_, mk = kb.fresh("xc"), kb.fresh("in", "i1")
                masked += [K.Declare(c_, K.maximum(K.minimum(iw, g.w - 1), 0) * x_w),
                           K.Declare(mk, K.Bin("and", K.Bin("and", iw.ge(0), iw.lt(g.w)),
                                               tx.lt(tw)))]
                col_at.append(c_)
                col_in.append(mk)
            rows = row_at if rows_out else [xr + i * x_h for i in range(a)]
            masks = [[K.Bin("and", row_in[i], col_in[j]) if rows_out else col_in[j]
                      for j in range(a)] for i in range(a)]
            masked += input_tile([xcb + r for r in rows], col_at, masks, vt, prow)
            inside = K.Bin("and", (tx * m - g.pl).ge(0), (tx * m - g.pl + (a - 1)).lt(g.w))
            inside = K.Bin("and", inside, tx.lt(tw))
            if rows_out:
                inside = K.Bin("and", inside, rows_ok)
            tile.append(K.If(inside, fast, masked))
        else:
            tile += fast
        head += masked_rows
        head.append(K.Loop(cb, K.Const(0), K.Const(cbs), [
            K.Declare(xcb, cb * x_cb), K.Declare(vcb, cb * v_cb + tyr * (p.width * L)),
            K.Loop(tc, K.Const(0), K.Const(p.width), tile, "rolled")], "rolled"))
        return [K.Loop(tyr, K.Const(0), K.Const(p.rt), head, "rolled")]

    # ---------------------------------------------------------- 2. GEMM per position
    # input channel blocks per chunk of the reduction: a chunk's U (R x 8 x 8 x chunk
    # floats) stays in L1 while every group of tiles passes over it
    chunks = next(q for q in range(1, cbs + 1) if cbs % q == 0 and cbs // q <= CHUNK_BLOCKS)
    chunk = cbs // chunks

    def gemm_at(pos: K.Expr, upos: K.Expr, k0: K.Expr, m_off: K.Expr) -> list[K.Stmt]:
        """M[pos] (from element ``m_off``) = U[upos] V[pos] for output pair ``k0``, over
        every tile of the block."""
        ub, vb, mb = kb.fresh("ub"), kb.fresh("vb"), kb.fresh("mb")
        s: list[K.Stmt] = [K.Declare(ub, k0 * u_k + upos * u_pos),
                           K.Declare(vb, pos * v_pos), K.Declare(mb, pos * m_pos + m_off)]

        def groups(ch: K.Expr) -> list[K.Stmt]:
            """Every group of tiles over chunk ``ch`` of the input channel blocks; the first
            chunk stores its sums, the others add theirs. Each chunk sums from zero: the
            transforms amplify the float32 rounding of these sums, and shorter chains of
            additions halve it (on 256..512 channels; a whole Inception-v3 had 3x the
            direct convs' error with one chain over all channels)."""
            out: list[K.Stmt] = []
            for first, width, count in even_groups(NT, p.cols):
                grp = kb.fresh("grp")
                t0, mo = kb.fresh("t0"), kb.fresh("mo")
                acc = [[kb.fresh(f"acc{r}_{t}_", vec) for t in range(width)]
                       for r in range(p.rows)]
                gb: list[K.Stmt] = [K.Declare(t0, first + grp * width),
                                    K.Declare(mo, mb + t0 * L)]
                gb += [K.Declare(acc[r][t], K.broadcast(0.0, L, dtype))
                       for r in range(p.rows) for t in range(width)]
                cb, lane = kb.fresh("cb"), kb.fresh("cl")
                uc, vc, uo, vo = (kb.fresh(x) for x in ("uc", "vc", "uo", "vo"))
                inner: list[K.Stmt] = [K.Declare(uo, uc + lane * L),
                                       K.Declare(vo, vc + lane)]
                wv = [K.Load(u, uo + r * u_k, L) for r in range(p.rows)]
                for t in range(width):
                    xv = K.Broadcast(K.Load(v, vo + t * L), L)
                    inner += [K.Assign(acc[r][t], K.fma(xv, wv[r], acc[r][t]))
                              for r in range(p.rows)]
                gb.append(K.Loop(cb, ch * chunk, ch * chunk + chunk, [
                    K.Declare(uc, ub + cb * (L * L)), K.Declare(vc, vb + cb * v_cb + t0 * L),
                    K.Loop(lane, K.Const(0), K.Const(L), inner, "rolled")], "rolled"))
                for r in range(p.rows):
                    for t in range(width):
                        at = mo + (r * m_r + t * L)
                        if chunks == 1:
                            gb.append(K.Store(mbuf, at, acc[r][t]))
                            continue
                        # (the first chunk loads whatever M holds and drops it)
                        old = let(gb, K.Load(mbuf, at, L), "m")
                        gb.append(K.Store(mbuf, at, acc[r][t] + K.select(ch.eq(0), 0.0, old)))
                out.append(K.Loop(grp, K.Const(0), K.Const(count), gb, "rolled"))
            return out

        ch = kb.fresh("ch")
        s.append(K.Loop(ch, K.Const(0), K.Const(chunks), groups(ch), "rolled"))
        return s

    # ---------------------------------------------------------- 3. output transform
    def output_block(k0: K.Expr, tx0: K.Expr, prow=None, first: bool = False,
                     m_off: K.Expr | None = None) -> list[K.Stmt]:
        """Outputs of the block for output pair ``k0``: all of ``A^T M A`` (``prow`` None),
        or the share of position row ``prow``, stored (``first``) or added to the outputs;
        ``prow`` may be a list of coefficient vectors (``A^T[i, prow]`` per output row ``i``)
        for a row chosen at run time."""
        tyr, r, tc = kb.fresh("tyr"), kb.fresh("r"), kb.fresh("tc")
        ty, oh0, tx = kb.fresh("ty"), kb.fresh("oh"), kb.fresh("tx")
        mt, yt = kb.fresh("mt"), kb.fresh("yt")
        s: list[K.Stmt] = [
            K.Declare(mt, (m_off if m_off is not None else K.Const(0))
                      + (tyr * p.width + tc) * L + r * m_r),
            K.Declare(yt, (n * kbs + k0 + r) * y_k + oh0 * y_h + tx * (m * L))]
        bv = None
        if bias_buf is not None and (prow is None or first):
            bv = let(s, K.Load(bias_buf, (k0 + r) * L, L), "bias")
        out_rows: list[tuple[int, list]] = []
        if prow is None:
            mv = [[let(s, K.Load(mbuf, mt + (i * a + j) * m_pos, L), "m") for j in range(a)]
                  for i in range(a)]
            cols_t = [[let(s, e) for e in output_1d([mv[i][j] for i in range(a)])]
                      for j in range(a)]
            out_rows = [(i, output_1d([cols_t[j][i] for j in range(a)], bv)) for i in range(m)]
        else:
            mv = [let(s, K.Load(mbuf, mt + j * m_pos, L), "m") for j in range(a)]
            z = [let(s, e) for e in output_1d(mv)]
            zero = K.broadcast(0.0, L, dtype)
            for i in range(m):
                if isinstance(prow, list):   # added below as scale * z + y
                    out_rows.append((i, z))
                    continue
                c = float(AT[i][prow])
                if c == 0 and not first:
                    continue
                out = [None if c == 0 else e if c == 1 else e * c for e in z]
                if first:   # the first share stored: the bias, and zeros where it adds none
                    out = [_add(e, bv) or zero for e in out]
                out_rows.append((i, out))
        edge = g.ow % m                  # columns of the last tile column, if partial
        for i, out in out_rows:
            stores: list[K.Stmt] = []
            for j in range(m):
                at = yt + i * y_h + j * L
                if first or prow is None:
                    value = out[j]
                elif isinstance(prow, list):
                    value = K.fma(prow[i], out[j], K.Load(kb.out, at, L))
                else:
                    value = K.Load(kb.out, at, L) + out[j]
                stores.append(K.Store(kb.out, at, value))
            if edge:
                stores = stores[:edge] + [K.If(tx.lt(tw - 1), stores[edge:])]
            if g.oh % m and i >= g.oh % m:
                stores = [K.If((oh0 + i).lt(g.oh), stores)]
            s += stores
        if p.blocks * p.width > tw:
            s = [K.If(tx.lt(tw), s)]
        inner = [K.Loop(r, K.Const(0), K.Const(p.rows), [
            K.Loop(tc, K.Const(0), K.Const(p.width), [K.Declare(tx, tx0 + tc), *s], "rolled")],
            "rolled")]
        if not p.by_rows and p.units * p.rt > th:
            inner = [K.If(ty.lt(th), inner)]
        return [K.Loop(tyr, K.Const(0), K.Const(p.rt),
                       [K.Declare(ty, ty0 + tyr), K.Declare(oh0, ty * m)] + inner, "rolled")]

    kv, oh = kb.fresh("kblk"), kb.fresh("oh")
    tail = epilogue(kb, conv, n, kv, oh, 1, g)
    if p.by_rows:
        # ---------------------------------------------------------- rows of positions
        per = pairs // p.units                 # output pairs of this unit
        kp0 = kb.fresh("kp0")
        body.append(K.Declare(kp0, unit % p.units * per))
        # one pass per position row; the row-specific input and output transforms are
        # picked at run time (the GEMM code is shared)
        # (rows 1-4 combine the same input rows 1-4 and touch every output row: one copy
        # with coefficients from tables; row 0 stores every output, the others add)
        prow = kb.fresh("prow")
        kp, k0 = kb.fresh("kp"), kb.fresh("k0")
        bt = kb.table("wino_bt", BT, dtype)
        at = kb.table("wino_at", AT, dtype)
        mix = {i: kb.fresh("bt", vec) for i in range(1, a - 1)}
        scale = [kb.fresh("at", vec) for _ in range(m)]
        coefs = [K.Declare(c, K.Broadcast(K.Load(bt, prow * a + i), L)) for i, c in mix.items()]
        coefs += [K.Declare(c, K.Broadcast(K.Load(at, i * a + prow), L))
                  for i, c in enumerate(scale)]
        m_off = (kp - kp0) * (p.rows * m_r)
        choose_in = [K.If(prow.eq(0), input_block(K.Const(0), 0), [
            K.If(prow.eq(a - 1), input_block(K.Const(0), a - 1),
                 input_block(K.Const(0), mix))])]
        choose_out = [K.If(prow.eq(0), output_block(k0, K.Const(0), 0, True, m_off), [
            K.If(prow.eq(a - 1), output_block(k0, K.Const(0), a - 1, False, m_off),
                 output_block(k0, K.Const(0), scale, False, m_off))])]
        pos, kq, k1 = kb.fresh("pos"), kb.fresh("kp"), kb.fresh("k0")
        gemms = [K.Loop(pos, K.Const(0), K.Const(a), [
            K.Loop(kq, kp0, kp0 + per, [K.Declare(k1, kq * p.rows)]
                   + gemm_at(pos, pos + prow * a, k1, (kq - kp0) * (p.rows * m_r)),
                   "rolled")], "rolled")]
        body.append(K.Loop(prow, K.Const(0), K.Const(a), [
            *coefs, *choose_in, *gemms,
            K.Loop(kp, kp0, kp0 + per, [K.Declare(k0, kp * p.rows), *choose_out], "rolled")],
            "rolled"))
        if tail:
            body.append(K.Loop(kv, kp0 * p.rows, (kp0 + per) * p.rows, [
                K.Loop(oh, K.Const(0), K.Const(g.oh), tail)]))
        return [K.Loop(unit, K.Const(0), K.Const(g.n * p.units), body, "parallel")]

    # ---------------------------------------------------------- blocks of tiles
    blk, tx0 = kb.fresh("blk"), kb.fresh("tx0")
    pos, kp, k0 = kb.fresh("pos"), kb.fresh("kp"), kb.fresh("k0")
    per_pair = [K.Declare(k0, kp * p.rows),
                K.Loop(pos, K.Const(0), K.Const(POSITIONS),
                       gemm_at(pos, pos, k0, K.Const(0)), "rolled")]
    per_pair += output_block(k0, tx0)
    body.append(K.Loop(blk, K.Const(0), K.Const(p.blocks), [
        K.Declare(tx0, blk * p.width), *input_block(tx0),
        K.Loop(kp, K.Const(0), K.Const(pairs), per_pair, "rolled")], "rolled"))
    if tail:   # the fused epilogue over the unit's finished rows
        body.append(K.Loop(kv, K.Const(0), K.Const(kbs), [
            K.Loop(oh, ty0 * m, K.minimum(ty0 * m + p.rt * m, g.oh), tail)]))
    return [K.Loop(unit, K.Const(0), K.Const(g.n * p.units), body, "parallel")]
