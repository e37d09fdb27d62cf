"""Reductions and ArgMax/ArgMin: references against explicit loops over index groups, the
axes / keepdims / noop_with_empty_axes rules, the symbolic batch, errors, and onnxruntime."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from helpers import reference as run
from hypothesis import given, settings
from hypothesis import strategies as st

from cnncompiler.errors import AttributeValueError, ShapeError
from cnncompiler.ir.types import DType, TensorType
from cnncompiler.ops.opdef import FusionKind
from cnncompiler.ops.registry import get_op, infer_node

RNG = np.random.default_rng(11)


def rand(*shape: int) -> np.ndarray:
    return RNG.uniform(0.2, 2.0, shape) * RNG.choice([-1.0, 1.0], shape)


def infer(op: str, t, **attrs) -> TensorType:
    t = t if isinstance(t, TensorType) else TensorType(t)
    (out,) = infer_node(op, [t], attrs, "n")
    return out


# each reduction as a function of the list of values in one group
GROUP = {
    "ReduceMean": lambda v: math.fsum(v) / len(v),
    "ReduceSum": math.fsum,
    "ReduceMax": max,
    "ReduceMin": min,
    "ReduceProd": math.prod,
    "ReduceL1": lambda v: math.fsum(abs(e) for e in v),
    "ReduceL2": lambda v: math.sqrt(math.fsum(e * e for e in v)),
    "ReduceSumSquare": lambda v: math.fsum(e * e for e in v),
    "ReduceLogSum": lambda v: math.log(math.fsum(v)),
    "ReduceLogSumExp": lambda v: math.log(math.fsum(math.exp(e) for e in v)),
}


def reduce_loops(op: str, x: np.ndarray, axes: set[int], keepdims: bool) -> np.ndarray:
    """Group input elements by their index with the reduced axes dropped, then reduce."""
    groups: dict[tuple, list[float]] = {}
    for idx in itertools.product(*(range(d) for d in x.shape)):
        key = tuple(0 if i in axes else j for i, j in enumerate(idx))
        groups.setdefault(key, []).append(float(x[idx]))
    kept = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    out = np.empty(kept)
    for key, values in groups.items():
        out[key] = GROUP[op](values)
    if not keepdims:
        out = out.reshape(tuple(d for i, d in enumerate(x.shape) if i not in axes))
    return out


def data_for(op: str, *shape: int) -> np.ndarray:
    x = rand(*shape)
    return np.abs(x) if op == "ReduceLogSum" else x


@pytest.mark.parametrize("op", list(GROUP))
@pytest.mark.parametrize("axes,keepdims", [(None, True), (None, False), ((1,), True),
                                           ((0, -1), False), ((2, 0, 1), True), ((), False)])
def test_reduction_matches_loops(op, axes, keepdims):
    x = data_for(op, 2, 3, 4)
    y = run(op, [x], axes=axes, keepdims=keepdims)
    want_axes = {0, 1, 2} if not axes else {a % 3 for a in axes}
    np.testing.assert_allclose(y, reduce_loops(op, x, want_axes, keepdims), rtol=1e-13)
    t = infer(op, TensorType(x.shape, DType.float64), axes=axes, keepdims=keepdims)
    assert t.shape == y.shape and t.dtype.numpy == y.dtype
    y32 = run(op, [x.astype(np.float32)], axes=axes, keepdims=keepdims)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, y, rtol=1e-5)
    assert get_op(op).fusion is FusionKind.REDUCTION


@pytest.mark.parametrize("op,elementwise", [
    ("ReduceSum", lambda v: v), ("ReduceMean", lambda v: v), ("ReduceMax", lambda v: v),
    ("ReduceProd", lambda v: v), ("ReduceL1", abs), ("ReduceL2", abs),
    ("ReduceSumSquare", lambda v: v * v), ("ReduceLogSum", math.log),
    ("ReduceLogSumExp", lambda v: v),
])
@pytest.mark.parametrize("axes", [None, ()])
def test_noop_with_empty_axes_keeps_the_elementwise_part(op, elementwise, axes):
    x = data_for(op, 2, 3)
    y = run(op, [x], axes=axes, noop_with_empty_axes=True, keepdims=False)
    np.testing.assert_allclose(y, np.vectorize(elementwise)(x), rtol=1e-14)
    assert infer(op, x.shape, axes=axes, noop_with_empty_axes=True, keepdims=False).shape \
        == (2, 3)
    # without the flag, no axes means all of them
    assert run(op, [x], axes=axes, keepdims=False).shape == ()


def test_scalar_input_reduces_to_itself():
    x = np.array(-1.5)
    assert run("ReduceSum", [x]).shape == ()
    assert run("ReduceL2", [x]) == 1.5
    assert infer("ReduceMean", ()).shape == ()
    with pytest.raises(AttributeValueError, match="out of range for rank 0"):
        infer("ReduceMean", (), axes=[0])


def test_log_sum_exp_is_stable():
    x = np.array([[1000.0, 1000.0], [-1000.0, -np.inf], [np.inf, 1.0]])
    y = run("ReduceLogSumExp", [x], axes=[1], keepdims=False)
    np.testing.assert_allclose(y, [1000 + math.log(2), -1000.0, np.inf], rtol=1e-15)
    y = run("ReduceLogSumExp", [np.full((2,), -np.inf)])
    assert y.shape == (1,) and y[0] == -np.inf


def test_integer_and_bool_inputs():
    xi = np.array([[3, -4, 2], [-7, 1, 5]], dtype=np.int64)
    assert run("ReduceSum", [xi], axes=[1]).tolist() == [[1], [-1]]
    assert run("ReduceMean", [xi], axes=[1], keepdims=False).tolist() == [0, 0]  # 1/3, -1/3
    assert run("ReduceMean", [xi], axes=[0], keepdims=False).tolist() == [-2, -1, 3]
    assert run("ReduceProd", [xi], axes=[0], keepdims=False).tolist() == [-21, -4, 10]
    assert run("ReduceL2", [xi], axes=[0], keepdims=False).tolist() == [7, 4, 5]  # truncated
    for op in ("ReduceSum", "ReduceMean", "ReduceProd", "ReduceL2", "ReduceSumSquare"):
        assert run(op, [xi]).dtype == np.int64
        assert infer(op, TensorType((2, 3), DType.int64)).dtype is DType.int64
    b = np.array([[True, False], [False, False]])
    np.testing.assert_array_equal(run("ReduceMax", [b], axes=[1], keepdims=False), [True, False])
    np.testing.assert_array_equal(run("ReduceMin", [b], axes=[0], keepdims=False), [False, False])
    assert infer("ReduceMax", TensorType((2, 2), DType.bool)).dtype is DType.bool


@pytest.mark.parametrize("op,dtype", [("ReduceSum", DType.bool), ("ReduceMean", DType.bool),
                                      ("ReduceLogSumExp", DType.int64),
                                      ("ReduceLogSum", DType.int64), ("ArgMax", DType.bool)])
def test_dtype_errors(op, dtype):
    with pytest.raises(ShapeError, match=f"got {dtype}"):
        infer(op, TensorType((2, 3), dtype))


def test_symbolic_batch():
    x = ("N", 3, 4, 5)
    assert infer("ReduceMean", x, axes=[2, 3]).shape == ("N", 3, 1, 1)
    assert infer("ReduceMean", x, axes=[-1, -2], keepdims=False).shape == ("N", 3)
    assert infer("ReduceSum", x, axes=[0]).shape == (1, 3, 4, 5)
    assert infer("ReduceSum", x, axes=[0, 1], keepdims=False).shape == (4, 5)
    assert infer("ReduceMax", x).shape == (1, 1, 1, 1)
    assert infer("ReduceMax", x, keepdims=False).shape == ()
    assert infer("ArgMax", x, axis=1, keepdims=False) == TensorType(("N", 4, 5), DType.int64)
    assert infer("ArgMin", x, axis=0).shape == (1, 3, 4, 5)


def test_attr_errors():
    with pytest.raises(AttributeValueError, match="names an axis twice"):
        infer("ReduceSum", (2, 3), axes=[1, -1])
    with pytest.raises(AttributeValueError, match=r"'axes' = 2 is out of range for rank 2"):
        infer("ReduceSum", (2, 3), axes=[2])
    with pytest.raises(AttributeValueError, match="expected a bool"):
        infer("ReduceSum", (2, 3), keepdims=2)
    with pytest.raises(AttributeValueError, match=r"'axis' = -3 is out of range"):
        infer("ArgMax", (2, 3), axis=-3)
    with pytest.raises(ShapeError, match="rank >= 1"):
        infer("ArgMin", ())


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=4), st.data())
def test_reduction_inferred_shape_is_reference_shape(shape, data):
    r = len(shape)
    op = data.draw(st.sampled_from(sorted(GROUP)))
    axes = data.draw(st.none() | st.lists(st.integers(-r, r - 1), max_size=r,
                                          unique_by=lambda a: a % r))
    keepdims, noop = data.draw(st.booleans()), data.draw(st.booleans())
    x = data_for(op, *shape)
    y = run(op, [x], axes=axes, keepdims=keepdims, noop_with_empty_axes=noop)
    assert infer(op, TensorType(tuple(shape), DType.float64), axes=axes, keepdims=keepdims,
                 noop_with_empty_axes=noop).shape == y.shape
    if axes or not noop:
        want_axes = {a % r for a in axes} if axes else set(range(r))
        np.testing.assert_allclose(y, reduce_loops(op, x, want_axes, keepdims), rtol=1e-12)


# --------------------------------------------------------------------------- ArgMax/Min
def arg_loops(x: np.ndarray, axis: int, keepdims: bool, last: bool, better) -> np.ndarray:
    shape = list(x.shape)
    n = shape[axis]
    shape[axis] = 1
    out = np.zeros(shape, dtype=np.int64)
    for idx in itertools.product(*(range(d) for d in shape)):
        best = None
        for k in range(n):
            src = list(idx)
            src[axis] = k
            v = x[tuple(src)]
            if best is None or better(v, best[1]) or (last and v == best[1]):
                best = (k, v)
        out[idx] = best[0]
    return out if keepdims else out.squeeze(axis)


@pytest.mark.parametrize("op,better", [("ArgMax", lambda a, b: a > b),
                                       ("ArgMin", lambda a, b: a < b)])
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("keepdims", [True, False])
@pytest.mark.parametrize("last", [False, True])
def test_arg_matches_loops(op, better, axis, keepdims, last):
    x = RNG.integers(0, 3, (3, 4, 5)).astype(np.float64)  # plenty of ties
    y = run(op, [x], axis=axis, keepdims=keepdims, select_last_index=last)
    np.testing.assert_array_equal(y, arg_loops(x, axis % 3, keepdims, last, better))
    t = infer(op, TensorType(x.shape, DType.float64), axis=axis, keepdims=keepdims)
    assert t.shape == y.shape and t.dtype is DType.int64 and y.dtype == np.int64
    assert run(op, [x.astype(np.int64)], axis=axis).dtype == np.int64


# ------------------------------------------------------------------------- onnxruntime
def run_onnxruntime(op: str, x: np.ndarray, out_dtype, axes=None, **attrs) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    inits, names = [], ["x"]
    if axes is not None:
        inits.append(numpy_helper.from_array(np.array(axes, np.int64), "axes"))
        names.append("axes")
    elem = {np.dtype(np.float32): onnx.TensorProto.FLOAT,
            np.dtype(np.int64): onnx.TensorProto.INT64}
    graph = helper.make_graph(
        [helper.make_node(op, names, ["y"], **attrs)], "g",
        [helper.make_tensor_value_info("x", elem[x.dtype], x.shape)],
        [helper.make_tensor_value_info("y", elem[np.dtype(out_dtype)], None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceL2", "ReduceLogSumExp", "ReduceMax",
                                "ReduceSumSquare"])
@pytest.mark.parametrize("axes,keepdims,noop", [([1, 2], 1, 0), ([-1], 0, 0), (None, 0, 0),
                                                (None, 1, 1)])
def test_reductions_match_onnxruntime(op, axes, keepdims, noop):
    x = rand(2, 3, 4).astype(np.float32)
    want = run_onnxruntime(op, x, np.float32, axes, keepdims=keepdims,
                           noop_with_empty_axes=noop)
    got = run(op, [x.astype(np.float64)], axes=axes, keepdims=keepdims,
              noop_with_empty_axes=noop)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("last", [0, 1])
def test_arg_matches_onnxruntime(op, last):
    x = RNG.integers(0, 3, (3, 4, 5)).astype(np.float32)
    want = run_onnxruntime(op, x, np.int64, axis=1, keepdims=0, select_last_index=last)
    np.testing.assert_array_equal(run(op, [x], axis=1, keepdims=False,
                                      select_last_index=last), want)
