"""Pass manager, clean-up passes and fusion: what each must change and what it must leave."""

import numpy as np
import pytest

import cnncompiler
from cnncompiler import nn, zoo
from cnncompiler.backends.reference import evaluate
from cnncompiler.errors import UnsupportedError
from cnncompiler.ir import GraphBuilder
from cnncompiler.passes import PassManager
from cnncompiler.passes.cleanup import (
    eliminate_common_subexpressions,
    eliminate_dead_code,
    eliminate_identities,
    fold_constants,
    square_powers,
)
from cnncompiler.passes.fusion import fuse, fusion_groups, inline_fused

RNG = np.random.default_rng(0)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def same_outputs(a, b, feeds, tol=1e-12):
    for x, y in zip(evaluate(a, feeds), evaluate(b, feeds)):
        assert x.shape == y.shape
        assert np.linalg.norm(x - y) <= tol * max(np.linalg.norm(x), 1e-300)


def test_manager_levels_disable_and_unknown():
    assert PassManager(0).pipeline == []
    level1 = [p.name for p in PassManager(1).pipeline]
    assert level1[:4] == ["dce", "eliminate_identities", "fold_constants", "cse"]
    assert "fuse" not in level1 and "fuse" in [p.name for p in PassManager(2).pipeline]
    assert "fuse" not in [p.name for p in PassManager(2, disable=["fuse"]).pipeline]
    with pytest.raises(UnsupportedError, match="unknown pass"):
        PassManager(2, disable=["nope"])
    with pytest.raises(UnsupportedError, match="opt_level"):
        PassManager(3)


def test_dce_removes_only_dead_nodes_and_their_weights():
    b = GraphBuilder()
    x = b.input("x", (1, 4))
    w = b.param("w", rand(4, 4))
    live = b.op("Relu", x, name="live")
    b.op("MatMul", x, w, name="dead")
    g, changes = eliminate_dead_code(b.build(live))
    assert [n.name for n in g.nodes] == ["live"] and "w" not in g.data
    assert changes == ["removed dead (MatMul)"]


def test_identities_removed_but_graph_outputs_keep_their_names():
    b = GraphBuilder()
    x = b.input("x", (2, 3, 4))
    a = b.op("Identity", x, name="id")
    d = b.op("Dropout", a, name="drop")
    r = b.op("Reshape", d, shape=(2, 3, 4), name="same_shape")
    t = b.op("Transpose", r, perm=(0, 1, 2), name="no_perm")
    y = b.op("Relu", t, name="relu")
    out = b.op("Identity", y, name="out")
    g, changes = eliminate_identities(b.build(out))
    assert [n.name for n in g.nodes] == ["relu", "out"] and len(changes) == 4
    assert g.outputs[0].name == "out"
    keep = GraphBuilder()
    x = keep.input("x", (2, 3))
    r = keep.op("Reshape", x, shape=(3, 2), name="real_reshape")
    t = keep.op("Transpose", r, perm=(1, 0), name="real_transpose")
    g2, changes = eliminate_identities(keep.build(t))
    assert changes == [] and len(g2.nodes) == 2


def test_constant_folding_through_references():
    b = GraphBuilder()
    x = b.input("x", (2, 3))
    w = b.param("w", rand(3, 2), trainable=False)
    wt = b.op("Transpose", w, perm=(1, 0), name="wt")          # constant subgraph
    w2 = b.op("Mul", wt, b.const(np.float32(2.0)), name="w2")
    y = b.op("Gemm", x, w2, transB=1, name="fc")
    g0 = b.build(y)
    g, changes = fold_constants(g0)
    assert [n.op for n in g.nodes] == ["Gemm"] and len(changes) == 2
    same_outputs(g0, g, {"x": rand(2, 3)})


def test_cse_merges_identical_nodes_only():
    b = GraphBuilder()
    x = b.input("x", (2, 3))
    a1 = b.op("Relu", x, name="a1")
    a2 = b.op("Relu", x, name="a2")
    l1 = b.op("LeakyRelu", x, alpha=0.1, name="l1")
    l2 = b.op("LeakyRelu", x, alpha=0.2, name="l2")
    s = b.op("Add", b.op("Add", a1, a2, name="s1"), b.op("Add", l1, l2, name="s2"), name="s")
    g0 = b.build(s)
    g, changes = eliminate_common_subexpressions(g0)
    assert changes == ["merged a2 into a1 (Relu)"]
    assert {n.name for n in g.nodes} == {"a1", "l1", "l2", "s1", "s2", "s"}
    same_outputs(g0, g, {"x": rand(2, 3)})


def test_squares_by_pow_become_products():
    b = GraphBuilder()
    x = b.input("x", (2, 3, 4))
    sq = b.op("Pow", x, b.const(np.float32(2.0)), name="sq")              # -> Mul(x, x)
    cube = b.op("Pow", x, b.const(np.float32(3.0)), name="cube")          # kept
    grown = b.op("Pow", x, b.const(np.full((5, 1, 1, 1), 2.0, np.float32)), name="grown")
    g0 = b.build([b.op("Add", sq, cube, name="s"), grown])
    g, changes = square_powers(g0)
    assert changes == ["sq: Pow(x, 2) -> Mul(x, x)"]
    mul = next(n for n in g.nodes if n.name == "sq")
    assert mul.op == "Mul" and mul.inputs[0].name == mul.inputs[1].name == "x"
    assert [n.op for n in g.nodes if n.name in ("cube", "grown")] == ["Pow", "Pow"]
    same_outputs(g0, g, {"x": rand(2, 3, 4)})
    assert "square_powers" in [p.name for p in PassManager(1).pipeline]


def conv_bn_relu_add():
    b = GraphBuilder("block")
    x = b.input("x", ("N", 4, 6, 6))
    c = b.op("Conv", x, b.param("w", rand(4, 4, 3, 3)), pads=(1, 1, 1, 1), name="conv")
    bn = b.op("BatchNormalization", c, b.param("s", rand(4) + 2), b.param("bb", rand(4)),
              b.param("m", rand(4), trainable=False),
              b.param("v", np.abs(rand(4)) + 1, trainable=False), name="bn")
    add = b.op("Add", bn, x, name="add")
    r = b.op("Relu", add, name="relu")
    side = b.op("Sigmoid", b.op("Tanh", x, name="tanh"), name="sig")
    return b.build([r, side])


def test_fusion_groups_epilogues_and_elementwise_chains():
    g0 = conv_bn_relu_add()
    groups = [[n.name for n in grp] for grp in fusion_groups(g0)]
    assert groups == [["conv", "bn", "add", "relu"], ["tanh", "sig"]]
    g, changes = fuse(g0)
    assert [n.op for n in g.nodes] == ["Fused", "Fused"]
    assert changes[0] == "conv + bn + add + relu -> fused_conv (Conv+BatchNormalization+Add+Relu)"
    assert [v.name for v in g.outputs] == ["relu", "sig"]
    same_outputs(g0, g, {"x": rand(2, 4, 6, 6)})
    g.verify()
    unfused = inline_fused(g)
    assert [n.op for n in unfused.nodes] == [n.op for n in g0.nodes]
    same_outputs(g0, unfused, {"x": rand(1, 4, 6, 6)})


def test_fusion_stops_at_a_shared_value():
    b = GraphBuilder()
    x = b.input("x", (1, 2, 5, 5))
    c = b.op("Conv", x, b.param("w", rand(2, 2, 3, 3)), name="conv")
    r = b.op("Relu", c, name="relu")
    other = b.op("Sigmoid", c, name="other")      # conv output has two consumers
    g, _ = fuse(b.build([r, other]))
    assert [n.op for n in g.nodes] == ["Conv", "Relu", "Sigmoid"]


def test_broadcast_that_grows_the_tensor_does_not_fuse():
    b = GraphBuilder()
    x = b.input("x", (1, 3))
    y = b.input("y", (4, 3))
    a = b.op("Relu", x, name="relu")
    s = b.op("Add", a, y, name="grow")   # [1,3] + [4,3] -> [4,3]
    g, _ = fuse(b.build(s))
    assert [n.op for n in g.nodes] == ["Relu", "Add"]


def test_resnet50_fusion_counts():
    g = zoo.get("resnet50").to_graph((1, 3, 224, 224), with_weights=False)
    pm = PassManager(2, disable=["fold_constants"], verify=True)
    out = pm.run(g)
    kinds = [n.attrs.get("kind", n.op) for n in out.nodes]
    assert kinds.count("Conv+BatchNormalization+Relu") == 33
    assert kinds.count("Conv+BatchNormalization+Add+Relu") == 16   # every block's last conv
    assert kinds.count("Conv+BatchNormalization") == 4              # the downsample branches
    assert not any(n.op in ("Conv", "BatchNormalization", "Relu") for n in out.nodes)
    assert len(out.nodes) == 57


def random_batchnorm(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial BatchNorm statistics, so folding and fusion are really exercised."""
    model.init_parameters(seed)
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if name.endswith(("running_mean", "bias")):
            p.data = (rng.standard_normal(p.shape) * 0.1).astype(np.float32)
        elif name.endswith("running_var"):
            p.data = rng.uniform(0.5, 1.5, p.shape).astype(np.float32)
    return model


ZOO_SMALL = ["lenet5", "alexnet", "vgg11", "resnet18", "resnet34", "resnet50", "mobilenet_v2"]
ZOO_LARGE = ["vgg13", "vgg16", "vgg19", "resnet101", "resnet152"]


@pytest.mark.parametrize("name", ZOO_SMALL + [pytest.param(n, marks=pytest.mark.slow)
                                              for n in ZOO_LARGE])
def test_opt2_matches_opt0_on_the_zoo(name):
    net = random_batchnorm(zoo.get(name), seed=1)
    shape = (1, *net.input_shape[1:])
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    g = net.to_graph(shape)
    opt = PassManager(2, verify=True).run(g)
    assert len(opt.nodes) < len(g.nodes)
    (a,), (b,) = evaluate(g, {"x": x}), evaluate(opt, {"x": x})
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 1e-5          # float64
    f0 = cnncompiler.compile(g, opt_level=0, precision="float32")(x)
    f2 = cnncompiler.compile(g, opt_level=2, precision="float32")(x)
    assert np.linalg.norm(f0 - f2) / np.linalg.norm(f0) < 1e-4        # float32


def test_backend_pass_runs_before_fusion_and_layouts_fuse():
    from cnncompiler.passes.layout import count_transforms, layout_pass

    def blocked(node):
        return "NCHW8c" if node.op == "Conv" else None

    pm = PassManager(2, extra=[layout_pass(blocked)], verify=True)
    names = [p.name for p in pm.pipeline]
    assert names.index("assign_layouts") == names.index("fuse") - 1
    net = random_batchnorm(zoo.get("resnet18"), seed=3)
    g = net.to_graph((1, 3, 64, 64))
    out = pm.run(g)
    assert count_transforms(out) == 1   # the stem conv reads NCHW, writes NCHW8c; Flatten
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    (a,), (b,) = evaluate(g, {"x": x}), evaluate(out, {"x": x})
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 1e-6  # BN folded into float32 weights
