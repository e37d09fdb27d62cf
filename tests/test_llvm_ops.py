"""The LLVM backend's kernels for the ops beyond conv nets' core: elementwise math (scalar
forms), comparisons, Where and Cast on int64/bool, tensor plumbing (Slice, Expand, Tile,
Gather, DepthToSpace...), reductions, ArgMax/ArgMin and Softmax on any axis. Each runs on
random inputs (never all zero) against the float64 reference backend."""

import numpy as np
import pytest
from helpers import check_llvm

pytest.importorskip("llvmlite")

import cnncompiler  # noqa: E402
from cnncompiler.backends.reference import evaluate  # noqa: E402
from cnncompiler.ir import GraphBuilder  # noqa: E402
from cnncompiler.kernel.lower import unsupported_reason  # noqa: E402

RNG = np.random.default_rng(0)


def rand(shape, dtype="float32", scale=1.0):
    """Random data of ``dtype``: normal floats (times ``scale``), ints in [-5, 5], bools."""
    if dtype == "bool":
        return RNG.random(shape) < 0.5
    if dtype == "int64":
        return RNG.integers(-5, 6, shape).astype(np.int64)
    return (RNG.standard_normal(shape) * scale).astype(dtype)


def one_op(op, *xs, params=(), **attrs):
    """A graph of one ``op`` node on graph inputs ``xs`` (arrays) and stored ``params``;
    returns (graph, feeds)."""
    b = GraphBuilder(op.lower())
    feeds = {f"x{i}": x for i, x in enumerate(xs)}
    inputs = [b.input(name, x.shape, str(x.dtype)) for name, x in feeds.items()]
    inputs += [b.param(f"p{i}", p, trainable=False) for i, p in enumerate(params)]
    return b.build(b.op(op, *inputs, name="n", **attrs)), feeds


def run_one(op, *xs, params=(), **attrs):
    check_llvm(*one_op(op, *xs, params=params, **attrs))


# ------------------------------------------------------------------------ elementwise math
@pytest.mark.parametrize("op,attrs", [
    ("Abs", {}), ("Neg", {}), ("Floor", {}), ("Ceil", {}), ("Erf", {}),
    ("Gelu", {}), ("Gelu", {"approximate": "tanh"}), ("Softplus", {}), ("Softsign", {}),
    ("Elu", {}), ("Elu", {"alpha": 0.5}), ("Selu", {}), ("Celu", {"alpha": 2.0}),
    ("Celu", {"alpha": -0.7}), ("ThresholdedRelu", {"alpha": 0.3}), ("Mish", {}),
    ("Swish", {}), ("Swish", {"alpha": 1.5}),
])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_unary_math(op, attrs, dtype):
    run_one(op, rand((2, 3, 5, 7), dtype, scale=3.0), **attrs)


@pytest.mark.parametrize("op,attrs", [
    ("Softplus", {}), ("Mish", {}), ("Elu", {}), ("Selu", {}), ("Celu", {}), ("Gelu", {}),
])
def test_unary_math_is_accurate_per_element(op, attrs):
    """Tiny and large magnitudes, where e^x - 1 and log(1 + e^x) cancel in float32: every
    element within a few float32 ulps of the reference."""
    x = np.array([-60, -30, -9, -1e-3, -3e-6, -1e-9, 1e-9, 3e-6, 1e-3, 9, 30, 60], np.float32)
    graph, feeds = one_op(op, x, **attrs)
    expected = evaluate(graph, feeds)[0].astype(np.float32)
    got = cnncompiler.compile(graph, backend="llvm")(**feeds)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize("op", ["Abs", "Neg"])
def test_int_unary(op):
    run_one(op, rand((4, 9), "int64"))


def test_not():
    run_one("Not", rand((3, 4, 5), "bool"))


@pytest.mark.parametrize("base,exponent", [
    (("float32", 1.0), ("float32", 1.0)),   # positive base, any real exponent
    (("float32", 2.0), ("int64", None)),    # negative bases, integer exponents
    (("int64", None), ("int64", None)),     # truncated real power for negative exponents
    (("int64", None), ("float32", 1.0)),
    (("float64", 1.0), ("float32", 1.0)),
])
def test_pow(base, exponent):
    a = rand((3, 4, 5), base[0], scale=base[1] or 1.0)
    if exponent[0] != "int64":   # a real power of a negative base is NaN
        a = np.abs(a)
    a[a == 0] = 1                # 0 ** negative is infinite
    b = rand((4, 5), exponent[0], scale=exponent[1] or 1.0)
    run_one("Pow", a, b)


@pytest.mark.parametrize("op", ["Equal", "Less", "Greater"])
@pytest.mark.parametrize("dtype", ["float32", "int64"])
def test_comparisons(op, dtype):
    a = np.round(rand((2, 3, 4), "float32", scale=2.0)).astype(dtype)   # ties happen
    b = np.round(rand((3, 1), "float32", scale=2.0)).astype(dtype)
    run_one(op, a, b)


def test_equal_on_bools():
    run_one("Equal", rand((3, 4), "bool"), rand((4,), "bool"))


@pytest.mark.parametrize("dtype", ["float32", "int64", "bool"])
def test_where(dtype):
    run_one("Where", rand((2, 1, 5), "bool"), rand((3, 5), dtype), rand((2, 3, 1), dtype))


def test_where_on_a_comparison():
    b = GraphBuilder("mask")
    x, y = b.input("x", (2, 3, 4)), b.input("y", (2, 3, 4))
    out = b.op("Where", b.op("Less", x, y, name="less"), x, b.op("Neg", y, name="neg"),
               name="where")
    check_llvm(b.build(out), {"x": rand((2, 3, 4)), "y": rand((2, 3, 4))})


@pytest.mark.parametrize("src", ["float32", "float64", "int64", "bool"])
@pytest.mark.parametrize("to", ["float32", "float64", "int64", "bool"])
def test_cast(src, to):
    run_one("Cast", rand((3, 4, 5), src, scale=4.0), to=to)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul"])
def test_int_arithmetic(op):
    run_one(op, rand((3, 4), "int64"), rand((4,), "int64"))


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_int_max_min(op):
    run_one(op, rand((3, 4), "int64"), rand((1, 4), "int64"))


def test_fused_chains():
    """Float and int64 elementwise chains fuse into one kernel each."""
    b = GraphBuilder("chains")
    x, k = b.input("x", (2, 3, 4, 5)), b.input("k", (2, 3, 4, 5), "int64")
    y = b.op("Softsign", b.op("Mul", b.op("Elu", x, name="elu"),
                              b.param("s", rand((5,)) + 2), name="mul"), name="softsign")
    z = b.op("Neg", b.op("Mul", b.op("Abs", k, name="abs"),
                         b.param("m", rand((5,), "int64")), name="imul"), name="neg")
    graph = b.build([y, z])
    compiled = cnncompiler.compile(graph, backend="llvm")
    assert [n.op for n in compiled.graph.nodes] == ["Fused", "Fused"]
    check_llvm(graph, {"x": rand((2, 3, 4, 5)), "k": rand((2, 3, 4, 5), "int64")})


# -------------------------------------------------------------------------- tensor plumbing
@pytest.mark.parametrize("attrs", [
    {"starts": (1, 0), "ends": (3, 4)},
    {"starts": (-1, 1), "ends": (-1000, 2**31), "axes": (3, -2), "steps": (-2, 2)},
    {"starts": (0,), "ends": (1,), "axes": (0,)},
])
def test_slice(attrs):
    run_one("Slice", rand((2, 5, 6, 7)), **attrs)


@pytest.mark.parametrize("dtype", ["float32", "int64", "bool"])
def test_squeeze_unsqueeze_expand_tile(dtype):
    run_one("Squeeze", rand((2, 1, 3, 1), dtype), axes=(1, 3))
    run_one("Unsqueeze", rand((2, 3), dtype), axes=(0, -1))
    run_one("Expand", rand((3, 1, 5), dtype), shape=(2, 1, 4, 5))
    run_one("Tile", rand((2, 3, 4), dtype), repeats=(2, 1, 3))


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
@pytest.mark.parametrize("op,shape", [("DepthToSpace", (2, 12, 3, 5)),
                                      ("SpaceToDepth", (2, 3, 6, 9))])
def test_depth_space(op, shape, mode):
    run_one(op, rand(shape), blocksize=2 if op == "DepthToSpace" else 3, mode=mode)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather_stored_indices(axis):
    indices = np.array([[0, -1, 2], [1, 1, -3]], np.int64)
    run_one("Gather", rand((3, 4, 5)), params=[indices], axis=axis)


def test_gather_runtime_and_scalar_indices():
    run_one("Gather", rand((5, 4)), np.array([4, -5, 0, 2], np.int64), axis=0)
    run_one("Gather", rand((5, 4)), params=[np.array(-2, np.int64)], axis=1)


def test_shape_and_constant_of_shape():
    run_one("Shape", rand((2, 3, 4)), start=1)
    for dtype, value in (("float32", 1.5), ("int64", -3.0), ("bool", 1.0)):
        b = GraphBuilder("fill")
        out = b.op("ConstantOfShape", name="fill", shape=(2, 3), value=value, dtype=dtype)
        graph = b.build(out)
        got = cnncompiler.compile(graph, backend="llvm")()
        np.testing.assert_array_equal(got, np.full((2, 3), value).astype(dtype))


# ------------------------------------------------------------------------------ reductions
REDUCE_OPS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd",
              "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp"]
REDUCE_AXES = [
    {"axes": (1,)}, {"axes": (0, 2), "keepdims": False}, {"axes": (-1,)}, {},
    {"keepdims": False}, {"axes": (), "noop_with_empty_axes": True},
]


@pytest.mark.parametrize("attrs", REDUCE_AXES)
@pytest.mark.parametrize("op", REDUCE_OPS)
def test_reduce(op, attrs):
    x = rand((3, 4, 5))
    if op == "ReduceProd":
        x = 1 + x / 4   # a product of 60 values stays of order 1
    elif op == "ReduceLogSum":
        x = np.abs(x) + np.float32(0.1)
    elif op == "ReduceLogSumExp":
        x = x * 30   # e^x would overflow without the max shift
    run_one(op, x, **attrs)


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin",
                                "ReduceProd", "ReduceSumSquare", "ReduceL1", "ReduceL2"])
def test_int_reduce(op):
    """Mean and L2 of int64 truncate toward zero, like the reference's astype."""
    run_one(op, rand((3, 4, 3), "int64"), axes=(1,))
    run_one(op, rand((3, 4, 3), "int64"), axes=(0, 2), keepdims=False)


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
def test_bool_reduce(op):
    run_one(op, rand((4, 6), "bool"), axes=(1,))


def test_reduce_max_propagates_nan():
    x = rand((3, 5))
    x[1, 2] = np.nan
    graph, feeds = one_op("ReduceMax", x, axes=(1,))
    got = cnncompiler.compile(graph, backend="llvm")(**feeds)
    np.testing.assert_array_equal(np.isnan(got), [[False], [True], [False]])


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("attrs", [
    {}, {"axis": 1}, {"axis": -1, "keepdims": False}, {"axis": 2, "select_last_index": True},
    {"axis": 0, "keepdims": False, "select_last_index": True},
])
@pytest.mark.parametrize("dtype", ["float32", "int64"])
def test_arg_extreme(op, attrs, dtype):
    x = np.round(rand((3, 4, 5), "float32", scale=1.5)).astype(dtype)  # ties happen
    run_one(op, x, **attrs)


@pytest.mark.parametrize("last", [False, True])
def test_arg_extreme_nan_wins(last):
    """As numpy: the first NaN (the last one with select_last_index)."""
    x = rand((2, 6))
    x[0, [1, 4]] = np.nan
    run_one("ArgMax", x, axis=1, select_last_index=last)
    run_one("ArgMin", x, axis=1, select_last_index=last)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_softmax_any_axis(op, axis):
    run_one(op, rand((2, 5, 6, 7), scale=20.0), axis=axis)


# ------------------------------------------------------------------------- what is refused
@pytest.mark.parametrize("op,dtype,attrs", [
    ("Div", "int64", {}),                                  # Div truncates, "/" floors
    ("Add", "bool", {}),                                   # no bool arithmetic
    ("Pad", "bool", {"pads": (1, 0, 0, 1)}),               # the pad value is a float
])
def test_refused_dtypes(op, dtype, attrs):
    xs = [rand((2, 3), dtype)] * (2 if op in ("Div", "Add") else 1)
    graph, _ = one_op(op, *xs, **attrs)
    assert "has no kernel yet" in unsupported_reason(graph.nodes[0])
