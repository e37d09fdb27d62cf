"""Concat, Split, Flatten, Reshape, Transpose, Pad: references against explicit loops,
ONNX 0/-1 and symbolic-batch shape rules, and the errors for shapes that cannot work."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest
from helpers import reference as run
from hypothesis import given, settings
from hypothesis import strategies as st

from cnncompiler.errors import AttributeValueError, ShapeError
from cnncompiler.ir.builder import GraphBuilder
from cnncompiler.ir.types import DType, TensorType
from cnncompiler.ops.opdef import FusionKind
from cnncompiler.ops.registry import get_op, infer_node

RNG = np.random.default_rng(1)


def rand(*shape: int) -> np.ndarray:
    return RNG.uniform(0.5, 2.0, shape) * RNG.choice([-1.0, 1.0], shape)


def infer(op: str, shapes: list, n_out: int | None = None, **attrs) -> list[tuple]:
    types = [TensorType(s) for s in shapes]
    return [t.shape for t in infer_node(op, types, attrs, "n", n_out)]


def indices(shape):
    return itertools.product(*(range(d) for d in shape))


def test_all_injective_and_free():
    for name in ("Concat", "Split", "Flatten", "Reshape", "Transpose", "Pad"):
        op = get_op(name)
        assert op.fusion is FusionKind.INJECTIVE
    assert get_op("Flatten").view and get_op("Reshape").view


# ---------------------------------------------------------------------------------- Concat
@pytest.mark.parametrize("axis", [0, 1, 2, -1, -3])
def test_concat_matches_loops(axis):
    base = [2, 3, 4]
    ax = axis % 3
    parts = []
    for size in (1, 2, 3):
        shape = list(base)
        shape[ax] = size
        parts.append(rand(*shape))
    y = run("Concat", parts, axis=axis)
    out_shape = list(base)
    out_shape[ax] = 6
    want = np.zeros(out_shape)
    offset = 0
    for p in parts:
        for idx in indices(p.shape):
            dst = list(idx)
            dst[ax] += offset
            want[tuple(dst)] = p[idx]
        offset += p.shape[ax]
    np.testing.assert_allclose(y, want, rtol=1e-10)
    assert infer("Concat", [p.shape for p in parts], axis=axis) == [y.shape]


def test_concat_symbolic_batch_and_errors():
    assert infer("Concat", [("N", 64, 7, 7), ("N", 32, 7, 7)], axis=1) == [("N", 96, 7, 7)]
    assert infer("Concat", [("N", 3)], axis=0) == [("N", 3)]
    with pytest.raises(ShapeError, match=r"dimension 2: 7 vs 8"):
        infer("Concat", [(1, 4, 7), (1, 4, 8)], axis=1)
    with pytest.raises(ShapeError, match="same rank"):
        infer("Concat", [(1, 4), (1, 4, 1)], axis=1)
    with pytest.raises(ShapeError, match="symbolic"):
        infer("Concat", [("N", 4), (2, 4)], axis=0)
    with pytest.raises(ShapeError, match="at least one input"):
        infer("Concat", [], axis=0)
    with pytest.raises(AttributeValueError, match="out of range for rank 2"):
        infer("Concat", [(1, 4), (1, 4)], axis=2)
    with pytest.raises(AttributeValueError, match="'axis' is required"):
        infer("Concat", [(1, 4)])
    with pytest.raises(ShapeError, match="share one dtype"):
        infer_node("Concat", [TensorType((1, 2)), TensorType((1, 2), DType.float64)],
                   {"axis": 0}, "n")


# ----------------------------------------------------------------------------------- Split
def split_loops(x: np.ndarray, axis: int, sizes: list[int]) -> list[np.ndarray]:
    outs, start = [], 0
    for s in sizes:
        shape = list(x.shape)
        shape[axis] = s
        o = np.zeros(shape)
        for idx in indices(shape):
            src = list(idx)
            src[axis] += start
            o[idx] = x[tuple(src)]
        outs.append(o)
        start += s
    return outs


@pytest.mark.parametrize("attrs,sizes", [
    ({"axis": 1, "split": [1, 3, 2]}, [1, 3, 2]),
    ({"axis": -1, "split": [4, 1]}, [4, 1]),
    ({"axis": 1, "num_outputs": 3}, [2, 2, 2]),
    ({"axis": 1, "num_outputs": 4}, None),
    ({"axis": 0, "num_outputs": 2}, [1, 1]),
])
def test_split_matches_loops(attrs, sizes):
    x = rand(2, 6, 5)
    axis = attrs["axis"] % 3
    if sizes is None:  # 6 into 4 chunks of ceil(6/4) = 2 leaves 0 for the last: an error
        with pytest.raises(ShapeError, match="last chunk would have size 0"):
            infer("Split", [x.shape], **attrs)
        return
    ys = run("Split", [x], **attrs)
    assert isinstance(ys, tuple) and len(ys) == len(sizes)
    for y, want in zip(ys, split_loops(x, axis, sizes), strict=True):
        np.testing.assert_allclose(y, want, rtol=1e-10)
    assert infer("Split", [x.shape], **attrs) == [y.shape for y in ys]


def test_split_uneven_num_outputs_last_chunk_smaller():
    x = rand(7, 2)
    ys = run("Split", [x], num_outputs=3)
    assert [y.shape[0] for y in ys] == [3, 3, 1]
    assert infer("Split", [(7, 2)], num_outputs=3) == [(3, 2), (3, 2), (1, 2)]
    # the number of outputs may come from the node alone
    assert infer("Split", [("N", 7)], 2, axis=1) == [("N", 4), ("N", 3)]


def test_split_errors():
    with pytest.raises(ShapeError, match=r"sum to 5, but the axis has size 6"):
        infer("Split", [(6, 2)], split=[2, 3])
    with pytest.raises(ShapeError, match="make 2 outputs, but the node has 3"):
        infer("Split", [(6, 2)], 3, split=[2, 4])
    with pytest.raises(AttributeValueError, match="not both"):
        infer("Split", [(6, 2)], split=[2, 4], num_outputs=2)
    with pytest.raises(AttributeValueError, match="known number of outputs"):
        infer("Split", [(6, 2)])
    with pytest.raises(ShapeError, match="symbol 'N'"):
        infer("Split", [("N", 2)], num_outputs=2)
    with pytest.raises(ShapeError, match="num_outputs = 2, but the node has 3"):
        infer("Split", [(6, 2)], 3, num_outputs=2)


def test_split_reference_needs_the_piece_count():
    # the reference sees only attrs: a node whose count came from its outputs alone must
    # carry num_outputs (or split) for the reference to run
    with pytest.raises(AttributeValueError, match="known number of outputs"):
        run("Split", [rand(4, 2)])


def test_split_names_its_outputs():
    b = GraphBuilder()
    x = b.input("x", ("N", 6))
    outs = b.add_node("Split", [x], {"axis": 1, "split": [2, 4]}, name="s")
    assert [v.type.shape for v in outs] == [("N", 2), ("N", 4)]


# --------------------------------------------------------------------------------- Flatten
@pytest.mark.parametrize("axis", [0, 1, 2, 3, 4, -1, -4])
def test_flatten_matches_loops(axis):
    x = rand(2, 3, 4, 5)
    y = run("Flatten", [x], axis=axis)
    ax = axis % 4 if axis < 0 else axis
    rows = math.prod(x.shape[:ax])
    cols = math.prod(x.shape[ax:])
    want = np.zeros((rows, cols))
    for flat, idx in enumerate(indices(x.shape)):  # row-major order
        want[flat // cols, flat % cols] = x[idx]
    np.testing.assert_allclose(y, want, rtol=1e-10)
    assert infer("Flatten", [x.shape], axis=axis) == [y.shape]


def test_flatten_symbolic_batch():
    assert infer("Flatten", [("N", 256, 6, 6)]) == [("N", 9216)]
    assert infer("Flatten", [("N", 1, 1)], axis=0) == [(1, "N")]
    assert infer("Flatten", [(2, "N")], axis=1) == [(2, "N")]
    with pytest.raises(ShapeError, match=r"cannot flatten leading dims \['N', 3\]"):
        infer("Flatten", [("N", 3, 4)], axis=2)
    with pytest.raises(ShapeError, match="trailing"):
        infer("Flatten", [("N", 3, 4)], axis=0)
    with pytest.raises(AttributeValueError, match="out of range"):
        infer("Flatten", [(2, 3)], axis=3)


# --------------------------------------------------------------------------------- Reshape
@pytest.mark.parametrize("shape,out", [
    ((4, 6), (4, 6)),
    ((0, -1), (2, 12)),
    ((-1,), (24,)),
    ((2, 0, 2, -1), (2, 3, 2, 2)),
    ((6, -1, 1), (6, 4, 1)),
    ((0, 0, 0), (2, 3, 4)),
])
def test_reshape_zero_and_minus_one(shape, out):
    x = rand(2, 3, 4)
    y = run("Reshape", [x], shape=shape)
    assert y.shape == out
    want = np.zeros(out)
    for flat_src, flat_dst in zip(indices(x.shape), indices(out), strict=True):
        want[flat_dst] = x[flat_src]
    np.testing.assert_allclose(y, want, rtol=1e-10)
    assert infer("Reshape", [x.shape], shape=shape) == [out]


@pytest.mark.parametrize("in_shape,shape,out", [
    (("N", 256, 6, 6), (0, -1), ("N", 9216)),
    (("N", 256, 6, 6), (-1, 9216), ("N", 9216)),
    (("N", 12), (0, 3, 4), ("N", 3, 4)),
    (("N", 12), (-1, 3, 4), ("N", 3, 4)),
    (("N", 3, 4), (0, -1, 2), ("N", 6, 2)),
    ((3, "N"), (3, 0), (3, "N")),
])
def test_reshape_symbolic_batch(in_shape, shape, out):
    assert infer("Reshape", [in_shape], shape=shape) == [out]


@pytest.mark.parametrize("in_shape,shape,match", [
    ((2, 3, 4), (5, 5), r"the input has 24 elements, the target \[5, 5\] has 25"),
    ((2, 3, 4), (5, -1), "not divisible"),
    (("N", 12), (-1, 6), r"not the symbol 'N' alone"),
    (("N", 12), (-1, 24), r"static parts must match \(12 vs 24\)"),
    (("N", 12), (2, 6), "symbolic dim"),
    (("N", 12), (0, 5), r"has 12 x N elements, the target \['N', 5\] has 5 x N"),
])
def test_reshape_shape_errors(in_shape, shape, match):
    with pytest.raises(ShapeError, match=match):
        infer("Reshape", [in_shape], shape=shape)


@pytest.mark.parametrize("attrs,match", [
    ({"shape": (-1, -1)}, "more than one -1"),
    ({"shape": (2, -2)}, "must be >= -1"),
    ({"shape": (2, 3, 0, 0)}, "has rank 3"),
    ({"shape": (0, 24), "allowzero": 1}, "empty tensor"),
    ({}, "'shape' is required"),
])
def test_reshape_attr_errors(attrs, match):
    with pytest.raises(AttributeValueError, match=match):
        infer("Reshape", [(2, 3, 4)], **attrs)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=4), st.data())
def test_reshape_inferred_shape_is_reference_shape(in_shape, data):
    n = math.prod(in_shape)
    # target: a random factorisation of n, then some entries replaced by 0 or -1
    target, rest = [], n
    while rest > 1:
        f = data.draw(st.sampled_from([d for d in range(2, rest + 1) if rest % d == 0]))
        target.append(f)
        rest //= f
    target = target or [1]
    if data.draw(st.booleans()):
        target[data.draw(st.integers(0, len(target) - 1))] = -1
    for i in range(min(len(in_shape), len(target))):
        if target[i] == in_shape[i] and data.draw(st.booleans()):
            target[i] = 0
    x = rand(*in_shape)
    y = run("Reshape", [x], shape=target)
    assert infer("Reshape", [tuple(in_shape)], shape=target) == [y.shape]
    np.testing.assert_array_equal(y.ravel(), x.ravel())


# ------------------------------------------------------------------------------- Transpose
@pytest.mark.parametrize("perm", [None, (0, 2, 3, 1), (3, 2, 1, 0), (1, 0, 2, 3)])
def test_transpose_matches_loops(perm):
    x = rand(2, 3, 4, 5)
    y = run("Transpose", [x], perm=perm)
    p = perm or (3, 2, 1, 0)
    want = np.zeros(tuple(x.shape[i] for i in p))
    for idx in indices(want.shape):
        src = [0] * 4
        for out_axis, in_axis in enumerate(p):
            src[in_axis] = idx[out_axis]
        want[idx] = x[tuple(src)]
    np.testing.assert_allclose(y, want, rtol=1e-10)
    assert infer("Transpose", [x.shape], perm=perm) == [y.shape]


def test_transpose_symbolic_and_errors():
    assert infer("Transpose", [("N", 3, 4, 5)], perm=(0, 2, 3, 1)) == [("N", 4, 5, 3)]
    assert infer("Transpose", [("N", 3)]) == [(3, "N")]
    with pytest.raises(AttributeValueError, match=r"\[0, 2\] is not a permutation of "
                                                  r"\[0, 1, 2\]"):
        infer("Transpose", [(2, 3, 4)], perm=(0, 2))
    with pytest.raises(AttributeValueError, match="not a permutation"):
        infer("Transpose", [(2, 3)], perm=(1, 1))


# ------------------------------------------------------------------------------------- Pad
def pad_loops(x: np.ndarray, pads, mode: str, value: float) -> np.ndarray:
    """Each output element read straight from its source index (crop first, then pad)."""
    r = x.ndim
    begin, end = pads[:r], pads[r:]
    lo = [max(-b, 0) for b in begin]
    kept = [x.shape[i] - lo[i] - max(-end[i], 0) for i in range(r)]
    out_shape = [kept[i] + max(begin[i], 0) + max(end[i], 0) for i in range(r)]
    y = np.zeros(out_shape)
    for idx in indices(out_shape):
        src, inside = [], True
        for i, o in enumerate(idx):
            j = o - max(begin[i], 0)  # position within the kept (cropped) range
            n = kept[i]
            if not 0 <= j < n:
                inside = False
                if mode == "edge":
                    j = 0 if j < 0 else n - 1
                elif mode == "reflect":
                    j = -j if j < 0 else 2 * (n - 1) - j
                elif mode == "wrap":
                    j = j % n
            src.append(j + lo[i])
        if mode == "constant" and not inside:
            y[idx] = value
        else:
            y[idx] = x[tuple(src)]
    return y


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
@pytest.mark.parametrize("pads", [
    (0, 1, 2, 0, 2, 1),
    (0, 0, 0, 0, 0, 0),
    (1, -1, 2, 0, 1, -2),
    (0, -2, -1, 0, 1, 1),
])
def test_pad_matches_loops(mode, pads):
    x = rand(2, 4, 5)
    y = run("Pad", [x], pads=pads, mode=mode, value=1.5)
    np.testing.assert_allclose(y, pad_loops(x, pads, mode, 1.5), rtol=1e-10)
    assert infer("Pad", [x.shape], pads=pads, mode=mode) == [y.shape]


def test_pad_keeps_dtype_and_symbolic_batch():
    x = rand(1, 2, 3, 3).astype(np.float32)
    assert run("Pad", [x], pads=(0, 0, 1, 1, 0, 0, 1, 1)).dtype == np.float32
    assert infer("Pad", [("N", 3, 4, 4)], pads=(0, 0, 1, 2, 0, 0, 3, 4)) == [("N", 3, 8, 10)]


@pytest.mark.parametrize("shape,attrs,match", [
    (("N", 3), {"pads": (1, 0, 0, 0)}, "symbolic axis 0"),
    ((2, 3), {"pads": (0, -2, 0, -1)}, re.escape("axis 1: 3 + -2 + -1 = 0 leaves nothing")),
    ((2, 3), {"pads": (0, 3, 0, 0), "mode": "reflect"}, "must be < the size 3"),
    ((2, 3), {"pads": (0, 4, 0, 0), "mode": "wrap"}, "must be <= the size 3"),
])
def test_pad_shape_errors(shape, attrs, match):
    with pytest.raises(ShapeError, match=match):
        infer("Pad", [shape], **attrs)


def test_pad_attr_errors():
    with pytest.raises(AttributeValueError, match=r"must have 2 \* rank = 4 entries"):
        infer("Pad", [(2, 3)], pads=(1, 1))
    with pytest.raises(AttributeValueError, match="is not one of"):
        infer("Pad", [(2, 3)], pads=(1, 1, 1, 1), mode="symmetric")


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(2, 5), min_size=1, max_size=3), st.data())
def test_pad_inferred_shape_is_reference_shape(shape, data):
    r = len(shape)
    pads = data.draw(st.lists(st.integers(-1, 3), min_size=2 * r, max_size=2 * r))
    mode = data.draw(st.sampled_from(["constant", "reflect", "edge", "wrap"]))
    x = rand(*shape)
    try:
        want = infer("Pad", [tuple(shape)], pads=pads, mode=mode)
    except ShapeError:
        return  # e.g. reflect wider than the axis
    y = run("Pad", [x], pads=pads, mode=mode)
    assert want == [y.shape]
    np.testing.assert_allclose(y, pad_loops(x, pads, mode, 0.0), rtol=1e-10)
