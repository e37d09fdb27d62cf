"""Matrix products of two run-time operands, register-blocked: C[M, N] = op(A) · op(B).

Training makes every matrix product a product of computed tensors (activations times
gradients, a conv lowered to im2col times weights that change every step), so nothing can
be repacked at compile time (contrast :mod:`.gemm`, whose B is a stored weight). Two
micro-kernels cover the layouts the backward pass produces:

- **outer product**. A tile of ``MR`` x ``NR`` outputs (6 rows x 16 columns: 12 vector
  accumulators on AVX2's 16 registers) is built one depth step at a time: 2 vector loads
  of B's row segment, 6 broadcasts of A's column segment, 12 fused multiply-adds (BLIS's
  6x16 AVX2 kernel). A may be transposed: its 6 scalars are then contiguous instead of
  strided. A transposed B (stored [N, K]) is packed per depth chunk into a private
  [KC, 16] panel first, so its rows are read in order and the tiles read the panel from
  L1. Parallel units are blocks of ``MB`` rows x 16 columns; each walks its row tiles over
  one chunk of the depth at a time, so the chunk of B (``KC`` x 16) stays in L1 and that
  of A (``MB`` x ``KC``) in L2.
- **dot product**, for a transposed B with a depth far larger than C (A [M, K] and B
  [N, K] contiguous along K: the weight gradient of a conv over a big batch of pixels). A
  tile of ``DR`` x ``DC`` outputs (4 x 3) keeps one vector of 8 partial sums each; per 8
  depth steps it holds 3 vectors of B and streams 4 of A through one register, 12 FMAs on
  16 registers (a 3 x 4 tile, whose 4 B vectors LLVM also holds, spills an accumulator
  every step and ran at half the speed), and adds up the lanes once per chunk. The unit
  loop runs over the operand with more rows, so the other one, re-read per unit, is the
  smaller, in chunks sized to stay in L2.

With several depth chunks the outputs start at zero and each chunk adds to them; full
chunks are one run-time loop, so the code holds at most two chunk lengths. Edges (M, N, K
not multiples of the tile) get narrower tiles and a scalar depth tail, all resolved at
compile time. Gemm's alpha and β·C and any fused elementwise epilogue run over the unit's
finished outputs.
"""

from __future__ import annotations

import math

import numpy as np

from cnncompiler.ir.graph import Node
from cnncompiler.kernel import ir as K
from cnncompiler.kernel.gemm import gemm_scale

LANES = 8
#: outer-product tile: rows of A x vectors of B (12 accumulators, 2 B vectors, 1 broadcast)
MR, NV = 6, 2
NR = NV * LANES
#: floats of a chunk re-read from L2 (a quarter of Zen 3's 512 KiB)
L2_FLOATS = 32 * 1024
#: rows per parallel block of the outer product: its chunk of A (MB x KC_OUTER floats,
#: 120 KiB) stays in L2 while the block's row tiles take their turns
MB = 20 * MR
#: a transposed B is multiplied as dot products when the depth is at least this many times
#: C's larger side (a weight gradient over a big batch of pixels); otherwise its panels
#: are packed (transposed per chunk into a private buffer) for the outer product
DOT_DEPTH = 4
#: dot-product tile: rows of A x rows of B (12 accumulators, 3 B vectors, 1 A vector)
DR, DC = 4, 3
#: depth per chunk: outer product (B chunk KC_OUTER x 16 floats = 16 KiB, in L1), dot
#: product (A and B chunks of 4 and 3 rows x KC_DOT floats: 56 KiB, in L2)
KC_OUTER, KC_DOT = 256, 2048


def tiled_gemm_problem(node: Node) -> str | None:
    """Why :func:`gemm_tiled` does not compute ``node`` (None if it does)."""
    if node.op not in ("Gemm", "MatMul"):
        return f"{node.op} is not a matrix product"
    a, b = node.inputs[0].type, node.inputs[1].type
    if not (a.is_static and b.is_static):
        return "the operands are not static"
    if b.rank != 2 or a.rank < 2 or (a.rank > 2 and node.op != "MatMul"):
        return "the operands are not 2-D matrices (or a MatMul's stack of rows times one)"
    if node.outputs[0].type.dtype.value != "float32":
        return "only float32 has this schedule"
    return None


def gemm_tiled(kb, node: Node) -> list[K.Stmt]:
    """Statements computing the matrix product ``node`` (the first member of ``kb``)."""
    ta = bool(node.op == "Gemm" and node.attrs["transA"])
    tb = bool(node.op == "Gemm" and node.attrs["transB"])
    m_, n_ = matrix_rows(node), node.outputs[0].type.shape[-1]
    depth = node.inputs[0].type.shape[0 if ta else -1]
    a, b = kb.buffers[node.inputs[0].name], kb.buffers[node.inputs[1].name]
    if tb and not ta and depth >= DOT_DEPTH * max(m_, n_):
        return _dot_product(kb, node, a, b, m_, n_, depth)
    return _outer_product(kb, node, a, b, ta, tb, m_, n_, depth, _stored_panels(kb, node, tb))


def _stored_panels(kb, node: Node, tb: bool) -> K.Buffer | None:
    """A stored B as column panels packed once at compile time, [N/NR, K, NR] (zeros past
    N), so each unit reads its panel's rows in order: read in place, a row segment of B
    [K, N] is one cache line in another 4 KiB page for every depth step, which the
    prefetchers do not follow (ConvNeXt's [49, 768] x [768, 3072] ran at 24 GFLOP/s).
    None for a B computed at run time (or one a fused member reads too)."""
    b = node.inputs[1]
    if kb.data_of(b) is None or any(b in m.inputs for m in kb.members[1:]):
        return None

    def panels(w: np.ndarray) -> np.ndarray:
        w = w.T if tb else w
        depth, n = w.shape
        padded = np.zeros((depth, -(-n // NR) * NR), np.float32)
        padded[:, :n] = w
        return padded.reshape(depth, -1, NR).transpose(1, 0, 2)

    return kb.repack(b, "bpanels", panels, "f32")


def matrix_rows(node: Node) -> int:
    """Rows of the product's output as a matrix: a MatMul of A [..., M, K] by a 2-D B is one
    matrix product of all of A's rows (ConvNeXt's Linear layers on [1, 56, 56, 96])."""
    return math.prod(node.outputs[0].type.shape[:-1])


def _output_index(node: Node, row: K.Expr, col: K.Expr) -> list[K.Expr]:
    """The output element at ``row``, ``col`` of the product as a matrix (see
    :func:`matrix_rows`), indexed in the output's own shape."""
    return [*K.unflat_index(row, node.outputs[0].type.shape[:-1]), col]


def _chunked(kb, depth: int, size: int | None, zero: list[K.Stmt], chunk) -> list[K.Stmt]:
    """The depth in chunks of ``size`` (None: one chunk): ``chunk(k0, length, first)`` gives
    the statements of one. With several chunks the outputs start from ``zero`` and every
    chunk adds to them; the full chunks are one run-time loop, a shorter last one follows
    (code for at most two chunk lengths, whatever the depth)."""
    if size is None or depth <= size:
        return chunk(K.Const(0), depth, True)
    full, rest = divmod(depth, size)
    kc = kb.fresh("kc")
    stmts = zero + [K.Loop(kc, K.Const(0), K.Const(full), chunk(kc * size, size, False),
                           "rolled")]
    if rest:
        stmts += chunk(K.Const(full * size), rest, False)
    return stmts


def _zero(kb, rows: tuple[K.Expr, int], cols: tuple[K.Expr, int], n_: int) -> list[K.Stmt]:
    """out[i0:i0+rows, j0:j0+cols] = 0."""
    (i0, height), (j0, width) = rows, cols
    i, j = kb.fresh("zi"), kb.fresh("zj")
    return [K.Loop(i, K.Const(0), K.Const(height), [
        K.Loop(j, K.Const(0), K.Const(width),
               [K.Store(kb.out, (i0 + i) * n_ + j0 + j, K.Const(0.0, "f32"))], "vector")])]


def _finish(kb, node: Node, rows: tuple[K.Expr, int], cols: tuple[K.Expr, int],
            n_: int) -> list[K.Stmt]:
    """alpha·C + β·bias and the fused epilogue over outputs [i0, i0+rows) x [j0, j0+cols),
    read back where the product was stored."""
    needs_scale = node.op == "Gemm" and (node.attrs["alpha"] != 1.0 or (
        len(node.inputs) > 2 and node.inputs[2] is not None and node.attrs["beta"] != 0.0))
    if not needs_scale and kb.members[-1] is node:
        return []
    (i0, height), (j0, width) = rows, cols
    i, j = kb.fresh("fi"), kb.fresh("fj")
    idx = [i0 + i, j0 + j]
    flat = idx[0] * n_ + idx[1]
    stmts, value = gemm_scale(kb, node, idx, K.Load(kb.out, flat))
    stmts.append(K.Store(kb.out, flat, value))
    if kb.members[-1] is not node:
        kb.buffers[node.outputs[0].name] = kb.out
        pre, result = kb.element(kb.output, _output_index(node, *idx))
        stmts += pre + [K.Store(kb.out, flat, result)]
    return [K.Loop(i, K.Const(0), K.Const(height), [
        K.Loop(j, K.Const(0), K.Const(width), stmts, "vector")])]


def _units(kb, extent: int, size: int, body_of) -> list[K.Stmt]:
    """One parallel loop over ``extent`` cut into units of ``size`` (the last one narrower):
    a kernel's only top-level statement, as threads and NDRanges split that loop alone."""
    unit = kb.fresh("unit")
    full, rest = divmod(extent, size)
    if not rest:
        body = body_of(unit * size, size)
    elif not full:
        body = body_of(K.Const(0), rest)
    else:
        body = [K.If(unit.lt(full), body_of(unit * size, size),
                     body_of(K.Const(full * size), rest))]
    return [K.Loop(unit, K.Const(0), K.Const(full + (1 if rest else 0)), body, "parallel")]


def _units_2d(kb, rows: tuple[int, int], cols: tuple[int, int], body_of) -> list[K.Stmt]:
    """One parallel loop over blocks of rows x panels of columns (``(extent, size)`` each;
    the last block and panel narrower): ``body_of(i0, height, j0, width)``, with the
    block sizes resolved at compile time in each branch."""
    (m_, mb), (n_, nb) = rows, cols
    row_blocks, col_blocks = -(-m_ // mb), -(-n_ // nb)
    unit = kb.fresh("unit")
    ib, jb = unit // col_blocks, unit % col_blocks

    def sizes(index: K.Expr, extent: int, size: int, count: int) -> list[tuple]:
        """(condition, start, size) of the full blocks and the last one."""
        last = extent - (count - 1) * size
        if last == size:
            return [(None, index * size, size)]
        if count == 1:
            return [(None, K.Const(0), last)]
        return [(index.lt(count - 1), index * size, size),
                (None, K.Const((count - 1) * size), last)]

    def choose(options: list[tuple], inner) -> list[K.Stmt]:
        if len(options) == 1:
            return inner(*options[0][1:])
        (cond, *full), (_, *last) = options
        return [K.If(cond, inner(*full), inner(*last))]

    body = choose(sizes(ib, m_, mb, row_blocks), lambda i0, h: choose(
        sizes(jb, n_, nb, col_blocks), lambda j0, w: body_of(i0, h, j0, w)))
    return [K.Loop(unit, K.Const(0), K.Const(row_blocks * col_blocks), body, "parallel")]


# ------------------------------------------------------------------ outer product
def _outer_product(kb, node: Node, a: K.Buffer, b: K.Buffer, ta: bool, tb: bool, m_: int,
                   n_: int, depth: int, stored: K.Buffer | None = None) -> list[K.Stmt]:
    """``stored``: B's column panels packed at compile time (see :func:`_stored_panels`)."""
    def a_at(row: K.Expr, k: K.Expr) -> K.Expr:
        return k * m_ + row if ta else row * depth + k

    def tile(i0: K.Expr, height: int, j0: K.Expr, width: int, k0: K.Expr, length: int,
             first: bool, panel: K.Buffer | None, col: int) -> list[K.Stmt]:
        """``height`` rows x ``width`` columns (a multiple of 8, or < 8: scalar lanes) over
        depth [k0, k0 + length); the first chunk starts from zero, later ones from the
        stored sum.
        B's rows are read from ``panel`` (packed: [KC, NR], from column ``col``) if given,
        else from the stored panels (column ``col`` of the panel of column ``j0 - col``)."""
        vec = width >= LANES
        count = width // LANES if vec else width
        kind = K.vector("f32", LANES) if vec else "f32"
        step = LANES if vec else 1
        acc = [[kb.fresh(f"acc{r}_{c}_", kind) for c in range(count)] for r in range(height)]
        stmts: list[K.Stmt] = []
        for r in range(height):
            for c in range(count):
                where = (i0 + r) * n_ + j0 + c * step
                start = (K.Load(kb.out, where, LANES) if vec else K.Load(kb.out, where)) \
                    if not first else (K.broadcast(0.0, LANES) if vec else K.Const(0.0, "f32"))
                stmts.append(K.Declare(acc[r][c], start))
        k, bo = kb.fresh("k"), kb.fresh("bo")
        if panel is not None:
            source, at = panel, (k - k0) * NR + col
        elif stored is not None:
            source, at = stored, ((j0 - col) // NR * depth + k) * NR + col
        else:
            source, at = b, k * n_ + j0
        body: list[K.Stmt] = [K.Declare(bo, at)]
        bv = [K.Load(source, bo + c * LANES, LANES) if vec else K.Load(source, bo + c)
              for c in range(count)]
        for r in range(height):
            av = K.Load(a, a_at(i0 + r, k))
            av = K.Broadcast(av, LANES) if vec else av
            body += [K.Assign(acc[r][c], K.fma(av, bv[c], acc[r][c])) for c in range(count)]
        stmts.append(K.Loop(k, k0, k0 + length, body, "rolled"))
        for r in range(height):
            for c in range(count):
                stmts.append(K.Store(kb.out, (i0 + r) * n_ + j0 + c * step, acc[r][c]))
        return stmts

    def block(i0: K.Expr, rows: int, j0: K.Expr, width: int) -> list[K.Stmt]:
        """Every row tile of rows [i0, i0 + rows) x the column panel [j0, j0 + width),
        chunk by chunk (a transposed B packed per chunk into [KC, NR] first)."""
        split = [(0, width)] if width in (NR, LANES) or width < LANES else \
            [(0, width // LANES * LANES), (width // LANES * LANES, width % LANES)]
        split = [(off, w) for off, w in split if w]
        full = rows // MR
        panel = K.Buffer(kb.fresh("bpack").name, "f32", KC_OUTER * NR) \
            if tb and stored is None else None

        def chunk(k0: K.Expr, length: int, first: bool) -> list[K.Stmt]:
            stmts: list[K.Stmt] = []
            if panel is not None:   # panel[k - k0, c] = B[j0 + c, k]: B's rows read in order
                c, k = kb.fresh("pc"), kb.fresh("pk")
                stmts.append(K.Loop(c, K.Const(0), K.Const(width), [
                    K.Loop(k, k0, k0 + length, [
                        K.Store(panel, (k - k0) * NR + c, K.Load(b, (j0 + c) * depth + k))])]))
            for off, w in split:
                if full:
                    it = kb.fresh("it")
                    stmts.append(K.Loop(it, K.Const(0), K.Const(full), tile(
                        i0 + it * MR, MR, j0 + off, w, k0, length, first, panel, off),
                        "rolled"))
                if rows % MR:
                    stmts += tile(i0 + full * MR, rows % MR, j0 + off, w, k0, length, first,
                                  panel, off)
            return stmts

        chunked = tb or rows > MR
        stmts = [K.Local(panel)] if panel is not None else []
        stmts += _chunked(kb, depth, KC_OUTER if chunked else None,
                          _zero(kb, (i0, rows), (j0, width), n_), chunk)
        return stmts + _finish(kb, node, (i0, rows), (j0, width), n_)

    return _units_2d(kb, (m_, MB), (n_, NR), block)


# -------------------------------------------------------------------- dot product
def _dot_product(kb, node: Node, a: K.Buffer, b: K.Buffer, m_: int, n_: int,
                 depth: int) -> list[K.Stmt]:
    # units over the operand with more rows; the other one is re-read per unit
    swap = n_ < m_
    units_of, inner_of = (m_, n_) if swap else (n_, m_)
    unit_rows, inner_rows = (DR, DC) if swap else (DC, DR)

    def tile(u0: K.Expr, uh: int, v0: K.Expr, vh: int, k0: K.Expr, length: int,
             first: bool) -> list[K.Stmt]:
        """``uh`` unit rows x ``vh`` inner rows of C (A rows x B rows, either way round)."""
        rows_a, rows_b = ((u0, uh), (v0, vh)) if swap else ((v0, vh), (u0, uh))
        (ia, ha), (ib, hb) = rows_a, rows_b
        vec = K.vector("f32", LANES)
        full = length // LANES * LANES
        acc = [[kb.fresh(f"d{r}_{c}_", vec) for c in range(hb)] for r in range(ha)]
        tail = [[kb.fresh(f"t{r}_{c}_", "f32") for c in range(hb)] for r in range(ha)]
        stmts: list[K.Stmt] = []
        if full:
            stmts += [K.Declare(x, K.broadcast(0.0, LANES)) for row in acc for x in row]
            kk, ao, bo = kb.fresh("kk"), kb.fresh("ao"), kb.fresh("bo")
            body: list[K.Stmt] = [K.Declare(ao, ia * depth + k0 + kk * LANES),
                                  K.Declare(bo, ib * depth + k0 + kk * LANES)]
            av = [K.Load(a, ao + r * depth, LANES) for r in range(ha)]
            bv = [K.Load(b, bo + c * depth, LANES) for c in range(hb)]
            body += [K.Assign(acc[r][c], K.fma(av[r], bv[c], acc[r][c]))
                     for r in range(ha) for c in range(hb)]
            stmts.append(K.Loop(kk, K.Const(0), K.Const(full // LANES), body, "rolled"))
        if full < length:
            stmts += [K.Declare(x, K.Const(0.0, "f32")) for row in tail for x in row]
            k = kb.fresh("k")
            body = [K.Assign(tail[r][c], K.fma(K.Load(a, (ia + r) * depth + k),
                                               K.Load(b, (ib + c) * depth + k), tail[r][c]))
                    for r in range(ha) for c in range(hb)]
            stmts.append(K.Loop(k, k0 + full, k0 + length, body))
        for r in range(ha):
            for c in range(hb):
                total: K.Expr = K.Const(0.0, "f32")
                if full < length:
                    total = tail[r][c]
                if full:
                    for lane in range(LANES):
                        total = total + K.Extract(acc[r][c], lane)
                where = (ia + r) * n_ + ib + c
                if not first:
                    total = K.Load(kb.out, where) + total
                stmts.append(K.Store(kb.out, where, total))
        return stmts

    def unit_body(u0: K.Expr, uh: int) -> list[K.Stmt]:
        full = inner_of // inner_rows
        rows, cols = ((u0, uh), (K.Const(0), n_)) if swap else ((K.Const(0), m_), (u0, uh))

        def chunk(k0: K.Expr, length: int, first: bool) -> list[K.Stmt]:
            stmts: list[K.Stmt] = []
            if full:
                v = kb.fresh("v")
                stmts.append(K.Loop(v, K.Const(0), K.Const(full), tile(
                    u0, uh, v * inner_rows, inner_rows, k0, length, first), "rolled"))
            if inner_of % inner_rows:
                stmts += tile(u0, uh, K.Const(full * inner_rows), inner_of % inner_rows,
                              k0, length, first)
            return stmts

        # the inner operand's chunk (inner_of rows) is re-read per unit: keep it in L2
        size = max(8 * 32, min(KC_DOT, L2_FLOATS // inner_of // LANES * LANES)) \
            if inner_of > inner_rows else None
        return _chunked(kb, depth, size, _zero(kb, rows, cols, n_), chunk) + \
            _finish(kb, node, rows, cols, n_)

    return _units(kb, units_of, unit_rows, unit_body)
