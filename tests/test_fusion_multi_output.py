"""Elementwise chains that run through a graph output: one Fused node with several outputs,
one kernel on the CPU schedules, written in place where they are state (an optimiser's
update of a weight and its slot), and still right where a backend needs a kernel per
output."""

import numpy as np
import pytest
from helpers import rel_err, require_backend

import cnncompiler
from cnncompiler.backends.reference import evaluate
from cnncompiler.ir.builder import GraphBuilder
from cnncompiler.passes.fusion import fuse


def momentum_graph(shape=(37, 5)):
    """v' = 0.9 v + g; w' = w - lr v' (the graph outputs are w', v')."""
    b = GraphBuilder("momentum")
    w, v, g = (b.input(n, shape) for n in ("w", "v", "g"))
    lr = b.input("lr", (1,))
    v_new = b.op("Add", b.op("Mul", v, b.const(np.float32(0.9))), g, name="v.new")
    w_new = b.op("Sub", w, b.op("Mul", lr, v_new), name="w.new")
    return b.build([w_new, v_new])


def feeds(shape=(37, 5)):
    rng = np.random.default_rng(0)
    out = {n: rng.standard_normal(shape).astype(np.float32) for n in ("w", "v", "g")}
    out["lr"] = np.array([0.1], np.float32)
    return out


def test_the_chain_fuses_through_the_exported_value():
    fused, changes = fuse(momentum_graph())
    assert [n.op for n in fused.nodes] == ["Fused"]
    node = fused.nodes[0]
    assert [v.name for v in node.outputs] == ["w.new", "v.new"]
    assert [v.name for v in fused.outputs] == ["w.new", "v.new"]
    for got, want in zip(evaluate(fused, feeds()), evaluate(momentum_graph(), feeds())):
        np.testing.assert_array_equal(got, want)
    assert "Mul+Add+Mul+Sub" in changes[0]


def test_a_conv_result_that_is_an_output_still_ends_its_group():
    b = GraphBuilder("c")
    y = b.op("Conv", b.input("x", (1, 2, 5, 5)), b.const(np.ones((3, 2, 3, 3), np.float32)))
    g = b.build([b.op("Relu", y), y])
    fused, _ = fuse(g)
    assert [n.op for n in fused.nodes] == ["Conv", "Relu"]


def test_one_kernel_writes_both_outputs_on_llvm():
    require_backend("llvm")
    cm = cnncompiler.compile(momentum_graph(), backend="llvm")
    exe = list(cm.executable.specialised.values())[0]
    assert len(exe.kernel_nodes) == 1
    for got, want in zip(cm(**feeds()), evaluate(momentum_graph(), feeds())):
        assert rel_err(got, want) < 1e-6


@pytest.mark.parametrize("backend,options", [("llvm", {}), ("opencl", {}),
                                             ("opencl", {"schedule": "gpu"})])
def test_the_update_runs_in_place_as_state(backend, options):
    """Both states are written over their inputs by the one kernel on the CPU schedules;
    the gpu schedule's kernel per output falls back to copies. Three calls agree with
    the update done in numpy."""
    require_backend(backend)
    cm = cnncompiler.compile(momentum_graph(), backend=backend,
                             state={"w": "w.new", "v": "v.new"}, **options)
    data = feeds()
    cm.set_state("w", data["w"])
    cm.set_state("v", data["v"])
    w, v = data["w"].astype(np.float64), data["v"].astype(np.float64)
    for _ in range(3):
        cm(g=data["g"], lr=data["lr"])
        v = 0.9 * v + data["g"]
        w = w - 0.1 * v
    assert rel_err(cm.get_state("w"), w) < 1e-6 and rel_err(cm.get_state("v"), v) < 1e-6
    if backend == "llvm":
        exe = list(cm.executable.specialised.values())[0]
        assert set(exe.plan.state_in_place) == {"w", "v"} and len(exe.kernel_nodes) == 1


@pytest.mark.parametrize("backend,options", [("llvm", {}), ("opencl", {"schedule": "gpu"})])
def test_an_exported_value_read_from_the_state_input(backend, options):
    """a = 2w is an output and w' = a + w the next value of w: a kernel per output would
    read w after w' overwrote it, so only the single kernel may write in place."""
    require_backend(backend)
    b = GraphBuilder("g")
    w = b.input("w", (4, 9))
    a = b.op("Mul", w, b.const(np.float32(2.0)), name="a")
    new = b.op("Add", a, w, name="w.new")
    cm = cnncompiler.compile(b.build([new, a]), backend=backend, state={"w": "w.new"},
                             **options)
    w0 = np.random.default_rng(1).standard_normal((4, 9)).astype(np.float32)
    cm.set_state("w", w0)
    np.testing.assert_allclose(cm(), 2 * w0, rtol=1e-6)
    np.testing.assert_allclose(cm(), 6 * w0, rtol=1e-6)
    np.testing.assert_allclose(cm.get_state("w"), 9 * w0, rtol=1e-6)


@pytest.mark.parametrize("opt", ["SGD", "Nesterov", "RMSProp", "Adagrad", "Adam"])
def test_each_optimiser_update_is_one_fused_node(opt):
    """Every slot and the weight come out of one group (Adam: the second moment's chain
    feeds the weight's and joins it), with the same values as unfused."""
    from cnncompiler import optim

    make = {"SGD": lambda: optim.SGD(lr=0.1, momentum=0.9),
            "Nesterov": lambda: optim.SGD(lr=0.1, momentum=0.9, nesterov=True),
            "RMSProp": lambda: optim.RMSProp(lr=0.01), "Adagrad": lambda: optim.Adagrad(lr=0.1),
            "Adam": lambda: optim.Adam(lr=0.01)}[opt]()
    b = GraphBuilder("update")
    w, g = b.input("w", (6, 7)), b.input("g", (6, 7))
    slots = {s: b.input(s, (6, 7)) for s in make.slot_names()}
    hyper = {h: b.input(f"hyper.{h}", (1,)) for h in make.hyper(1)}
    new_w, new_s = make.update(b, w, g, slots, hyper)
    graph = b.build([new_w, *(new_s[s] for s in make.slot_names())])
    fused, _ = fuse(graph)
    assert [n.op for n in fused.nodes] == ["Fused"]
    assert len(fused.nodes[0].outputs) == 1 + len(make.slot_names())
    rng = np.random.default_rng(2)
    data = {v.name: (np.abs(rng.standard_normal(v.type.shape)) + 0.1).astype(np.float32)
            for v in graph.inputs}
    for got, want in zip(evaluate(fused, data), evaluate(graph, data)):
        np.testing.assert_allclose(got, want, rtol=1e-6)
