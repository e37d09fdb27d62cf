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
lie inside the image skip every check; border rows test each kernel row once. 1x1 convs
run as rows of the flattened pixels (:func:`pointwise_rows`; a strided one with narrow
rows over a subsampled copy of its input, :func:`subsample_input`); other convs with
narrow rows in bands of several rows, tiles running across rows (:func:`pixel_bands`).
The fused epilogue (bias is folded into the accumulators' start; ReLU, residual Add...
run over the finished output row while it is in L1) reads the stored row in place.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace

import numpy as np

from cnncompiler.errors import UnsupportedError
from cnncompiler.ir.graph import Node
from cnncompiler.ir.layout import Layout
from cnncompiler.kernel import ir as K
from cnncompiler.ops.layout_ops import input_layout, node_layout

#: register tile (output-channel blocks, output columns) for dense convs on 16 vector regs
DENSE_TILE = (2, 6)
#: ...where the output blocks per group are odd but a multiple of 3 (24 channels, say):
#: 12 accumulators, 3 weight vectors, 1 broadcast; fewer loads per FMA than 1 x 12, and
#: each pass over the input feeds 3 blocks rather than 1
DENSE_TILE_3 = (3, 4)
#: filter bytes of one unit above which the reduction runs in chunks of at most
#: CHUNK_BYTES (see :func:`reduction_chunk`)
CHUNK_ABOVE = 32 * 1024
CHUNK_BYTES = 8 * 1024
#: input channel blocks (streams from X's planes) a pass reads at most (see reduction_chunk)
CHUNK_PLANES = 8
#: a 1x1 conv flattened to rows (see :func:`pointwise_rows`) is cut into at least this many
#: parallel units (output rows x channel groups) where its size allows...
MIN_UNITS = 8
#: ...keeping rows at least this many columns wide
MIN_ROW = 48
#: columns per depthwise micro-kernel: T accumulators, the T + FW - 1 input vectors a row of
#: taps shares (LLVM keeps them in registers across taps), one weight vector
DEPTHWISE_TILE = 6
#: bytes of a core's L2 cache a kernel may count on keeping (half of Zen 3's 512 KiB)
L2_BUDGET = 256 * 1024
#: most bytes of the subsampled input of a strided 1x1 conv (see :func:`pointwise_rows`),
#: stack memory of each thread's call
SUBSAMPLE_BYTES = 1 << 20
#: most output pixels of one band of narrow output rows (see :func:`pixel_bands`): its
#: tiles are placed at compile time, one copy of the micro-kernel each
BAND_PIXELS = 64
#: FMAs in flight that hide the FMA latency (2 pipes x 4 cycles on Zen 3, with a margin:
#: rows of 4-column tiles, 8 accumulators, ran 5-7% slower than bands of 5 and 6 columns),
#: and the overhead of a tile in FMAs, for the cost model of :func:`band_tiles`
FMA_CHAINS = 10
TILE_COST = 4
#: least modelled gain of bands over Y's rows (see :func:`pixel_bands`)
BAND_GAIN = 0.1


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
    #: a strided 1x1 conv that :func:`pointwise_rows` turned into a stride-1 one over a
    #: subsampled copy of X: (OH, OW, H, W, SH, SW) of the real conv (the fields above then
    #: describe the flat rows of the copy)
    subsample: tuple[int, int, int, int, int, int] | None = None

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


def register_tile(g: BlockedConv) -> tuple[int, int]:
    """(output-channel blocks, output columns) of the micro-kernel's accumulator tile."""
    if g.depthwise:
        return 1, DEPTHWISE_TILE
    blocks = g.kg // g.lanes
    for tile in (DENSE_TILE, DENSE_TILE_3):
        if blocks % tile[0] == 0:
            return tile
    return 1, DENSE_TILE[0] * DENSE_TILE[1]


def flat_rows(pixels: int, groups: int, pixel_bytes: int = 0) -> int:
    """How many rows to cut ``pixels`` flattened output columns into: the fewest (a divisor
    of ``pixels``) that make ``groups`` x rows >= MIN_UNITS parallel units and keep a row's
    input (``pixel_bytes`` per column) within L2_BUDGET, unless rows would get narrower
    than MIN_ROW columns (then the most rows that stay that wide). Consecutive units compute
    one row's channel groups (:func:`loop_order`), so a row whose input stays in L2 is read
    from memory once, not once per group: ResNet-50's 1x1 convs at 56x56 and 28x28, one
    core, went from 62-79 to 92-98 GFLOP/s in rows of 224 and 112 columns, against 1..2
    rows."""
    best = 1
    for rows in range(1, pixels + 1):
        if pixels % rows:
            continue
        if pixels // rows < MIN_ROW and rows > 1:
            break
        best = rows
        if groups * rows >= MIN_UNITS and pixels // rows * pixel_bytes <= L2_BUDGET:
            break
    return best


def pointwise_rows(g: BlockedConv, kb, conv: Node) -> BlockedConv:
    """A 1x1 unpadded conv on blocked X and Y as output rows of any width that divides
    OH*OW (the same bytes: [N, K/8, OH, OW, 8] is [N, K/8, R, OH*OW/R, 8]): a 7x7 output is
    then one 49-column row, 7 full register tiles and two narrower ones, instead of 7 rows
    that each end in a narrow tail (ResNet-50's layer4 1x1 convs ran at 61% of peak that
    way). At stride 1 X is read the same way ([N, C/8, H, W, 8] is [N, C/8, R, H*W/R, 8]).
    A strided one (a downsample) whose rows hold no full register tile first copies the
    pixels it reads into a contiguous scratch array (:func:`subsample_input`; the returned
    geometry is the stride-1 conv over that copy, ``subsample`` the real one): ResNet-50's
    layer4 downsample, 1024->2048 at 14x14 -> 7x7, ran at 55-64% of peak in 7-column rows
    (tiles of 3 and 4 columns, each streaming the unit's 64 KiB of filters), at 58% with the
    flat rows' pixels read from X in place (the 400 KiB of half-used cache lines every unit
    reads do not stay in L2), and at 80% from the 200 KiB copy. Wider rows keep their row
    schedule: the copy's cost then outweighs the tiles' gain (ResNet-18's 64->128 at 56x56
    -> 28x28: 93% in rows, 86% flat).
    Few output channels (16 or 24 at 112x112 or 56x56 in MobileNetV2) would leave only
    1..3 parallel units (channel groups x rows) for the threads to share, so the pixels are
    cut into as many rows as :func:`flat_rows` says. Only where the fused epilogue reads
    every other operand either whole or broadcast over both spatial dims, so the flat
    column index addresses it correctly."""
    if not (g.blocked and g.x_blocked and (g.fh, g.fw) == (1, 1) and g.pt == g.pl == 0
            and g.oh > 1 and g.subsample is None):
        return g
    strided = (g.oh, g.ow, g.sh, g.sw) != (g.h, g.w, 1, 1)
    copy_bytes = g.n * g.c * g.oh * g.ow * K.ITEM_BYTES[K.scalar_of(kb.out.dtype)]
    if strided and (g.ow >= 2 * register_tile(g)[1]   # Y's rows have full tiles already
                    or (g.oh - 1) * g.sh >= g.h or (g.ow - 1) * g.sw >= g.w
                    or copy_bytes > SUBSAMPLE_BYTES):
        return g    # ...or outputs in the padding (bias only), or a copy too big
    out_spatial = (g.oh, g.ow)
    for member in kb.members[1:]:
        for v in member.inputs:
            if v is None or v.type.rank < 4:
                continue
            spatial = tuple(v.type.shape[2:4])
            if spatial not in (out_spatial, (1, 1)):
                return g
    pixels = g.oh * g.ow
    rows = flat_rows(pixels, g.n * g.k // (g.lanes * register_tile(g)[0]),
                     g.c * K.ITEM_BYTES[K.scalar_of(kb.out.dtype)])
    flat = replace(g, h=rows, w=pixels // rows, oh=rows, ow=pixels // rows)
    if not strided:
        return flat
    return replace(flat, sh=1, sw=1, subsample=(g.oh, g.ow, g.h, g.w, g.sh, g.sw))


def subsample_input(kb, g: BlockedConv, x: K.Buffer) -> tuple[K.Buffer, list[K.Stmt]]:
    """The scratch array [N, C/8, OH, OW, 8] of the pixels a strided 1x1 conv reads from X
    [N, C/8, H, W, 8] (see :func:`pointwise_rows`), and the statements filling it: each
    thread's call copies all of it (every unit reads every input channel) before its share
    of the parallel loop."""
    oh_r, ow_r, h_r, w_r, sh_r, sw_r = g.subsample
    L = g.lanes
    planes = g.n * g.c // L
    copy = K.Buffer(kb.fresh("xsub").name, x.dtype, planes * oh_r * ow_r * L)
    plane, i, j = kb.fresh("plane"), kb.fresh("si"), kb.fresh("sj")
    src, dst = kb.fresh("src"), kb.fresh("dst")
    inner = [K.Store(copy, dst + j * L, K.Load(x, src + j * (sw_r * L), L))]
    rows = [K.Declare(src, ((plane * h_r) + i * sh_r) * w_r * L),
            K.Declare(dst, (plane * oh_r + i) * ow_r * L),
            K.Loop(j, K.Const(0), K.Const(ow_r), inner, "rolled")]
    return copy, [K.Local(copy), K.Loop(plane, K.Const(0), K.Const(planes), [
        K.Loop(i, K.Const(0), K.Const(oh_r), rows, "rolled")], "rolled")]


def pixel_bands(g: BlockedConv) -> int:
    """Output rows per band for a dense/grouped blocked conv whose output rows are too
    narrow for full register tiles (0: keep Y's rows). The tiles of a band run over its
    pixels in Y's order ([N, K/8, OH, OW, 8]: consecutive pixels are consecutive vectors,
    across rows too), so a 7x7 output is 9 tiles of 5 or 6 columns rather than 7 rows of a
    3- and a 4-column tile (6 and 8 accumulators: too few to hide the FMA latency). A
    tile's columns read X at offsets of no common stride, and each takes only its pixel's
    taps inside the image; both are known at compile time (the unit's code is picked by
    the band it computes: see :func:`band_runs`). Bands are taken where the cost model of
    :func:`band_tiles` puts them at least BAND_GAIN below Y's rows: it overrates them
    (3x3 convs, one core: rows of 10 columns in tiles of 5, 6% better in the model,
    measured 0-1.5% slower in bands; 9 columns, 15%: 2% faster; 8 columns, 22%: 5-7%;
    7 columns, 32%: 20%). ResNet-50's layer4.0.conv2 (3x3 stride 2, 512->512, 14x14 ->
    7x7) ran at 66-72% of peak in rows, 84-88% in one band (86% over a zero-padded copy
    of X instead, every pixel taking every tap)."""
    if not (g.blocked and g.x_blocked) or g.depthwise or g.subsample is not None \
            or g.ow >= 2 * register_tile(g)[1] or g.oh * g.ow == 0:
        return 0
    rows, cols = register_tile(g)
    groups = g.n * g.k // (g.lanes * rows)
    bands = max(-(-g.oh * g.ow // max(BAND_PIXELS, g.ow)),
                min(g.oh, -(-MIN_UNITS // groups)))
    per_band = -(-g.oh // bands)
    padded = any(t != list(range(g.fw)) for t in column_taps(g))
    row_widths = [w for _, w, count in tile_runs(g.ow, cols, padded) for _ in range(count)]
    in_rows = sum(tiles_cost(pixel_taps(g, oh, 1), rows, row_widths) for oh in range(g.oh))
    in_bands, first = 0, 0
    for end, height in band_runs(g, per_band):
        taps = pixel_taps(g, first * per_band, height)
        in_bands += (end - first) * tiles_cost(taps, rows,
                                               [w for _, w in band_tiles(taps, rows, cols)])
        first = end
    return per_band if in_bands <= (1 - BAND_GAIN) * in_rows else 0


def pixel_taps(g: BlockedConv, oh: int, height: int) -> list[frozenset]:
    """The (kernel row, kernel column) taps inside the image of each pixel of ``height``
    output rows from ``oh``, in Y's order."""
    columns = column_taps(g)
    out = []
    for row in range(oh, oh + height):
        inside = [i for i in range(g.fh) if 0 <= row * g.sh + i * g.dh - g.pt < g.h]
        out += [frozenset((i, j) for i in inside for j in js) for js in columns]
    return out


def band_runs(g: BlockedConv, per_band: int) -> list[tuple[int, int]]:
    """The bands of ``per_band`` output rows that share their code: runs (end band, rows)
    of consecutive bands with the same rows and the same taps of each pixel (the top band,
    the middle ones, the bottom ones...)."""
    runs: list[tuple[int, int, list]] = []
    for band in range(-(-g.oh // per_band)):
        height = min(per_band, g.oh - band * per_band)
        taps = pixel_taps(g, band * per_band, height)
        if runs and runs[-1][1:] == (height, taps):
            runs[-1] = (band + 1, height, taps)
        else:
            runs.append((band + 1, height, taps))
    return [(end, height) for end, height, _ in runs]


def tiles_cost(taps: list[frozenset], rows: int, widths: list[int]) -> int:
    """The cost model of :func:`band_tiles` for consecutive tiles of ``widths`` columns
    over pixels taking ``taps``."""
    total, lo = 0, 0
    for width in widths:
        count: dict = {}
        for p in range(lo, lo + width):
            for tap in taps[p]:
                count[tap] = count.get(tap, 0) + 1
        total += TILE_COST + sum(max(rows * c, FMA_CHAINS) for c in count.values())
        lo += width
    return total


def band_tiles(taps: list[frozenset], rows: int, most: int) -> list[tuple[int, int]]:
    """Cut a band's pixels, pixel ``p`` taking the (kernel row, kernel column) taps
    ``taps[p]``, into tiles of at most ``most`` columns: (first pixel, width) each. Each
    tap of a tile is one pass of the channel-lane loop, FMAs for the tile's ``rows`` x (its
    columns taking that tap) accumulators, which takes at least FMA_CHAINS FMAs' time (the
    latency of one accumulator's chain); the cut minimises the sum of those times plus
    TILE_COST per tile (:func:`tiles_cost`). 49 interior pixels -> 4 x 6 + 5 x 5; pixels
    of a top row that skips a kernel row are kept out of tiles of the next row's pixels
    where their columns would leave that kernel row's passes with few FMAs."""
    best: list[tuple[int, list[tuple[int, int]]]] = [(0, [])]
    for hi in range(1, len(taps) + 1):
        best.append(min((best[lo][0] + tiles_cost(taps[lo:hi], rows, [hi - lo]),
                         best[lo][1] + [(lo, hi - lo)])
                        for lo in range(max(0, hi - most), hi)))
    return best[-1][1]


def conv_nchwc(kb, conv: Node) -> list[K.Stmt]:
    """Statements of a kernel computing the blocked ``conv`` (the first member of ``kb``)."""
    g = pointwise_rows(BlockedConv.of(conv), kb, conv)
    per_band = pixel_bands(g)
    flat = g.oh * g.ow == conv.outputs[0].type.shape[2] * conv.outputs[0].type.shape[3] \
        and g.ow != conv.outputs[0].type.shape[3]   # rows of pointwise_rows, not Y's
    x, w = conv.inputs[0], conv.inputs[1]
    bias = conv.inputs[2] if len(conv.inputs) > 2 else None
    dtype = K.scalar_of(kb.out.dtype)
    L = g.lanes
    vec = K.vector(dtype, L)
    wpack = kb.repack(w, "wpack", lambda weights: pack_weights(g, weights), dtype)
    xin = kb.buffers[x.name]
    prologue: list[K.Stmt] = []
    if g.subsample is not None:
        xin, prologue = subsample_input(kb, g, xin)
    inb = g.in_block
    cbs, kbs = g.c // inb, g.k // L               # channel blocks of X and of Y
    rows, cols = register_tile(g)

    # --- the parallel loop: one output row of ``rows`` channel blocks per iteration. Index
    # arithmetic is declared once per loop level (the renderer does not share
    # subexpressions between statements), so the micro-kernel body is loads and FMAs.
    unit = kb.fresh("row")
    groups_of_rows = kbs // rows
    bands = -(-g.oh // per_band) if per_band else g.oh   # units per channel group
    n, k0, oh = kb.fresh("n"), kb.fresh("k0"), kb.fresh("oh")
    cgb = g.cg // inb                              # input channel blocks per group
    # element strides of X [N, C/b, H, W, b] (b = 8, or 1: NCHW) and of the packed weights
    x_cb, x_h, x_w = g.h * g.w * inb, g.w * inb, inb
    w_k = cgb * g.fh * g.fw * inb * L if not g.depthwise else g.fh * g.fw * L
    head: list[K.Stmt] = [
        K.Declare(n, unit // (groups_of_rows * bands))]
    if loop_order(g) == "rows":   # consecutive units: same output row, next channel blocks
        head += [K.Declare(k0, unit % groups_of_rows * rows)]
        row_unit = (unit // groups_of_rows) % bands
    else:
        head += [K.Declare(k0, (unit // bands) % groups_of_rows * rows)]
        row_unit = unit % bands
    head.append(K.Declare(oh, row_unit * per_band if per_band else row_unit))  # first row
    first_block = k0 if g.depthwise else (k0 * L) // g.kg * cgb   # input block of the group
    x_row = kb.fresh("xrow")     # X at (n, first block, oh*S - P_top, column 0, lane 0)
    head.append(K.Declare(x_row, ((n * cbs + first_block) * g.h + oh * g.sh - g.pt) * x_h))

    in_registers = register_epilogue(kb, conv, g, flat)
    # input channel blocks per pass over a row (or band)
    chunk = reduction_chunk(replace(g, ow=per_band * g.ow) if per_band else g, rows, cols)
    ck = kb.fresh("chunk") if chunk < cgb else None

    def tile(ow0: K.Expr, taps_of: list[list[int]], checks: bool,
             pixels: list[tuple[int, int]] | None = None,
             rows_of: list[tuple[int, ...]] | None = None) -> list[K.Stmt]:
        """One micro-kernel: ``rows`` x ``width`` accumulators over the whole reduction;
        column ``t`` of the tile takes kernel columns ``taps_of[t]``. ``pixels``: the
        tile's columns are the pixels (row after ``oh``, column) of a band (see
        :func:`pixel_bands`), ``ow0`` the first one's offset in Y's plane from row ``oh``,
        and column ``t`` takes kernel rows ``rows_of[t]`` only."""
        width = len(taps_of)
        if pixels is None:
            x_col = [t * g.sw * x_w for t in range(width)]
            at = [(oh, ow0 + t) for t in range(width)]
        else:
            x_col = [(a * g.sh * x_h + b * g.sw * x_w) for a, b in pixels]
            at = [(oh + a, K.Const(b)) for a, b in pixels]
        acc = [[kb.fresh(f"acc{r}_{t}_", vec) for t in range(width)] for r in range(rows)]
        stmts: list[K.Stmt] = []
        for r in range(rows):
            start = (K.Load(kb.buffers[bias.name], (k0 + r) * L, L) if bias is not None
                     else K.broadcast(0.0, L, dtype))
            stmts += [K.Declare(a, start) for a in acc[r]]
        y_tile = kb.fresh("yt")
        if g.blocked:
            stmts.append(K.Declare(y_tile, (((n * kbs + k0) * g.oh + oh) * g.ow + ow0) * L))
        if ck is not None:   # later chunks go on from the partial sums stored by the last
            stmts.append(K.If(ck.gt(0), [
                K.Assign(acc[r][t], K.Load(kb.out, y_tile + (r * g.oh * g.ow + t) * L, L))
                for r in range(rows) for t in range(width)]))
        x_tile = kb.fresh("xt")      # X at the tile's first column (a band's first pixel)
        stmts.append(K.Declare(x_tile, x_row + ((ow0 * g.sw if pixels is None else 0)
                                                - g.pl) * x_w))

        def taps(i: K.Expr, cb: K.Expr | None, taps_of: list[list[int]]) -> list[K.Stmt]:
            """The FMAs of kernel row ``i``, input channel block ``cb``; column ``t`` of the
            tile takes kernel columns ``taps_of[t]``."""
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
                    body += [K.Assign(acc[0][t], K.fma(K.Load(xin, xo + x_col[t], L),
                                                       wv, acc[0][t])) for t in ts]
                    continue
                # input channel within the block: the innermost loop
                lane = kb.fresh("cl") if inb > 1 else K.Const(0)
                inner: list[K.Stmt] = [
                    K.Declare(xo, x_tile + cb * x_cb + i * (g.dh * x_h) + col + lane),
                    K.Declare(wo, k0 * w_k + (((cb * g.fh + i) * g.fw + j) * inb + lane) * L)]
                wv = [K.Load(wpack, wo + r * w_k, L) for r in range(rows)]
                for t in ts:
                    xv = K.Broadcast(K.Load(xin, xo + x_col[t]), L)
                    inner += [K.Assign(acc[r][t], K.fma(xv, wv[r], acc[r][t]))
                              for r in range(rows)]
                body += [K.Loop(lane, K.Const(0), K.Const(inb), inner, "rolled")] if inb > 1 \
                    else inner
            if jv is not None:
                body = [K.Loop(jv, K.Const(0), K.Const(g.fw), body, "rolled")]
            return body

        def kernel_rows(cb: K.Expr | None) -> list[K.Stmt]:
            """Kernel rows in a loop; rows in the padding skipped by one test each (none
            where every window of the conv is inside the image). A band's tile: loops over
            the runs of kernel rows whose columns take the same taps."""
            if rows_of is not None:
                out: list[K.Stmt] = []
                per_row = [[js if i in rows_of[t] else [] for t, js in enumerate(taps_of)]
                           for i in range(g.fh)]
                i0 = 0
                while i0 < g.fh:
                    i1 = i0 + 1
                    while i1 < g.fh and per_row[i1] == per_row[i0]:
                        i1 += 1
                    if any(per_row[i0]):
                        if i1 - i0 == 1:
                            out += taps(K.Const(i0), cb, per_row[i0])
                        else:
                            i = kb.fresh("ki")
                            out.append(K.Loop(i, K.Const(i0), K.Const(i1),
                                              taps(i, cb, per_row[i0]), "rolled"))
                    i0 = i1
                return out
            i = kb.fresh("ki")
            body = taps(i, cb, taps_of)
            if checks:
                ih = oh * g.sh + i * g.dh - g.pt
                body = [K.If(K.Bin("and", ih.ge(0), ih.lt(g.h)), body)]
            return [K.Loop(i, K.Const(0), K.Const(g.fh), body, "rolled")]

        if g.depthwise:
            stmts += kernel_rows(None)
        else:
            cb = kb.fresh("cb")
            lo, hi = (K.Const(0), K.Const(cgb)) if ck is None else (ck * chunk, ck * chunk + chunk)
            stmts.append(K.Loop(cb, lo, hi, kernel_rows(cb), "rolled"))
        if g.blocked:   # Y [N, K/8, OH, OW, 8]: one vector store per accumulator
            def stores(final: bool) -> list[K.Stmt]:
                return [K.Store(kb.out, y_tile + (r * g.oh * g.ow + t) * L,
                                in_registers(n, k0 + r, *at[t], acc[r][t])
                                if final and in_registers is not None else acc[r][t])
                        for r in range(rows) for t in range(width)]
            if ck is None or in_registers is None:
                stmts += stores(True)
            else:            # the fused epilogue on the last chunk's sums only
                stmts.append(K.If(ck.eq(cgb // chunk - 1), stores(True), stores(False)))
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
        for lo, width, count in tile_runs(g.ow, cols, any(t != full for t in taps)):
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

    def band(first: int, height: int) -> list[K.Stmt]:
        """The tiles over the pixels of ``height`` output rows from ``oh``, which take the
        taps of the pixels of the band from output row ``first``."""
        stmts: list[K.Stmt] = []
        taps = pixel_taps(g, first, height)
        for lo, width in band_tiles(taps, rows, cols):
            span = range(lo, lo + width)
            stmts += tile(K.Const(lo), [sorted({j for _, j in taps[p]}) for p in span], False,
                          [divmod(p, g.ow) for p in span],
                          [tuple(sorted({i for i, _ in taps[p]})) for p in span])
        return stmts

    def with_chunks(stmts: list[K.Stmt]) -> list[K.Stmt]:
        return stmts if ck is None else [K.Loop(ck, K.Const(0), K.Const(cgb // chunk), stmts,
                                                "rolled")]

    def row_epilogue(height: int) -> list[K.Stmt]:
        if in_registers is not None:
            return []
        return [s for a in range(height) for s in epilogue(kb, conv, n, k0, oh + a, rows, g,
                                                           flat)]

    if per_band:   # the code of each run of bands, picked by the band's first row
        runs = band_runs(g, per_band)
        body = []
        for u in reversed(range(len(runs))):
            end, height = runs[u]
            first = runs[u - 1][0] * per_band if u else 0
            code = with_chunks(band(first, height)) + row_epilogue(height)
            body = [K.If(oh.lt(end * per_band), code, body)] if body else code
        body = head + body
    else:
        # rows whose every kernel row is inside the image
        top = min(g.oh, -(-g.pt // g.sh))
        bottom = max(top, min(g.oh, (g.h - 1 + g.pt - (g.fh - 1) * g.dh) // g.sh + 1))
        body = head + with_chunks(row(checks=not (top == 0 and bottom == g.oh))) \
            + row_epilogue(1)
    return prologue + [K.Loop(unit, K.Const(0), K.Const(g.n * groups_of_rows * bands), body,
                              "parallel")]


def reduction_chunk(g: BlockedConv, rows: int, cols: int) -> int:
    """Input channel blocks per pass of a row's tiles over the reduction (all of them: no
    chunks). Where one unit's filters (``rows`` output blocks) exceed CHUNK_ABOVE bytes they
    no longer stay in L1 between the tiles of a row, so every tile streams them from L2
    (2048->512 1x1 convs at 7x7: 128 KiB per unit, 9 tiles): the reduction over input
    channels is then cut into chunks of at most CHUNK_BYTES of filters, each run over the
    whole row with the partial sums stored in Y and reloaded (the fused epilogue runs on the
    last chunk). Only for blocked dense convs whose rows have several tiles, and not for
    strided 1x1 convs: ResNet-50's layer4 downsample (1024->2048, 14x14 -> 7x7) ran at 37%
    of peak in chunks against 64% without (in the model; alone both were equal). Once
    :func:`pointwise_rows` has made it a stride-1 conv over its subsampled input (one
    49-column row), it runs in chunks like the others: 78% of peak against 73% without.
    A pass also reads at most CHUNK_PLANES input channel blocks: each is a stream of its
    own from a plane of X, and beyond that many the hardware prefetchers lose track when X
    comes from memory (1x1 convs at batch 8, one core, GFLOP/s with all blocks in one pass
    against chunks of 8: 96->24 at 56x56 60 vs 88, 144->24 48 vs 78; the same at batch 1,
    from cache, are equal). Only where X is bigger than L2_BUDGET: ResNet-50's 512->2048
    at 7x7 (100 KiB of X) ran 3% slower in chunks."""
    if g.depthwise or not g.blocked or g.ow <= cols:   # one tile per row: no reuse
        return g.cg // g.in_block
    if g.fh == g.fw == 1 and (g.sh, g.sw) != (1, 1):
        return g.cg // g.in_block
    cgb = g.cg // g.in_block
    per_block = g.in_block * g.fh * g.fw * g.lanes * rows * 4   # filter bytes per block
    # X beyond L2 streams from memory: at most CHUNK_PLANES planes per pass
    planes = CHUNK_PLANES if g.n * g.c * g.h * g.w * 4 > L2_BUDGET else cgb
    if cgb * per_block <= CHUNK_ABOVE and cgb <= planes:
        return cgb
    best = 1
    for chunk in range(1, min(cgb, planes) + 1):
        if cgb % chunk == 0 and (chunk * per_block <= CHUNK_BYTES
                                 or cgb * per_block <= CHUNK_ABOVE):
            best = chunk
    return best


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
    groups = g.k // (g.lanes * register_tile(g)[0])
    channels = x if x <= L2_BUDGET else 2 * x * max(1, groups)
    return "rows" if rows <= channels else "channels"


def column_taps(g: BlockedConv) -> list[list[int]]:
    """For each output column, the kernel columns whose input column lies in the image."""
    return [[j for j in range(g.fw) if 0 <= ow * g.sw + j * g.dw - g.pl < g.w]
            for ow in range(g.ow)]


def tile_runs(width: int, most: int, padded: bool = True) -> list[tuple[int, int, int]]:
    """Cut ``width`` columns into runs of tiles of at most ``most`` columns: (first column,
    tile width, tile count) each. ``padded`` (the end columns take fewer taps): the two end
    tiles share the remainder evenly, the middle ones are full; 56 -> 4 + 8 x 6 + 4, 7 ->
    3 + 4, not 6 + 1: a narrow tile has too few accumulators to hide the FMA latency.
    Otherwise (every column takes every tap: a 1x1 conv's flat row) the fewest tiles of
    near-equal widths: 49 -> 4 x 6 + 5 x 5, not 3 + 7 x 6 + 4 (ResNet-50's layer4 1x1 convs,
    one core: 76-77% -> 78-79% of peak)."""
    if width <= most:
        return [(0, width, 1)]
    if not padded:
        tiles = -(-width // most)
        narrow, wide = width // tiles, width % tiles   # ``wide`` tiles one column wider
        return [(0, narrow + 1, wide)] * (wide > 0) + [(wide * (narrow + 1), narrow,
                                                         tiles - wide)]
    middle = max(0, -(-(width - 2 * most) // most))
    rest = width - middle * most
    first = rest // 2
    runs = [(0, first, 1)]
    if middle:
        runs.append((first, most, middle))
    runs.append((first + middle * most, rest - first, 1))
    return runs


def epilogue(kb, conv: Node, n: K.Expr, k0: K.Expr, oh: K.Expr, rows: int,
             g: BlockedConv, flat: bool = False) -> list[K.Stmt]:
    """The fused consumers of the conv (ReLU, residual Add...), over the finished rows.
    ``flat``: ``g``'s rows are :func:`pointwise_rows`' cut of the flattened pixels, not Y's
    rows, so the other operands (shaped like Y, or broadcast over both spatial dims) are read
    at pixel ``oh * OW + col`` of one flat row."""
    if kb.members[-1] is conv:
        return []
    y = conv.outputs[0]
    kb.buffers[y.name] = kb.out       # consumers read the conv result where it was stored
    stmts: list[K.Stmt] = []
    for r in range(rows):
        col, lane = kb.fresh("col"), kb.fresh("lane")
        if g.blocked:
            idx = [n, k0 + r, oh, col, lane] if not flat else \
                [n, k0 + r, K.Const(0), oh * g.ow + col, lane]
            shape: tuple[int, ...] = (g.n, g.k // g.lanes, g.oh, g.ow, g.lanes) if not flat \
                else (g.n, g.k // g.lanes, 1, g.oh * g.ow, g.lanes)
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


def register_epilogue(kb, conv: Node, g: BlockedConv, flat: bool = False):
    """The fused consumers of a blocked conv applied to its accumulators before the store:
    a function (n, output block, oh, column, accumulator) -> the vector to store, or None
    where :func:`epilogue` must run over the stored rows instead (an NCHW output, or a
    consumer whose element is not lane-wise: see :func:`lanewise`). In registers, ReLU/Clip
    cost one or two vector ops per accumulator and a residual Add one vector load, where the
    row epilogue re-reads and re-writes the whole output row (+60% on a 14x14 depthwise conv
    with Clip, +15% on a 1x1 expansion at 112x112)."""
    if not g.blocked or kb.members[-1] is conv:
        return None
    y = conv.outputs[0]
    own = K.Buffer(f"{y.name}.acc", kb.out.dtype, 0)   # stands for the accumulator

    def value(n: K.Expr, k: K.Expr, oh: K.Expr, col: K.Expr, acc: K.Expr) -> K.Expr | None:
        lane = kb.fresh("lane")
        kb.buffers[y.name] = own
        try:
            idx = [n, k, oh, col, lane] if not flat else [n, k, K.Const(0), oh * g.ow + col, lane]
            pre, e = kb.element(kb.output, idx)
        finally:
            kb.buffers[y.name] = kb.out
        return None if pre else lanewise(e, lane, own, acc, g.lanes)

    # derived once over placeholder variables, then instantiated per accumulator (deriving
    # it per accumulator cost ResNet-50's cached compile 0.3 s)
    probe = [kb.fresh(name) for name in ("n", "k", "oh", "col")]
    acc = K.Var("acc", K.vector(kb.out.dtype, g.lanes))
    template = value(*probe, acc)
    if template is None:
        return None
    names = [v.name for v in (*probe, acc)]

    def instance(n: K.Expr, k: K.Expr, oh: K.Expr, col: K.Expr, acc: K.Expr) -> K.Expr:
        return K.substitute(template, dict(zip(names, (n, k, oh, col, acc))))

    return instance


class _NotAffine(Exception):
    pass


_INT_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
            "//": lambda a, b: a // b, "%": lambda a, b: a % b, "max": max, "min": min}


class _Setting(dict):
    """Values of index variables: ``fixed`` ones, the others arbitrary but deterministic."""

    def __init__(self, seed: int, fixed: dict[str, int]):
        super().__init__(fixed)
        self.seed = seed

    def __missing__(self, name: str) -> int:
        self[name] = value = 2 + (zlib.crc32(name.encode()) + 13 * self.seed) % 97
        return value


def _int_value(e: K.Expr, env: _Setting, memo: dict[int, int]) -> int:
    """An index expression's value with its variables set from ``env``; raises _NotAffine
    on anything but integer arithmetic."""
    known = memo.get(id(e))
    if known is not None:
        return known
    if isinstance(e, K.Const) and e.dtype == "i64":
        v = int(e.value)
    elif isinstance(e, K.Var) and e.dtype == "i64":
        v = env[e.name]
    elif isinstance(e, K.Bin) and e.op in _INT_OPS and e.dtype == "i64":
        b = _int_value(e.b, env, memo)
        if e.op in ("//", "%") and b == 0:
            raise _NotAffine
        v = _INT_OPS[e.op](_int_value(e.a, env, memo), b)
    else:
        raise _NotAffine
    memo[id(e)] = v
    return v


def _lane_stride(index: K.Expr, lane: K.Var, lanes: int) -> int | None:
    """0 if ``index`` does not depend on ``lane``, 1 if it is ``base + lane`` for lane in
    0..lanes-1 (checked at two settings of the other variables), else None."""
    strides = set()
    for seed in (0, 1):
        try:
            values = [_int_value(index, _Setting(seed, {lane.name: v}), {})
                      for v in range(lanes)]
        except _NotAffine:
            return None
        strides |= {b - a for a, b in zip(values, values[1:])}
    stride = strides.pop() if len(strides) == 1 else None
    return stride if stride in (0, 1) else None


def _without_lane(e: K.Expr, lane: K.Var) -> K.Expr:
    """``e`` with ``lane`` = 0."""
    if isinstance(e, K.Var) and e.name == lane.name:
        return K.Const(0)
    if isinstance(e, K.Bin):
        return K.Bin(e.op, _without_lane(e.a, lane), _without_lane(e.b, lane))
    return e


def lanewise(e: K.Expr, lane: K.Var, own: K.Buffer, acc: K.Expr, lanes: int) -> K.Expr | None:
    """The vector of ``e`` over ``lane`` = 0..lanes-1, with loads of ``own`` (the conv
    result at the same element) replaced by ``acc``; None unless every load is contiguous
    in ``lane`` or independent of it, and every operation has a vector form."""
    memo: dict[int, K.Expr | None] = {}

    def go(x: K.Expr) -> K.Expr | None:
        if id(x) in memo:
            return memo[id(x)]
        memo[id(x)] = out = visit(x)
        return out

    def visit(x: K.Expr) -> K.Expr | None:
        if isinstance(x, K.Load) and x.lanes == 1:
            if x.buffer is own:
                return acc
            if x.buffer.dtype not in ("f32", "f64"):
                return None
            stride = _lane_stride(x.index, lane, lanes)
            if stride == 1:
                return K.Load(x.buffer, _without_lane(x.index, lane), lanes)
            return K.Broadcast(x, lanes) if stride == 0 else None
        if isinstance(x, K.Const) and x.dtype in ("f32", "f64"):
            return K.Broadcast(x, lanes)
        if isinstance(x, K.Bin) and x.op not in ("//", "%"):
            a, b = go(x.a), go(x.b)
            return None if a is None or b is None else K.Bin(x.op, a, b)
        if isinstance(x, K.Call) and x.fn in ("neg", "abs", "sqrt", "floor", "ceil", "fma",
                                              "exp", "log", "tanh"):
            args = [go(a) for a in x.args]
            if any(a is None for a in args) or (x.fn in ("exp", "log", "tanh")
                                                and x.dtype != "f32"):
                return None
            return K.Call(x.fn, tuple(args), K.vector(x.dtype, lanes))
        if isinstance(x, K.Select):
            c, a, b = go(x.cond), go(x.a), go(x.b)
            if c is None or a is None or b is None or not all(
                    K.speculatable(v, {}) for v in (a, b)):
                return None
            return K.Select(c, a, b)
        return None

    out = go(e)
    return out if out is not None and out.dtype == acc.dtype else None
