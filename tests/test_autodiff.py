"""Every gradient rule against central finite differences, in float64 on the reference
backend: loss = sum(op(inputs) * R) for a fixed random R, so each output element's
gradient is exercised with a different weight."""

import numpy as np
import pytest
from helpers import rel_err

from cnncompiler.autodiff import gradients
from cnncompiler.backends.reference import evaluate
from cnncompiler.ir.builder import GraphBuilder


def rand(*shape, seed=0, low=None):
    x = np.random.default_rng(seed).standard_normal(shape)
    return np.abs(x) + low if low is not None else x


def check(op, arrays, eps=1e-6, tol=1e-6, **attrs):
    """Analytic gradients of sum(op(*arrays) * R) match finite differences."""
    b = GraphBuilder("g")
    xs = [b.input(f"x{i}", a.shape, "float64") for i, a in enumerate(arrays)]
    y = b.op(op, *xs, **attrs)
    r = b.const(rand(*y.type.shape, seed=7), "r")
    loss = b.op("ReduceSum", b.op("Mul", y, r), keepdims=False)
    forward = b.nodes
    grads = gradients(b, forward, loss, xs)
    graph = b.build([loss, *grads])
    feeds = {f"x{i}": a for i, a in enumerate(arrays)}
    _, *analytic = evaluate(graph, feeds)
    loss_only = graph  # the loss is output 0

    def f(values):
        return float(evaluate(loss_only, values)[0])

    for i, a in enumerate(arrays):
        numeric = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            plus, minus = a.copy(), a.copy()
            plus[idx] += eps
            minus[idx] -= eps
            numeric[idx] = (f({**feeds, f"x{i}": plus}) - f({**feeds, f"x{i}": minus})) / (2 * eps)
        assert analytic[i].shape == a.shape
        assert rel_err(analytic[i], numeric) < tol, (op, i, rel_err(analytic[i], numeric))


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
def test_broadcasting_binary_ops(op):
    check(op, [rand(2, 3, 4), rand(3, 1, seed=1, low=0.5)])
    check(op, [rand(1, 4, seed=2), rand(2, 3, 4, seed=3, low=0.5)])


@pytest.mark.parametrize("op", ["Relu", "Sigmoid", "Tanh", "Neg", "Exp"])
def test_unary_ops(op):
    x = rand(2, 5)
    x[np.abs(x) < 1e-3] = 0.5   # keep Relu's kink out of the finite differences
    check(op, [x])


def test_log():
    check("Log", [rand(3, 4, low=0.5)])


@pytest.mark.parametrize("attrs", [{}, {"transA": True}, {"transB": True},
                                   {"transA": True, "transB": True, "alpha": 0.5,
                                    "beta": 2.0}])
def test_gemm(attrs):
    a = rand(4, 3) if attrs.get("transA") else rand(3, 4)
    bb = rand(5, 4, seed=1) if attrs.get("transB") else rand(4, 5, seed=1)
    check("Gemm", [a, bb, rand(5, seed=2)], **attrs)


def test_matmul():
    check("MatMul", [rand(3, 4), rand(4, 2, seed=1)])


@pytest.mark.parametrize("attrs", [
    {},
    {"strides": (2, 2), "pads": (1, 1, 1, 1), "rounding": "floor"},
    {"strides": (2, 1), "pads": (0, 1, 1, 0), "rounding": "floor"},   # dropped rows
    {"dilations": (2, 2), "pads": (2, 2, 2, 2)},
])
def test_conv(attrs):
    check("Conv", [rand(2, 3, 7, 6), rand(4, 3, 3, 3, seed=1), rand(4, seed=2)], **attrs)


@pytest.mark.parametrize("group,attrs", [
    (2, {}),
    (4, {"pads": (1, 1, 1, 1)}),                                   # depthwise
    (2, {"strides": (2, 2), "pads": (1, 0, 1, 0), "rounding": "floor"}),
])
def test_grouped_conv(group, attrs):
    check("Conv", [rand(2, 4, 6, 5), rand(6 if group == 2 else 4, 4 // group, 3, 3, seed=1),
                   rand(6 if group == 2 else 4, seed=2)], group=group, **attrs)


@pytest.mark.parametrize("attrs", [
    {"kernel_shape": (2, 2), "strides": (2, 2)},
    {"kernel_shape": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1),
     "count_include_pad": True, "rounding": "floor"},
    {"kernel_shape": (3, 3), "strides": (2, 2), "rounding": "floor"},
])
def test_average_pool(attrs):
    check("AveragePool", [rand(2, 3, 6, 8)], **attrs)


def test_global_average_pool():
    check("GlobalAveragePool", [rand(2, 3, 4, 5)])


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("axis", [1, -1, 0])
def test_softmax(op, axis):
    check(op, [rand(3, 5)], axis=axis)


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean"])
@pytest.mark.parametrize("attrs", [{}, {"axes": (1,)}, {"axes": (0, 2), "keepdims": False}])
def test_reductions(op, attrs):
    check(op, [rand(2, 3, 4)], **attrs)


def test_reshape_flatten_transpose():
    check("Flatten", [rand(2, 3, 2)], axis=1)
    check("Reshape", [rand(2, 6)], shape=(3, 4))
    check("Transpose", [rand(2, 3, 4)], perm=(2, 0, 1))


def test_fan_out_accumulates_and_unused_inputs_get_zeros():
    b = GraphBuilder("g")
    x = b.input("x", (3,), "float64")
    unused = b.input("u", (2,), "float64")
    y = b.op("Mul", x, x)          # x used twice by one node
    z = b.op("Add", y, x)          # and again by another
    loss = b.op("ReduceSum", z, keepdims=False)
    gx, gu = gradients(b, b.nodes, loss, [x, unused])
    graph = b.build([gx, gu])
    xs = np.array([1.0, -2.0, 0.5])
    got_x, got_u = evaluate(graph, {"x": xs, "u": np.ones(2)})
    np.testing.assert_allclose(got_x, 2 * xs + 1)
    np.testing.assert_array_equal(got_u, np.zeros(2))


def test_leaky_relu_and_clip():
    x = rand(3, 4)
    x[np.abs(x) < 1e-3] = 0.5
    check("LeakyRelu", [x], alpha=0.1)
    x[np.abs(np.abs(x) - 0.5) < 1e-3] = 0.9   # keep the bounds out of the differences
    check("Clip", [x], min=-0.5, max=0.5)
    check("Clip", [x], min=0.0)


def test_concat_split_pad():
    check("Concat", [rand(2, 3, 2), rand(2, 1, 2, seed=1), rand(2, 4, 2, seed=2)], axis=1)
    check("Pad", [rand(2, 3, 4)], pads=(0, 1, 2, 0, 2, 1), value=0.5)


def test_split_with_an_unused_piece():
    b = GraphBuilder("g")
    x = b.input("x", (5, 2), "float64")
    a, _unused = b.add_node("Split", [x], {"axis": 0, "split": (2, 3)})
    loss = b.op("ReduceSum", b.op("Mul", a, a), keepdims=False)
    (gx,) = gradients(b, b.nodes, loss, [x])
    xs = rand(5, 2)
    (got,) = evaluate(b.build([gx]), {"x": xs})
    np.testing.assert_allclose(got, np.concatenate([2 * xs[:2], np.zeros((3, 2))]))
