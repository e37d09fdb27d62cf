"""Tensor layouts of 4-D activations: how a logical NCHW tensor is stored.

Every op is defined on the logical NCHW form; a layout says how the same tensor sits in
memory, so a backend can pick the one its kernels want (see ``passes/layout.py``):

- ``NCHW``: the logical form itself (the default everywhere);
- ``NHWC``: channels last, physical shape [N, H, W, C];
- ``NCHW{x}c`` (e.g. ``NCHW8c``): channels split into blocks of ``x``, innermost, physical
  shape [N, C/x, H, W, x] (NeoCPU/TVM's layout for vectorised direct convolution). ``C`` must
  be a multiple of ``x``: channels are never padded.

A logical tensor and its physical form hold the same elements; conversions are transposes
and reshapes, exact in any dtype. The ``broadcast_*`` helpers also re-lay operands that
broadcast against an activation (a per-channel bias [C, 1, 1], a scalar): there a channel
extent of 1 means "broadcast over C" and needs no blocking.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from cnncompiler.errors import UnsupportedError
from cnncompiler.ir.types import Dim

_BLOCKED = re.compile(r"NCHW([1-9][0-9]*)c")


@dataclass(frozen=True)
class Layout:
    """A parsed layout: ``NCHW``, ``NHWC`` or ``NCHW{block}c``."""

    name: str
    block: int | None = None   # channel block of NCHW{x}c

    @property
    def is_nchw(self) -> bool:
        return self.name == "NCHW"

    @property
    def rank(self) -> int:
        """Physical rank: 5 for blocked layouts, else 4."""
        return 5 if self.block else 4

    def problem(self, shape: tuple[Dim, ...]) -> str | None:
        """Why a logical NCHW ``shape`` cannot be stored in this layout (None if it can)."""
        if len(shape) != 4:
            return f"layout {self.name} is for 4-D [N, C, H, W] tensors, got shape {list(shape)}"
        if self.block:
            c = shape[1]
            if not isinstance(c, int):
                return f"layout {self.name} needs a concrete channel count, got {c!r}"
            if c % self.block:
                return (f"layout {self.name} needs the channel count C={c} to be a multiple "
                        f"of {self.block}")
        return None

    def physical_shape(self, shape: tuple[Dim, ...]) -> tuple[Dim, ...]:
        """The physical shape of a logical NCHW ``shape`` (ValueError if it does not fit)."""
        problem = self.problem(tuple(shape))
        if problem:
            raise ValueError(problem)
        n, c, h, w = shape
        if self.name == "NHWC":
            return (n, h, w, c)
        if self.block:
            return (n, c // self.block, h, w, self.block)
        return tuple(shape)

    def logical_shape(self, shape: tuple[Dim, ...]) -> tuple[Dim, ...]:
        """The logical NCHW shape of a physical ``shape`` (ValueError on a wrong rank; NCHW
        is the identity on tensors of any rank)."""
        shape = tuple(shape)
        if self.is_nchw:
            return shape
        if len(shape) != self.rank:
            raise ValueError(f"layout {self.name} has rank {self.rank}, got shape {list(shape)}")
        if self.name == "NHWC":
            n, h, w, c = shape
            return (n, c, h, w)
        if self.block:
            n, cb, h, w, x = shape
            if x != self.block:
                raise ValueError(f"layout {self.name} has an innermost block of {self.block}, "
                                 f"got shape {list(shape)}")
            if not isinstance(cb, int):
                raise ValueError(f"layout {self.name} needs a concrete channel-block count, "
                                 f"got {cb!r}")
            return (n, cb * x, h, w)
        return shape

    def axis(self, logical_axis: int) -> int:
        """The physical axis holding logical NCHW axis ``logical_axis`` (for blocked layouts
        the channel axis is the block index: concatenating whole blocks along it is
        concatenating channels)."""
        axis = logical_axis % 4
        if self.name == "NHWC":
            return (0, 3, 1, 2)[axis]
        return axis

    def logical_axis(self, physical_axis: int) -> int:
        """Inverse of :meth:`axis` (the innermost block axis has no logical counterpart)."""
        axis = physical_axis % self.rank
        if self.name == "NHWC":
            return (0, 2, 3, 1)[axis]
        if axis == 4:
            raise ValueError(f"axis 4 of layout {self.name} is the channel block, not a "
                             "logical axis")
        return axis

    def to_physical(self, x: np.ndarray) -> np.ndarray:
        """A logical NCHW array in this layout (a contiguous copy unless NCHW)."""
        if self.is_nchw:
            return x
        self.physical_shape(x.shape)  # checks the channel count
        if self.name == "NHWC":
            return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        n, c, h, w = x.shape
        return np.ascontiguousarray(
            x.reshape(n, c // self.block, self.block, h, w).transpose(0, 1, 3, 4, 2))

    def to_logical(self, x: np.ndarray) -> np.ndarray:
        """The logical NCHW array of an array in this layout."""
        if self.is_nchw:
            return x
        n, c, h, w = self.logical_shape(x.shape)
        if self.name == "NHWC":
            return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3).reshape(n, c, h, w))

    def logical_index(self, idx: Sequence) -> tuple:
        """The logical [n, c, h, w] index of physical index ``idx``. Works on ints and on
        kernel-IR index expressions alike (only +, *, //, % are used)."""
        if self.name == "NHWC":
            n, h, w, c = idx
            return (n, c, h, w)
        if self.block:
            n, cb, h, w, lane = idx
            return (n, cb * self.block + lane, h, w)
        return tuple(idx)

    def physical_index(self, idx: Sequence) -> tuple:
        """The physical index of logical [n, c, h, w] index ``idx`` (inverse of the above)."""
        n, c, h, w = idx
        if self.name == "NHWC":
            return (n, h, w, c)
        if self.block:
            return (n, c // self.block, h, w, c % self.block)
        return tuple(idx)

    # ------------------------------------------------- operands that broadcast
    def broadcast_problem(self, shape: tuple[Dim, ...]) -> str | None:
        """Why an operand of logical ``shape`` (rank <= 4, numpy broadcasting against an
        NCHW activation) cannot be re-laid for this layout."""
        if len(shape) > 4:
            return f"an operand of rank {len(shape)} does not broadcast against [N, C, H, W]"
        c = (1,) * (4 - len(shape)) + tuple(shape)
        if self.block and c[1] != 1:
            return self.problem(c)
        return None

    def broadcast_shape(self, shape: tuple[Dim, ...]) -> tuple[Dim, ...]:
        """Physical shape of a broadcasting operand of logical ``shape`` (rank <= 4): it
        broadcasts against physical activations exactly as the operand does logically."""
        problem = self.broadcast_problem(tuple(shape))
        if problem:
            raise ValueError(problem)
        if self.is_nchw:
            return tuple(shape)
        n, c, h, w = (1,) * (4 - len(shape)) + tuple(shape)
        if self.block and c == 1:
            return (n, 1, h, w, 1)
        return self.physical_shape((n, c, h, w))

    def broadcast_to_physical(self, x: np.ndarray) -> np.ndarray:
        shape = self.broadcast_shape(x.shape)
        if self.is_nchw:
            return x
        x4 = x.reshape((1,) * (4 - x.ndim) + x.shape)
        if self.block and x4.shape[1] == 1:
            return np.ascontiguousarray(x4.reshape(shape))
        return self.to_physical(x4)

    def broadcast_to_logical(self, x: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`broadcast_to_physical` (the result has rank 4 unless NCHW)."""
        if self.is_nchw:
            return x
        if self.block and x.ndim == 5 and x.shape[1] == 1 and x.shape[4] == 1:
            return x.reshape(x.shape[0], 1, x.shape[2], x.shape[3])
        return self.to_logical(x)

    def broadcast_logical_shape(self, shape: tuple[Dim, ...]) -> tuple[Dim, ...]:
        """Inverse of :meth:`broadcast_shape`."""
        if self.is_nchw:
            return tuple(shape)
        if self.block and len(shape) == 5 and shape[1] == 1 and shape[4] == 1:
            return (shape[0], 1, shape[2], shape[3])
        return self.logical_shape(shape)

    def __str__(self) -> str:
        return self.name


NCHW = Layout("NCHW")


@cache
def _parse(name: str) -> Layout:
    if name in ("NCHW", "NHWC"):
        return Layout(name)
    m = _BLOCKED.fullmatch(name)
    if m:
        return Layout(name, int(m.group(1)))
    raise UnsupportedError(f"unknown layout {name!r}: use 'NCHW', 'NHWC' or 'NCHW{{x}}c' "
                           "(e.g. 'NCHW8c')")


def parse_layout(layout: str | Layout | None) -> Layout:
    """The :class:`Layout` named ``layout`` (None means NCHW); UnsupportedError if unknown."""
    if layout is None:
        return NCHW
    if isinstance(layout, Layout):
        return layout
    return _parse(layout)


def layout_problem(name: str) -> str | None:
    """Validation text for a layout attribute (None if ``name`` is a known layout)."""
    try:
        parse_layout(name)
    except UnsupportedError as e:
        return str(e)
    return None


def convert(x: np.ndarray, src: str | Layout | None, dst: str | Layout | None) -> np.ndarray:
    """Re-lay array ``x`` from layout ``src`` to ``dst`` (exact)."""
    src, dst = parse_layout(src), parse_layout(dst)
    if src == dst:
        return x
    return dst.to_physical(src.to_logical(x))


__all__ = ["NCHW", "Layout", "convert", "layout_problem", "parse_layout"]
