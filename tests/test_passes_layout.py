"""Layouts: the LayoutTransform op, the `layout` attribute of Conv/pools/BatchNorm, and the
assign_layouts pass (conversions inserted only where a consumer needs another layout)."""

import numpy as np
import pytest
from helpers import rel_err, run_ref

from cnncompiler import zoo
from cnncompiler.backends.reference import evaluate
from cnncompiler.errors import AttributeValueError, GraphError, ShapeError, UnsupportedError
from cnncompiler.ir import GraphBuilder
from cnncompiler.ir.layout import convert, parse_layout
from cnncompiler.ops.registry import get_op, infer_node, node_cost
from cnncompiler.passes import PassManager
from cnncompiler.passes.layout import (
    assign_layouts,
    cancel_layout_transforms,
    count_transforms,
    layout_pass,
    strip_layouts,
)

RNG = np.random.default_rng(7)
LAYOUTS = ("NHWC", "NCHW8c", "NCHW4c")


def rand(*shape, dtype=np.float64):
    return RNG.standard_normal(shape).astype(dtype)


def same_outputs(a, b, feeds, tol=1e-12):
    for x, y in zip(evaluate(a, feeds), evaluate(b, feeds), strict=True):
        assert x.shape == y.shape
        assert rel_err(y, x) < tol


def transforms(g):
    return [n for n in g.nodes if n.op == "LayoutTransform"]


# ------------------------------------------------------------------------- layout helpers
@pytest.mark.parametrize("layout, physical", [("NCHW", (2, 16, 5, 7)), ("NHWC", (2, 5, 7, 16)),
                                              ("NCHW8c", (2, 2, 5, 7, 8)),
                                              ("NCHW16c", (2, 1, 5, 7, 16))])
def test_layout_shapes_and_arrays(layout, physical):
    lay = parse_layout(layout)
    assert lay.physical_shape((2, 16, 5, 7)) == physical
    assert lay.logical_shape(physical) == (2, 16, 5, 7)
    x = rand(2, 16, 5, 7)
    y = lay.to_physical(x)
    assert y.shape == physical and np.array_equal(lay.to_logical(y), x)
    # channel c of NCHW8c lives at block c // 8, lane c % 8
    if lay.block == 8:
        assert y[1, 1, 3, 4, 2] == x[1, 8 + 2, 3, 4]


def test_layout_errors():
    with pytest.raises(UnsupportedError, match="unknown layout 'NCWH'"):
        parse_layout("NCWH")
    with pytest.raises(ValueError, match="multiple of 8"):
        parse_layout("NCHW8c").physical_shape((1, 3, 4, 4))
    assert parse_layout("NHWC").physical_shape(("N", 3, 4, 5)) == ("N", 4, 5, 3)
    with pytest.raises(AttributeValueError, match="unknown layout"):
        infer_node("Conv", [None, None], {"layout": "CHWN"}, "c")


@pytest.mark.parametrize("dst", LAYOUTS)
def test_layout_transform_round_trip(dst):
    b = GraphBuilder()
    x = b.input("x", ("N", 16, 6, 5), "float64")
    there = b.op("LayoutTransform", x, src="NCHW", dst=dst)
    back = b.op("LayoutTransform", there, src=dst, dst="NCHW")
    g = b.build([there, back])
    assert there.type.shape == parse_layout(dst).physical_shape(("N", 16, 6, 5))
    assert back.type == x.type
    xv = rand(3, 16, 6, 5)
    phys, again = evaluate(g, {"x": xv})
    assert np.array_equal(again, xv)
    assert np.array_equal(phys, convert(xv, "NCHW", dst))
    assert node_cost(g.nodes[0]).flops == 0
    assert get_op("LayoutTransform").fusion.value == "injective"


def test_layout_transform_between_non_nchw_layouts_and_errors():
    xv = rand(2, 16, 3, 3)
    nhwc = convert(xv, "NCHW", "NHWC")
    (blocked,) = run_ref("LayoutTransform", [nhwc], src="NHWC", dst="NCHW8c")
    assert np.array_equal(blocked, convert(xv, "NCHW", "NCHW8c"))
    with pytest.raises(ShapeError, match="multiple of 8"):
        infer_node("LayoutTransform", [GraphBuilder().input("x", (1, 12, 4, 4)).type],
                   {"src": "NCHW", "dst": "NCHW8c"}, "t")
    with pytest.raises(ShapeError, match="rank 5"):
        infer_node("LayoutTransform", [GraphBuilder().input("x", (1, 16, 4, 4)).type],
                   {"src": "NCHW8c", "dst": "NCHW"}, "t")


# ------------------------------------------------------------- ops with a layout attribute
BN_PARAMS = [RNG.random(16) + 0.5, rand(16), rand(16), RNG.random(16) + 0.1]
CASES = [
    ("Conv", [rand(2, 16, 9, 9), rand(8, 16, 3, 3), rand(8)],
     dict(pads=(1, 1, 1, 1), strides=(2, 2), rounding="floor")),
    ("Conv", [rand(2, 16, 9, 9), rand(16, 4, 3, 3)], dict(group=4, dilations=(2, 2))),
    ("MaxPool", [rand(2, 16, 9, 9)], dict(kernel_shape=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1))),
    ("AveragePool", [rand(2, 16, 9, 9)], dict(kernel_shape=(2, 2), strides=(2, 2),
                                              rounding="ceil", count_include_pad=True)),
    ("GlobalAveragePool", [rand(2, 16, 9, 9)], {}),
    ("GlobalMaxPool", [rand(2, 16, 9, 9)], {}),
    ("BatchNormalization", [rand(2, 16, 9, 9), *BN_PARAMS], dict(epsilon=1e-3)),
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("op, inputs, attrs", CASES, ids=[c[0] for c in CASES])
def test_ops_in_other_layouts_match_nchw(op, inputs, attrs, layout):
    lay = parse_layout(layout)
    (ref,) = run_ref(op, inputs, **attrs)
    (out,) = run_ref(op, [lay.to_physical(inputs[0]), *inputs[1:]], layout=layout, **attrs)
    assert out.shape == lay.physical_shape(ref.shape)
    assert np.array_equal(lay.to_logical(out), ref)   # same arithmetic, exactly
    # inference and cost agree with the NCHW node's
    types = [None if a is None else GraphBuilder().param("p", a).type for a in inputs]
    (t_nchw,) = infer_node(op, types, attrs, "n")
    (t,) = infer_node(op, [types[0].with_shape(lay.physical_shape(types[0].shape)), *types[1:]],
                      dict(attrs, layout=layout), "n")
    assert t.shape == lay.physical_shape(t_nchw.shape)
    b = GraphBuilder()
    x = b.input("x", types[0].shape, "float64")
    phys = b.op("LayoutTransform", x, src="NCHW", dst=layout)
    rest = [b.param(f"w{i}", a) for i, a in enumerate(inputs[1:])]
    y0 = b.op(op, x, *rest, name="nchw", **attrs)
    y1 = b.op(op, phys, *rest, name="laid", **dict(attrs, layout=layout))
    g = b.build([y0, y1])
    assert node_cost(g.node("laid")).flops == node_cost(g.node("nchw")).flops


def test_layout_attribute_errors():
    x = GraphBuilder().input("x", (1, 16, 4, 4)).type
    w = GraphBuilder().input("w", (12, 16, 3, 3)).type
    with pytest.raises(ShapeError, match="rank 5"):
        infer_node("Conv", [x, w], {"layout": "NCHW8c"}, "c")
    with pytest.raises(ShapeError, match="output Y .* multiple of 8"):
        infer_node("Conv", [x.with_shape((1, 2, 4, 4, 8)), w], {"layout": "NCHW8c"}, "c")


def test_export_strips_layouts():
    from cnncompiler.frontends.onnx import to_onnx

    g = conv_chain()
    laid, _ = assign_layouts(g, blocked_for("Conv", "MaxPool"))
    plain = strip_layouts(laid)
    assert count_transforms(plain) == 0
    assert all(n.attrs.get("layout") is None for n in plain.nodes)
    assert [n.op for n in plain.nodes] == [n.op for n in g.nodes]
    same_outputs(g, plain, {"x": rand(2, 8, 10, 10)})
    assert strip_layouts(g) is g
    exported = to_onnx(laid)
    assert [n.op_type for n in exported.graph.node] == [n.op_type for n in to_onnx(g).graph.node]
    assert not any(a.name == "layout" for n in exported.graph.node for a in n.attribute)
    # an input that is channels-last already has no ONNX form
    b = GraphBuilder()
    x = b.input("x", (1, 4, 4, 8))
    with pytest.raises(UnsupportedError, match="LayoutTransform"):
        to_onnx(b.build(b.op("MaxPool", x, kernel_shape=(2, 2), layout="NHWC")))


def test_reading_a_value_in_the_wrong_layout_is_an_error():
    b = GraphBuilder()
    x = b.input("x", (1, 8, 4, 4))
    y = b.op("Relu", x, name="relu")
    # a [1, 8, 4, 4] NCHW value read as NHWC: a reinterpretation, not a layout
    g = b.build(b.op("MaxPool", y, kernel_shape=(2, 2), layout="NHWC", name="pool"))
    with pytest.raises(GraphError, match="reads 'relu' as NHWC, but 'relu' is NCHW"):
        assign_layouts(g, lambda node: None)
    b = GraphBuilder()
    x = b.input("x", (1, 8, 4, 4))
    p = b.op("MaxPool", x, kernel_shape=(2, 2), layout="NHWC", name="p1")
    q = b.op("MaxPool", x, kernel_shape=(2, 2), name="p2")
    with pytest.raises(GraphError, match="graph input 'x' is read as NHWC"):
        assign_layouts(b.build([p, q]), lambda node: None)


def test_a_channels_last_graph_input_stays_channels_last():
    b = GraphBuilder("nhwc_in")
    x = b.input("x", (2, 6, 6, 8), "float64")
    y = b.op("MaxPool", x, kernel_shape=(2, 2), strides=(2, 2), layout="NHWC", name="pool")
    y = b.op("LayoutTransform", y, src="NHWC", dst="NCHW", name="back")
    g = b.build(b.op("Relu", y, name="relu"))
    new, _ = assign_layouts(g, blocked_for("MaxPool"))
    assert new.inputs[0].type == g.inputs[0].type
    assert new.node("pool").attrs["layout"] == "NCHW8c"
    same_outputs(g, new, {"x": rand(2, 6, 6, 8)})


# --------------------------------------------------------------------------------- the pass
def conv_chain(cin=8):
    """Conv-Relu-Conv-MaxPool-Flatten-Gemm, float64."""
    b = GraphBuilder("chain")
    x = b.input("x", (2, cin, 10, 10), "float64")
    y = b.op("Conv", x, b.param("w1", rand(16, cin, 3, 3)), b.param("b1", rand(16)),
             pads=(1, 1, 1, 1), name="conv1")
    y = b.op("Relu", y, name="relu")
    y = b.op("Conv", y, b.param("w2", rand(16, 16, 3, 3)), pads=(1, 1, 1, 1), name="conv2")
    y = b.op("MaxPool", y, kernel_shape=(2, 2), strides=(2, 2), name="pool")
    y = b.op("Flatten", y, name="flatten")
    y = b.op("Gemm", y, b.param("wfc", rand(5, 16 * 25)), transB=True, name="fc")
    return b.build(y)


def blocked_for(*ops, layout="NCHW8c"):
    return lambda node: layout if node.op in ops else None


@pytest.mark.parametrize("layout", ("NCHW8c", "NHWC"))
def test_pass_on_conv_chain_converts_at_the_start_and_before_flatten(layout):
    g = conv_chain()
    new, changes = assign_layouts(g, blocked_for("Conv", "MaxPool", layout=layout))
    lts = transforms(new)
    assert len(lts) == 2
    assert [(n.attrs["src"], n.attrs["dst"]) for n in lts] == [("NCHW", layout), (layout, "NCHW")]
    assert lts[0].inputs[0].name == "x"
    assert new.consumers()[lts[1].outputs[0].name][0].op == "Flatten"
    assert {n.name: n.attrs.get("layout") for n in new.nodes if n.op in ("Conv", "MaxPool")} \
        == dict.fromkeys(("conv1", "conv2", "pool"), layout)
    relu = new.node("relu")
    assert relu.inputs[0].type.shape == parse_layout(layout).physical_shape((2, 16, 10, 10))
    assert changes[0] == "2 LayoutTransform node(s) (2 inserted)"
    assert [(v.name, v.type) for v in new.outputs] == [(v.name, v.type) for v in g.outputs]
    same_outputs(g, new, {"x": rand(2, 8, 10, 10)})


def test_pass_without_preferences_changes_nothing():
    g = conv_chain()
    new, changes = assign_layouts(g, lambda node: None)
    assert new is g and changes == []


def test_a_conv_whose_input_does_not_fit_reads_it_as_it_is():
    g = conv_chain(cin=3)   # the first conv reads 3 channels: not a multiple of 8
    new, changes = assign_layouts(g, blocked_for("Conv"))
    conv1 = new.node("conv1")
    assert (conv1.attrs["layout"], conv1.attrs["x_layout"]) == ("NCHW8c", "NCHW")
    assert conv1.inputs[0].name == "x" and conv1.outputs[0].type.rank == 5
    assert new.node("conv2").attrs["layout"] == "NCHW8c"
    # relu and conv2 follow conv1 (NCHW8c); only flatten converts back
    assert len(transforms(new)) == 1
    assert any("conv1 (Conv): reads NCHW, writes NCHW8c" in c for c in changes)
    same_outputs(g, new, {"x": rand(2, 3, 10, 10)})
    plain = strip_layouts(new)     # and back: no layout attributes left
    assert all(n.attrs.get("layout") is None and n.attrs.get("x_layout") is None
               for n in plain.nodes if n.op == "Conv") and not transforms(plain)
    same_outputs(g, plain, {"x": rand(2, 3, 10, 10)})


def test_a_layout_that_does_not_fit_falls_back_to_nchw():
    b = GraphBuilder("pool3")
    x = b.input("x", (1, 3, 6, 6), "float64")
    g = b.build(b.op("MaxPool", x, kernel_shape=(2, 2), name="pool"))
    new, changes = assign_layouts(g, blocked_for("MaxPool"))
    assert new.node("pool").attrs["layout"] is None and not transforms(new)
    assert any("pool (MaxPool): NCHW8c does not fit" in c for c in changes)


def test_broadcast_constants_are_relaid_and_residuals_need_no_conversion():
    b = GraphBuilder("res")
    x = b.input("x", (2, 16, 6, 6), "float64")
    c1 = b.op("Conv", x, b.param("w1", rand(16, 16, 3, 3)), pads=(1, 1, 1, 1), name="c1")
    y = b.op("Add", c1, b.const(rand(16, 1, 1), "bias"), name="bias_add")       # [C, 1, 1]
    y = b.op("Mul", y, b.const(rand(1, 16, 1, 1), "scale"), name="scale_mul")   # [1, C, 1, 1]
    y = b.op("PRelu", y, b.param("slope", rand(16, 1, 1)), name="prelu")
    y = b.op("Sub", y, b.const(np.float64(0.5), "half"), name="sub_scalar")     # scalar
    y = b.op("Add", y, b.const(rand(6), "row"), name="add_row")                  # [W]
    c2 = b.op("Conv", y, b.param("w2", rand(16, 16, 1, 1)), name="c2")
    y = b.op("Add", c2, c1, name="residual")
    y = b.op("Relu", y, name="relu")
    g = b.build(y)
    for layout in ("NCHW8c", "NHWC"):
        new, changes = assign_layouts(g, blocked_for("Conv", layout=layout))
        # in at the start, out at the graph output; nothing in between
        assert len(transforms(new)) == 2, new.dump()
        assert new.outputs[0].name == "relu" and new.outputs[0].producer.op == "LayoutTransform"
        lay = parse_layout(layout)
        assert new.node("bias_add").inputs[1].type.shape == lay.broadcast_shape((16, 1, 1))
        assert any(c.startswith("re-laid bias") for c in changes)
        same_outputs(g, new, {"x": rand(2, 16, 6, 6)})


def test_channel_concat_stays_blocked_and_other_axes_map():
    b = GraphBuilder("cat")
    x = b.input("x", (1, 8, 4, 4), "float64")
    a = b.op("Conv", x, b.param("wa", rand(8, 8, 1, 1)), name="a")
    c = b.op("Conv", x, b.param("wc", rand(16, 8, 1, 1)), name="c")
    y = b.op("Concat", a, c, axis=1, name="cat_c")
    z = b.op("Concat", y, y, axis=-1, name="cat_w")
    out = b.op("Conv", z, b.param("wo", rand(8, 24, 1, 1)), name="out")
    g = b.build(out)
    for layout, axes in (("NCHW8c", (1, 3)), ("NHWC", (3, 2))):
        new, _ = assign_layouts(g, blocked_for("Conv", layout=layout))
        assert (new.node("cat_c").attrs["axis"], new.node("cat_w").attrs["axis"]) == axes
        assert len(transforms(new)) == 2
        same_outputs(g, new, {"x": rand(1, 8, 4, 4)})
    # a channel count that does not fit the block: concat in NCHW, correct all the same
    b = GraphBuilder("odd")
    x = b.input("x", (1, 8, 4, 4), "float64")
    a = b.op("Conv", x, b.param("wa", rand(8, 8, 1, 1)), name="a")
    y = b.op("Concat", a, b.const(rand(1, 4, 4, 4), "extra"), axis=1, name="cat")
    g = b.build(b.op("Relu", y))
    new, _ = assign_layouts(g, blocked_for("Conv"))
    assert new.node("cat").attrs["axis"] == 1 and new.node("cat").outputs[0].type.rank == 4
    same_outputs(g, new, {"x": rand(1, 8, 4, 4)})


def test_graph_outputs_keep_names_layouts_and_shared_conversions():
    b = GraphBuilder("outs")
    x = b.input("x", ("N", 8, 4, 4), "float64")
    c = b.op("Conv", x, b.param("w", rand(8, 8, 3, 3)), pads=(1, 1, 1, 1), name="c")
    r = b.op("Relu", c, name="r")
    f = b.op("Flatten", r, name="f")
    s = b.op("Softmax", r, axis=1, name="s")
    g = b.build([c, r, f, s])
    new, _ = assign_layouts(g, blocked_for("Conv"))
    assert [v.name for v in new.outputs] == ["c", "r", "f", "s"]
    assert [v.type for v in new.outputs] == [v.type for v in g.outputs]
    # x in; c out; r out once, shared by the output, Flatten and Softmax
    assert len(transforms(new)) == 3
    same_outputs(g, new, {"x": rand(3, 8, 4, 4)})


def test_shape_only_graphs_and_existing_transforms():
    g = zoo.get("resnet18").to_graph((1, 3, 32, 32), with_weights=False)
    new, _ = assign_layouts(g, blocked_for("Conv"))
    assert count_transforms(new) == 1    # the stem conv writes NCHW8c; Flatten reads NCHW
    # running it again dissolves the conversions and places them anew: no chains
    again, changes = assign_layouts(new, blocked_for("Conv", layout="NHWC"))
    assert count_transforms(again) == 2
    assert sum(c.startswith("dissolved") for c in changes) == 1


def test_cancel_layout_transforms():
    b = GraphBuilder("chain")
    x = b.input("x", (1, 16, 2, 2), "float64")
    t1 = b.op("LayoutTransform", x, src="NCHW", dst="NHWC", name="t1")
    t2 = b.op("LayoutTransform", t1, src="NHWC", dst="NCHW8c", name="t2")
    t3 = b.op("LayoutTransform", t2, src="NCHW8c", dst="NCHW", name="t3")
    y = b.op("Relu", t3, name="relu")
    t4 = b.op("LayoutTransform", y, src="NCHW", dst="NCHW8c", name="t4")
    t5 = b.op("LayoutTransform", t4, src="NCHW8c", dst="NHWC", name="t5")
    g = b.build([y, t5])
    new, changes = cancel_layout_transforms(g)
    assert [(n.name, n.attrs["src"], n.attrs["dst"]) for n in transforms(new)] == [
        ("t5", "NCHW", "NHWC")]
    assert new.node("relu").inputs[0].name == "x"
    same_outputs(g, new, {"x": rand(1, 16, 2, 2)})
    assert cancel_layout_transforms(new) == (new, [])


def test_layout_pass_in_the_pass_manager():
    g = conv_chain()
    p = layout_pass(blocked_for("Conv", "MaxPool"))
    assert p.name == "assign_layouts" and p.min_level == 2
    assert "assign_layouts" not in [q.name for q in PassManager(2).pipeline]
    pm = PassManager(2, extra=[p], disable=["fuse"], verify=True)
    assert pm.pipeline[-1] is p
    new = pm.run(g)
    assert count_transforms(new) == 2
    assert "2 LayoutTransform node(s)" in pm.explain()
    same_outputs(g, new, {"x": rand(2, 8, 10, 10)})
    assert "assign_layouts" not in [q.name for q in PassManager(1, extra=[p]).pipeline]


def test_resnet18_blocked_convs():
    g = zoo.get("resnet18").to_graph((1, 3, 224, 224))
    new, changes = assign_layouts(g, blocked_for("Conv"))
    convs = [n for n in new.nodes if n.op == "Conv"]
    assert all(n.attrs["layout"] == "NCHW8c" for n in convs)
    # the 3-channel stem reads the image as it is
    assert [n.name for n in convs if n.attrs["x_layout"] == "NCHW"] == ["conv1"]
    layers = [n for n in new.nodes if n.name.startswith("layer")]
    assert all(n.attrs["layout"] == "NCHW8c" for n in layers if n.op == "BatchNormalization")
    assert all(n.outputs[0].type.rank == 5 for n in layers if n.op in ("Add", "Relu"))
    # only NCHW8c -> NCHW before Flatten: the stem's pool, residual Adds and BatchNorms
    # never force a conversion
    lts = transforms(new)
    assert len(lts) == 1, changes
    assert [n.inputs[0].producer.op for n in lts] == ["GlobalAveragePool"]
    x = RNG.standard_normal((1, 3, 224, 224))
    same_outputs(g, new, {g.inputs[0].name: x})


def test_an_output_that_is_a_relaid_input_keeps_its_name():
    b = GraphBuilder("io")
    x = b.input("x", (1, 8, 2, 2), "float64")
    t = b.op("LayoutTransform", x, src="NCHW", dst="NCHW8c", name="t")
    y = b.op("MaxPool", t, kernel_shape=(2, 2), layout="NCHW8c", name="pool")
    g = b.build([t, y])
    new, _ = assign_layouts(g, blocked_for("MaxPool", layout="NHWC"))
    assert [(v.name, v.type) for v in new.outputs] == [(v.name, v.type) for v in g.outputs]
    # x -> NHWC for the pool, the pool's result back to NCHW8c, x -> NCHW8c named "t"
    assert sorted(n.op for n in new.nodes) == ["LayoutTransform"] * 3 + ["MaxPool"]
    assert new.outputs[0].producer.op == "LayoutTransform"
    assert new.node("pool").attrs["layout"] == "NHWC"
    same_outputs(g, new, {"x": rand(1, 8, 2, 2)})


def test_fusion_after_layouts_keeps_groups_and_numerics():
    from cnncompiler.passes.fusion import fuse

    g = zoo.get("resnet18").to_graph((1, 3, 32, 32))
    pre = PassManager(2, disable=["fuse"]).run(g)
    laid, _ = assign_layouts(pre, blocked_for("Conv"))
    fused, changes = fuse(laid)
    plain, plain_changes = fuse(pre)
    assert len(changes) == len(plain_changes)   # the same groups, now in NCHW8c
    assert count_transforms(fused) == 1
    same_outputs(pre, fused, {g.inputs[0].name: RNG.standard_normal((1, 3, 32, 32))})
