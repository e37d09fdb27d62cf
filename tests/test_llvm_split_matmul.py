"""The LLVM backend's kernels for a node with several outputs (Split: one kernel per output)
and for N-D MatMul (numpy ``matmul``: 1-D operands, broadcast batch axes), on random inputs
against the float64 reference backend."""

import ctypes
import shutil

import numpy as np
import pytest
from helpers import check_llvm

pytest.importorskip("llvmlite")

import cnncompiler  # noqa: E402
from cnncompiler.errors import UnsupportedError  # noqa: E402
from cnncompiler.ir import GraphBuilder  # noqa: E402
from cnncompiler.kernel.lower import lower_node, unsupported_reason  # noqa: E402

RNG = np.random.default_rng(2)


def rand(shape, dtype="float32"):
    if dtype == "bool":
        return RNG.random(shape) < 0.5
    if dtype == "int64":
        return RNG.integers(-5, 6, shape).astype(np.int64)
    return RNG.standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------------------------- Split
def split_graph(shape, dtype="float32", **attrs):
    b = GraphBuilder("split")
    x = b.input("x", shape, dtype)
    return b.build(b.add_node("Split", [x], attrs, name="n")), {"x": rand(shape, dtype)}


@pytest.mark.parametrize("shape,attrs", [
    ((2, 6, 5), {"axis": 1, "split": (1, 2, 3)}),
    ((3, 4, 7), {"axis": -1, "num_outputs": 2}),          # uneven: 4 and 3
    ((6,), {"axis": 0, "num_outputs": 3}),
    ((2, 3, 4, 5), {"axis": 2, "split": (3, 1)}),
    ((2, 3, 4, 5), {"axis": 0, "split": (1, 1)}),
    ((5, 4), {"axis": 1, "split": (4,)}),                 # one output: a copy
])
def test_split_matches_reference(shape, attrs):
    check_llvm(*split_graph(shape, **attrs))


@pytest.mark.parametrize("dtype", ["float64", "int64", "bool"])
def test_split_moves_any_dtype(dtype):
    graph, feeds = split_graph((4, 6), dtype, axis=1, split=(2, 4))
    assert unsupported_reason(graph.nodes[0]) is None
    check_llvm(graph, feeds)


def test_split_of_a_computed_value_feeding_fused_consumers():
    b = GraphBuilder("mid")
    x = b.input("x", (2, 8, 5, 3))
    y = b.op("Mul", x, b.op("Sigmoid", x))
    lo, hi = b.add_node("Split", [y], {"axis": 1, "num_outputs": 2}, name="n")
    z = b.op("Add", b.op("Relu", lo), b.op("Tanh", hi))
    graph = b.build([z, hi])
    feeds = {"x": rand((2, 8, 5, 3))}
    check_llvm(graph, feeds)
    check_llvm(graph, feeds, threads=2)


def test_split_between_blocked_convs():
    """Conv (NCHW8c) -> Split on the channels -> a conv per part -> Concat."""
    b = GraphBuilder("convsplit")
    x = b.input("x", (1, 8, 9, 9))

    def conv(v, c, k, name):
        w = b.param(f"{name}_w", rand((k, c, 3, 3)) / np.float32(np.sqrt(9 * c)))
        return b.op("Conv", v, w, b.param(f"{name}_b", rand((k,))), name=name,
                    pads=(1, 1, 1, 1))

    a, c = b.add_node("Split", [conv(x, 8, 24, "c0")], {"axis": 1, "split": (16, 8)},
                      name="n")
    graph = b.build(b.op("Concat", conv(a, 16, 8, "c1"), conv(c, 8, 8, "c2"), axis=1))
    check_llvm(graph, {"x": rand((1, 8, 9, 9))})


def test_split_profile_has_a_row_per_output():
    graph, feeds = split_graph((2, 6, 5), axis=1, split=(1, 2, 3))
    prof = cnncompiler.compile(graph, backend="llvm").profile(**feeds, repeats=1)
    assert [r.node for r in prof.rows] == ["n[0]", "n[1]", "n[2]"]
    assert all(r.kind == "Split" for r in prof.rows)


def test_lower_node_checks_the_output_number():
    graph, _ = split_graph((2, 6), axis=1, num_outputs=2)
    node = graph.nodes[0]
    assert lower_node(node, "second", output=1).name == "second"
    with pytest.raises(UnsupportedError, match="no output 2"):
        lower_node(node, "third", output=2)


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler (cc)")
def test_split_exported_library_gives_every_output(tmp_path):
    b = GraphBuilder("parts")
    x = b.input("x", (3, 10))
    parts = b.add_node("Split", [b.op("Relu", x)], {"axis": 1, "split": (3, 7)}, name="n")
    graph = b.build(parts)
    cm = cnncompiler.compile(graph, backend="llvm")
    files = cm.export(str(tmp_path / "parts.so"))
    lib = ctypes.CDLL(files["library"])
    assert lib.parts_init(files["weights"].encode()) == 0
    xv = rand((3, 10))
    outs = [np.zeros((3, 3), np.float32), np.zeros((3, 7), np.float32)]
    inputs = (ctypes.c_void_p * 1)(xv.ctypes.data)
    outputs = (ctypes.c_void_p * 2)(*[o.ctypes.data for o in outs])
    assert lib.parts_run(inputs, outputs) == 0
    lib.parts_free()
    for got, want in zip(outs, cm(x=xv)):
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------------- MatMul
@pytest.mark.parametrize("a_shape,b_shape", [
    ((3, 4), (4, 5)),
    ((2, 3, 4), (4, 5)),            # batched A, shared B
    ((3, 4), (2, 2, 4, 5)),         # shared A, batched B
    ((2, 3, 4), (2, 4, 5)),
    ((2, 1, 3, 4), (5, 4, 6)),      # both batch axes broadcast
    ((1, 3, 4), (2, 4, 5)),
    ((4,), (2, 4, 5)),              # 1-D A: a row, no M axis
    ((2, 3, 4), (4,)),              # 1-D B: a column, no N axis
    ((4,), (4, 3)),
    ((7,), (7,)),                   # a dot product: a scalar
])
def test_matmul_matches_reference(a_shape, b_shape):
    b = GraphBuilder("matmul")
    a, c = b.input("a", a_shape), b.input("b", b_shape)
    node_out = b.op("MatMul", a, c, name="n")
    graph = b.build(node_out)
    assert unsupported_reason(graph.nodes[0]) is None
    check_llvm(graph, {"a": rand(a_shape), "b": rand(b_shape)})


def test_matmul_float64():
    b = GraphBuilder("matmul64")
    a, c = b.input("a", (2, 3, 5), "float64"), b.input("b", (5, 2), "float64")
    graph = b.build(b.op("MatMul", a, c))
    check_llvm(graph, {"a": rand((2, 3, 5), "float64"), "b": rand((5, 2), "float64")})


@pytest.mark.parametrize("threads", [1, 2])
def test_batched_matmul_with_weight_and_fused_epilogue(threads):
    """[batch, tokens, features] x a stored weight, + bias, Relu: fused into one kernel."""
    b = GraphBuilder("mlp")
    x = b.input("x", (2, 6, 16))
    w = b.param("w", rand((16, 8)) / np.float32(4), trainable=False)
    y = b.op("Relu", b.op("Add", b.op("MatMul", x, w), b.param("bias", rand((8,)))))
    graph = b.build(y)
    cm = cnncompiler.compile(graph, backend="llvm", threads=threads)
    assert [n.op for n in cm.graph.nodes] == ["Fused"]
    check_llvm(graph, {"x": rand((2, 6, 16))}, threads=threads)
