"""Fully connected layers on a batch: Y[M, N] = A[M, K] · B with B stored (the weights).

At batch 1 a FC layer is a set of dot products that stream the weights once (the generic
lowering, with B transposed at compile time when it is read down its columns). At batch M
that lowering would stream the weights M times. This schedule keeps up to ``ROWS`` rows of
A in flight instead: for each output column j (the parallel loop), one pass over row j of
Bᵀ [N, K] (packed at compile time) feeds ``ROWS`` vector accumulators, one per row of A,
so the weights are read once per block of rows while A (small) stays in cache. Each
accumulator holds 8 partial sums over k; they are added up once per output.

Applies to Gemm (transA = 0, any transB, alpha, beta·C) and 2-D MatMul whose B is a stored
2-D weight and M > 1; the fused epilogue runs per element on the stored result.
"""

from __future__ import annotations

import numpy as np

from cnncompiler.ir.graph import Node
from cnncompiler.kernel import ir as K

#: rows of A per pass over the weights (accumulators + one weight vector in 16 registers)
ROWS = 8
LANES = 8


def gemm_problem(node: Node, weights: np.ndarray | None) -> str | None:
    """Why :func:`gemm_rows` does not apply to ``node`` (None if it does)."""
    if node.op not in ("Gemm", "MatMul"):
        return f"{node.op} is not a matrix product"
    if weights is None or np.ndim(weights) != 2:
        return "B is not a stored 2-D weight"
    a = node.inputs[0].type
    if a.rank != 2 or not a.is_static or a.shape[0] < 2:
        return "A is not a static 2-D batch of rows"
    if node.op == "Gemm" and node.attrs["transA"]:
        return "A is transposed"
    if node.outputs[0].type.dtype.value != "float32":
        return "only float32 has this schedule"
    return None


def gemm_rows(kb, node: Node) -> list[K.Stmt]:
    """Statements computing the (first member) matrix product ``node`` and its epilogue."""
    a, b = node.inputs[0], node.inputs[1]
    transposed = node.op == "Gemm" and node.attrs["transB"]   # B already [N, K]
    packed = kb.repack(b, "bT", (lambda w: w) if transposed else np.transpose, "f32")
    m_, k_ = a.type.shape
    n_ = b.type.shape[0 if transposed else 1]
    ain = kb.buffers[a.name]
    j = kb.fresh("j")
    full = k_ // LANES * LANES
    body: list[K.Stmt] = []
    for m0 in range(0, m_, ROWS):
        rows = range(m0, min(m_, m0 + ROWS))
        acc = {m: kb.fresh(f"acc{m}_", K.vector("f32", LANES)) for m in rows}
        tail = {m: kb.fresh(f"tail{m}_", "f32") for m in rows}
        body += [K.Declare(acc[m], K.broadcast(0.0, LANES)) for m in rows]
        body += [K.Declare(tail[m], K.Const(0.0, "f32")) for m in rows]
        if full:
            kk, wo = kb.fresh("kk"), kb.fresh("wo")
            step: list[K.Stmt] = [K.Declare(wo, j * k_ + kk * LANES)]
            bv = K.Load(packed, wo, LANES)
            step += [K.Assign(acc[m], K.fma(K.Load(ain, kk * LANES + m * k_, LANES), bv,
                                            acc[m])) for m in rows]
            body.append(K.Loop(kk, K.Const(0), K.Const(full // LANES), step, "rolled"))
        if full < k_:
            k = kb.fresh("k")
            body.append(K.Loop(k, K.Const(full), K.Const(k_), [
                K.Assign(tail[m], tail[m] + K.Load(ain, m * k_ + k) * K.Load(packed, j * k_ + k))
                for m in rows]))
        for m in rows:
            total: K.Expr = tail[m]
            for lane in range(LANES):
                total = total + K.Extract(acc[m], lane)
            body += _store(kb, node, [K.Const(m), j], total, n_)
    return [K.Loop(j, K.Const(0), K.Const(n_), body, "parallel")]


def gemm_scale(kb, node: Node, idx: list[K.Expr], dot: K.Expr
               ) -> tuple[list[K.Stmt], K.Expr]:
    """A Gemm's ``alpha·dot + beta·C[idx]`` (C broadcast); a MatMul's dot as it is."""
    if node.op != "Gemm":
        return [], dot
    stmts: list[K.Stmt] = []
    alpha, beta = node.attrs["alpha"], node.attrs["beta"]
    value = dot * alpha if alpha != 1.0 else dot
    c = node.inputs[2] if len(node.inputs) > 2 else None
    if c is not None and beta != 0.0:
        stmts, cv = kb.load(c, kb.operand_index(node, 2, c, idx))
        value = value + (cv * beta if beta != 1.0 else cv)
    return stmts, value


def _store(kb, node: Node, idx: list[K.Expr], dot: K.Expr, n_: int) -> list[K.Stmt]:
    """out[idx] = alpha·dot + beta·C, then the fused epilogue reading it back in place."""
    stmts, value = gemm_scale(kb, node, idx, dot)
    flat = idx[0] * n_ + idx[1]
    stmts.append(K.Store(kb.out, flat, value))
    if kb.members[-1] is not node:
        kb.buffers[node.outputs[0].name] = kb.out
        pre, result = kb.element(kb.output, idx)
        stmts += pre + [K.Store(kb.out, flat, result)]
    return stmts
