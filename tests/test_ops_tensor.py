"""Squeeze, Unsqueeze, Slice, Gather, Expand, Tile, Cast, Shape, ConstantOfShape,
DepthToSpace, SpaceToDepth: references against explicit loops written from the ONNX spec,
symbolic-batch rules, errors, and onnxruntime cross-checks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from helpers import check_type, infer
from helpers import reference as run
from hypothesis import given, settings
from hypothesis import strategies as st

from cnncompiler.errors import AttributeValueError, ShapeError
from cnncompiler.ir.builder import GraphBuilder
from cnncompiler.ir.types import DType, TensorType
from cnncompiler.ops.opdef import FusionKind
from cnncompiler.ops.registry import get_op

RNG = np.random.default_rng(5)
INT64_MAX, INT64_MIN = 2**63 - 1, -(2**63)
INT32_MAX, INT32_MIN = 2**31 - 1, -(2**31)


def rand(*shape: int) -> np.ndarray:
    return RNG.uniform(0.5, 2.0, shape) * RNG.choice([-1.0, 1.0], shape)





def indices(shape):
    return itertools.product(*(range(d) for d in shape))


def test_fusion_kinds():
    for name in ("Squeeze", "Unsqueeze", "Slice", "Gather", "Expand", "Tile", "ConstantOfShape",
                 "DepthToSpace", "SpaceToDepth"):
        assert get_op(name).fusion is FusionKind.INJECTIVE
    assert get_op("Cast").fusion is FusionKind.ELEMENTWISE
    assert get_op("Squeeze").view and get_op("Unsqueeze").view


# ----------------------------------------------------------------------- Squeeze/Unsqueeze
@pytest.mark.parametrize("axes,out", [(None, (3, 4)), ((0,), (3, 1, 4)), ((-2, 0), (3, 4)),
                                      ((2,), (1, 3, 4))])
def test_squeeze(axes, out):
    x = rand(1, 3, 1, 4)
    y = run("Squeeze", [x], axes=axes)
    assert y.shape == out
    np.testing.assert_array_equal(y.ravel(), x.ravel())
    check_type("Squeeze", [x], y, axes=axes)


def test_squeeze_errors_and_symbolic():
    assert infer("Squeeze", [("N", 1, 4)], axes=[1]).shape == ("N", 4)
    with pytest.raises(ShapeError, match=r"axis 1 of shape \[2, 3\]: its size is 3, not 1"):
        infer("Squeeze", [(2, 3)], axes=[1])
    with pytest.raises(ShapeError, match="its size is N, not 1"):
        infer("Squeeze", [("N", 1)], axes=[0])
    with pytest.raises(ShapeError, match="give the axes"):
        infer("Squeeze", [("N", 1)])
    with pytest.raises(AttributeValueError, match="names an axis twice"):
        infer("Squeeze", [(1, 3)], axes=[0, -2])
    with pytest.raises(AttributeValueError, match="out of range"):
        infer("Squeeze", [(1, 3)], axes=[2])


@pytest.mark.parametrize("axes,out", [((0,), (1, 2, 3)), ((-1,), (2, 3, 1)),
                                      ((1, -1), (2, 1, 3, 1)), ((3, 0), (1, 2, 3, 1)),
                                      ((0, 1, 2), (1, 1, 1, 2, 3))])
def test_unsqueeze(axes, out):
    x = rand(2, 3)
    y = run("Unsqueeze", [x], axes=axes)
    assert y.shape == out
    np.testing.assert_array_equal(y.ravel(), x.ravel())
    check_type("Unsqueeze", [x], y, axes=axes)


def test_unsqueeze_errors_and_symbolic():
    assert infer("Unsqueeze", [("N", 3)], axes=[-1, -2]).shape == ("N", 3, 1, 1)
    assert infer("Unsqueeze", [()], axes=[0]).shape == (1,)
    with pytest.raises(AttributeValueError, match="out of range for rank 3"):
        infer("Unsqueeze", [(2, 3)], axes=[3])
    with pytest.raises(AttributeValueError, match="names an axis twice"):
        infer("Unsqueeze", [(2, 3)], axes=[1, -3])
    with pytest.raises(AttributeValueError, match="'axes' is required"):
        infer("Unsqueeze", [(2, 3)])


# ----------------------------------------------------------------------------------- Slice
def slice_loops_1d(dim: int, start: int, end: int, step: int) -> list[int]:
    """The indices ONNX's Slice picks on one axis, written from the spec's prose."""
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
    else:
        start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    picked, i = [], start
    while (step > 0 and i < end) or (step < 0 and i > end):
        picked.append(i)
        i += step
    return picked


def slice_loops(x: np.ndarray, starts, ends, axes, steps) -> np.ndarray:
    axes = list(range(len(starts))) if axes is None else [a % x.ndim for a in axes]
    steps = [1] * len(starts) if steps is None else steps
    picks = [list(range(d)) for d in x.shape]
    for a, s, e, st_ in zip(axes, starts, ends, steps):
        picks[a] = slice_loops_1d(x.shape[a], s, e, st_)
    out = np.zeros([len(p) for p in picks])
    for idx in indices(out.shape):
        out[idx] = x[tuple(p[i] for p, i in zip(picks, idx))]
    return out


SLICES = [
    ([1], [4], None, None),
    ([0, 1], [-1, 1000], None, None),
    ([-1], [INT64_MIN], [1], [-1]),
    ([4, 2], [0, INT64_MAX], [2, 0], [-2, 1]),
    ([INT64_MAX], [INT64_MIN], [0], [-3]),
    ([-100], [100], [-1], [3]),
    ([6], [-8], [2], [-2]),
    ([INT32_MIN, 1], [INT32_MAX, -1], [0, 1], [2, 1]),
    ([3], [2], [0], [-1]),
]


@pytest.mark.parametrize("starts,ends,axes,steps", SLICES)
def test_slice_matches_loops(starts, ends, axes, steps):
    x = rand(5, 6, 7)
    y = run("Slice", [x], starts=starts, ends=ends, axes=axes, steps=steps)
    np.testing.assert_array_equal(y, slice_loops(x, starts, ends, axes, steps))
    check_type("Slice", [x], y, starts=starts, ends=ends, axes=axes, steps=steps)
    assert not np.shares_memory(y, x)


def test_slice_symbolic_axis():
    t = ("N", 6, 7)
    assert infer("Slice", [t], starts=[1], ends=[3], axes=[1]).shape == ("N", 2, 7)
    assert infer("Slice", [t], starts=[0, 2], ends=[INT64_MAX, 5]).shape == ("N", 3, 7)
    assert infer("Slice", [t], starts=[INT64_MIN], ends=[INT32_MAX], axes=[0]).shape == t
    assert infer("Slice", [t], starts=[-1], ends=[INT64_MIN], axes=[0], steps=[-1]).shape == t
    for starts, ends, steps in (([1], [INT64_MAX], [1]), ([0], [5], [1]),
                                ([0], [INT64_MAX], [2]), ([-1], [0], [-1])):
        with pytest.raises(ShapeError, match="cannot slice the symbolic axis 0"):
            infer("Slice", [t], starts=starts, ends=ends, axes=[0], steps=steps)


@pytest.mark.parametrize("attrs,match", [
    ({"starts": [0], "ends": [1, 2]}, "same length"),
    ({"starts": [0], "ends": [1], "axes": [0, 1]}, "one entry per start"),
    ({"starts": [0], "ends": [1], "steps": [1, 1]}, "one entry per start"),
    ({"starts": [0], "ends": [1], "steps": [0]}, "cannot be 0"),
    ({"starts": [0, 0], "ends": [1, 1], "axes": [1, -1]}, "names an axis twice"),
    ({"starts": [0], "ends": [1], "axes": [2]}, "out of range"),
    ({"starts": [0, 0, 0], "ends": [1, 1, 1]}, "more than the rank"),
    ({"ends": [1]}, "'starts' is required"),
])
def test_slice_attr_errors(attrs, match):
    with pytest.raises(AttributeValueError, match=match):
        infer("Slice", [(4, 5)], **attrs)


def test_slice_empty_result_is_an_error():
    with pytest.raises(ShapeError, match="selects nothing on axis 1 of size 5"):
        infer("Slice", [(4, 5)], starts=[3], ends=[3], axes=[1])
    with pytest.raises(ShapeError, match="selects nothing"):
        infer("Slice", [(4, 5)], starts=[0], ends=[3], axes=[0], steps=[-1])


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=3), st.data())
def test_slice_inferred_shape_is_reference_shape(shape, data):
    r = len(shape)
    bound = st.sampled_from([INT64_MIN, INT32_MIN, INT32_MAX, INT64_MAX]) | st.integers(-7, 7)
    axes = data.draw(st.lists(st.integers(-r, r - 1), min_size=1, max_size=r,
                              unique_by=lambda a: a % r))
    n = len(axes)
    starts = data.draw(st.lists(bound, min_size=n, max_size=n))
    ends = data.draw(st.lists(bound, min_size=n, max_size=n))
    steps = data.draw(st.lists(st.integers(-3, 3).filter(bool), min_size=n, max_size=n))
    x = rand(*shape)
    want = slice_loops(x, starts, ends, axes, steps)
    attrs = dict(starts=starts, ends=ends, axes=axes, steps=steps)
    if want.size == 0:
        with pytest.raises(ShapeError, match="selects nothing"):
            infer("Slice", [tuple(shape)], **attrs)
        return
    y = run("Slice", [x], **attrs)
    np.testing.assert_array_equal(y, want)
    assert infer("Slice", [tuple(shape)], **attrs).shape == y.shape


# ---------------------------------------------------------------------------------- Gather
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
@pytest.mark.parametrize("idx_shape", [(), (3,), (2, 2)])
def test_gather_matches_loops(axis, idx_shape):
    x = rand(3, 4, 5)
    ax = axis % 3
    n = x.shape[ax]
    idx = RNG.integers(-n, n, idx_shape).astype(np.int64)
    y = run("Gather", [x, idx], axis=axis)
    out_shape = x.shape[:ax] + idx.shape + x.shape[ax + 1:]
    want = np.zeros(out_shape)
    for o in indices(out_shape):
        pre, mid, post = o[:ax], o[ax:ax + idx.ndim], o[ax + idx.ndim:]
        k = int(idx[mid])
        want[o] = x[pre + (k + n if k < 0 else k,) + post]
    np.testing.assert_array_equal(y, want)
    check_type("Gather", [x, idx], y, axis=axis)


def test_gather_errors_and_symbolic():
    i64 = DType.int64
    assert infer("Gather", [("N", 10, 4), TensorType((2, 3), i64)], axis=1).shape \
        == ("N", 2, 3, 4)
    assert infer("Gather", [("N", 10), TensorType((2,), i64)]).shape == (2, 10)
    assert infer("Gather", [(10, 4), TensorType(("N",), i64)]).shape == ("N", 4)
    with pytest.raises(ShapeError, match="indices must be int64, got float32"):
        infer("Gather", [(10, 4), (2,)])
    with pytest.raises(ShapeError, match="rank >= 1"):
        infer("Gather", [(), TensorType((2,), i64)])
    with pytest.raises(AttributeValueError, match="out of range"):
        infer("Gather", [(10, 4), TensorType((2,), i64)], axis=2)
    with pytest.raises(ShapeError, match="index 4 is out of range for axis 1 of size 4"):
        run("Gather", [rand(2, 4), np.array([0, 4])], axis=1)
    with pytest.raises(ShapeError, match="index -5 is out of range"):
        run("Gather", [rand(2, 4), np.array([-5])], axis=1)


# -------------------------------------------------------------------------- Expand / Tile
@pytest.mark.parametrize("in_shape,shape,out", [
    ((3, 1), (2, 1, 4), (2, 3, 4)),
    ((2, 3, 1), (3, 4), (2, 3, 4)),
    ((1,), (1,), (1,)),
    ((4,), (2, 1), (2, 4)),
])
def test_expand(in_shape, shape, out):
    x = rand(*in_shape)
    y = run("Expand", [x], shape=shape)
    assert y.shape == out
    want = np.zeros(out)
    for o in indices(out):
        sub = o[len(out) - len(in_shape):]
        want[o] = x[tuple(0 if in_shape[k] == 1 else i for k, i in enumerate(sub))]
    np.testing.assert_array_equal(y, want)
    check_type("Expand", [x], y, shape=shape)
    y[...] = 0  # a real copy, writable
    assert not np.all(x == 0)


def test_expand_errors_and_symbolic():
    assert infer("Expand", [("N", 1, 4)], shape=[1, 3, 1]).shape == ("N", 3, 4)
    with pytest.raises(ShapeError, match="do not broadcast"):
        infer("Expand", [(2, 3)], shape=[4, 3])
    with pytest.raises(ShapeError, match="do not broadcast"):
        infer("Expand", [("N", 3)], shape=[2, 3])
    with pytest.raises(AttributeValueError, match="must be >= 1"):
        infer("Expand", [(2, 3)], shape=[0, 3])


@pytest.mark.parametrize("repeats", [(1, 1, 1), (2, 1, 3), (1, 3, 2)])
def test_tile_matches_loops(repeats):
    x = rand(2, 3, 2)
    y = run("Tile", [x], repeats=repeats)
    out = tuple(d * r for d, r in zip(x.shape, repeats))
    want = np.zeros(out)
    for o in indices(out):
        want[o] = x[tuple(i % d for i, d in zip(o, x.shape))]
    np.testing.assert_array_equal(y, want)
    check_type("Tile", [x], y, repeats=repeats)


def test_tile_errors_and_symbolic():
    assert infer("Tile", [("N", 3)], repeats=[1, 4]).shape == ("N", 12)
    with pytest.raises(ShapeError, match="cannot repeat the symbolic axis 0"):
        infer("Tile", [("N", 3)], repeats=[2, 1])
    with pytest.raises(AttributeValueError, match="one entry per input axis"):
        infer("Tile", [(2, 3)], repeats=[2])
    with pytest.raises(AttributeValueError, match="must be >= 1"):
        infer("Tile", [(2, 3)], repeats=[0, 1])


# ------------------------------------------------------------------------------------ Cast
def test_cast():
    x = np.array([-2.7, -0.5, 0.0, 0.4, 3.9])
    y = run("Cast", [x], to="int64")
    assert y.dtype == np.int64 and y.tolist() == [-2, 0, 0, 0, 3]  # toward zero
    assert run("Cast", [x], to="bool").tolist() == [True, True, False, True, True]
    y = run("Cast", [x], to="float32")
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, x, rtol=1e-7)
    b = np.array([True, False])
    assert run("Cast", [b], to="float64").tolist() == [1.0, 0.0]
    assert infer("Cast", [("N", 3)], to="int64") == TensorType(("N", 3), DType.int64)
    check_type("Cast", [x], run("Cast", [x], to="bool"), to="bool")
    with pytest.raises(AttributeValueError, match="is not one of"):
        infer("Cast", [(2,)], to="float16")


# ----------------------------------------------------------------------------------- Shape
@pytest.mark.parametrize("start,end,want", [(0, None, [2, 3, 4, 5]), (-1, None, [5]),
                                            (1, 3, [3, 4]), (0, -1, [2, 3, 4]),
                                            (-10, 10, [2, 3, 4, 5]), (3, 100, [5])])
def test_shape(start, end, want):
    x = rand(2, 3, 4, 5)
    y = run("Shape", [x], start=start, end=end)
    assert y.dtype == np.int64 and y.tolist() == want
    check_type("Shape", [x], y, start=start, end=end)
    assert get_op("Shape").fusion is FusionKind.OPAQUE


def test_shape_errors_and_symbolic():
    assert infer("Shape", [("N", 3, 4)], start=1) == TensorType((2,), DType.int64)
    with pytest.raises(ShapeError, match="not static"):
        infer("Shape", [("N", 3, 4)])
    with pytest.raises(ShapeError, match="not static"):
        infer("Shape", [(3, "N")], start=-1)
    with pytest.raises(ShapeError, match="select no axis"):
        infer("Shape", [(2, 3)], start=2, end=1)
    with pytest.raises(ShapeError, match="select no axis"):
        infer("Shape", [()])


# ------------------------------------------------------------------------- ConstantOfShape
def test_constant_of_shape():
    y = run("ConstantOfShape", [], shape=[2, 3])
    assert y.dtype == np.float32 and y.shape == (2, 3) and not y.any()
    y = run("ConstantOfShape", [], shape=[4], value=7.0, dtype="int64")
    assert y.dtype == np.int64 and y.tolist() == [7] * 4
    y = run("ConstantOfShape", [], shape=[], value=1.0, dtype="bool")
    assert y.shape == () and y.dtype == np.bool_ and bool(y)
    assert infer("ConstantOfShape", [], shape=[2, 3], value=1.5, dtype="float64") \
        == TensorType((2, 3), DType.float64)
    assert infer("ConstantOfShape", [], shape=[]) == TensorType((), DType.float32)


def test_constant_of_shape_errors():
    with pytest.raises(AttributeValueError, match="not an integer"):
        infer("ConstantOfShape", [], shape=[2], value=0.5, dtype="int64")
    with pytest.raises(AttributeValueError, match="must be 0 or 1"):
        infer("ConstantOfShape", [], shape=[2], value=2.0, dtype="bool")
    with pytest.raises(AttributeValueError, match="must be >= 1"):
        infer("ConstantOfShape", [], shape=[2, 0])
    with pytest.raises(ShapeError, match="takes 0 to 0 inputs"):
        infer("ConstantOfShape", [(2,)], shape=[2])


def test_constant_of_shape_in_a_graph():
    from cnncompiler.backends import get_backend

    b = GraphBuilder()
    x = b.input("x", ("N", 3))
    c = b.op("ConstantOfShape", shape=[1, 3], value=2.0)
    y = b.op("Add", x, c)
    g = b.build(y)
    (out,) = get_backend("reference").compile(g).run([np.ones((2, 3), np.float32)])
    np.testing.assert_array_equal(out, np.full((2, 3), 3.0))


# ----------------------------------------------------------- DepthToSpace / SpaceToDepth
def depth_to_space_loops(x: np.ndarray, b: int, mode: str) -> np.ndarray:
    n, c, h, w = x.shape
    co = c // (b * b)
    y = np.zeros((n, co, h * b, w * b))
    for i, k, r, s in indices(y.shape):
        bh, bw = r % b, s % b
        ch = (bh * b + bw) * co + k if mode == "DCR" else (k * b + bh) * b + bw
        y[i, k, r, s] = x[i, ch, r // b, s // b]
    return y


def space_to_depth_loops(x: np.ndarray, b: int, mode: str) -> np.ndarray:
    n, c, h, w = x.shape
    y = np.zeros((n, c * b * b, h // b, w // b))
    for i, ch, r, s in indices(y.shape):
        if mode == "DCR":
            blk, k = divmod(ch, c)
        else:
            k, blk = divmod(ch, b * b)
        bh, bw = divmod(blk, b)
        y[i, ch, r, s] = x[i, k, r * b + bh, s * b + bw]
    return y


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
@pytest.mark.parametrize("b", [1, 2, 3])
def test_depth_space_match_loops_and_invert(mode, b):
    x = rand(2, 2 * b * b, 3, 2)
    y = run("DepthToSpace", [x], blocksize=b, mode=mode)
    np.testing.assert_array_equal(y, depth_to_space_loops(x, b, mode))
    check_type("DepthToSpace", [x], y, blocksize=b, mode=mode)
    z = rand(2, 3, 2 * b, 3 * b)
    y = run("SpaceToDepth", [z], blocksize=b, mode=mode)
    np.testing.assert_array_equal(y, space_to_depth_loops(z, b, mode))
    check_type("SpaceToDepth", [z], y, blocksize=b, mode=mode)
    back = run("DepthToSpace", [y], blocksize=b, mode=mode)
    np.testing.assert_array_equal(back, z)


def test_depth_space_errors_and_symbolic():
    assert infer("DepthToSpace", [("N", 8, 3, 5)], blocksize=2).shape == ("N", 2, 6, 10)
    assert infer("SpaceToDepth", [("N", 3, 4, 6)], blocksize=2).shape == ("N", 12, 2, 3)
    with pytest.raises(ShapeError, match="channels 6 are not divisible by blocksize"):
        infer("DepthToSpace", [(1, 6, 3, 3)], blocksize=2)
    with pytest.raises(ShapeError, match="must be divisible by blocksize 2"):
        infer("SpaceToDepth", [(1, 3, 4, 5)], blocksize=2)
    with pytest.raises(ShapeError, match="rank 4"):
        infer("SpaceToDepth", [(3, 4, 4)], blocksize=2)
    with pytest.raises(ShapeError, match="needs C, H and W static"):
        infer("DepthToSpace", [(1, 4, "H", 3)], blocksize=2)
    with pytest.raises(AttributeValueError, match="must be >= 1"):
        infer("DepthToSpace", [(1, 4, 3, 3)], blocksize=0)
    with pytest.raises(AttributeValueError, match="is not one of"):
        infer("DepthToSpace", [(1, 4, 3, 3)], blocksize=2, mode="RDC")


# ------------------------------------------------------------------------- onnxruntime
def run_onnxruntime(op: str, inputs: list[np.ndarray], consts: dict[str, np.ndarray],
                    out_dtype, opset: int = 13, **attrs) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    elem = {np.dtype(np.float32): onnx.TensorProto.FLOAT,
            np.dtype(np.int64): onnx.TensorProto.INT64}
    names = [f"x{i}" for i in range(len(inputs))]
    inits = [numpy_helper.from_array(np.asarray(v, np.int64), k) for k, v in consts.items()]
    graph = helper.make_graph(
        [helper.make_node(op, names + list(consts), ["y"], **attrs)], "g",
        [helper.make_tensor_value_info(n, elem[a.dtype], a.shape) for n, a in zip(names, inputs)],
        [helper.make_tensor_value_info("y", elem[np.dtype(out_dtype)], None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, dict(zip(names, inputs)))[0]


@pytest.mark.parametrize("starts,ends,axes,steps", SLICES)
def test_slice_matches_onnxruntime(starts, ends, axes, steps):
    x = rand(5, 6, 7).astype(np.float32)
    axes_ = list(range(len(starts))) if axes is None else axes
    steps_ = [1] * len(starts) if steps is None else steps
    want = run_onnxruntime("Slice", [x], {"starts": starts, "ends": ends, "axes": axes_,
                                          "steps": steps_}, np.float32)
    np.testing.assert_array_equal(run("Slice", [x], starts=starts, ends=ends, axes=axes,
                                      steps=steps), want)


@pytest.mark.parametrize("op,x,consts,attrs", [
    ("Gather", rand(3, 4, 5), {"i": [[0, -1], [2, 1]]}, {"axis": 1}),
    ("Expand", rand(3, 1), {"shape": [2, 1, 4]}, {}),
    ("Tile", rand(2, 3), {"repeats": [3, 2]}, {}),
    ("Squeeze", rand(1, 3, 1), {"axes": [-1]}, {}),
    ("Unsqueeze", rand(2, 3), {"axes": [0, -1]}, {}),
    ("DepthToSpace", rand(1, 8, 2, 3), {}, {"blocksize": 2, "mode": "CRD"}),
    ("DepthToSpace", rand(1, 8, 2, 3), {}, {"blocksize": 2, "mode": "DCR"}),
    ("SpaceToDepth", rand(1, 2, 4, 6), {}, {"blocksize": 2}),
])
def test_data_movement_matches_onnxruntime(op, x, consts, attrs):
    x = x.astype(np.float32)
    want = run_onnxruntime(op, [x], consts, np.float32, **attrs)
    if op == "Gather":
        got = run(op, [x, np.array(consts["i"])], **attrs)
    else:
        got = run(op, [x], **{**{k: v for k, v in consts.items()}, **attrs})
    np.testing.assert_array_equal(got, want)
