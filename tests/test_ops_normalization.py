"""LRN, BatchNormalization, Dropout, Identity, Softmax, LogSoftmax: references against
explicit loops, shape inference, attribute and rank errors, cost."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnncompiler.errors import AttributeValueError, ShapeError
from cnncompiler.ir.builder import GraphBuilder
from cnncompiler.ir.types import TensorType
from cnncompiler.ops.opdef import FusionKind
from cnncompiler.ops.registry import get_op, infer_node, node_cost


def run(op: str, *inputs: np.ndarray, **attrs) -> np.ndarray:
    opdef = get_op(op)
    return opdef.reference(list(inputs), opdef.normalize_attrs(attrs, "n"))


def infer(op: str, *shapes, dtype: str = "float64", **attrs) -> tuple:
    types = [TensorType(tuple(s), dtype) for s in shapes]
    return infer_node(op, types, attrs, "n")[0].shape


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)


# ----------------------------------------------------------------------------------- LRN
def loop_lrn(x, size, alpha=1e-4, beta=0.75, bias=1.0):
    n_, c_, h_, w_ = x.shape
    y = np.zeros_like(x)
    for n in range(n_):
        for c in range(c_):
            lo = max(0, c - math.floor((size - 1) / 2))
            hi = min(c_ - 1, c + math.ceil((size - 1) / 2))
            for h in range(h_):
                for w in range(w_):
                    sq = sum(x[n, i, h, w] ** 2 for i in range(lo, hi + 1))
                    y[n, c, h, w] = x[n, c, h, w] / (bias + alpha / size * sq) ** beta
    return y


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 9])
def test_lrn_matches_loops(size):
    x = rand(2, 6, 3, 4, seed=size)
    attrs = dict(alpha=0.5, beta=0.75, bias=2.0)  # large alpha so the window matters
    np.testing.assert_allclose(run("LRN", x, size=size, **attrs), loop_lrn(x, size, **attrs),
                               rtol=1e-10)


def test_lrn_defaults_alexnet_and_float32():
    x = rand(1, 8, 5, 5, seed=1) * 10
    np.testing.assert_allclose(run("LRN", x, size=5), loop_lrn(x, 5), rtol=1e-10)
    y = run("LRN", x.astype(np.float32), size=5)
    assert y.dtype == np.float32
    assert infer("LRN", ("N", 96, 55, 55), size=5) == ("N", 96, 55, 55)


def test_lrn_errors():
    with pytest.raises(AttributeValueError, match="'size' is required"):
        infer("LRN", (1, 3, 4, 4))
    with pytest.raises(AttributeValueError, match="'size' = 0: must be >= 1"):
        infer("LRN", (1, 3, 4, 4), size=0)
    with pytest.raises(AttributeValueError, match="'size'"):
        infer("LRN", (1, 3, 4, 4), size=2.5)
    with pytest.raises(ShapeError, match=r"rank 4, got shape \[3, 4\]"):
        infer("LRN", (3, 4), size=3)
    with pytest.raises(ShapeError, match="got int64"):
        infer("LRN", (1, 3, 4, 4), dtype="int64", size=3)


# -------------------------------------------------------------------- BatchNormalization
def bn_params(c: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(0.5, 2, c), rng.uniform(-1, 1, c), rng.uniform(-1, 1, c),
            rng.uniform(0.1, 3, c))


def loop_bn(x, scale, b, mean, var, eps):
    y = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        c = idx[1]
        y[idx] = scale[c] * (x[idx] - mean[c]) / math.sqrt(var[c] + eps) + b[c]
    return y


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (4, 6), (2, 3, 5)])
def test_batchnorm_matches_loops(shape):
    x = rand(*shape, seed=2)
    params = bn_params(shape[1])
    np.testing.assert_allclose(run("BatchNormalization", x, *params, epsilon=1e-3),
                               loop_bn(x, *params, 1e-3), rtol=1e-10)
    np.testing.assert_allclose(run("BatchNormalization", x, *params),
                               loop_bn(x, *params, 1e-5), rtol=1e-10)
    assert infer("BatchNormalization", shape, *[(shape[1],)] * 4) == shape


def test_batchnorm_float32_and_builder():
    x = rand(2, 3, 4, 4, seed=3).astype(np.float32)
    params = [p.astype(np.float32) for p in bn_params(3)]
    assert run("BatchNormalization", x, *params).dtype == np.float32
    b = GraphBuilder()
    xv = b.input("x", ("N", 3, 8, 8))
    pv = [b.param(name, p) for name, p in zip(("g", "beta", "mu", "var"), params, strict=True)]
    y = b.op("BatchNormalization", xv, *pv)
    assert y.shape == ("N", 3, 8, 8)
    assert node_cost(y.producer).flops == 2 * 3 * 64
    assert [i.weight for i in get_op("BatchNormalization").inputs] == [False, True, True,
                                                                       False, False]


def test_batchnorm_errors():
    good = [(3,)] * 4
    with pytest.raises(ShapeError, match=r"input_var must have shape \[C\] = \[3\].*got \[4\]"):
        infer("BatchNormalization", (2, 3, 4, 4), (3,), (3,), (3,), (4,))
    with pytest.raises(ShapeError, match=r"scale must have shape \[C\] = \[3\].*got \[3, 1, 1\]"):
        infer("BatchNormalization", (2, 3, 4, 4), (3, 1, 1), (3,), (3,), (3,))
    with pytest.raises(ShapeError, match="rank >= 2"):
        infer("BatchNormalization", (3,), *good)
    with pytest.raises(ShapeError, match="takes 5 to 5 inputs"):
        infer("BatchNormalization", (2, 3), (3,), (3,))
    with pytest.raises(ShapeError, match="share one dtype"):
        infer_node("BatchNormalization", [TensorType((2, 3), "float32")]
                   + [TensorType((3,), "float64")] * 4, {}, "n")
    with pytest.raises(AttributeValueError, match="'momentum' = 2.0: must be in"):
        infer("BatchNormalization", (2, 3), *good, momentum=2.0)
    with pytest.raises(AttributeValueError, match="'epsilon' = -1.0: must be >= 0"):
        infer("BatchNormalization", (2, 3), *good, epsilon=-1.0)


# ------------------------------------------------------------------- Dropout, Identity
@pytest.mark.parametrize("op, attrs", [("Dropout", {}), ("Dropout", {"ratio": 0.3}),
                                       ("Identity", {})])
def test_identity_like(op, attrs):
    x = rand(2, 3, 4, seed=4).astype(np.float32)
    y = run(op, x, **attrs)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, x)
    assert infer(op, ("N", 7), **attrs) == ("N", 7)
    opdef = get_op(op)
    assert opdef.view and opdef.fusion is FusionKind.ELEMENTWISE
    b = GraphBuilder()
    assert node_cost(b.op(op, b.input("x", (2, 5)), **attrs).producer).flops == 0


def test_identity_any_dtype_dropout_float_only():
    assert infer_node("Identity", [TensorType((3,), "int64")], {}, "n")[0].dtype.value == "int64"
    with pytest.raises(ShapeError, match="got int64"):
        infer("Dropout", (3,), dtype="int64")
    for bad in (1.0, -0.1):
        with pytest.raises(AttributeValueError, match=r"'ratio'.*must be in \[0, 1\)"):
            infer("Dropout", (3,), ratio=bad)


# ------------------------------------------------------------------ Softmax, LogSoftmax
def loop_softmax(x, axis, log=False):
    y = np.zeros_like(x)
    axis %= x.ndim
    moved = np.moveaxis(x, axis, -1)
    out = np.moveaxis(y, axis, -1)  # a view: writing it fills y
    for idx in np.ndindex(*moved.shape[:-1]):
        row = [float(v) for v in moved[idx]]
        m = max(row)
        total = sum(math.exp(v - m) for v in row)
        for k, v in enumerate(row):
            out[idx + (k,)] = (v - m - math.log(total)) if log else math.exp(v - m) / total
    return y


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("shape, axis", [((2, 10), -1), ((2, 10), 0), ((3, 4, 5), 1),
                                         ((3, 4, 5), -3), ((7,), 0), ((2, 3, 2, 2), 2)])
def test_softmax_matches_loops(op, shape, axis):
    x = rand(*shape, seed=5) * 3
    kw = {} if axis == -1 else {"axis": axis}
    np.testing.assert_allclose(run(op, x, **kw), loop_softmax(x, axis, op == "LogSoftmax"),
                               rtol=1e-10)
    assert infer(op, shape, **kw) == shape


def test_softmax_is_stable_and_keeps_dtype():
    x = np.array([[1000.0, 1001.0, -1000.0]], dtype=np.float32)
    s = run("Softmax", x)
    ls = run("LogSoftmax", x)
    assert s.dtype == ls.dtype == np.float32
    assert np.isfinite(s).all() and np.isfinite(ls).all()
    np.testing.assert_allclose(s.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(ls[0, 2], -2001.0 - math.log1p(math.exp(-1)), rtol=1e-6)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_errors_and_cost(op):
    with pytest.raises(AttributeValueError, match=r"'axis' = 2 is out of range.*rank 2.*-2\.\.1"):
        infer(op, (2, 3), axis=2)
    with pytest.raises(AttributeValueError, match="'axis' = -3"):
        infer(op, (2, 3), axis=-3)
    with pytest.raises(ShapeError, match="rank >= 1"):
        infer(op, ())
    with pytest.raises(ShapeError, match="got int64"):
        infer(op, (2, 3), dtype="int64")
    b = GraphBuilder()
    assert node_cost(b.op(op, b.input("x", (4, 10))).producer).flops == 5 * 40
    assert get_op(op).fusion is FusionKind.REDUCTION


def test_fusion_and_lrn_cost():
    assert get_op("LRN").fusion is FusionKind.OPAQUE
    assert get_op("BatchNormalization").fusion is FusionKind.ELEMENTWISE
    b = GraphBuilder()
    y = b.op("LRN", b.input("x", (1, 4, 2, 2)), size=5)
    assert node_cost(y.producer).flops == 9 * 16


# -------------------------------------------------------------------- property tests
@settings(max_examples=30, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4), data=st.data())
def test_softmax_property(shape, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = rand(*shape, seed=len(shape)) * 5
    s = run("Softmax", x, axis=axis)
    ls = run("LogSoftmax", x, axis=axis)
    assert s.shape == ls.shape == tuple(infer("Softmax", shape, axis=axis))
    np.testing.assert_allclose(s.sum(axis=axis), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.exp(ls), s, rtol=1e-12)


@settings(max_examples=30, deadline=None)
@given(c=st.integers(1, 7), size=st.integers(1, 8), beta=st.floats(0.25, 1.5))
def test_lrn_property(c, size, beta):
    x = rand(1, c, 2, 2, seed=c)
    np.testing.assert_allclose(run("LRN", x, size=size, alpha=0.3, beta=beta),
                               loop_lrn(x, size, alpha=0.3, beta=beta), rtol=1e-10)
