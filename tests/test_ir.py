"""Graph IR: builder typing, verify() invariants, text dump, networkx and DOT views."""

import numpy as np
import pytest

from cnncompiler.errors import GraphError, UnsupportedError
from cnncompiler.ir import DType, Graph, GraphBuilder, Node, TensorType, Value, ValueKind


def small_graph():
    b = GraphBuilder("small")
    x = b.input("x", ("N", 3, 8, 8))
    w = b.param("w", np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32))
    y = b.op("Conv", x, w, pads=(1, 1, 1, 1), name="conv1")
    r = b.op("Relu", y, name="relu1")
    s = b.op("Add", r, y, name="add1")
    return b.build(s)


def test_types():
    t = TensorType(("N", 3, 224, 224))
    assert not t.is_static and t.symbols == ("N",) and t.rank == 4
    assert t.concrete({"N": 2}) == (2, 3, 224, 224)
    assert t.numel(default=1) == 3 * 224 * 224
    assert t.nbytes() == 4 * 3 * 224 * 224
    assert TensorType((2,), "int64").dtype is DType.int64
    assert str(t) == "float32[N, 3, 224, 224]"
    with pytest.raises(ValueError):
        TensorType((-1, 2))
    with pytest.raises(TypeError):
        DType.of("complex64")


def test_builder_types_every_value():
    g = small_graph()
    assert [n.name for n in g.nodes] == ["conv1", "relu1", "add1"]
    assert g.values["conv1"].type == TensorType(("N", 4, 8, 8))
    assert g.params[0].name == "w" and g.num_params() == 4 * 3 * 3 * 3
    assert g.consumers()["conv1"] == [g.node("relu1"), g.node("add1")]


def test_dump_is_readable():
    text = small_graph().dump()
    assert "%x: float32[N, 3, 8, 8]" in text
    assert "%conv1: float32[N, 4, 8, 8] = Conv(%x, %w) {strides=[1, 1], pads=[1, 1, 1, 1]" in text
    assert "return %add1" in text


def test_networkx_and_dot(tmp_path):
    g = small_graph()
    dg = g.to_networkx()
    assert dg.has_edge("conv1", "relu1") and dg.has_edge("input:x", "conv1")
    import networkx as nx

    assert nx.is_directed_acyclic_graph(dg)
    path = tmp_path / "g.dot"
    text = g.to_dot(str(path))
    assert path.read_text() == text and '"conv1" -> "relu1"' in text


def test_verify_catches_wrong_order():
    g = small_graph()
    bad = Graph(g.name, g.inputs, g.outputs, list(reversed(g.nodes)), g.data)
    with pytest.raises(GraphError, match="before it is defined"):
        bad.verify()


def test_verify_catches_wrong_type():
    g = small_graph()
    g.nodes[1].outputs[0].type = TensorType(("N", 4, 9, 9))
    with pytest.raises(GraphError, match="infers"):
        g.verify()


def test_verify_catches_bad_data_and_unknown_ops():
    g = small_graph()
    g.data["w"] = np.zeros((4, 3, 3, 3), np.float64)
    with pytest.raises(GraphError, match="typed"):
        g.verify()
    x = Value("x", TensorType((1,)), ValueKind.INPUT)
    node = Node("NoSuchOp", [x], [], {}, "n")
    node.outputs.append(Value("y", TensorType((1,)), producer=node))
    with pytest.raises(UnsupportedError, match="unknown op 'NoSuchOp'"):
        Graph("g", [x], node.outputs, [node], {}).verify()


def test_duplicate_names_rejected():
    b = GraphBuilder()
    b.input("x", (1,))
    with pytest.raises(GraphError, match="already used"):
        b.input("x", (1,))
