"""Activations and broadcast arithmetic against their textbook formulas."""

import math

import numpy as np
import pytest
from helpers import run_ref

from cnncompiler.errors import ShapeError
from cnncompiler.ir import TensorType
from cnncompiler.ops.registry import infer_node

X = np.random.default_rng(0).standard_normal((2, 3, 4, 5)) * 4


def scalar(f):
    return np.vectorize(f)(X)


@pytest.mark.parametrize("op,attrs,expected", [
    ("Relu", {}, scalar(lambda v: v if v > 0 else 0.0)),
    ("LeakyRelu", {"alpha": 0.1}, scalar(lambda v: v if v >= 0 else 0.1 * v)),
    ("Sigmoid", {}, scalar(lambda v: 1 / (1 + math.exp(-v)))),
    ("Tanh", {}, scalar(math.tanh)),
    ("HardSigmoid", {"alpha": 0.2, "beta": 0.5}, scalar(lambda v: min(max(0.2 * v + 0.5, 0), 1))),
    ("HardSwish", {}, scalar(lambda v: v * min(max(v / 6 + 0.5, 0), 1))),
    ("Clip", {"min": 0.0, "max": 6.0}, scalar(lambda v: min(max(v, 0.0), 6.0))),
    ("Clip", {"min": -1.0}, scalar(lambda v: max(v, -1.0))),
])
def test_activation(op, attrs, expected):
    (y,) = run_ref(op, [X], **attrs)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-15)
    assert y.dtype == X.dtype


def test_sigmoid_is_stable_for_large_inputs():
    (y,) = run_ref("Sigmoid", [np.array([-1000.0, 1000.0])])
    np.testing.assert_array_equal(y, [0.0, 1.0])


def test_prelu_per_channel():
    slope = np.array([0.1, 0.2, 0.3]).reshape(3, 1, 1)
    (y,) = run_ref("PRelu", [X, slope])
    expected = np.where(X >= 0, X, X * slope)
    np.testing.assert_allclose(y, expected)


@pytest.mark.parametrize("op,fn", [("Add", np.add), ("Sub", np.subtract), ("Mul", np.multiply),
                                   ("Div", np.divide)])
@pytest.mark.parametrize("a_shape,b_shape", [
    ((2, 3, 4, 5), (2, 3, 4, 5)), ((2, 3, 4, 5), (3, 1, 1)), ((1, 3, 1, 5), (2, 1, 4, 1)),
    ((5,), (2, 3, 4, 5))])
def test_broadcast_arithmetic(op, fn, a_shape, b_shape):
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(a_shape), rng.standard_normal(b_shape) + 3.0
    (y,) = run_ref(op, [a, b])
    np.testing.assert_allclose(y, fn(a, b))
    (t,) = infer_node(op, [TensorType(a_shape, "float64"), TensorType(b_shape, "float64")], {}, "n")
    assert t.shape == y.shape


def test_broadcast_mismatch_names_the_dimension():
    with pytest.raises(ShapeError, match=r"do not broadcast \(dimension -1: 5 vs 4\)"):
        infer_node("Add", [TensorType((2, 5)), TensorType((2, 4))], {}, "add1")


def test_dtype_mismatch():
    with pytest.raises(ShapeError, match="share one dtype"):
        infer_node("Mul", [TensorType((2,), "float32"), TensorType((2,), "float64")], {}, "m")
