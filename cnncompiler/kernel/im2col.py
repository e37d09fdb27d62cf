"""Kernels of Im2Col and Im2ColGrad (see :mod:`cnncompiler.ops.im2col`): row copies.

Both run one parallel unit per image plane (n, c), and every kernel tap (i, j) of that
plane as its own compile-time block, so the output rows and columns a tap reaches inside
the image are constants: the interior is a branch-free copy (Im2Col) or add (Im2ColGrad)
over contiguous output columns, and only Im2Col writes the zeros of the padding.
"""

from __future__ import annotations

from cnncompiler.ir.graph import Node
from cnncompiler.kernel import ir as K
from cnncompiler.kernel.common import shape_of


def _span(size: int, out: int, stride: int, offset: int) -> tuple[int, int]:
    """Outputs o in [lo, hi) with o·stride + offset inside [0, size) (hi >= lo)."""
    lo = min(out, max(0, -(offset // stride)))
    hi = max(lo, min(out, (size - 1 - offset) // stride + 1))
    return lo, hi


class _Taps:
    """Geometry shared by both kernels."""

    def __init__(self, node: Node, image: tuple[int, ...], cols: tuple[int, ...]):
        a = node.attrs
        self.n, self.c, self.h, self.w = image
        self.fh, self.fw = a["kernel_shape"]
        (self.sh, self.sw), (self.dh, self.dw) = a["strides"], a["dilations"]
        self.pt, self.pl = a["pads"][:2]
        self.columns = cols[1]
        self.oh_ow = cols[1] // self.n
        # output height and width, from the column count and the width formula
        self.ow = _out(self.w, self.fw, self.sw, self.pl, a["pads"][3], self.dw)
        self.oh = self.oh_ow // self.ow

    def rows(self, i: int) -> tuple[int, int]:
        return _span(self.h, self.oh, self.sh, i * self.dh - self.pt)

    def cols(self, j: int) -> tuple[int, int]:
        return _span(self.w, self.ow, self.sw, j * self.dw - self.pl)


def _out(size: int, kernel: int, stride: int, begin: int, end: int, dilation: int) -> int:
    return (size + begin + end - (kernel - 1) * dilation - 1) // stride + 1


def im2col_rows(kb, node: Node) -> list[K.Stmt]:
    """cols[(c, i, j), (n, oh, ow)] = X[n, c, oh·S + i·D - P, ow·S + j·D - P] or 0."""
    x = node.inputs[0]
    t = _Taps(node, shape_of(x), shape_of(node.outputs[0]))
    xin, out = kb.buffers[x.name], kb.out
    plane = kb.fresh("plane")
    n, c = plane // t.c, plane % t.c
    oh, ow = kb.fresh("oh"), kb.fresh("ow")
    zero = K.Const(0.0, K.scalar_of(out.dtype))
    body: list[K.Stmt] = []
    for i in range(t.fh):
        r_lo, r_hi = t.rows(i)
        for j in range(t.fw):
            c_lo, c_hi = t.cols(j)
            # output row of this tap and image, then the (oh) row within it
            base = ((c * t.fh + i) * t.fw + j) * t.columns + n * t.oh_ow
            row = base + oh * t.ow

            def fill(lo: int, hi: int, row: K.Expr = row) -> list[K.Stmt]:
                return [K.Loop(ow, K.Const(lo), K.Const(hi), [K.Store(out, row + ow, zero)],
                               "vector")] if lo < hi else []

            x_row = ((n * t.c + c) * t.h + oh * t.sh + (i * t.dh - t.pt)) * t.w
            copy = fill(0, c_lo) + [K.Loop(ow, K.Const(c_lo), K.Const(c_hi), [
                K.Store(out, row + ow, K.Load(xin, x_row + ow * t.sw + (j * t.dw - t.pl)))],
                "vector")] + fill(c_hi, t.ow)
            for lo, hi, stmts in ((0, r_lo, fill(0, t.ow)), (r_lo, r_hi, copy),
                                  (r_hi, t.oh, fill(0, t.ow))):
                if lo < hi:
                    body.append(K.Loop(oh, K.Const(lo), K.Const(hi), stmts))
    return [K.Loop(plane, K.Const(0), K.Const(t.n * t.c), body, "parallel")]


def im2col_grad_rows(kb, node: Node) -> list[K.Stmt]:
    """dX[n, c] = 0, then every tap's column entries added to the cells they were read from
    (one plane per parallel unit, so no two threads add to one cell)."""
    cols_value = node.inputs[0]
    image = tuple(node.attrs["image_shape"])
    t = _Taps(node, image, shape_of(cols_value))
    cin, out = kb.buffers[cols_value.name], kb.out
    plane = kb.fresh("plane")
    n, c = plane // t.c, plane % t.c
    cell, oh, ow = kb.fresh("cell"), kb.fresh("oh"), kb.fresh("ow")
    zero = K.Const(0.0, K.scalar_of(out.dtype))
    body: list[K.Stmt] = [K.Loop(cell, K.Const(0), K.Const(t.h * t.w),
                                 [K.Store(out, plane * (t.h * t.w) + cell, zero)], "vector")]
    for i in range(t.fh):
        r_lo, r_hi = t.rows(i)
        for j in range(t.fw):
            c_lo, c_hi = t.cols(j)
            if r_lo == r_hi or c_lo == c_hi:
                continue
            src = ((c * t.fh + i) * t.fw + j) * t.columns + n * t.oh_ow + oh * t.ow
            dst = (plane * t.h + oh * t.sh + (i * t.dh - t.pt)) * t.w + (j * t.dw - t.pl)
            where = dst + ow * t.sw
            add = K.Store(out, where, K.Load(out, where) + K.Load(cin, src + ow))
            body.append(K.Loop(oh, K.Const(r_lo), K.Const(r_hi), [
                K.Loop(ow, K.Const(c_lo), K.Const(c_hi), [add], "vector" if t.sw == 1
                       else "serial")]))
    return [K.Loop(plane, K.Const(0), K.Const(t.n * t.c), body, "parallel")]
