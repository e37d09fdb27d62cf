"""Folding passes: batch norm, scale/shift and padding folded into conv/gemm/pool.

Graphs are float64 so that a fold is checked to 1e-10 relative against the unfolded graph
(float32 folded weights would round at ~1e-7)."""

import math

import numpy as np
import pytest

from cnncompiler import zoo
from cnncompiler.backends.reference import evaluate
from cnncompiler.ir import GraphBuilder
from cnncompiler.ir.graph import Graph, ValueKind
from cnncompiler.nn.layers import BatchNorm2d
from cnncompiler.passes import PassManager, all_passes
from cnncompiler.passes.folding import fold_batchnorm, fold_pad, fold_scale_shift

F64 = "float64"


def rng(seed=0):
    return np.random.default_rng(seed)


def rand(r, *shape):
    return r.standard_normal(shape)


def ops(g: Graph) -> list[str]:
    return [n.op for n in g.nodes]


def rel_err(a, b) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def assert_same(before: Graph, after: Graph, tol=1e-10, seed=1):
    r = rng(seed)
    feeds = {v.name: r.uniform(0.5, 1.5, tuple(d if isinstance(d, int) else 3
                                               for d in v.type.shape))
             * r.choice([-1.0, 1.0], tuple(d if isinstance(d, int) else 3
                                           for d in v.type.shape))
             for v in before.inputs}
    for x, y in zip(evaluate(before, feeds), evaluate(after, feeds), strict=True):
        assert x.shape == y.shape
        assert rel_err(y, x) < tol


def bn_params(b: GraphBuilder, r, k: int, prefix="bn"):
    """Random, non-trivial BN statistics (scale of both signs, var far from 1)."""
    return [b.param(f"{prefix}.scale", r.uniform(0.5, 2.0, k) * r.choice([-1.0, 1.0], k)),
            b.param(f"{prefix}.bias", rand(r, k)),
            b.param(f"{prefix}.mean", rand(r, k), trainable=False),
            b.param(f"{prefix}.var", r.uniform(0.1, 3.0, k), trainable=False)]


def conv_bn(bias=True, group=1, c=4, k=6, extra_use=False, bn_is_output_too=False, **conv):
    r = rng(2)
    b = GraphBuilder("conv_bn")
    x = b.input("x", (2, c, 7, 7), F64)
    w = b.param("w", rand(r, k, c // group, 3, 3))
    bb = b.param("b", rand(r, k)) if bias else None
    y = b.op("Conv", x, w, bb, name="conv1", group=group, **conv)
    z = b.op("BatchNormalization", y, *bn_params(b, r, k), name="bn1", epsilon=1e-3)
    out = [b.op("Relu", z, name="relu")]
    if extra_use:
        out.append(b.op("Sigmoid", y, name="other"))
    if bn_is_output_too:
        out.append(y)
    return b.build(out)


# ---------------------------------------------------------------------------- fold_batchnorm
@pytest.mark.parametrize("bias,group,conv", [
    (True, 1, {}),
    (False, 1, {"strides": (2, 2), "pads": (1, 0, 1, 2), "rounding": "floor"}),
    (True, 2, {"dilations": (2, 1), "pads": (1, 1, 1, 1)}),
    (False, 4, {}),            # depthwise-like: one input channel per group
])
def test_batchnorm_folds_into_conv(bias, group, conv):
    g = conv_bn(bias=bias, group=group, k=8 if group == 4 else 6, **conv)
    before = len(g.data)
    folded, changes = fold_batchnorm(g)
    assert ops(folded) == ["Conv", "Relu"]
    assert changes == ["folded bn1 (BatchNormalization) into conv1"]
    conv_node = folded.nodes[0]
    assert conv_node.name == "conv1" and len(conv_node.inputs) == 3   # a bias appears
    assert conv_node.outputs[0].name == "bn1"                          # the BN's value name
    w_new = conv_node.inputs[1]
    assert w_new.kind is ValueKind.PARAM and w_new.name not in g.values
    assert folded.data[w_new.name].dtype == np.float64
    assert_same(g, folded)
    # the input graph is untouched
    assert ops(g) == ["Conv", "BatchNormalization", "Relu"] and len(g.data) == before


def test_batchnorm_folding_keeps_const_kind_and_weight_dtype():
    r = rng(3)
    b = GraphBuilder()
    x = b.input("x", (1, 3, 5, 5))                       # float32 graph
    w = b.param("w", rand(r, 4, 3, 1, 1).astype(np.float32), trainable=False)
    bn = [b.param("s", r.uniform(0.5, 2, 4).astype(np.float32)),
          b.param("sh", rand(r, 4).astype(np.float32)),
          b.param("m", rand(r, 4).astype(np.float32), trainable=False),
          b.param("v", r.uniform(0.5, 2, 4).astype(np.float32), trainable=False)]
    y = b.op("BatchNormalization", b.op("Conv", x, w, name="c"), *bn, name="bn")
    g = b.build(y)
    folded, _ = fold_batchnorm(g)
    w_new, b_new = folded.nodes[0].inputs[1:]
    assert w_new.kind is ValueKind.CONST and b_new.kind is ValueKind.CONST
    assert folded.data[w_new.name].dtype == np.float32
    assert folded.outputs[0].name == "bn"
    assert_same(g, folded, tol=1e-6)                     # float32 rounding of W' only


def test_batchnorm_folds_into_conv_transpose_with_groups():
    r = rng(4)
    b = GraphBuilder()
    x = b.input("x", (1, 4, 5, 5), F64)
    w = b.param("w", rand(r, 4, 3, 3, 3))                 # [C, K/group, F, F], K = 6
    y = b.op("ConvTranspose", x, w, name="up", group=2, strides=(2, 2), pads=(1, 1, 0, 0))
    g = b.build(b.op("BatchNormalization", y, *bn_params(b, r, 6), name="bn"))
    folded, changes = fold_batchnorm(g)
    assert ops(folded) == ["ConvTranspose"] and changes == [
        "folded bn (BatchNormalization) into up"]
    assert_same(g, folded)


@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("c_shape", [None, (5,), (), (1, 5), (1,)])
def test_batchnorm_folds_into_gemm(trans_b, c_shape):
    r = rng(5)
    b = GraphBuilder()
    x = b.input("x", ("N", 3), F64)
    w = b.param("w", rand(r, *((5, 3) if trans_b else (3, 5))))
    c = None if c_shape is None else b.param("c", np.asarray(rand(r, *c_shape)))
    y = b.op("Gemm", x, w, c, name="fc", alpha=0.7, beta=-1.3, transB=trans_b)
    g = b.build(b.op("BatchNormalization", y, *bn_params(b, r, 5), name="bn"))
    folded, changes = fold_batchnorm(g)
    assert ops(folded) == ["Gemm"] and changes == ["folded bn (BatchNormalization) into fc"]
    assert folded.nodes[0].attrs["alpha"] == 0.7
    assert_same(g, folded)


def test_batchnorm_not_folded_into_gemm_with_full_matrix_c():
    r = rng(6)
    b = GraphBuilder()
    x = b.input("x", (4, 3), F64)
    y = b.op("Gemm", x, b.param("w", rand(r, 3, 5)), b.param("c", rand(r, 4, 5)), name="fc")
    g = b.build(b.op("BatchNormalization", y, *bn_params(b, r, 5), name="bn"))
    assert fold_batchnorm(g) == (g, [])


def test_batchnorm_not_folded_when_conv_output_is_shared_or_a_graph_output():
    for g in (conv_bn(extra_use=True), conv_bn(bn_is_output_too=True)):
        folded, changes = fold_batchnorm(g)
        assert folded is g and changes == []


def test_batchnorm_not_folded_when_params_are_computed():
    r = rng(7)
    b = GraphBuilder()
    x = b.input("x", (1, 3, 5, 5), F64)
    scale = b.input("scale", (4,), F64)                   # fed at run time
    y = b.op("Conv", x, b.param("w", rand(r, 4, 3, 3, 3)), name="c")
    _, *rest = bn_params(b, r, 4)
    g = b.build(b.op("BatchNormalization", y, scale, *rest, name="bn"))
    assert fold_batchnorm(g) == (g, [])
    b = GraphBuilder()                                    # a weight computed by a node
    x = b.input("x", (1, 3, 5, 5), F64)
    w = b.op("Abs", b.input("w_in", (4, 3, 3, 3), F64), name="abs")
    g = b.build(b.op("BatchNormalization", b.op("Conv", x, w, name="c"), *bn_params(b, r, 4),
                     name="bn"))
    assert fold_batchnorm(g) == (g, [])


def test_batchnorm_folding_with_a_shared_weight_and_a_taken_name():
    r = rng(9)
    b = GraphBuilder()
    x = b.input("x", (1, 3, 6, 6), F64)
    w = b.param("w", rand(r, 4, 3, 3, 3))
    taken = b.param("w_folded", rand(r, 1, 4, 1, 1))     # the name a fold would pick first
    y1 = b.op("BatchNormalization", b.op("Conv", x, w, name="c1"), *bn_params(b, r, 4, "bn1"),
              name="bn1")
    y2 = b.op("Conv", x, w, name="c2")                    # same weight, no BN
    g = b.build(b.op("Add", b.op("Mul", y2, taken, name="m"), y1, name="sum"))
    folded, changes = fold_batchnorm(g)
    assert changes == ["folded bn1 (BatchNormalization) into c1"]
    assert folded.node("c2").inputs[1].name == "w"
    assert folded.node("c1").inputs[1].name not in ("w", "w_folded")
    assert_same(g, folded)


def test_batchnorm_chain_folds_completely():
    r = rng(8)
    b = GraphBuilder()
    x = b.input("x", (1, 3, 6, 6), F64)
    y = b.op("Conv", x, b.param("w", rand(r, 4, 3, 3, 3)), name="c")
    y = b.op("BatchNormalization", y, *bn_params(b, r, 4, "bn1"), name="bn1")
    y = b.op("BatchNormalization", y, *bn_params(b, r, 4, "bn2"), name="bn2")
    g = b.build(y)
    folded, changes = fold_batchnorm(g)
    assert ops(folded) == ["Conv"] and len(changes) == 2
    assert_same(g, folded)


def _randomize_bn(model, seed):
    r = rng(seed)
    model.init_parameters(seed)
    for _, m in model.named_modules():
        if isinstance(m, BatchNorm2d):
            k = m.weight.shape[0]
            m.weight.data = (r.uniform(0.5, 1.5, k) * r.choice([-1.0, 1.0], k)).astype(np.float32)
            m.bias.data = r.standard_normal(k).astype(np.float32)
            m.running_mean.data = (0.5 * r.standard_normal(k)).astype(np.float32)
            m.running_var.data = r.uniform(0.2, 3.0, k).astype(np.float32)
    return model


def as_float64(g: Graph) -> Graph:
    """The same graph with float64 inputs and stored tensors."""
    b = GraphBuilder(g.name)
    new = {v.name: b.input(v.name, v.type.shape, F64) for v in g.inputs}
    for v in g.values.values():
        if v.is_stored:
            new[v.name] = b.param(v.name, g.data[v.name].astype(np.float64),
                                  trainable=v.kind is ValueKind.PARAM)
    for n in g.nodes:
        outs = b.add_node(n.op, [None if v is None else new[v.name] for v in n.inputs],
                          dict(n.attrs), n.name, len(n.outputs), [v.name for v in n.outputs])
        new.update({old.name: v for old, v in zip(n.outputs, outs)})
    return b.build([new[v.name] for v in g.outputs])


@pytest.fixture(scope="module", params=["resnet18", "mobilenet_v2"])
def zoo_case(request):
    """(float64 graph with random BN statistics, an input, its unfolded output)."""
    model = _randomize_bn(zoo.get(request.param), seed=11)
    g = as_float64(model.to_graph((1, 3, 224, 224)))
    x = rng(12).uniform(-1.0, 1.0, (1, 3, 224, 224))
    return g, x, evaluate(g, {"x": x})[0]


def test_zoo_batchnorm_folding(zoo_case):
    g, x, expected = zoo_case
    n_bn = ops(g).count("BatchNormalization")
    assert n_bn > 0
    folded, changes = fold_batchnorm(g)
    assert "BatchNormalization" not in ops(folded) and len(changes) == n_bn
    assert len(folded) == len(g) - n_bn
    assert rel_err(evaluate(folded, {"x": x})[0], expected) < 1e-9


def test_zoo_full_pipeline_is_equivalent(zoo_case):
    g, x, expected = zoo_case
    pm = PassManager(2, verify=True)
    out = pm.run(g)
    assert "BatchNormalization" not in ops(out)
    names = [r.name for r in pm.records]
    assert names.index("cse") < names.index("fold_batchnorm") < names.index(
        "fold_scale_shift") < names.index("fold_pad") < names.index("fuse")
    assert rel_err(evaluate(out, {"x": x})[0], expected) < 1e-9


# -------------------------------------------------------------------------- fold_scale_shift
def conv_then(op, const_shape, bias=True, const_first=False, gemm=False, c_shape=None,
              const_input=False):
    r = rng(9)
    b = GraphBuilder()
    if gemm:
        x = b.input("x", (4, 3), F64)
        c = None if not bias else b.param("c", rand(r, *(c_shape or (5,))))
        y = b.op("Gemm", x, b.param("w", rand(r, 5, 3)), c, name="p", transB=True, alpha=1.5,
                 beta=0.5)
    else:
        x = b.input("x", (2, 3, 6, 6), F64)
        y = b.op("Conv", x, b.param("w", rand(r, 5, 3, 3, 3)),
                 b.param("b", rand(r, 5)) if bias else None, name="p")
    k = (b.input("k", const_shape, F64) if const_input
         else b.param("k", np.asarray(r.uniform(0.5, 2.0, const_shape)), trainable=False))
    z = b.op(op, *((k, y) if const_first else (y, k)), name="op")
    return b.build(b.op("Relu", z, name="relu"))


@pytest.mark.parametrize("op,shape,bias,first", [
    ("Mul", (5, 1, 1), True, False),
    ("Mul", (1, 5, 1, 1), False, True),
    ("Mul", (), True, False),
    ("Add", (1, 5, 1, 1), True, True),
    ("Add", (5, 1, 1), False, False),          # creates the bias
    ("Add", (1,), True, False),
    ("Sub", (1, 5, 1, 1), True, False),        # x - c
])
def test_scale_shift_folds_into_conv(op, shape, bias, first):
    g = conv_then(op, shape, bias=bias, const_first=first)
    folded, changes = fold_scale_shift(g)
    assert ops(folded) == ["Conv", "Relu"] and changes == [f"folded op ({op}) into p"]
    assert folded.nodes[0].outputs[0].name == "op"
    assert_same(g, folded)


@pytest.mark.parametrize("op,shape,c_shape", [
    ("Mul", (5,), (5,)), ("Mul", (1, 5), (4, 5)), ("Add", (5,), (1, 5)), ("Add", (), (4, 5)),
    ("Sub", (1, 5), ()),
])
def test_scale_shift_folds_into_gemm(op, shape, c_shape):
    g = conv_then(op, shape, gemm=True, c_shape=c_shape)
    folded, changes = fold_scale_shift(g)
    assert ops(folded) == ["Gemm", "Relu"] and len(changes) == 1
    assert_same(g, folded)
    g = conv_then(op, shape, gemm=True, bias=False)
    folded, _ = fold_scale_shift(g)
    assert ops(folded) == ["Gemm", "Relu"]
    assert_same(g, folded)


@pytest.mark.parametrize("kwargs", [
    {"op": "Mul", "const_shape": (1, 1, 4, 4)},             # varies over H and W
    {"op": "Mul", "const_shape": (1, 5, 4, 4)},
    {"op": "Add", "const_shape": (2, 5, 1, 1)},             # varies over the batch
    {"op": "Mul", "const_shape": (4,)},                     # broadcasts along W, not channels
    {"op": "Mul", "const_shape": (1, 5, 1, 1), "const_input": True},  # not stored
    {"op": "Sub", "const_shape": (1, 5, 1, 1), "const_first": True},  # c - x
    {"op": "Div", "const_shape": (1, 5, 1, 1)},
    {"op": "Add", "const_shape": (1, 1, 5, 1, 1)},          # would grow the rank
    {"op": "Mul", "const_shape": (4, 5), "gemm": True},     # varies along M
])
def test_scale_shift_leaves_other_constants_alone(kwargs):
    if kwargs["const_shape"] in ((1, 1, 4, 4), (1, 5, 4, 4), (4,)):
        g = _conv_4x4_then(**kwargs)
    else:
        g = conv_then(**kwargs)
    assert fold_scale_shift(g) == (g, [])


def _conv_4x4_then(op, const_shape):
    r = rng(10)
    b = GraphBuilder()
    x = b.input("x", (1, 3, 6, 6), F64)
    y = b.op("Conv", x, b.param("w", rand(r, 5, 3, 3, 3)), name="p")   # [1, 5, 4, 4]
    return b.build(b.op(op, y, b.param("k", rand(r, *const_shape)), name="op"))


def test_scale_shift_not_folded_when_conv_output_is_shared():
    r = rng(11)
    b = GraphBuilder()
    x = b.input("x", (1, 3, 6, 6), F64)
    y = b.op("Conv", x, b.param("w", rand(r, 5, 3, 3, 3)), name="p")
    z = b.op("Mul", y, b.param("k", rand(r, 5, 1, 1)), name="op")
    g = b.build([z, b.op("Relu", y, name="r")])
    assert fold_scale_shift(g) == (g, [])


def test_scale_shift_chain_folds_completely():
    r = rng(12)
    b = GraphBuilder()
    x = b.input("x", (1, 3, 6, 6), F64)
    y = b.op("Conv", x, b.param("w", rand(r, 5, 3, 3, 3)), name="p")
    y = b.op("Mul", y, b.param("s", rand(r, 5, 1, 1)), name="mul")
    y = b.op("Add", b.param("t", rand(r, 1, 5, 1, 1)), y, name="add")
    g = b.build(y)
    folded, changes = fold_scale_shift(g)
    assert ops(folded) == ["Conv"] and changes == ["folded mul (Mul) into p",
                                                  "folded add (Add) into p"]
    assert_same(g, folded)


# ---------------------------------------------------------------------------------- fold_pad
def pad_then(op, pad=(0, 0, 1, 2, 0, 0, 2, 0), mode="constant", value=0.0, size=7, **attrs):
    r = rng(13)
    b = GraphBuilder()
    x = b.input("x", (2, 3, size, size), F64)
    p = b.op("Pad", x, name="pad3", pads=pad, mode=mode, value=value)
    if op == "Conv":
        y = b.op("Conv", p, b.param("w", rand(r, 4, 3, 3, 3)), b.param("b", rand(r, 4)),
                 name="conv4", **attrs)
    else:
        y = b.op(op, p, name="conv4", **attrs)
    return b.build(b.op("Relu", y, name="relu"))


@pytest.mark.parametrize("op,value,attrs", [
    ("Conv", 0.0, {"pads": (1, 0, 0, 1), "strides": (2, 2), "rounding": "floor"}),
    ("Conv", 0.0, {"dilations": (2, 2)}),
    ("AveragePool", 0.0, {"kernel_shape": (3, 3), "pads": (1, 0, 0, 1),
                          "count_include_pad": True}),
    ("AveragePool", 0.0, {"kernel_shape": (4, 4), "strides": (2, 2), "rounding": "floor",
                          "count_include_pad": True}),
    ("MaxPool", -math.inf, {"kernel_shape": (4, 4), "strides": (2, 2), "pads": (1, 1, 0, 0),
                            "rounding": "floor"}),
])
def test_pad_folds_into_conv_and_pools(op, value, attrs):
    g = pad_then(op, value=value, **attrs)
    folded, changes = fold_pad(g)
    assert ops(folded) == [op, "Relu"] and changes == ["folded pad3 into conv4"]
    old = attrs.get("pads", (0, 0, 0, 0))
    assert folded.nodes[0].attrs["pads"] == (old[0] + 1, old[1] + 2, old[2] + 2, old[3])
    assert folded.nodes[0].inputs[0].name == "x"
    assert_same(g, folded)


def test_pad_folds_into_ceil_mode_pool_when_the_shape_stays():
    g = pad_then("MaxPool", pad=(0, 0, 1, 1, 0, 0, 0, 0), value=-math.inf,
                 kernel_shape=(3, 3), strides=(2, 2), rounding="ceil")
    folded, changes = fold_pad(g)
    assert ops(folded) == ["MaxPool", "Relu"] and changes == ["folded pad3 into conv4"]
    assert folded.nodes[0].attrs["pads"] == (1, 1, 0, 0)
    assert_same(g, folded)


def test_pad_chain_folds_completely():
    r = rng(14)
    b = GraphBuilder()
    x = b.input("x", (1, 3, 6, 6), F64)
    p = b.op("Pad", x, name="pad1", pads=(0, 0, 1, 0, 0, 0, 0, 1))
    p = b.op("Pad", p, name="pad2", pads=(0, 0, 0, 1, 0, 0, 1, 0))
    g = b.build(b.op("Conv", p, b.param("w", rand(r, 2, 3, 3, 3)), name="c"))
    folded, changes = fold_pad(g)
    assert ops(folded) == ["Conv"] and len(changes) == 2
    assert folded.nodes[0].attrs["pads"] == (1, 1, 1, 1)
    assert_same(g, folded)


@pytest.mark.parametrize("op,kwargs", [
    ("Conv", {"mode": "reflect"}),
    ("Conv", {"value": 1.0}),
    ("Conv", {"pad": (1, 0, 1, 1, 0, 0, 1, 1)}),                     # pads the batch
    ("Conv", {"pad": (0, 0, -1, 1, 0, 0, 1, 1)}),                    # crops
    ("AveragePool", {"kernel_shape": (3, 3), "count_include_pad": False}),
    ("AveragePool", {"kernel_shape": (3, 3), "count_include_pad": True, "value": -1.0}),
    ("MaxPool", {"kernel_shape": (3, 3), "value": 0.0}),              # zeros could win
    ("MaxPool", {"kernel_shape": (2, 2), "value": -math.inf,
                 "pad": (0, 0, 2, 2, 0, 0, 0, 0)}),                  # pool pads >= window
    # ceil mode: the folded pool would drop a last window that starts in its own end padding
    ("MaxPool", {"kernel_shape": (3, 3), "strides": (2, 2), "rounding": "ceil",
                 "value": -math.inf, "pad": (0, 0, 0, 0, 0, 0, 2, 2), "size": 4}),
])
def test_pad_left_alone(op, kwargs):
    g = pad_then(op, **kwargs)
    assert fold_pad(g) == (g, [])


def test_pad_not_folded_when_shared():
    r = rng(15)
    b = GraphBuilder()
    x = b.input("x", (1, 3, 6, 6), F64)
    p = b.op("Pad", x, name="pad", pads=(0, 0, 1, 1, 0, 0, 1, 1))
    g = b.build([b.op("Conv", p, b.param("w", rand(r, 2, 3, 3, 3)), name="c"), p])
    assert fold_pad(g) == (g, [])


# --------------------------------------------------------------------------------- pipeline
def test_pipeline_order_and_end_to_end():
    names = [p.name for p in all_passes()]
    i = names.index("cse")
    assert names[i + 1: i + 4] == ["fold_batchnorm", "fold_scale_shift", "fold_pad"]
    assert names.index("fold_pad") < names.index("fuse")
    assert all(p.min_level == 2 for p in all_passes() if p.name.startswith("fold_")
               and p.name != "fold_constants")
    assert "fold_batchnorm" not in [p.name for p in PassManager(1).pipeline]

    r = rng(16)
    b = GraphBuilder()
    x = b.input("x", (1, 3, 8, 8), F64)
    p = b.op("Pad", x, name="pad", pads=(0, 0, 1, 1, 0, 0, 1, 1))
    y = b.op("Conv", p, b.param("w", rand(r, 4, 3, 3, 3)), name="conv")
    y = b.op("BatchNormalization", y, *bn_params(b, r, 4), name="bn")
    y = b.op("Mul", y, b.param("s", rand(r, 1, 4, 1, 1)), name="scale")
    y = b.op("Relu", y, name="relu")
    g = b.build(y)
    pm = PassManager(2, verify=True)
    out = pm.run(g)
    changes = {rec.name: rec.changes for rec in pm.records}
    assert changes["fold_batchnorm"] == ["folded bn (BatchNormalization) into conv"]
    assert changes["fold_scale_shift"] == ["folded scale (Mul) into conv"]
    assert changes["fold_pad"] == ["folded pad into conv"]
    assert_same(g, out)


def test_scale_shift_folds_into_conv_transpose():
    r = rng(17)
    b = GraphBuilder()
    x = b.input("x", (1, 4, 4, 4), F64)
    y = b.op("ConvTranspose", x, b.param("w", rand(r, 4, 3, 2, 2)), name="up", group=2,
             strides=(2, 2))
    y = b.op("Mul", y, b.param("s", rand(r, 6, 1, 1)), name="mul")
    g = b.build(b.op("Add", y, b.param("t", rand(r, 1, 6, 1, 1)), name="add"))
    folded, changes = fold_scale_shift(g)
    assert ops(folded) == ["ConvTranspose"] and len(changes) == 2
    assert_same(g, folded)
