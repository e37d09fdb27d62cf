"""ONNX functions and composed normalizations through the importer, against onnxruntime.

Ops that ONNX defines by a function body (GroupNormalization, MeanVarianceNormalization,
Shrink, model-local functions, ...) are expanded by the importer (``functions.py``);
LayerNormalization and InstanceNormalization are composed of our ops by converters. Each
model runs on the reference and llvm backends (and one on opencl) and must match onnxruntime
to a relative error below 1e-4 on random normal inputs.
"""

import numpy as np
import onnx
import pytest
from helpers import rel_err
from onnx import TensorProto, helper, numpy_helper
from onnx_models import make_model, run_onnxruntime

import cnncompiler
from cnncompiler.errors import CnnCompilerError, UnsupportedError
from cnncompiler.frontends.onnx import load
from cnncompiler.frontends.onnx.importer import unsupported_ops

F = TensorProto.FLOAT
BACKENDS = ["reference", "llvm"]


def rng(seed=0):
    return np.random.default_rng(seed)


def weight(name, shape, seed, scale=1.0):
    return numpy_helper.from_array(
        (rng(seed).standard_normal(shape) * scale).astype(np.float32), name)


def vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def check(model, feeds, backends=BACKENDS, tol=1e-4, **load_args):
    expected = run_onnxruntime(model, feeds)
    graph = load(model, **load_args)
    for backend in backends:
        got = cnncompiler.compile(graph, backend=backend)(**feeds)
        got = got if isinstance(got, tuple) else (got,)
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            assert g.shape == e.shape, (backend, g.shape, e.shape)
            err = rel_err(g, e)
            assert err < tol, f"{backend}: relative error {err:.3g}"
    return graph


def normal(shape, seed=1):
    return rng(seed).standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------- LayerNormalization
def test_layer_norm_last_axis_with_mean_and_inv_std_dev():
    node = helper.make_node("LayerNormalization", ["x", "s", "b"], ["y", "mean", "inv"],
                            name="ln", epsilon=1e-5)
    m = make_model([node], [vi("x", [2, 5, 16])],
                   [vi("y", [2, 5, 16]), vi("mean", [2, 5, 1]), vi("inv", [2, 5, 1])],
                   [weight("s", [16], 2), weight("b", [16], 3)])
    check(m, {"x": normal((2, 5, 16)) * 3 + 1})


def test_layer_norm_over_chw_of_an_nchw_tensor_without_bias():
    node = helper.make_node("LayerNormalization", ["x", "s"], ["y"], name="ln", axis=1)
    m = make_model([node], [vi("x", [2, 4, 5, 5])], [vi("y", [2, 4, 5, 5])],
                   [weight("s", [4, 5, 5], 2)])
    check(m, {"x": normal((2, 4, 5, 5))})


def test_layer_norm_keeps_a_symbolic_batch():
    """[N, H, W, C] normalized over C: ONNX's body would flatten N*H*W, which a symbolic
    batch cannot go through; the converter reduces in place."""
    node = helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], name="ln")
    m = make_model([node], [vi("x", ["N", 3, 3, 8])], [vi("y", ["N", 3, 3, 8])],
                   [weight("s", [8], 2), weight("b", [8], 3)])
    graph = check(m, {"x": normal((2, 3, 3, 8))}, backends=["reference"])
    assert graph.inputs[0].type.shape[0] == "N"


# ------------------------------------------------------------------ normalizations
@pytest.mark.parametrize("batch", [2, "N"])
def test_group_normalization_expands_its_function_body(batch):
    node = helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], name="gn",
                            num_groups=3, epsilon=1e-4)
    m = make_model([node], [vi("x", [batch, 6, 4, 4])], [vi("y", [batch, 6, 4, 4])],
                   [weight("s", [6], 2), weight("b", [6], 3)], opset=21)
    graph = check(m, {"x": normal((2, 6, 4, 4))})
    assert "GroupNormalization" not in {n.op for n in graph.nodes}


def test_instance_normalization_after_a_conv():
    nodes = [helper.make_node("Conv", ["x", "w", "wb"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("InstanceNormalization", ["c", "s", "b"], ["n"], name="in",
                              epsilon=1e-5),
             helper.make_node("Relu", ["n"], ["y"], name="relu")]
    m = make_model(nodes, [vi("x", [2, 3, 8, 8])], [vi("y", [2, 4, 8, 8])],
                   [weight("w", [4, 3, 3, 3], 2, 0.3), weight("wb", [4], 3),
                    weight("s", [4], 4), weight("b", [4], 5)])
    check(m, {"x": normal((2, 3, 8, 8))})


def test_mean_variance_normalization_and_shrink_defaults():
    """Attribute references take the node's value or the schema's default; Shrink-9's only
    body is written against opset 18 and is used from an opset 13 model."""
    nodes = [helper.make_node("MeanVarianceNormalization", ["x"], ["m"], name="mvn"),
             helper.make_node("Shrink", ["m"], ["s1"], name="shrink_default"),
             helper.make_node("Shrink", ["m"], ["s2"], name="shrink_soft", lambd=0.7,
                              bias=0.7)]
    m = make_model(nodes, [vi("x", [2, 3, 4, 4])], [vi("s1", [2, 3, 4, 4]),
                                                    vi("s2", [2, 3, 4, 4])], opset=13)
    check(m, {"x": normal((2, 3, 4, 4))})


# ------------------------------------------------------------------ ConvNeXt-like block
def convnext_block(gelu: str, batch=1, opset=17):
    c, hidden = 16, 32
    x = "x"
    nodes = [
        helper.make_node("Conv", [x, "dw_w", "dw_b"], ["dw"], name="dwconv", group=c,
                         kernel_shape=[7, 7], pads=[3, 3, 3, 3]),
        helper.make_node("Transpose", ["dw"], ["nhwc"], name="to_nhwc", perm=[0, 2, 3, 1]),
        helper.make_node("LayerNormalization", ["nhwc", "ln_s", "ln_b"], ["ln"], name="ln",
                         axis=-1, epsilon=1e-6),
        helper.make_node("MatMul", ["ln", "w1"], ["h1"], name="pw1"),
        helper.make_node("Add", ["h1", "b1"], ["h1b"], name="pw1_bias"),
    ]
    inits = [weight("dw_w", [c, 1, 7, 7], 2, 0.15), weight("dw_b", [c], 3, 0.1),
             weight("ln_s", [c], 4), weight("ln_b", [c], 5, 0.1),
             weight("w1", [c, hidden], 6, 0.25), weight("b1", [hidden], 7, 0.1),
             weight("w2", [hidden, c], 8, 0.2), weight("b2", [c], 9, 0.1)]
    if gelu == "erf":  # how exporters spell Gelu before opset 20
        inits += [numpy_helper.from_array(np.array(np.sqrt(2.0), np.float32), "sqrt2"),
                  numpy_helper.from_array(np.array(1.0, np.float32), "one"),
                  numpy_helper.from_array(np.array(0.5, np.float32), "half")]
        nodes += [helper.make_node("Div", ["h1b", "sqrt2"], ["g0"], name="gelu_div"),
                  helper.make_node("Erf", ["g0"], ["g1"], name="gelu_erf"),
                  helper.make_node("Add", ["g1", "one"], ["g2"], name="gelu_add"),
                  helper.make_node("Mul", ["h1b", "g2"], ["g3"], name="gelu_mul"),
                  helper.make_node("Mul", ["g3", "half"], ["act"], name="gelu_half")]
    else:
        nodes.append(helper.make_node("Gelu", ["h1b"], ["act"], name="gelu"))
    nodes += [helper.make_node("MatMul", ["act", "w2"], ["h2"], name="pw2"),
              helper.make_node("Add", ["h2", "b2"], ["h2b"], name="pw2_bias"),
              helper.make_node("Transpose", ["h2b"], ["back"], name="to_nchw",
                               perm=[0, 3, 1, 2]),
              helper.make_node("Add", [x, "back"], ["y"], name="residual")]
    return make_model(nodes, [vi("x", [batch, c, 10, 10])], [vi("y", [batch, c, 10, 10])],
                      inits, opset=opset)


@pytest.mark.parametrize("gelu,opset", [("erf", 17), ("op", 20)])
def test_convnext_block(gelu, opset):
    m = convnext_block(gelu, opset=opset)
    check(m, {"x": normal((1, 16, 10, 10))})


def test_convnext_block_with_a_symbolic_batch():
    m = convnext_block("erf", batch="N")
    check(m, {"x": normal((2, 16, 10, 10))}, backends=["reference"])


# ---------------------------------------------------------- Range and boolean functions
def test_range_of_known_bounds_is_folded():
    """A position ramp from the input's shape (detection grids, positional encodings)."""
    one = numpy_helper.from_array(np.array(1, np.int64), "one")
    zero = numpy_helper.from_array(np.array(0, np.int64), "zero")
    nodes = [helper.make_node("Shape", ["x"], ["shape"], start=2, end=3),
             helper.make_node("Squeeze", ["shape"], ["width"]),
             helper.make_node("Range", ["zero", "width", "one"], ["ramp"]),
             helper.make_node("Cast", ["ramp"], ["rampf"], to=F),
             helper.make_node("Add", ["x", "rampf"], ["y"])]
    m = make_model(nodes, [vi("x", [2, 3, 5])], [vi("y", [2, 3, 5])], [one, zero])
    graph = check(m, {"x": normal((2, 3, 5))})
    assert [n.op for n in graph.nodes] == ["Add"]


def test_range_of_run_time_bounds_is_a_clear_error():
    node = helper.make_node("Range", ["a", "b", "c"], ["y"], name="ramp")
    m = make_model([node], [vi(n, []) for n in "abc"], [vi("y", ["k"])])
    with pytest.raises(UnsupportedError, match=r"'ramp' \(Range, opset 17\): start \(input 0"):
        load(m)


def test_greater_or_equal_expands_through_or():
    nodes = [helper.make_node("GreaterOrEqual", ["a", "b"], ["ge"], name="ge"),
             helper.make_node("LessOrEqual", ["a", "b"], ["le"], name="le"),
             helper.make_node("Xor", ["ge", "le"], ["ne"], name="xor"),
             helper.make_node("And", ["ge", "le"], ["eq"], name="and")]
    bool_ = TensorProto.BOOL
    m = make_model(nodes, [vi("a", [3, 4]), vi("b", [4])],
                   [vi("ne", [3, 4], bool_), vi("eq", [3, 4], bool_)], opset=16)
    a = np.round(normal((3, 4))).astype(np.float32)
    b = np.round(normal((4,), seed=2)).astype(np.float32)
    expected = run_onnxruntime(m, {"a": a, "b": b})
    graph = load(m)
    assert {n.op for n in graph.nodes} <= {"Greater", "Less", "Equal", "Where", "Not"}
    for backend in BACKENDS:
        got = cnncompiler.compile(graph, backend=backend)(a=a, b=b)
        for g, e in zip(got, expected):
            assert g.dtype == np.bool_ and np.array_equal(g, e), backend


# ------------------------------------------------------------ local and nested functions
def local_function_model():
    """A model-local function (custom domain) whose body calls ONNX functions in turn, with
    an attribute reference and a default."""
    body = [helper.make_node("MeanVarianceNormalization", ["X"], ["N"], axes=[0, 2, 3]),
            helper.make_node("Shrink", ["N"], ["S"]),
            helper.make_node("Shrink", ["N"], ["T"]),
            helper.make_node("Add", ["S", "T"], ["Y"])]
    # the first Shrink takes the caller's `lambd`; the second keeps Shrink's default
    lambd = onnx.AttributeProto()
    lambd.name, lambd.ref_attr_name, lambd.type = "lambd", "threshold", onnx.AttributeProto.FLOAT
    body[1].attribute.append(lambd)
    func = helper.make_function("custom", "NormShrink", ["X"], ["Y"], body,
                                [helper.make_opsetid("", 18)], attributes=["threshold"])
    nodes = [helper.make_node("NormShrink", ["x"], ["y"], name="ns", domain="custom",
                              threshold=1.0)]
    graph = helper.make_graph(nodes, "local", [vi("x", [2, 3, 5, 5])], [vi("y", [2, 3, 5, 5])])
    return helper.make_model(graph, functions=[func],
                             opset_imports=[helper.make_opsetid("", 18),
                                            helper.make_opsetid("custom", 1)])


def test_model_local_function_with_nested_functions():
    m = local_function_model()
    x = normal((2, 3, 5, 5))
    graph = check(m, {"x": x}, backends=["reference"])
    assert {n.op for n in graph.nodes} <= {"ReduceMean", "Pow", "Sub", "Sqrt", "Add", "Div",
                                           "Neg", "Less", "Where", "Mul"}


# ------------------------------------------------------------------------------ errors
def dynamic_quantize_model():
    """A DynamicQuantizeLinear node 'dq': a function op whose body uses ops we lack."""
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "scale", "zp"], name="dq")
    return make_model([node], [vi("x", [2, 3])],
                      [vi("q", [2, 3], TensorProto.UINT8), vi("scale", []),
                       vi("zp", [], TensorProto.UINT8)])


def test_a_function_body_with_ops_we_lack_is_named_up_front():
    m = dynamic_quantize_model()
    with pytest.raises(UnsupportedError) as e:
        load(m)
    msg = str(e.value)
    assert "DynamicQuantizeLinear, opset 17: 1 node(s): dq" in msg
    assert "its ONNX function body uses " in msg
    assert "uses QuantizeLinear, which has no converter" in msg and "uses Round" in msg
    assert unsupported_ops(m)[0].startswith("DynamicQuantizeLinear: its ONNX function body")


def test_a_body_with_ops_we_lack_is_named_at_conversion_too(monkeypatch):
    """Where the up-front check cannot tell (a context-dependent body needs the run-time
    input types), expanding the node names it, its op and the body's missing ops."""
    from cnncompiler.frontends.onnx.importer import OnnxImporter

    monkeypatch.setattr(OnnxImporter, "check_supported", lambda self: None)
    m = dynamic_quantize_model()
    with pytest.raises(UnsupportedError) as e:
        load(m)
    msg = str(e.value)
    assert msg.startswith("ONNX node 'dq' (DynamicQuantizeLinear, opset 17): "
                          "DynamicQuantizeLinear has no converter, and its "
                          "DynamicQuantizeLinear-11 function body")
    assert "QuantizeLinear (node(s) 'dq/" in msg and "Round (node(s) 'dq/" in msg


def test_a_nested_function_with_ops_we_lack_is_named_up_front():
    """A local function calling DynamicQuantizeLinear, whose own body needs Round."""
    body = [helper.make_node("DynamicQuantizeLinear", ["X"], ["Y", "S", "Z"])]
    func = helper.make_function("custom", "Quantize", ["X"], ["Y"], body,
                                [helper.make_opsetid("", 17)])
    nodes = [helper.make_node("Quantize", ["x"], ["y"], name="quant", domain="custom")]
    graph = helper.make_graph(nodes, "g", [vi("x", [4])], [vi("y", [4], TensorProto.UINT8)])
    m = helper.make_model(graph, functions=[func], opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)])
    with pytest.raises(UnsupportedError, match=r"Quantize \(domain custom\), opset 17: 1 "
                                               r"node\(s\): quant \(its ONNX function body uses "
                                               r"Round, which has no converter \(in the body of "
                                               r"DynamicQuantizeLinear\)"):
        load(m)


def test_a_failure_inside_a_body_names_the_node_that_was_expanded():
    """CenterCropPad's body pads by amounts computed from a run-time shape input."""
    node = helper.make_node("CenterCropPad", ["x", "shape"], ["y"], name="crop")
    m = make_model([node], [vi("x", [4, 6]), vi("shape", [2], TensorProto.INT64)],
                   [vi("y", ["a", "b"])], opset=18)
    with pytest.raises(CnnCompilerError) as e:
        load(m)
    msg = str(e.value)
    assert msg.startswith("ONNX node 'crop' (CenterCropPad, opset 18), in its "
                          "CenterCropPad-18 function body")
    assert "known at import time" in msg


def test_unused_function_outputs_need_not_be_produced():
    """Only the body nodes that used outputs depend on are converted."""
    node = helper.make_node("LayerNormalization", ["x", "s"], ["y", "", "unused"], name="ln")
    m = make_model([node], [vi("x", [3, 8])], [vi("y", [3, 8])], [weight("s", [8], 2)])
    graph = check(m, {"x": normal((3, 8))}, backends=["reference"])
    assert "Reciprocal" in {n.op for n in graph.nodes}  # 1/std is how y is scaled
    assert [v.name for v in graph.outputs] == ["y"]


# ------------------------------------------------------------------------------ opencl
def test_group_normalization_on_opencl():
    from cnncompiler.backends import available

    status = available().get("opencl")
    if status is None or not status.ok:
        pytest.skip(f"opencl is not available here: {status}")
    node = helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], name="gn",
                            num_groups=2)
    m = make_model([node], [vi("x", [1, 4, 3, 3])], [vi("y", [1, 4, 3, 3])],
                   [weight("s", [4], 2), weight("b", [4], 3)], opset=21)
    check(m, {"x": normal((1, 4, 3, 3))}, backends=["opencl"])
