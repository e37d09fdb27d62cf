"""Elementwise math, comparisons, Where and the variadic Max/Min/Sum/Mean: references against
scalar `math` formulas and explicit loops, dtype rules, broadcasting errors, and a few
cross-checks against onnxruntime."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from helpers import check_type, infer
from helpers import reference as run
from hypothesis import given, settings
from hypothesis import strategies as st

from cnncompiler.errors import AttributeValueError, ShapeError
from cnncompiler.ir.types import DType, TensorType
from cnncompiler.ops.opdef import FusionKind
from cnncompiler.ops.registry import get_op

RNG = np.random.default_rng(7)


def rand(*shape: int) -> np.ndarray:
    """Random non-zero values in +-[0.1, 3]."""
    return RNG.uniform(0.1, 3.0, shape) * RNG.choice([-1.0, 1.0], shape)





def scalar(f, x: np.ndarray) -> np.ndarray:
    return np.array([f(float(v)) for v in x.ravel()]).reshape(x.shape)


def erf_series(v: float) -> float:
    """erf by its Maclaurin series (independent of math.erf); accurate for |v| < 3."""
    total, term, n = 0.0, v, 0
    while abs(term) > 1e-18 or n < 5:
        total += term / (2 * n + 1)
        n += 1
        term *= -v * v / n
    return 2.0 / math.sqrt(math.pi) * total


SELU_A, SELU_G = 1.67326319217681884765625, 1.05070102214813232421875

UNARY = [
    ("Exp", {}, math.exp),
    ("Log", {}, lambda v: math.log(abs(v))),  # fed |x|
    ("Sqrt", {}, lambda v: math.sqrt(abs(v))),  # fed |x|
    ("Reciprocal", {}, lambda v: 1.0 / v),
    ("Floor", {}, math.floor),
    ("Ceil", {}, math.ceil),
    ("Erf", {}, erf_series),
    ("Gelu", {}, lambda v: v * (1 + erf_series(v / math.sqrt(2))) / 2),
    ("Gelu", {"approximate": "tanh"},
     lambda v: v / 2 * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))),
    ("Softplus", {}, lambda v: math.log1p(math.exp(v))),
    ("Softsign", {}, lambda v: v / (1 + abs(v))),
    ("Elu", {}, lambda v: v if v >= 0 else math.exp(v) - 1),
    ("Elu", {"alpha": 0.3}, lambda v: v if v >= 0 else 0.3 * (math.exp(v) - 1)),
    ("Selu", {}, lambda v: SELU_G * (v if v > 0 else SELU_A * (math.exp(v) - 1))),
    ("Celu", {"alpha": 2.0}, lambda v: max(0.0, v) + min(0.0, 2 * (math.exp(v / 2) - 1))),
    ("Celu", {"alpha": -0.5}, lambda v: max(0.0, v) + min(0.0, -0.5 * (math.exp(-2 * v) - 1))),
    ("ThresholdedRelu", {}, lambda v: v if v > 1.0 else 0.0),
    ("ThresholdedRelu", {"alpha": -0.5}, lambda v: v if v > -0.5 else 0.0),
    ("Mish", {}, lambda v: v * math.tanh(math.log(1 + math.exp(v)))),
    ("Swish", {}, lambda v: v / (1 + math.exp(-v))),
    ("Swish", {"alpha": 1.702}, lambda v: v / (1 + math.exp(-1.702 * v))),
    ("Abs", {}, abs),
    ("Neg", {}, lambda v: -v),
]


@pytest.mark.parametrize("op,attrs,f", UNARY, ids=[f"{o}-{a}" for o, a, _ in UNARY])
def test_unary_matches_scalar_formula(op, attrs, f):
    x = rand(2, 3, 4, 5)
    if op in ("Log", "Sqrt"):
        x = np.abs(x)
    y = run(op, [x], **attrs)
    np.testing.assert_allclose(y, scalar(f, x), rtol=1e-12, atol=1e-15)
    check_type(op, [x], y, **attrs)
    y32 = run(op, [x.astype(np.float32)], **attrs)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, y, rtol=1e-5, atol=1e-6)
    check_type(op, [x.astype(np.float32)], y32, **attrs)
    assert get_op(op).fusion is FusionKind.ELEMENTWISE


def test_erf_known_values():
    x = np.array([0.0, 0.5, -1.0, 2.0, 6.0, -30.0])
    want = [0.0, 0.5204998778130465, -0.8427007929497149, 0.9953222650189527, 1.0, -1.0]
    np.testing.assert_allclose(run("Erf", [x]), want, rtol=1e-15)


def test_large_inputs_do_not_overflow():
    x = np.array([-1000.0, -50.0, 50.0, 1000.0])
    np.testing.assert_allclose(run("Softplus", [x]), [0.0, math.exp(-50), 50.0, 1000.0],
                               rtol=1e-15)
    np.testing.assert_allclose(run("Mish", [x]), [-0.0, -50 * math.exp(-50), 50.0, 1000.0],
                               rtol=1e-12)
    np.testing.assert_allclose(run("Swish", [x]), [-0.0, -50 * math.exp(-50), 50.0, 1000.0],
                               rtol=1e-12)
    with np.errstate(all="raise"):
        np.testing.assert_array_equal(run("Elu", [x]), [-1.0, math.expm1(-50), 50.0, 1000.0])
        run("Selu", [x])
        run("Celu", [x])


def test_integer_and_bool_unaries():
    xi = np.array([[-3, 0, 5], [7, -1, 2]], dtype=np.int64)
    for op, f in (("Abs", abs), ("Neg", lambda v: -v)):
        y = run(op, [xi])
        assert y.dtype == np.int64
        np.testing.assert_array_equal(y, [[f(int(v)) for v in row] for row in xi])
        check_type(op, [xi], y)
    b = np.array([True, False, True])
    np.testing.assert_array_equal(run("Not", [b]), [False, True, False])
    assert infer("Not", [TensorType(("N", 3), DType.bool)]) == TensorType(("N", 3), DType.bool)


@pytest.mark.parametrize("op,dtype", [("Exp", DType.int64), ("Erf", DType.int64),
                                      ("Gelu", DType.bool), ("Abs", DType.bool),
                                      ("Neg", DType.bool), ("Not", DType.float32)])
def test_unary_dtype_errors(op, dtype):
    with pytest.raises(ShapeError, match=f"got {dtype}"):
        infer(op, [TensorType((2, 3), dtype)])


def test_unary_attr_errors():
    with pytest.raises(AttributeValueError, match="is not one of"):
        infer("Gelu", [(2,)], approximate="erf")
    with pytest.raises(AttributeValueError, match="must be non-zero"):
        infer("Celu", [(2,)], alpha=0.0)
    with pytest.raises(AttributeValueError, match="unknown attribute"):
        infer("Exp", [(2,)], alpha=1.0)


# ------------------------------------------------------------------------------------ Pow
def broadcast_loops(f, *arrays: np.ndarray) -> np.ndarray:
    """f applied per output index, each operand read at its right-aligned, clamped index."""
    rank = max(a.ndim for a in arrays)
    shape = [max(a.shape[i - rank + a.ndim] if i - rank + a.ndim >= 0 else 1 for a in arrays)
             for i in range(rank)]
    out = np.empty(shape, dtype=object)
    for idx in itertools.product(*(range(d) for d in shape)):
        args = []
        for a in arrays:
            sub = idx[rank - a.ndim:]
            args.append(a[tuple(0 if a.shape[k] == 1 else i for k, i in enumerate(sub))])
        out[idx] = f(*args)
    return out


def test_pow_float_broadcast():
    a, b = np.abs(rand(2, 1, 4)), rand(3, 1)
    y = run("Pow", [a, b])
    np.testing.assert_allclose(y, broadcast_loops(lambda u, v: float(u) ** float(v), a, b)
                               .astype(float), rtol=1e-13)
    check_type("Pow", [a, b], y)
    assert get_op("Pow").fusion is FusionKind.BROADCAST


def test_pow_mixed_dtypes_take_the_base_dtype():
    a = rand(2, 3).astype(np.float32)
    e = np.array([2, 3, 0], dtype=np.int64)
    y = run("Pow", [a, e])
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, a.astype(float) ** e.astype(float), rtol=1e-6)
    check_type("Pow", [a, e], y)
    base = np.array([2, -3, 4, 1, -1], dtype=np.int64)
    y = run("Pow", [base, np.array([3, 2, 0, -2, -1], dtype=np.int64)])
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, [8, 9, 1, 1, -1])
    # int ** negative int: the real power truncated toward zero
    np.testing.assert_array_equal(run("Pow", [base, np.array([-1] * 5, dtype=np.int64)]),
                                  [0, 0, 0, 1, -1])
    np.testing.assert_array_equal(run("Pow", [np.abs(base), np.array([0.5] * 5)]),
                                  [1, 1, 2, 1, 1])
    with pytest.raises(ShapeError, match="input 1 must be"):
        infer("Pow", [TensorType((2,)), TensorType((2,), DType.bool)])


# ---------------------------------------------------------------------------- comparisons
@pytest.mark.parametrize("op,f", [("Equal", lambda u, v: u == v), ("Less", lambda u, v: u < v),
                                  ("Greater", lambda u, v: u > v)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64])
def test_comparisons(op, f, dtype):
    a = RNG.integers(-2, 3, (2, 3, 4)).astype(dtype)
    b = RNG.integers(-2, 3, (3, 1)).astype(dtype)
    y = run(op, [a, b])
    assert y.dtype == np.bool_
    np.testing.assert_array_equal(y, broadcast_loops(f, a, b).astype(bool))
    check_type(op, [a, b], y)


def test_comparison_errors():
    with pytest.raises(ShapeError, match="share one dtype"):
        infer("Equal", [TensorType((2,)), TensorType((2,), DType.int64)])
    with pytest.raises(ShapeError, match="got bool"):
        infer("Less", [TensorType((2,), DType.bool), TensorType((2,), DType.bool)])
    assert infer("Equal", [TensorType((2,), DType.bool), TensorType((1,), DType.bool)]) \
        == TensorType((2,), DType.bool)
    with pytest.raises(ShapeError, match=r"dimension -1: 3 vs 2"):
        infer("Greater", [(4, 3), (2,)])


# ---------------------------------------------------------------------------- variadic
VARIADIC = {
    "Max": lambda *v: max(v),
    "Min": lambda *v: min(v),
    "Sum": lambda *v: math.fsum(v),
    "Mean": lambda *v: math.fsum(v) / len(v),
}


@pytest.mark.parametrize("op", list(VARIADIC))
@pytest.mark.parametrize("shapes", [[(2, 3)], [(2, 3), (2, 3)], [(2, 1, 4), (3, 1), (4,)],
                                    [(1,), (5, 1, 1), (1, 2, 1), (1, 1, 3)]])
def test_variadic_matches_loops(op, shapes):
    xs = [rand(*s) for s in shapes]
    y = run(op, xs)
    np.testing.assert_allclose(y, broadcast_loops(VARIADIC[op], *xs).astype(float), rtol=1e-14)
    check_type(op, xs, y)
    assert get_op(op).fusion is FusionKind.BROADCAST
    if len(xs) == 1:
        assert not np.shares_memory(y, xs[0])


def test_variadic_dtypes_and_symbolic_batch():
    xi = [np.array([[1, 5], [7, -2]], np.int64), np.array([3, 3], np.int64)]
    np.testing.assert_array_equal(run("Max", xi), [[3, 5], [7, 3]])
    np.testing.assert_array_equal(run("Min", xi), [[1, 3], [3, -2]])
    assert run("Max", xi).dtype == np.int64
    assert run("Mean", [a.astype(np.float32) for a in xi[:1]]).dtype == np.float32
    assert infer("Sum", [("N", 3, 1), (1, 4), ("N", 1, 1)]).shape == ("N", 3, 4)
    with pytest.raises(ShapeError, match="got int64"):
        infer("Sum", [TensorType((2,), DType.int64)] * 2)
    with pytest.raises(ShapeError, match="got int64"):
        infer("Mean", [TensorType((2,), DType.int64)])
    with pytest.raises(ShapeError, match="share one dtype"):
        infer("Max", [TensorType((2,)), TensorType((2,), DType.float64)])
    with pytest.raises(ShapeError, match="at least one input"):
        infer("Min", [])
    with pytest.raises(ShapeError, match=r"do not broadcast \(dimension -1: 4 vs 3\)"):
        infer("Mean", [(2, 1), (1, 4), (3,)])
    with pytest.raises(ShapeError, match="do not broadcast"):
        infer("Sum", [("N", 3), (2, 3)])


def test_variadic_flops_count_every_input():
    from cnncompiler.ir.builder import GraphBuilder
    from cnncompiler.ops.registry import node_cost

    b = GraphBuilder()
    xs = [b.input(f"x{i}", (2, 3)) for i in range(3)]
    for op, per in (("Sum", 2), ("Mean", 3), ("Max", 2)):
        v = b.op(op, *xs)
        assert node_cost(v.producer).flops == per * 6


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.sampled_from([1, 2, 3]), min_size=0, max_size=3),
                min_size=1, max_size=4))
def test_variadic_inferred_shape_is_reference_shape(shapes):
    xs = [rand(*s) for s in shapes]
    try:
        want = np.broadcast_shapes(*(x.shape for x in xs))
    except ValueError:
        with pytest.raises(ShapeError, match="do not broadcast"):
            infer("Max", [x.shape for x in xs])
        return
    y = run("Max", xs)
    assert y.shape == want == infer("Max", [x.shape for x in xs]).shape
    np.testing.assert_array_equal(y, np.max(np.stack(np.broadcast_arrays(*xs)), axis=0))


# ------------------------------------------------------------------------------ Where
def test_where_matches_loops():
    c = RNG.random((2, 1, 4)) > 0.5
    x, y = rand(3, 1), rand(1, 1, 4)
    out = run("Where", [c, x, y])
    np.testing.assert_array_equal(out, broadcast_loops(lambda k, u, v: u if k else v, c, x, y)
                                  .astype(float))
    check_type("Where", [c, x, y], out)
    xi = np.array([1, 2], np.int64)
    assert run("Where", [np.array([True, False]), xi, xi * 10]).tolist() == [1, 20]
    assert infer("Where", [TensorType(("N", 1), DType.bool), (1, 5), ("N", 5)]).shape == ("N", 5)


def test_where_errors():
    with pytest.raises(ShapeError, match="input 0 must be bool, got float32"):
        infer("Where", [(2,), (2,), (2,)])
    with pytest.raises(ShapeError, match="share one dtype"):
        infer("Where", [TensorType((2,), DType.bool), TensorType((2,)),
                        TensorType((2,), DType.int64)])
    with pytest.raises(ShapeError, match="takes 3 to 3 inputs"):
        infer("Where", [TensorType((2,), DType.bool), TensorType((2,))])


# ------------------------------------------------------------------------- onnxruntime
def run_onnxruntime(op: str, inputs: list[np.ndarray], out_dtype: np.dtype, opset: int,
                    **attrs) -> np.ndarray:
    """Run a one-node ONNX model of ``op`` in onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    helper = pytest.importorskip("onnx.helper")
    onnx = pytest.importorskip("onnx")
    names = [f"x{i}" for i in range(len(inputs))]
    elem = {np.dtype(np.float32): onnx.TensorProto.FLOAT, np.dtype(np.int64):
            onnx.TensorProto.INT64, np.dtype(np.bool_): onnx.TensorProto.BOOL}
    graph = helper.make_graph(
        [helper.make_node(op, names, ["y"], **attrs)], "g",
        [helper.make_tensor_value_info(n, elem[a.dtype], a.shape) for n, a in zip(names, inputs)],
        [helper.make_tensor_value_info("y", elem[np.dtype(out_dtype)], None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, dict(zip(names, inputs)))[0]


@pytest.mark.parametrize("op,attrs,opset", [
    ("Erf", {}, 13), ("Gelu", {}, 20), ("Gelu", {"approximate": "tanh"}, 20),
    ("Softplus", {}, 13), ("Mish", {}, 18), ("Selu", {}, 13), ("Celu", {"alpha": 0.5}, 13),
    ("Elu", {"alpha": 0.5}, 13), ("ThresholdedRelu", {"alpha": 0.5}, 13),
])
def test_unary_matches_onnxruntime(op, attrs, opset):
    x = rand(2, 3, 4).astype(np.float32)
    want = run_onnxruntime(op, [x], np.float32, opset, **attrs)
    np.testing.assert_allclose(run(op, [x.astype(np.float64)], **attrs), want, rtol=2e-6,
                               atol=1e-6)


@pytest.mark.parametrize("op,inputs", [
    ("Pow", [np.abs(rand(2, 3)).astype(np.float32), rand(3).astype(np.float32)]),
    ("Mean", [rand(2, 1, 3).astype(np.float32), rand(4, 1).astype(np.float32),
              rand(3).astype(np.float32)]),
    ("Max", [rand(2, 1, 3).astype(np.float32), rand(4, 1).astype(np.float32)]),
    ("Where", [RNG.random((2, 3)) > 0.5, rand(3).astype(np.float32),
               rand(2, 1).astype(np.float32)]),
    ("Less", [np.array([[1, 5, 3]], np.int64), np.array([[2], [5]], np.int64)]),
])
def test_broadcast_ops_match_onnxruntime(op, inputs):
    got = run(op, inputs)
    want = run_onnxruntime(op, inputs, got.dtype, 13)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=2e-6)
