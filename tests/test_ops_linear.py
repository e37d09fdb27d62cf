"""Gemm and MatMul: references against explicit loops, shape inference, errors, costs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from helpers import reference as run
from hypothesis import given, settings
from hypothesis import strategies as st

from cnncompiler.errors import AttributeValueError, ShapeError
from cnncompiler.ir.builder import GraphBuilder
from cnncompiler.ir.types import DType, TensorType
from cnncompiler.ops.registry import get_op, infer_node, node_cost

RNG = np.random.default_rng(0)


def rand(*shape: int) -> np.ndarray:
    return RNG.uniform(0.5, 2.0, shape) * RNG.choice([-1.0, 1.0], shape)


def gemm_loops(a, b, c, alpha, beta, trans_a, trans_b) -> np.ndarray:
    m = a.shape[1] if trans_a else a.shape[0]
    k = a.shape[0] if trans_a else a.shape[1]
    n = b.shape[0] if trans_b else b.shape[1]
    cc = None if c is None else np.broadcast_to(c, (m, n))
    y = np.zeros((m, n))
    for i in range(m):
        for j in range(n):
            s = 0.0
            for p in range(k):
                av = a[p, i] if trans_a else a[i, p]
                bv = b[j, p] if trans_b else b[p, j]
                s += av * bv
            y[i, j] = alpha * s + (0.0 if cc is None else beta * cc[i, j])
    return y


@pytest.mark.parametrize("trans_a,trans_b", list(itertools.product([0, 1], [0, 1])))
@pytest.mark.parametrize("c_shape", [None, (), (5,), (1, 5), (3, 1), (3, 5)])
def test_gemm_matches_loops(trans_a, trans_b, c_shape):
    m, k, n = 3, 4, 5
    a = rand(k, m) if trans_a else rand(m, k)
    b = rand(n, k) if trans_b else rand(k, n)
    c = None if c_shape is None else rand(*c_shape)
    inputs = [a, b] if c is None else [a, b, c]
    y = run("Gemm", inputs, alpha=0.7, beta=-1.3, transA=trans_a, transB=trans_b)
    np.testing.assert_allclose(y, gemm_loops(a, b, c, 0.7, -1.3, trans_a, trans_b), rtol=1e-10)
    types = [TensorType.of(t) for t in inputs]
    attrs = {"alpha": 0.7, "beta": -1.3, "transA": trans_a, "transB": trans_b}
    assert infer_node("Gemm", types, attrs, "n")[0].shape == y.shape


def test_gemm_defaults_and_float32():
    a, b, c = rand(2, 3).astype(np.float32), rand(3, 4).astype(np.float32), rand(4)
    y = run("Gemm", [a, b, c.astype(np.float32)])
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, a.astype(np.float64) @ b + c, rtol=1e-5)


def test_gemm_symbolic_batch_and_transb():
    out = infer_node("Gemm", [TensorType(("N", 9216)), TensorType((4096, 9216)),
                              TensorType((4096,))], {"transB": 1}, "fc6")
    assert out == [TensorType(("N", 4096))]
    out = infer_node("Gemm", [TensorType((7, "N")), TensorType((7, 2)), TensorType(("N", 1))],
                     {"transA": True}, "g")
    assert out[0].shape == ("N", 2)


def test_gemm_inner_dimension_error_message():
    with pytest.raises(ShapeError, match=r"inner dimensions differ: A is \[1, 9216\] "
                                         r"\(K=9216\), B\^T gives K=4096"):
        infer_node("Gemm", [TensorType((1, 9216)), TensorType((1000, 4096))],
                   {"transB": 1}, "fc")


@pytest.mark.parametrize("inputs,attrs,match", [
    ([(2, 3, 4), (4, 5)], {}, "A must have rank 2"),
    ([(2, 3), (3,)], {}, "B must have rank 2"),
    ([(2, 3), (3, 5), (4,)], {}, r"does not broadcast to \[M, N\] = \[2, 5\]"),
    ([(2, 3), (3, 5), (2, 5, 1)], {}, "rank <= 2"),
    ([(2, "K"), ("K", 5)], {}, "must be concrete"),
])
def test_gemm_shape_errors(inputs, attrs, match):
    with pytest.raises(ShapeError, match=match):
        infer_node("Gemm", [TensorType(s) for s in inputs], attrs, "g")


def test_gemm_dtype_and_attr_errors():
    with pytest.raises(ShapeError, match="share one dtype"):
        infer_node("Gemm", [TensorType((2, 3)), TensorType((3, 4), DType.float64)], {}, "g")
    with pytest.raises(AttributeValueError, match="transA"):
        infer_node("Gemm", [TensorType((2, 3)), TensorType((3, 4))], {"transA": 2}, "g")


def test_gemm_flops_and_params():
    b = GraphBuilder()
    x = b.input("x", ("N", 8))
    w = b.param("w", shape=(3, 8))
    bias = b.param("b", shape=(3,))
    y = b.op("Gemm", x, w, bias, transB=1)
    node = b.build(y).nodes[0]
    cost = node_cost(node, batch=2)
    assert cost.flops == 2 * 2 * 3 * 8 + 2 * 3
    assert cost.params == 3 * 8 + 3
    assert get_op("Gemm").inputs[1].weight and get_op("Gemm").inputs[2].weight


def matmul_loops(a, b) -> np.ndarray:
    """numpy matmul semantics spelled out: promote 1-D, broadcast batch, loop."""
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    ab = np.broadcast_to(a2, batch + a2.shape[-2:])
    bb = np.broadcast_to(b2, batch + b2.shape[-2:])
    m, k, n = a2.shape[-2], a2.shape[-1], b2.shape[-1]
    y = np.zeros(batch + (m, n))
    for idx in itertools.product(*(range(d) for d in batch)):
        for i in range(m):
            for j in range(n):
                y[idx + (i, j)] = sum(ab[idx + (i, p)] * bb[idx + (p, j)] for p in range(k))
    if a.ndim == 1:
        y = y[..., 0, :]
    if b.ndim == 1:
        y = y[..., 0]
    return y


@pytest.mark.parametrize("sa,sb", [
    ((3, 4), (4, 5)),
    ((4,), (4, 5)),
    ((3, 4), (4,)),
    ((4,), (4,)),
    ((2, 3, 4), (4, 5)),
    ((2, 1, 3, 4), (3, 4, 2)),
    ((4,), (2, 4, 3)),
    ((2, 3, 4), (4,)),
])
def test_matmul_matches_loops(sa, sb):
    a, b = rand(*sa), rand(*sb)
    y = run("MatMul", [a, b])
    np.testing.assert_allclose(y, matmul_loops(a, b), rtol=1e-10)
    assert infer_node("MatMul", [TensorType(sa), TensorType(sb)], {}, "m")[0].shape == y.shape


def test_matmul_symbolic_and_errors():
    assert infer_node("MatMul", [TensorType(("N", 16, 64)), TensorType((64, 10))], {},
                      "m")[0].shape == ("N", 16, 10)
    assert infer_node("MatMul", [TensorType(("N", 64)), TensorType((64,))], {},
                      "m")[0].shape == ("N",)
    with pytest.raises(ShapeError, match=r"inner dimensions differ: A is \[3, 4\] \(K=4\), "
                                         r"B is \[5, 6\] \(K=5\)"):
        infer_node("MatMul", [TensorType((3, 4)), TensorType((5, 6))], {}, "m")
    with pytest.raises(ShapeError, match="do not broadcast"):
        infer_node("MatMul", [TensorType((2, 3, 4)), TensorType((3, 4, 5))], {}, "m")
    with pytest.raises(ShapeError, match="rank >= 1"):
        infer_node("MatMul", [TensorType(()), TensorType((3, 4))], {}, "m")


def test_matmul_flops():
    b = GraphBuilder()
    x = b.input("x", ("N", 3, 4))
    w = b.param("w", shape=(4, 5))
    node = b.build(b.op("MatMul", x, w)).nodes[0]
    assert node_cost(node, batch=2).flops == 2 * (2 * 3 * 5) * 4


dims = st.integers(1, 3)


@settings(max_examples=30, deadline=None)
@given(batch_a=st.lists(dims, max_size=2), batch_b=st.lists(dims, max_size=2),
       m=dims, k=dims, n=dims, vec_a=st.booleans(), vec_b=st.booleans())
def test_matmul_inferred_shape_is_reference_shape(batch_a, batch_b, m, k, n, vec_a, vec_b):
    # make the batch dims broadcastable by setting mismatches to 1
    batch_a, batch_b = list(batch_a), list(batch_b)
    for i in range(1, min(len(batch_a), len(batch_b)) + 1):
        if batch_a[-i] != batch_b[-i]:
            batch_b[-i] = 1
    sa = (k,) if vec_a else (*batch_a, m, k)
    sb = (k,) if vec_b else (*batch_b, k, n)
    y = run("MatMul", [rand(*sa), rand(*sb)])
    assert infer_node("MatMul", [TensorType(sa), TensorType(sb)], {}, "m")[0].shape == y.shape
