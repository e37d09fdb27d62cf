"""ONNX import: errors on broken models, symbolic batch, import-time shape arithmetic."""

import numpy as np
import onnx
import pytest
from helpers import rel_err
from onnx import TensorProto, helper, numpy_helper
from onnx_models import make_model, run_onnxruntime

import cnncompiler
from cnncompiler.errors import CnnCompilerError, FrontendError, UnsupportedError
from cnncompiler.frontends.onnx import load

F = TensorProto.FLOAT


def conv_model(opset=13, batch="N"):
    w = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    return make_model(nodes, [helper.make_tensor_value_info("x", F, [batch, 3, 8, 8])],
                      [helper.make_tensor_value_info("y", F, [batch, 4, 8, 8])], [w], opset)


# ------------------------------------------------------------------ broken-model corpus
def test_truncated_file(tmp_path):
    data = conv_model().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FrontendError, match="not a valid ONNX file|invalid"):
        load(str(path))


def test_garbage_and_missing_files(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\xff\x00 this is not protobuf \x13\x37" * 10)
    with pytest.raises(FrontendError):
        load(str(path))
    with pytest.raises(FrontendError, match="does not exist"):
        load(str(tmp_path / "absent.onnx"))


def test_every_unsupported_op_is_listed_at_once():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="r"),
             helper.make_node("NonZero", ["a"], ["b"], name="nz1"),
             helper.make_node("TopK", ["x", "k"], ["c", "d"], name="topk1"),
             helper.make_node("NonZero", ["x"], ["e"], name="nz2")]
    k = numpy_helper.from_array(np.array([2], np.int64), "k")
    m = make_model(nodes, [helper.make_tensor_value_info("x", F, [2, 5])],
                   [helper.make_tensor_value_info(o, TensorProto.INT64, [2, "n"]) for o in "be"]
                   + [helper.make_tensor_value_info("c", F, [2, 2])], [k])
    with pytest.raises(UnsupportedError) as e:
        load(m)
    msg = str(e.value)
    assert "2 unsupported ONNX op type(s)" in msg
    assert "NonZero, opset 17: 2 node(s): nz1, nz2" in msg
    assert "TopK, opset 17: 1 node(s): topk1" in msg


def test_custom_domain_is_unsupported():
    node = helper.make_node("Gelu", ["x"], ["y"], name="g", domain="com.microsoft")
    m = helper.make_model(
        helper.make_graph([node], "t", [helper.make_tensor_value_info("x", F, [2])],
                          [helper.make_tensor_value_info("y", F, [2])]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    with pytest.raises(UnsupportedError, match="domain com.microsoft"):
        load(m)


def test_wrong_attribute_type():
    m = conv_model()
    m.graph.node[0].attribute[0].CopyFrom(helper.make_attribute("pads", [1.0, 1.0, 1.0, 1.0]))
    with pytest.raises(CnnCompilerError, match="pads"):
        load(m)


def test_cyclic_graph():
    nodes = [helper.make_node("Relu", ["b"], ["a"], name="r1"),
             helper.make_node("Relu", ["a"], ["b"], name="r2")]
    m = make_model(nodes, [helper.make_tensor_value_info("x", F, [2])],
                   [helper.make_tensor_value_info("b", F, [2])])
    with pytest.raises(FrontendError, match="invalid"):
        load(m)


def test_missing_initializer():
    m = conv_model()
    del m.graph.initializer[:]
    with pytest.raises(FrontendError):
        load(m)


@pytest.mark.parametrize("opset,text", [(5, "older than"), (99, "newer|invalid")])
def test_bad_opsets(opset, text):
    m = conv_model()
    m.opset_import[0].version = opset
    with pytest.raises(FrontendError, match=text):
        load(m)


@pytest.mark.parametrize("location", ["/etc/passwd", "../outside.bin", "sub/../../x.bin"])
def test_external_data_outside_the_model_directory(tmp_path, location):
    m = conv_model()
    w = m.graph.initializer[0]
    w.ClearField("raw_data")
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    entry = w.external_data.add()
    entry.key, entry.value = "location", location
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    with pytest.raises(FrontendError, match="outside the model's directory"):
        load(str(path))


def test_external_data_inside_the_directory_loads(tmp_path):
    m = conv_model()
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    g = load(str(path))
    expected = numpy_helper.to_array(conv_model().graph.initializer[0])
    np.testing.assert_array_equal(g.data["w"], expected)


# ---------------------------------------------------------------------- shapes
def test_symbolic_batch_is_kept_and_can_be_pinned():
    g = load(conv_model())
    assert g.inputs[0].shape == ("N", 3, 8, 8) and g.outputs[0].shape == ("N", 4, 8, 8)
    assert load(conv_model(), batch=2).inputs[0].shape == (2, 3, 8, 8)


def test_other_symbolic_dims_need_concrete_shapes():
    m = conv_model()
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    with pytest.raises(FrontendError, match="input_shapes"):
        load(m)
    g = load(m, input_shapes={"x": (1, 3, 8, 8)})
    assert g.outputs[0].shape == (1, 4, 8, 8)


def test_shape_arithmetic_is_folded_with_a_symbolic_batch():
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape, as PyTorch's flatten exports."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),
        helper.make_node("Relu", ["flat"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array([0], np.int64), "axes"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus1")]
    m = make_model(nodes, [helper.make_tensor_value_info("x", F, ["batch", 3, 4, 4])],
                   [helper.make_tensor_value_info("y", F, ["batch", 48])], inits)
    g = load(m)
    assert [n.op for n in g.nodes] == ["Reshape", "Relu"]
    assert g.outputs[0].shape == ("batch", 48)
    x = np.random.default_rng(0).standard_normal((3, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(cnncompiler.compile(g)(x), run_onnxruntime(m, {"x": x})[0])


def run_both(m, **feeds):
    ours = cnncompiler.compile(load(m))(**feeds)
    ours = ours if isinstance(ours, tuple) else (ours,)
    for a, b in zip(ours, run_onnxruntime(m, feeds)):
        assert a.shape == b.shape
        assert rel_err(a, b) < 1e-5


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_conv_auto_pad(auto_pad):
    w = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((2, 3, 4, 3)).astype(np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], auto_pad=auto_pad, strides=[2, 2])
    m = make_model([node], [helper.make_tensor_value_info("x", F, [1, 3, 9, 8])],
                   [helper.make_tensor_value_info("y", F, [1, 2, "h", "w"])], [w])
    run_both(m, x=np.random.default_rng(1).standard_normal((1, 3, 9, 8)).astype(np.float32))


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_pre_opset13_softmax_coerces_to_2d(op):
    node = helper.make_node(op, ["x"], ["y"], axis=1)
    m = make_model([node], [helper.make_tensor_value_info("x", F, [2, 3, 4])],
                   [helper.make_tensor_value_info("y", F, [2, 3, 4])], opset=11)
    run_both(m, x=np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32))


@pytest.mark.parametrize("opset", [7, 11, 13])
def test_clip_attributes_and_inputs(opset):
    if opset < 11:
        node = helper.make_node("Clip", ["x"], ["y"], min=-0.5, max=0.7)
        inits = []
    else:
        node = helper.make_node("Clip", ["x", "lo", "hi"], ["y"])
        inits = [numpy_helper.from_array(np.array(-0.5, np.float32), "lo"),
                 numpy_helper.from_array(np.array(0.7, np.float32), "hi")]
    m = make_model([node], [helper.make_tensor_value_info("x", F, [2, 5])],
                   [helper.make_tensor_value_info("y", F, [2, 5])], inits, opset)
    run_both(m, x=np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32))


def test_upsample_opset9_and_dropout_mask_unused():
    scales = numpy_helper.from_array(np.array([1, 1, 2, 3], np.float32), "scales")
    nodes = [helper.make_node("Dropout", ["x"], ["d", "mask"], ratio=0.3),
             helper.make_node("Upsample", ["d", "scales"], ["y"], mode="nearest")]
    m = make_model(nodes, [helper.make_tensor_value_info("x", F, [1, 2, 3, 3])],
                   [helper.make_tensor_value_info("y", F, [1, 2, 6, 9])], [scales], opset=9)
    g = load(m)
    assert [n.op for n in g.nodes] == ["Resize"]
    run_both(m, x=np.random.default_rng(0).standard_normal((1, 2, 3, 3)).astype(np.float32))


def test_runtime_computed_shape_operand_is_a_clear_error():
    node = helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape_dyn")
    m = make_model([node], [helper.make_tensor_value_info("x", F, [2, 6]),
                            helper.make_tensor_value_info("s", TensorProto.INT64, [2])],
                   [helper.make_tensor_value_info("y", F, ["a", "b"])])
    with pytest.raises(UnsupportedError, match="reshape_dyn.*must be a constant"):
        load(m)


@pytest.mark.parametrize("op", ["ReduceL1", "ReduceLogSum"])
def test_reduce_axes_input_opset18(op):
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    node = helper.make_node(op, ["x", "axes"], ["y"], keepdims=0)
    m = make_model([node], [helper.make_tensor_value_info("x", F, [2, 3, 4])],
                   [helper.make_tensor_value_info("y", F, [2, 4])], [axes], opset=18)
    assert [(n.op, n.attrs["axes"]) for n in load(m).nodes] == [(op, (1,))]
    run_both(m, x=np.random.default_rng(0).uniform(0.5, 2, (2, 3, 4)).astype(np.float32))


def test_cast_like_takes_the_element_type_of_its_second_input():
    node = helper.make_node("CastLike", ["x", "like"], ["y"])
    m = make_model([node], [helper.make_tensor_value_info("x", F, [2, 3]),
                            helper.make_tensor_value_info("like", TensorProto.DOUBLE, [1])],
                   [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [2, 3])], opset=15)
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    y = cnncompiler.compile(load(m))(x=x, like=np.zeros(1))
    assert y.dtype == np.float64 and np.array_equal(y, x.astype(np.float64))


@pytest.mark.parametrize("opset", [9, 13])
def test_dropout_mask_output_is_all_true_at_inference(opset):
    node = helper.make_node("Dropout", ["x"], ["y", "mask"])
    mask_type = TensorProto.BOOL if opset >= 10 else F
    m = make_model([node], [helper.make_tensor_value_info("x", F, [2, 3])],
                   [helper.make_tensor_value_info("y", F, [2, 3]),
                    helper.make_tensor_value_info("mask", mask_type, [2, 3])], opset=opset)
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    y, mask = cnncompiler.compile(load(m))(x=x)
    assert np.array_equal(y, x)
    assert mask.dtype == (np.bool_ if opset >= 10 else np.float32) and mask.shape == (2, 3)
    assert np.all(mask == 1)
    with pytest.raises(UnsupportedError, match="mask output"):
        load(make_model([node], [helper.make_tensor_value_info("x", F, ["N", 3])],
                        [helper.make_tensor_value_info("y", F, ["N", 3]),
                         helper.make_tensor_value_info("mask", mask_type, ["N", 3])],
                        opset=opset))


@pytest.mark.parametrize("shape", [[1, 1, 5], [1, 1, 3, 4, 5]])
def test_conv_transpose_other_than_2d_is_unsupported(shape):
    w = numpy_helper.from_array(np.ones([1, 2, *[3] * (len(shape) - 2)], np.float32), "w")
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"])
    out = [1, 2, *(d + 2 for d in shape[2:])]
    m = make_model([node], [helper.make_tensor_value_info("x", F, shape)],
                   [helper.make_tensor_value_info("y", F, out)], [w])
    with pytest.raises(UnsupportedError, match="only 2-D"):
        load(m)


def test_squeeze_without_axes_keeps_the_symbolic_batch():
    node = helper.make_node("Squeeze", ["x"], ["y"])
    m = make_model([node], [helper.make_tensor_value_info("x", F, ["N", 1, 5, 1])],
                   [helper.make_tensor_value_info("y", F, ["N", 5])])
    g = load(m)
    assert g.outputs[0].shape == ("N", 5)
    x = np.random.default_rng(0).standard_normal((3, 1, 5, 1)).astype(np.float32)
    np.testing.assert_array_equal(cnncompiler.compile(g)(x), x.reshape(3, 5))


def test_zero_size_input_dim_is_a_clear_error():
    m = conv_model()
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 0
    with pytest.raises(CnnCompilerError, match="zero-size|invalid"):
        load(m)


@pytest.mark.parametrize("out_shape,strides", [([10, 8], [2, 2]), ([11, 10], [3, 2])])
def test_conv_transpose_output_shape_splits_pads_as_onnxruntime(out_shape, strides):
    """An odd total padding puts the extra row at the start (onnxruntime, ONNX spec)."""
    w = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((2, 3, 3, 3)).astype(np.float32), "w")
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=strides,
                            output_shape=out_shape)
    m = make_model([node], [helper.make_tensor_value_info("x", F, [1, 2, 4, 4])],
                   [helper.make_tensor_value_info("y", F, [1, 3, *out_shape])], [w])
    run_both(m, x=np.random.default_rng(1).standard_normal((1, 2, 4, 4)).astype(np.float32))
