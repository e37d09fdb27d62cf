"""Memory planning: liveness, views, in-place reuse, best-fit arena, and the plan checker."""

import dataclasses
import json

import numpy as np
import pytest
from click.testing import CliRunner

from cnncompiler import zoo
from cnncompiler.cli import main
from cnncompiler.errors import GraphError
from cnncompiler.ir.builder import GraphBuilder
from cnncompiler.passes import PassManager
from cnncompiler.passes.memory import check_plan, plan_memory

KB4 = 4096  # bytes of a float32 [1, 16, 8, 8] tensor


def zoo_graph(name, fused, batch=None):
    net = zoo.get(name)
    shape = net.input_shape if batch is None else (batch, *net.input_shape[1:])
    g = net.to_graph(shape, with_weights=False)
    return PassManager(2).run(g) if fused else g


def planned(graph, **kw):
    plan = plan_memory(graph, **kw)
    check_plan(graph, plan)
    return plan


# ------------------------------------------------------------------------ the zoo
@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
@pytest.mark.parametrize("name", zoo.names())
def test_checker_accepts_plans_for_every_zoo_model(name, fused):
    g = zoo_graph(name, fused)
    for kw in ({}, {"inplace": False}, {"order": "schedule"}, {"batch": 2, "alignment": 256}):
        plan = planned(g, **kw)
        assert plan.live_bytes <= plan.arena_bytes <= plan.naive_bytes
        assert all(o % plan.alignment == 0 for o in plan.offsets.values())


def test_vgg16_peak_is_the_two_largest_activations():
    g = zoo.get("vgg16").to_graph((1, 3, 224, 224), with_weights=False)
    fused = PassManager(2).run(g)
    plan = planned(fused)
    two = 2 * 224 * 224 * 64 * 4
    assert plan.arena_bytes == plan.live_bytes == two <= 26e6
    assert plan.weights_bytes == 138_357_544 * 4
    assert "planned peak 25.7 MB in one arena vs 61.0 MB naive (2.4x less)" in str(plan)
    assert planned(g).arena_bytes == two       # unfused: every ReLU runs in place
    assert planned(zoo_graph("vgg16", True), batch=4).arena_bytes == 4 * two  # symbolic N


@pytest.mark.parametrize("name", ["vgg16", "resnet50"])
def test_decreasing_size_is_no_worse_than_schedule_order(name):
    for fused in (False, True):
        g = zoo_graph(name, fused)
        by_size = planned(g)
        assert by_size.arena_bytes <= planned(g, order="schedule").arena_bytes
        assert by_size.arena_bytes == by_size.live_bytes  # the lower bound is reached


# ------------------------------------------------------------------ hand-built graphs
def diamond():
    """x -> a=Relu -> b=Sigmoid -> c=Tanh -> d=Add(a, c): a skips over b and c."""
    gb = GraphBuilder("diamond")
    x = gb.input("x", (1, 16, 8, 8))
    a = gb.op("Relu", x, name="a")
    b = gb.op("Sigmoid", a, name="b")
    c = gb.op("Tanh", b, name="c")
    d = gb.op("Add", a, c, name="d")
    return gb.build(d)


def test_diamond_peak_by_hand():
    g = diamond()
    plan = planned(g)
    # a cannot overwrite x (the caller's input); c overwrites b (b dies at c); d overwrites
    # a (both a and c die at d, a is the first). At most two buffers are live at a step.
    assert plan.aliases == {"c": "b", "d": "a"}
    assert plan.inplace == ["c", "d"]
    assert plan.lifetimes == {"x": (0, 0), "a": (0, 3), "b": (1, 2), "c": (2, 3),
                              "d": (3, 4)}
    assert plan.buffer_lifetime("d") == (0, 4)
    assert plan.arena_bytes == plan.live_bytes == 2 * KB4
    assert plan.naive_bytes == 5 * KB4 and plan.weights_bytes == 0
    assert plan.offsets["c"] == plan.offsets["b"] != plan.offsets["a"] == plan.offsets["d"]
    # without in-place a, b, c are all live at step 2 (and a, c, d at step 3)
    plain = planned(g, inplace=False)
    assert plain.aliases == {} and plain.arena_bytes == plain.live_bytes == 3 * KB4


def residual():
    """x -> h=Conv1x1 -> r=Relu -> y=Conv3x3 -> s=Add(y, r)."""
    gb = GraphBuilder("residual")
    x = gb.input("x", ("N", 8, 8, 8))
    w1 = gb.param("w1", shape=(16, 8, 1, 1))
    w2 = gb.param("w2", shape=(16, 16, 3, 3))
    h = gb.op("Conv", x, w1, name="h")
    r = gb.op("Relu", h, name="r")
    y = gb.op("Conv", r, w2, name="y", pads=(1, 1, 1, 1))
    s = gb.op("Add", y, r, name="s")
    return gb.build(s)


def test_residual_peak_by_hand():
    g = residual()
    plan = planned(g)
    # steps: 0 x(2 KB)+h, 1 r in place of h, 2 r+y, 3 s in place of y (r dies too)
    assert plan.aliases == {"r": "h", "s": "y"}
    assert plan.arena_bytes == 2 * KB4
    assert plan.weights_bytes == (16 * 8 + 16 * 16 * 9) * 4
    assert planned(g, inplace=False).arena_bytes == 3 * KB4  # y, r and s at step 3
    assert planned(g, batch=3).arena_bytes == 3 * 2 * KB4


def test_relu_after_conv_runs_in_place_in_an_unfused_graph():
    g = zoo_graph("resnet18", fused=False)
    relu = g.nodes[2]
    assert [n.op for n in g.nodes[:3]] == ["Conv", "BatchNormalization", "Relu"]
    plan = planned(g)
    bn = relu.inputs[0].name
    assert plan.aliases[relu.outputs[0].name] == bn
    assert plan.aliases[bn] == g.nodes[0].outputs[0].name  # BN over the conv output too
    assert plan.owner(relu.outputs[0].name) == g.nodes[0].outputs[0].name


def test_no_in_place_when_the_input_is_read_later():
    gb = GraphBuilder("reuse")
    x = gb.input("x", (1, 8, 8, 8))
    h = gb.op("Conv", x, gb.param("w", shape=(16, 8, 1, 1)), name="h")
    r = gb.op("Relu", h, name="r")
    s = gb.op("Add", r, h, name="s")  # h is read again after the ReLU
    g = gb.build(s)
    plan = planned(g)
    assert "r" not in plan.aliases and plan.offsets["r"] != plan.offsets["h"]
    assert plan.aliases == {"s": "r"}
    assert plan.arena_bytes == 2 * KB4  # x dies at step 0, when r is not yet written


def test_graph_outputs_and_inputs_are_never_overwritten():
    gb = GraphBuilder("outs")
    x = gb.input("x", (1, 16, 8, 8))
    a = gb.op("Relu", x, name="a")
    b = gb.op("Sigmoid", a, name="b")
    g = gb.build([a, b])  # a is an output: Sigmoid may not write over it
    plan = planned(g)
    assert plan.aliases == {}
    assert plan.lifetimes["a"] == (0, 2) and plan.offsets["a"] != plan.offsets["b"]
    assert plan.arena_bytes == 2 * KB4


def test_views_alias_their_input():
    gb = GraphBuilder("views")
    x = gb.input("x", (1, 16, 8, 8))
    h = gb.op("Relu", x, name="h")
    f = gb.op("Flatten", h, name="f")
    i = gb.op("Identity", f, name="i")
    y = gb.op("Gemm", i, gb.param("w", shape=(10, 1024)), name="y", transB=1)
    z = gb.op("Sigmoid", y, name="z")
    g = gb.build([z, f])
    plan = planned(g)
    assert plan.aliases == {"f": "h", "i": "f", "z": "y"} and plan.inplace == ["z"]
    assert plan.owner("i") == "h"
    assert plan.offsets["f"] == plan.offsets["i"] == plan.offsets["h"]
    assert plan.buffer_lifetime("h") == (0, len(g.nodes))  # f is a graph output
    assert plan.naive_bytes == 2 * KB4 + 2 * 40  # views allocate nothing


def test_view_keeps_its_source_alive():
    gb = GraphBuilder("view_life")
    x = gb.input("x", (1, 16, 8, 8))
    h = gb.op("Relu", x, name="h")
    f = gb.op("Flatten", h, name="f")
    t = gb.op("Tanh", x, name="t")          # written while the view f is still live
    y = gb.op("Add", gb.op("Flatten", t, name="ft"), f, name="y")
    g = gb.build(y)
    plan = planned(g)
    assert plan.buffer_lifetime("h") == (0, 4) and plan.aliases["y"] == "ft"
    assert plan.offsets["t"] != plan.offsets["h"]
    assert plan.arena_bytes == 3 * KB4  # x, h (through f) and t at step 2


# ----------------------------------------------------------------- the checker catches
def test_checker_catches_two_live_values_at_one_offset():
    g = zoo_graph("vgg16", fused=True)
    plan = planned(g)
    a, b = g.nodes[0].outputs[0].name, g.nodes[1].outputs[0].name  # conv1_1, conv1_2
    bad = dataclasses.replace(plan, offsets={**plan.offsets, b: plan.offsets[a]})
    with pytest.raises(GraphError, match=f"{b}.*{a}|{a}.*{b}"):
        check_plan(g, bad)


def test_checker_catches_bad_aliases_sizes_and_lifetimes():
    g = residual()
    plan = planned(g)
    # y (a conv) cannot write over its input r
    with pytest.raises(GraphError, match="cannot alias"):
        check_plan(g, dataclasses.replace(
            plan, aliases={**plan.aliases, "y": "r"}, offsets={**plan.offsets,
                                                              "y": plan.offsets["r"]}))
    # an in-place write over a value that is still read later
    g2 = diamond()
    p2 = planned(g2)
    with pytest.raises(GraphError, match="still live|overlap"):
        check_plan(g2, dataclasses.replace(
            p2, aliases={**p2.aliases, "b": "a"}, offsets={**p2.offsets, "b": p2.offsets["a"],
                                                          "c": p2.offsets["a"]}))
    with pytest.raises(GraphError, match="over the caller's input 'x'"):
        check_plan(g2, dataclasses.replace(
            p2, aliases={**p2.aliases, "a": "x"}, offsets={**p2.offsets, "a": p2.offsets["x"],
                                                          "d": p2.offsets["x"]}))
    with pytest.raises(GraphError, match="needs 4096 bytes"):
        check_plan(g, dataclasses.replace(plan, sizes={**plan.sizes, "s": 16}))
    with pytest.raises(GraphError, match="live over steps"):
        check_plan(g, dataclasses.replace(plan, lifetimes={**plan.lifetimes, "r": (1, 2)}))
    with pytest.raises(GraphError, match="misaligned|outside"):
        check_plan(g, dataclasses.replace(plan, arena_bytes=plan.arena_bytes - 1))
    with pytest.raises(GraphError, match="has no buffer"):
        check_plan(g, dataclasses.replace(plan, offsets={k: v for k, v in plan.offsets.items()
                                                         if k != "h"}))


def test_plan_is_consistent_with_a_simulated_run():
    """Run the residual graph with every activation in one byte arena laid out by the
    plan: the result equals a run with a fresh array per value."""
    g = residual()
    plan = planned(g)
    rng = np.random.default_rng(0)
    weights = {v.name: rng.standard_normal(v.shape).astype(np.float32) for v in g.params}
    x = rng.standard_normal((1, 8, 8, 8))
    arena = np.zeros(plan.arena_bytes // 8 * 8 + 8, dtype=np.uint8)

    def buf(v):
        start = plan.offsets[v.name]
        return arena[start:start + plan.sizes[v.name]].view(np.float32).reshape(
            v.type.concrete(default=1))

    buf(g.inputs[0])[...] = x
    fresh = {"x": x.astype(np.float32)}
    for node in g.nodes:
        read = [weights[v.name] if v.is_stored else buf(v) for v in node.inputs]
        ref = [weights[v.name] if v.is_stored else fresh[v.name] for v in node.inputs]
        buf(node.outputs[0])[...] = node.opdef.reference(read, node.attrs)
        fresh[node.outputs[0].name] = np.float32(node.opdef.reference(ref, node.attrs))
    np.testing.assert_array_equal(buf(g.outputs[0]), fresh[g.outputs[0].name])


# ------------------------------------------------------------------------------ cli
def test_cli_summary_plan():
    r = CliRunner().invoke(main, ["summary", "vgg16", "--plan"])
    assert r.exit_code == 0, r.output
    assert "planned peak 25.7 MB in one arena vs 61.0 MB naive" in r.output
    assert "weights 553.4 MB" in r.output
    r = CliRunner().invoke(main, ["summary", "resnet18", "--plan", "--json", "--batch", "2"])
    assert r.exit_code == 0, r.output
    mp = json.loads(r.output)["memory_plan"]
    assert mp["batch"] == 2 and mp["live_bytes"] <= mp["arena_bytes"] < mp["naive_bytes"]
    r = CliRunner().invoke(main, ["summary", "lenet5"])
    assert "planned peak" not in r.output
