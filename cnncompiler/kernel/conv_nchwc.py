"""Direct convolution on channel-blocked tensors (NCHW{x}c), register-blocked for SIMD.

The CPU schedule for Conv nodes the layout pass put in ``NCHW8c`` (NeoCPU/TVM's layout):
X is [N, C/8, H, W, 8], Y is [N, K/8, OH, OW, 8], so 8 consecutive output channels of one
pixel are one ``f32x8`` vector. The weights are repacked once, at compile time, so the 8
filters of an output block are contiguous per (input channel, tap):

- dense/grouped conv: ``Wp[K/8, C/g/8, FH, FW, 8 (input lane), 8 (output lane)]``. A
  *micro-kernel* keeps an R x T tile of accumulators in registers (R output-channel blocks
  x T output columns; 2 x 6 on AVX2's 16 vector registers: 12 accumulators, 2 weight
  vectors, 1 broadcast input). Each input channel and tap loads R weight vectors and T input
  scalars (broadcast to all lanes) for R·T fused multiply-adds, and the sum over C·FH·FW
  stays in registers until the tile is stored once. The innermost loop runs over the 8
  input channels of a block, so no two loads of one iteration read the same address: when
  taps of neighbouring columns overlap (stride 1), LLVM would otherwise merge the repeated
  broadcasts and keep them live across taps, spilling accumulators.
- depthwise conv (group = C = K): ``Wp[K/8, FH, FW, 8]``; the lanes are channels, so each tap
  is one vector load of the input, one of the weights and one FMA per output column.

Bounds are resolved at compile time as in :func:`~cnncompiler.kernel.lower.conv_rows`: output
columns are cut into segments over which the set of in-image kernel columns is constant
(interior segments take them all, the padded borders fewer), and rows whose kernel rows all
lie inside the image skip every check; border rows test each kernel row once. The fused
epilogue (bias is folded into the accumulators' start; ReLU, residual Add... run over the
finished output row while it is in L1) reads the stored row in place.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from cnncompiler.errors import UnsupportedError
from cnncompiler.ir.graph import Node
from cnncompiler.ir.layout import Layout
from cnncompiler.kernel import ir as K
from cnncompiler.ops.layout_ops import input_layout, node_layout

#: register tile (output-channel blocks, output columns) for dense convs on 16 vector regs
DENSE_TILE = (2, 6)
#: columns per depthwise micro-kernel: T accumulators, the T + FW - 1 input vectors a row of
#: taps shares (LLVM keeps them in registers across taps), one weight vector
DEPTHWISE_TILE = 6
#: bytes of a core's L2 cache a kernel may count on keeping (half of Zen 3's 512 KiB)
L2_BUDGET = 256 * 1024


@dataclass(frozen=True)
class BlockedConv:
    """Geometry of one Conv node: logical sizes, and how X and Y are stored."""

    lanes: int                 # output channels per vector (x of NCHW{x}c)
    blocked: bool              # Y in NCHW{lanes}c (else NCHW: see conv_nchwc)
    x_blocked: bool            # X in NCHW{lanes}c (else NCHW: a 3-channel image, say)
    n: int
    c: int                     # input channels
    h: int
    w: int
    k: int                     # output channels
    oh: int
    ow: int
    fh: int
    fw: int
    sh: int
    sw: int
    pt: int
    pl: int
    dh: int
    dw: int
    group: int

    @property
    def cg(self) -> int:       # input channels per group
        return self.c // self.group

    @property
    def kg(self) -> int:       # output channels per group
        return self.k // self.group

    @property
    def depthwise(self) -> bool:
        return self.x_blocked and self.group == self.c == self.k

    @property
    def in_block(self) -> int:  # input channels per block of X (1: NCHW)
        return self.lanes if self.x_blocked else 1

    @classmethod
    def of(cls, conv: Node, lanes: int = 8) -> BlockedConv:
        """``lanes`` is the vector width for an NCHW conv (a blocked one has its own)."""
        layout, xlay = node_layout(conv.attrs), input_layout(conv.attrs)
        problem = _layouts_problem(layout, xlay)
        if problem:
            raise UnsupportedError(f"node '{conv.name}' (Conv): {problem}")
        xs, ws, ys = (v.type.shape for v in (conv.inputs[0], conv.inputs[1], conv.outputs[0]))
        a = conv.attrs
        (sh, sw), (pt, pl), (dh, dw) = a["strides"], a["pads"][:2], a["dilations"]
        lanes = layout.block or xlay.block or lanes
        c = xs[1] * lanes if xlay.block else xs[1]
        return cls(lanes, bool(layout.block), bool(xlay.block), xs[0], c, xs[2], xs[3], ws[0],
                   ys[2], ys[3], ws[2], ws[3], sh, sw, pt, pl, dh, dw, a["group"])


def _layouts_problem(layout: Layout, xlay: Layout) -> str | None:
    """X and Y must each be NCHW or NCHW{x}c, with one block size."""
    for lay in (layout, xlay):
        if lay.name not in ("NCHW", f"NCHW{lay.block}c"):
            return f"no register-blocked schedule for layout {lay}"
    if layout.block and xlay.block and layout.block != xlay.block:
        return f"X in {xlay} and Y in {layout}: one block size only"
    return None


def channel_problem(c: int, k: int, group: int, lanes: int) -> str | None:
    """Why a conv with ``c`` input / ``k`` output channels in ``group`` groups cannot run
    blocked by ``lanes`` (None if it can: dense or grouped with whole blocks per group, or
    depthwise)."""
    if c % lanes or k % lanes:
        return f"blocked convs need channel counts that are multiples of {lanes}, got {c}, {k}"
    if group == c == k:
        return None
    if (c // group) % lanes or (k // group) % lanes:
        return (f"grouped conv with {c // group} input / {k // group} output channels per "
                f"group: blocked convs need multiples of {lanes} (or depthwise)")
    return None


def blocked_conv_problem(conv: Node, weights_known: bool, lanes: int = 8) -> str | None:
    """Why :func:`conv_nchwc` cannot compute ``conv`` (None if it can)."""
    problem = _layouts_problem(node_layout(conv.attrs), input_layout(conv.attrs))
    if problem:
        return problem
    if not weights_known:
        return "the weights are computed at run time (blocked convs repack them at compile time)"
    g = BlockedConv.of(conv, lanes)
    if not g.x_blocked:   # NCHW input: dense convs with whole output blocks
        if g.group != 1 or g.k % g.lanes:
            return f"NCHW conv with group {g.group}, {g.k} filters: not {g.lanes}-blockable"
        return None
    if not g.blocked:
        return "a blocked input with an NCHW output has no schedule"
    return channel_problem(g.c, g.k, g.group, g.lanes)


def pack_weights(g: BlockedConv, w: np.ndarray) -> np.ndarray:
    """OIHW weights in the micro-kernels' order (see the module docstring)."""
    kb = g.k // g.lanes
    lanes, inb = g.lanes, g.in_block
    if g.depthwise and g.blocked:   # [K, 1, FH, FW] -> [K/8, FH, FW, 8]
        return w.reshape(kb, lanes, g.fh, g.fw).transpose(0, 2, 3, 1)
    # [K, C/g, FH, FW] -> [K/8, C/g/b, FH, FW, b (input lane), 8 (output lane)], b = X's block
    return w.reshape(kb, lanes, g.cg // inb, inb, g.fh, g.fw).transpose(0, 2, 4, 5, 3, 1)


def pointwise_rows(g: BlockedConv, kb, conv: Node) -> BlockedConv:
    """A 1x1, stride-1, unpadded conv on blocked X and Y as one output row of OH*OW columns
    (the same bytes: [N, C/8, H, W, 8] is [N, C/8, 1, H*W, 8]): a 7x7 output is then one
    49-column row, 8 full register tiles and a 1-column tail, instead of 7 rows that each
    end in a 1-column tail (ResNet-50's layer4 1x1 convs ran at 61% of peak that way).
    Only where the fused epilogue reads every other operand either whole or broadcast over
    both spatial dims, so the flat column index addresses it correctly."""
    if not (g.blocked and g.x_blocked and (g.fh, g.fw, g.sh, g.sw) == (1, 1, 1, 1)
            and g.pt == g.pl == 0 and (g.oh, g.ow) == (g.h, g.w) and g.oh > 1):
        return g
    out_spatial = (g.oh, g.ow)
    for member in kb.members[1:]:
        for v in member.inputs:
            if v is None or v.type.rank < 4:
                continue
            spatial = tuple(v.type.shape[2:4])
            if spatial not in (out_spatial, (1, 1)):
                return g
    return replace(g, h=1, w=g.h * g.w, oh=1, ow=g.oh * g.ow)


def conv_nchwc(kb, conv: Node) -> list[K.Stmt]:
    """Statements of a kernel computing the blocked ``conv`` (the first member of ``kb``)."""
    g = pointwise_rows(BlockedConv.of(conv), kb, conv)
    x, w = conv.inputs[0], conv.inputs[1]
    bias = conv.inputs[2] if len(conv.inputs) > 2 else None
    dtype = K.scalar_of(kb.out.dtype)
    L = g.lanes
    vec = K.vector(dtype, L)
    wpack = kb.repack(w, "wpack", lambda weights: pack_weights(g, weights), dtype)
    xin = kb.buffers[x.name]
    inb = g.in_block
    cbs, kbs = g.c // inb, g.k // L               # channel blocks of X and of Y
    if g.depthwise:
        rows, cols = 1, DEPTHWISE_TILE
    elif (g.kg // L) % DENSE_TILE[0]:
        rows, cols = 1, DENSE_TILE[0] * DENSE_TILE[1]
    else:
        rows, cols = DENSE_TILE

    # --- the parallel loop: one output row of ``rows`` channel blocks per iteration. Index
    # arithmetic is declared once per loop level (the renderer does not share
    # subexpressions between statements), so the micro-kernel body is loads and FMAs.
    unit = kb.fresh("row")
    groups_of_rows = kbs // rows
    n, k0, oh = kb.fresh("n"), kb.fresh("k0"), kb.fresh("oh")
    cgb = g.cg // inb                              # input channel blocks per group
    # element strides of X [N, C/b, H, W, b] (b = 8, or 1: NCHW) and of the packed weights
    x_cb, x_h, x_w = g.h * g.w * inb, g.w * inb, inb
    w_k = cgb * g.fh * g.fw * inb * L if not g.depthwise else g.fh * g.fw * L
    head: list[K.Stmt] = [
        K.Declare(n, unit // (groups_of_rows * g.oh))]
    if loop_order(g) == "rows":   # consecutive units: same output row, next channel blocks
        head += [K.Declare(k0, unit % groups_of_rows * rows),
                 K.Declare(oh, (unit // groups_of_rows) % g.oh)]
    else:
        head += [K.Declare(k0, (unit // g.oh) % groups_of_rows * rows),
                 K.Declare(oh, unit % g.oh)]
    first_block = k0 if g.depthwise else (k0 * L) // g.kg * cgb   # input block of the group
    x_row = kb.fresh("xrow")     # X at (n, first block, oh*S - P_top, column 0, lane 0)
    head.append(K.Declare(x_row, ((n * cbs + first_block) * g.h + oh * g.sh - g.pt) * x_h))

    def tile(ow0: K.Expr, taps_of: list[list[int]], checks: bool) -> list[K.Stmt]:
        """One micro-kernel: ``rows`` x ``width`` accumulators over the whole reduction;
        column ``t`` of the tile takes kernel columns ``taps_of[t]``."""
        width = len(taps_of)
        acc = [[kb.fresh(f"acc{r}_{t}_", vec) for t in range(width)] for r in range(rows)]
        stmts: list[K.Stmt] = []
        for r in range(rows):
            start = (K.Load(kb.buffers[bias.name], (k0 + r) * L, L) if bias is not None
                     else K.broadcast(0.0, L, dtype))
            stmts += [K.Declare(a, start) for a in acc[r]]
        x_tile = kb.fresh("xt")      # X at the tile's first column
        stmts.append(K.Declare(x_tile, x_row + (ow0 * g.sw - g.pl) * x_w))

        def taps(i: K.Var, cb: K.Expr | None) -> list[K.Stmt]:
            """The FMAs of kernel row ``i``, input channel block ``cb``."""
            body: list[K.Stmt] = []
            columns: list = sorted({j for js in taps_of for j in js})
            jv = None
            if inb == 1 and not g.depthwise and len(columns) > 1 and all(
                    js == list(range(g.fw)) for js in taps_of):
                # no channel-lane loop to keep neighbouring columns' overlapping loads
                # apart: the kernel columns become the rolled loop instead
                jv = kb.fresh("kj")
                columns = [jv]
            for j in columns:
                ts = [t for t in range(width) if jv is not None or j in taps_of[t]]
                xo, wo = kb.fresh("xo"), kb.fresh("wo")
                col = j * g.dw * x_w
                if g.depthwise:
                    body += [K.Declare(xo, x_tile + i * (g.dh * x_h) + col),
                             K.Declare(wo, k0 * w_k + (i * g.fw + j) * L)]
                    wv = K.Load(wpack, wo, L)
                    body += [K.Assign(acc[0][t], K.fma(K.Load(xin, xo + t * g.sw * x_w, L),
                                                       wv, acc[0][t])) for t in ts]
                    continue
                # input channel within the block: the innermost loop
                lane = kb.fresh("cl") if inb > 1 else K.Const(0)
                inner: list[K.Stmt] = [
                    K.Declare(xo, x_tile + cb * x_cb + i * (g.dh * x_h) + col + lane),
                    K.Declare(wo, k0 * w_k + (((cb * g.fh + i) * g.fw + j) * inb + lane) * L)]
                wv = [K.Load(wpack, wo + r * w_k, L) for r in range(rows)]
                for t in ts:
                    xv = K.Broadcast(K.Load(xin, xo + t * g.sw * x_w), L)
                    inner += [K.Assign(acc[r][t], K.fma(xv, wv[r], acc[r][t]))
                              for r in range(rows)]
                body += [K.Loop(lane, K.Const(0), K.Const(inb), inner, "rolled")] if inb > 1 \
                    else inner
            if jv is not None:
                body = [K.Loop(jv, K.Const(0), K.Const(g.fw), body, "rolled")]
            return body

        def kernel_rows(cb: K.Expr | None) -> list[K.Stmt]:
            """Kernel rows in a loop; rows in the padding skipped by one test each (none
            where every window of the conv is inside the image)."""
            i = kb.fresh("ki")
            body = taps(i, cb)
            if checks:
                ih = oh * g.sh + i * g.dh - g.pt
                body = [K.If(K.Bin("and", ih.ge(0), ih.lt(g.h)), body)]
            return [K.Loop(i, K.Const(0), K.Const(g.fh), body, "rolled")]

        if g.depthwise:
            stmts += kernel_rows(None)
        else:
            cb = kb.fresh("cb")
            stmts.append(K.Loop(cb, K.Const(0), K.Const(cgb), kernel_rows(cb), "rolled"))
        y_tile = kb.fresh("yt")
        if g.blocked:   # Y [N, K/8, OH, OW, 8]: one vector store per accumulator
            stmts.append(K.Declare(y_tile, (((n * kbs + k0) * g.oh + oh) * g.ow + ow0) * L))
            stmts += [K.Store(kb.out, y_tile + (r * g.oh * g.ow + t) * L, acc[r][t])
                      for r in range(rows) for t in range(width)]
        else:           # Y [N, K, OH, OW]: each lane to its channel's plane
            plane = g.oh * g.ow
            stmts.append(K.Declare(y_tile, ((n * g.k + k0 * L) * g.oh + oh) * g.ow + ow0))
            stmts += [K.Store(kb.out, y_tile + ((r * L + lane) * plane + t),
                              K.Extract(acc[r][t], lane))
                      for r in range(rows) for t in range(width) for lane in range(L)]
        return stmts

    def row(checks: bool) -> list[K.Stmt]:
        """One output row: tiles at compile-time columns where a tile touches the padding
        (each column with its own taps), runs of equal interior tiles as loops."""
        taps = column_taps(g)
        full = list(range(g.fw))
        stmts: list[K.Stmt] = []
        for lo, width, count in tile_runs(g.ow, cols):
            if all(taps[c] == full for c in range(lo, lo + width * count)):
                if count == 1:
                    stmts += tile(K.Const(lo), [full] * width, checks)
                else:
                    t = kb.fresh("tile")
                    stmts.append(K.Loop(t, K.Const(0), K.Const(count),
                                        tile(lo + t * width, [full] * width, checks), "rolled"))
                continue
            for u in range(count):
                start = lo + u * width
                stmts += tile(K.Const(start), taps[start:start + width], checks)
        return stmts

    # rows whose every kernel row is inside the image
    top = min(g.oh, -(-g.pt // g.sh))
    bottom = max(top, min(g.oh, (g.h - 1 + g.pt - (g.fh - 1) * g.dh) // g.sh + 1))
    body = head + row(checks=not (top == 0 and bottom == g.oh))
    body += epilogue(kb, conv, n, k0, oh, rows, g)
    return [K.Loop(unit, K.Const(0), K.Const(g.n * groups_of_rows * g.oh), body, "parallel")]


def loop_order(g: BlockedConv) -> str:
    """Which operand stays in cache: "rows" walks all output channels of a row before the
    next row (the input rows stay in L1/L2, the weights stream once per row); "channels"
    walks all rows of a channel group first (its weights stay in L2, the input streams once
    per group). Pick the smaller estimated traffic beyond L2; the input's stream counts
    double, as it jumps between channel planes rather than reading straight through.
    Measured (one core, GFLOP/s rows vs channels): 1x1 1024->256 at 14x14 94 vs 74; 3x3
    512->512 at 7x7 52 vs 76; 3x3 64->64 at 56x56 and 1x1 64->256 at 56x56 equal."""
    weights = g.k * g.cg * g.fh * g.fw * 4
    x = g.c * g.h * g.w * 4
    rows = weights if weights <= L2_BUDGET else weights * g.oh
    groups = g.k // (g.lanes * DENSE_TILE[0])
    channels = x if x <= L2_BUDGET else 2 * x * max(1, groups)
    return "rows" if rows <= channels else "channels"


def column_taps(g: BlockedConv) -> list[list[int]]:
    """For each output column, the kernel columns whose input column lies in the image."""
    return [[j for j in range(g.fw) if 0 <= ow * g.sw + j * g.dw - g.pl < g.w]
            for ow in range(g.ow)]


def tile_runs(width: int, most: int) -> list[tuple[int, int, int]]:
    """Cut ``width`` columns into runs of tiles of at most ``most`` columns: the two end tiles
    (which touch the padding) share the remainder evenly, the middle ones are full. Returns
    runs (first column, tile width, tile count); 56 -> 4 + 8 x 6 + 4, 7 -> 3 + 4, not 6 + 1:
    a narrow tile has too few accumulators to hide the FMA latency."""
    if width <= most:
        return [(0, width, 1)]
    middle = max(0, -(-(width - 2 * most) // most))
    rest = width - middle * most
    first = rest // 2
    runs = [(0, first, 1)]
    if middle:
        runs.append((first, most, middle))
    runs.append((first + middle * most, rest - first, 1))
    return runs


def epilogue(kb, conv: Node, n: K.Expr, k0: K.Expr, oh: K.Expr, rows: int,
             g: BlockedConv) -> list[K.Stmt]:
    """The fused consumers of the conv (ReLU, residual Add...), over the finished rows."""
    if kb.members[-1] is conv:
        return []
    y = conv.outputs[0]
    kb.buffers[y.name] = kb.out       # consumers read the conv result where it was stored
    stmts: list[K.Stmt] = []
    for r in range(rows):
        col, lane = kb.fresh("col"), kb.fresh("lane")
        if g.blocked:
            idx = [n, k0 + r, oh, col, lane]
            shape: tuple[int, ...] = (g.n, g.k // g.lanes, g.oh, g.ow, g.lanes)
        else:
            idx = [n, (k0 + r) * g.lanes + lane, oh, col]
            shape = (g.n, g.k, g.oh, g.ow)
        pre, value = kb.element(kb.output, idx)
        inner = pre + [K.Store(kb.out, K.flat_index(idx, shape), value)]
        if g.blocked:   # lanes contiguous innermost
            loop = K.Loop(col, K.Const(0), K.Const(g.ow),
                          [K.Loop(lane, K.Const(0), K.Const(g.lanes), inner, "vector")])
        else:           # a channel's row contiguous innermost
            loop = K.Loop(lane, K.Const(0), K.Const(g.lanes),
                          [K.Loop(col, K.Const(0), K.Const(g.ow), inner, "vector")])
        stmts.append(loop)
    return stmts
