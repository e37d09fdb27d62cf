"""ONNX export: every exported model passes onnx.checker (full check) and onnxruntime gives
the reference backend's outputs."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import cnncompiler  # noqa: E402
from cnncompiler import nn, zoo  # noqa: E402
from cnncompiler.errors import ModelError, UnsupportedError  # noqa: E402
from cnncompiler.frontends.onnx import exporter  # noqa: E402
from cnncompiler.frontends.onnx.exporter import save, to_onnx  # noqa: E402
from cnncompiler.ir import GraphBuilder  # noqa: E402
from cnncompiler.ir.graph import Graph, Node, Value, ValueKind  # noqa: E402
from cnncompiler.ir.types import TensorType  # noqa: E402
from cnncompiler.nn import functional as F  # noqa: E402
from cnncompiler.ops import registry  # noqa: E402
from cnncompiler.ops.opdef import FusionKind, Input, OpDef  # noqa: E402

RTOL = 1e-4


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def random_input(shape, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    x[x == 0] = 0.5  # non-zero everywhere
    return x


def randomize(net: nn.Module, seed: int = 1) -> nn.Module:
    """Non-trivial weights everywhere: random biases, BN scales/shifts and running stats."""
    net.init_parameters(seed)
    rng = np.random.default_rng(seed)
    for name, p in net.named_parameters():
        if name.endswith("running_var"):
            p.data = rng.uniform(0.5, 2.0, p.shape).astype(np.float32)
        elif name.endswith(("running_mean", "bias")) or p.init in ("zeros", "ones"):
            p.data = (rng.standard_normal(p.shape) * 0.5 + (p.init == "ones")).astype(np.float32)
    return net


def check_against_reference(graph: Graph, batch_inputs: dict[str, np.ndarray] | None = None,
                            **export_kw) -> onnx.ModelProto:
    model = to_onnx(graph, **export_kw)
    onnx.checker.check_model(model, full_check=True)
    if batch_inputs is None:
        batch_inputs = {v.name: random_input(v.type.concrete(default=2), i)
                        for i, v in enumerate(graph.inputs)}
    got = session(model).run(None, batch_inputs)
    want = cnncompiler.compile(graph, backend="reference")(**batch_inputs)
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want) == len(graph.outputs)
    for v, g, w in zip(graph.outputs, got, want):
        assert g.shape == w.shape, v.name
        assert rel_err(g, w) < RTOL, (v.name, rel_err(g, w))
    return model


# ------------------------------------------------------------------------- small DSL nets
class ConvNet(nn.Module):
    """Conv with stride/pad/groups/dilation, with and without bias, floor rounding."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4, bias=False)
        self.c3 = nn.Conv2d(8, 6, (3, 2), stride=(2, 1), padding=(1, 0, 0, 1), rounding="floor")
        self.dw = nn.Conv2d(6, 6, 3, padding="same", groups=6)

    def forward(self, x):
        return self.dw(self.c3(self.c2(self.c1(x))))


class PoolNet(nn.Module):
    """MaxPool in ceil mode (with a window that would start in the end padding), AveragePool
    counting the padding and not, in floor and ceil modes, GlobalAveragePool."""

    def forward(self, x):
        a = F.max_pool2d(x, 2, 2, ceil_mode=True, name="max_ceil")             # 9 -> 5
        b = F.max_pool2d(x, 2, 2, padding=1, ceil_mode=True, name="max_ceil_pad")  # 9 -> 5
        c = F.avg_pool2d(x, 3, 2, padding=1, count_include_pad=True, name="avg_incl")
        d = F.avg_pool2d(x, 3, 2, padding=1, count_include_pad=False, name="avg_excl")
        e = F.avg_pool2d(x, 2, 2, padding=1, ceil_mode=True, count_include_pad=True,
                         name="avg_ceil_incl")
        f = F.avg_pool2d(x, 2, 2, padding=1, ceil_mode=True, count_include_pad=False,
                         name="avg_ceil_excl")
        g = F.max_pool2d(x, 2, 1, dilation=2, rounding="floor", name="max_dilated")
        h = F.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=True, name="avg_ceil")
        return a, b, c, d, e, f, g, h, F.global_avg_pool2d(x, name="gap")


class NormNet(nn.Module):
    """BatchNorm with random running stats, LRN, and the activations."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8, eps=1e-3)
        self.lrn = nn.LRN(size=3, alpha=1e-2, beta=0.75, k=2.0)
        self.prelu = nn.PReLU(8)
        self.prelu1 = nn.PReLU()

    def forward(self, x):
        y = self.lrn(self.bn(self.conv(x)))
        outs = [self.prelu(y), self.prelu1(y), F.relu6(y), F.clip(y, max=0.5),
                F.clip(y, min=-0.25), F.leaky_relu(y, 0.2), F.hardsigmoid(y),
                F.hardswish(y), F.sigmoid(y), F.tanh(y), F.relu(y)]
        return tuple(outs)


class HeadNet(nn.Module):
    """Flatten, Dropout, Linear (Gemm), Softmax, LogSoftmax; a BatchNorm1d on [N, C]."""

    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.drop = nn.Dropout(0.3)
        self.fc1 = nn.Linear(3 * 6 * 6, 16)
        self.bn = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 10, bias=False)
        self.softmax = nn.Softmax(axis=1)
        self.logsoftmax = nn.LogSoftmax()

    def forward(self, x):
        y = self.fc2(self.bn(self.fc1(self.drop(self.flatten(x)))))
        return self.softmax(y), self.logsoftmax(y)


class ShapeNet(nn.Module):
    """Concat, Split, Pad (three modes, a crop), Transpose, Reshape."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 1)

    def forward(self, x):
        y = F.concat([x, self.conv(x)], axis=1)                    # [N, 9, 6, 6]
        a, b, c = F.split(y, [2, 3, 4], axis=1)
        p1 = F.pad(a, (0, 0, 1, 2, 0, 0, 2, 1), value=0.75)
        p2 = F.pad(b, (0, 0, 2, 1, 0, 0, 1, 2), mode="reflect")
        p3 = F.pad(c, (0, 0, 1, -1, 0, 0, 0, 2), mode="edge")
        t = F.transpose(p1, (0, 2, 3, 1))
        r = F.reshape(p3, (0, -1, 7))
        return p1, p2, t, r, x.reshape(-1, 3 * 36)


class MathNet(nn.Module):
    """Add/Sub/Mul/Div with broadcasting, against constants and between tensors."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter((3, 1, 1), "ones")
        self.row = nn.Parameter((6,), "ones")

    def forward(self, x):
        # Tensor operators take tensors, arrays and numbers; Parameters go through tracer.op
        y = F.add(x.tracer.op("Mul", x, self.scale), self.row)    # [N,3,6,6] * [3,1,1] + [6]
        z = 2.0 - y / (1.5 + x * x)                                # numbers on both sides
        w = F.global_avg_pool2d(x)                                 # [N, 3, 1, 1]
        v = y - np.linspace(0.5, 1.5, 6, dtype=np.float32) * w    # [6] * [N,3,1,1]
        return z - w, y * w, F.add(w, self.row), x.tracer.op("Div", y, self.scale), v


class UpNet(nn.Module):
    """ConvTranspose and Resize (nearest and bilinear, by scale and by size)."""

    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1)
        self.up2 = nn.ConvTranspose2d(4, 4, 2, stride=2, groups=2, bias=False, dilation=1)
        self.near = nn.Upsample(scale_factor=2, mode="nearest")
        self.bilin = nn.Upsample(scale_factor=2, mode="bilinear")
        self.bilin_ac = nn.Upsample(size=(9, 11), mode="bilinear", align_corners=True)
        self.near_size = nn.Upsample(size=(10, 7))

    def forward(self, x):
        y = self.up(x)
        return (y, self.up2(y), self.near(x), self.bilin(x), self.bilin_ac(x),
                self.near_size(x))


SMALL_NETS = {
    "conv": (ConvNet, (2, 3, 17, 17)),
    "pool": (PoolNet, (2, 3, 9, 9)),
    "norm": (NormNet, (2, 3, 7, 7)),
    "head": (HeadNet, (2, 3, 6, 6)),
    "shape": (ShapeNet, (2, 3, 6, 6)),
    "math": (MathNet, (2, 3, 6, 6)),
    "up": (UpNet, (2, 3, 5, 5)),
}


@pytest.mark.parametrize("name", sorted(SMALL_NETS))
def test_small_net_matches_reference(name):
    cls, shape = SMALL_NETS[name]
    graph = randomize(cls()).to_graph(shape)
    check_against_reference(graph)


def test_small_nets_cover_the_ops():
    ops = set()
    for cls, shape in SMALL_NETS.values():
        ops |= {n.op for n in cls().to_graph(shape)}
    assert ops >= {"Conv", "MaxPool", "AveragePool", "BatchNormalization", "LRN", "Gemm",
                   "Flatten", "Dropout", "Clip", "LeakyRelu", "PRelu", "HardSigmoid",
                   "HardSwish", "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "Concat", "Split",
                   "Pad", "Transpose", "Reshape", "Add", "Sub", "Mul", "Div", "ConvTranspose",
                   "Resize", "GlobalAveragePool", "Relu"}


def test_translated_attributes():
    model = to_onnx(randomize(PoolNet()).to_graph((1, 3, 9, 9)))
    attrs = {n.name: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
             for n in model.graph.node}
    assert attrs["max_ceil"]["ceil_mode"] == 1 and "rounding" not in attrs["max_ceil"]
    assert attrs["avg_ceil"]["ceil_mode"] == 1
    # the IR drops a last window that would start in the end padding: that is floor mode
    assert "ceil_mode" not in attrs["max_ceil_pad"]
    assert "ceil_mode" not in attrs["avg_incl"]
    assert attrs["avg_incl"]["count_include_pad"] == 1
    assert attrs["avg_excl"]["count_include_pad"] == 0
    model = to_onnx(randomize(NormNet()).to_graph((1, 3, 7, 7)))
    nodes = {n.name: n for n in model.graph.node}
    assert "rounding" not in {a.name for a in nodes["conv"].attribute}
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    relu6, upper, lower = [n for n in model.graph.node if n.op_type == "Clip"]
    assert (inits[relu6.input[1]], inits[relu6.input[2]]) == (0.0, 6.0)
    assert upper.input[1] == "" and inits[upper.input[2]] == 0.5
    assert len(lower.input) == 2 and inits[lower.input[1]] == np.float32(-0.25)
    bn = {a.name: a.f for a in nodes["bn"].attribute}
    assert bn["epsilon"] == pytest.approx(1e-3) and "momentum" in bn


def test_split_without_sizes_exports_num_outputs():
    b = GraphBuilder("splitn")
    x = b.input("x", (2, 7, 3))
    outs = b.add_node("Split", [x], {"axis": 1}, "split", num_outputs=3)
    graph = b.build(outs)
    model = check_against_reference(graph)
    (node,) = model.graph.node
    assert list(node.input) == ["x"]
    assert {a.name: a.i for a in node.attribute} == {"axis": 1, "num_outputs": 3}


def test_conv_transpose_output_size_becomes_explicit_pads():
    # the exporter writes the IR's resolved pads (odd totals start-heavy, as onnxruntime);
    # a negative total (output larger) becomes output_padding
    b = GraphBuilder("deconv")
    x = b.input("x", (1, 2, 4, 5))
    w = b.param("w", random_input((2, 3, 3, 3), 3))
    outs = [b.op("ConvTranspose", x, w, name="crop", strides=(2, 2), output_shape=(1, 3, 8, 10)),
            b.op("ConvTranspose", x, w, name="grow", strides=(2, 2), output_shape=(10, 12)),
            b.op("ConvTranspose", x, w, name="upper", strides=(2, 2), auto_pad="SAME_UPPER"),
            b.op("ConvTranspose", x, w, name="lower", strides=(2, 2), auto_pad="SAME_LOWER")]
    model = check_against_reference(b.build(outs))
    attrs = {n.name: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
             for n in model.graph.node}
    assert attrs["crop"]["pads"] == [1, 1, 0, 0] and "output_shape" not in attrs["crop"]
    assert attrs["grow"]["output_padding"] == [1, 1] and attrs["grow"]["pads"] == [0] * 4
    assert attrs["upper"]["pads"] == [0, 0, 1, 1] and "auto_pad" not in attrs["upper"]
    assert attrs["lower"]["pads"] == [1, 1, 0, 0]


# ------------------------------------------------------------------------------ zoo models
@pytest.mark.parametrize("name", ["lenet5", "alexnet", "resnet18", "mobilenet_v2"])
def test_zoo_model_matches_reference(name):
    net = zoo.get(name)
    if name in ("resnet18", "mobilenet_v2"):
        randomize(net)  # random BatchNorm statistics
    graph = net.to_graph((1, *net.input_shape[1:]))
    check_against_reference(graph)


def test_symbolic_batch_is_a_dim_param():
    graph = randomize(zoo.get("lenet5")).to_graph(("N", 1, 32, 32))
    x = random_input((3, 1, 32, 32))
    model = check_against_reference(graph, {"x": x})
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [1, 32, 32]
    out_dims = model.graph.output[0].type.tensor_type.shape.dim
    assert out_dims[0].dim_param == "N" and out_dims[1].dim_value == 10
    assert session(model).run(None, {"x": x})[0].shape == (3, 10)


def test_names_are_kept_and_weights_are_initializers():
    graph = randomize(ConvNet()).to_graph((1, 3, 17, 17), name="my_net")
    model = to_onnx(graph)
    assert model.graph.name == "my_net"
    assert [n.name for n in model.graph.node] == [n.name for n in graph.nodes]
    assert [list(n.output) for n in model.graph.node] == \
        [[v.name for v in n.outputs] for n in graph.nodes]
    assert [i.name for i in model.graph.input] == ["x"]
    assert [o.name for o in model.graph.output] == [v.name for v in graph.outputs]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for name, arr in graph.data.items():
        np.testing.assert_array_equal(inits[name], arr)
    assert model.opset_import[0].version == 18
    assert model.producer_name == "cnncompiler"


def test_dsl_module_and_input_shape():
    model = to_onnx(randomize(zoo.get("lenet5")), input_shape=(4, 1, 32, 32))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [4, 1, 32, 32]


def test_constant_names_are_unique():
    class TwoClips(nn.Module):
        def forward(self, x):
            return F.relu6(F.relu6(x, name="c"))

    graph = TwoClips().to_graph((1, 4))
    model = to_onnx(graph)
    names = [t.name for t in model.graph.initializer]
    assert len(names) == len(set(names)) == 4
    onnx.checker.check_model(model, full_check=True)


def test_save_writes_a_checked_model(tmp_path):
    graph = randomize(zoo.get("lenet5")).to_graph(("N", 1, 32, 32))
    path = tmp_path / "lenet.onnx"
    save(graph, path)
    loaded = onnx.load(str(path))
    x = random_input((2, 1, 32, 32))
    got = session(loaded).run(None, {"x": x})[0]
    assert rel_err(got, cnncompiler.compile(graph)(x)) < RTOL


def test_save_large_model_uses_external_data(tmp_path, monkeypatch):
    monkeypatch.setattr(exporter, "_PROTO_LIMIT", 1000)
    graph = randomize(zoo.get("lenet5")).to_graph((1, 1, 32, 32))
    path = tmp_path / "big.onnx"
    save(graph, path)
    assert (tmp_path / "big.onnx.data").is_file()
    x = random_input((1, 1, 32, 32))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    got = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    assert rel_err(got, cnncompiler.compile(graph)(x)) < RTOL


# --------------------------------------------------------------------- opsets and errors
def _one_node_graph(op: str, attrs: dict, in_shape, out_shape, out_dtype="float32") -> Graph:
    """A one-node graph built by hand (not through the registry), input "x", output "y"."""
    x = Value("x", TensorType(tuple(in_shape)), ValueKind.INPUT)
    node = Node(op, [x], [], attrs, name="n1")
    y = Value("y", TensorType(tuple(out_shape), out_dtype), ValueKind.INTERMEDIATE, node)
    node.outputs.append(y)
    return Graph("manual", [x], [y], [node], {})


def _manual_graph(op: str, attrs: dict) -> Graph:
    return _one_node_graph(op, attrs, (2, 5), (2, 5))


def test_opset_below_18_is_refused():
    with pytest.raises(UnsupportedError, match="opset"):
        to_onnx(_manual_graph("Relu", {}), opset=13)


def test_opset_above_18_is_kept():
    model = to_onnx(_manual_graph("Relu", {}), opset=19)
    assert model.opset_import[0].version == 19
    onnx.checker.check_model(model, full_check=True)


def test_unknown_op_raises_unsupported():
    with pytest.raises(UnsupportedError, match=r"'n1'.*NoSuchOp"):
        to_onnx(_manual_graph("NoSuchOp", {}))


def test_registered_op_without_translation_raises_unsupported(monkeypatch):
    fancy = OpDef(name="FancyOp", doc="test op", inputs=(Input("X"),), attrs=(),
                  infer=lambda ctx: ctx.input(0), reference=lambda inputs, a: inputs[0],
                  fusion=FusionKind.ELEMENTWISE)
    monkeypatch.setitem(registry._OPS, "FancyOp", fancy)
    b = GraphBuilder("fancy")
    y = b.op("FancyOp", b.input("x", (2, 3)), name="fancy1")
    with pytest.raises(UnsupportedError, match=r"'fancy1'.*FancyOp"):
        to_onnx(b.build(y))


def test_attribute_onnx_lacks_raises_unsupported():
    with pytest.raises(UnsupportedError, match=r"'n1'.*Relu.*'bogus'"):
        to_onnx(_manual_graph("Relu", {"bogus": 1}))
    with pytest.raises(UnsupportedError, match=r"'n1'.*'alpha'"):
        to_onnx(_manual_graph("LeakyRelu", {"alpha": "big"}))


def test_missing_weights_raise_model_error():
    graph = zoo.get("lenet5").to_graph((1, 1, 32, 32), with_weights=False)
    with pytest.raises(ModelError, match="no data"):
        to_onnx(graph)


# ------------------------------------------------- the other ops, one small graph per group
def _i64(b: GraphBuilder, values) -> Value:
    return b.const(np.asarray(values, np.int64), name="idx")


def _pos(b: GraphBuilder, x: Value) -> Value:
    return b.op("Add", b.op("Abs", x), b.const(np.float32(0.5)))


OP_CASES = {
    # name: (ops -> outputs, expected opset)
    "cast_shape": (lambda b, x: [b.op("Cast", x, to="int64"), b.op("Cast", x, to="bool"),
                                 b.op("Cast", b.op("Cast", x, to="float64"), to="float32"),
                                 b.op("Shape", x, start=1, end=-1),
                                 b.op("ConstantOfShape", shape=(2, 3), value=2.5),
                                 b.op("ConstantOfShape", shape=(4,), value=3, dtype="int64")],
                   18),
    "squeeze": (lambda b, x: [b.op("Squeeze", b.op("Unsqueeze", x, axes=(0, -1)), axes=(0,)),
                              b.op("Squeeze", b.op("Unsqueeze", x, axes=(2,)))], 18),
    "reduce": (lambda b, x: [b.op("ReduceMean", x, axes=(1,), keepdims=False),
                             b.op("ReduceSum", x), b.op("ReduceMax", x, axes=(-1, 2)),
                             b.op("ReduceMin", x, axes=(0,)), b.op("ReduceL1", x, axes=(3,)),
                             b.op("ReduceL2", x, axes=(1, 2), keepdims=False),
                             b.op("ReduceLogSumExp", x, axes=(1,)),
                             b.op("ReduceSumSquare", x, axes=(2,)),
                             b.op("ReduceLogSum", _pos(b, x), axes=(1,)),
                             b.op("ReduceProd", x, axes=(1,)),
                             b.op("ArgMax", x, axis=1), b.op("ArgMin", x, axis=-1, keepdims=False)],
               18),
    "slice_expand_tile_gather": (
        lambda b, x: [b.op("Slice", x, starts=(1, 0), ends=(3, 100), axes=(2, 3), steps=(1, 2)),
                      b.op("Slice", x, starts=(-1,), ends=(-(2**31),), axes=(1,), steps=(-2,)),
                      b.op("Slice", x, starts=(0, 1), ends=(1, 3)),
                      b.op("Expand", b.op("ReduceMean", x, axes=(1,)), shape=(3, 2, 4, 1, 1)),
                      b.op("Tile", x, repeats=(1, 2, 1, 3)),
                      b.op("Gather", x, _i64(b, [3, 0, 3]), axis=1),
                      b.op("Gather", x, _i64(b, [[-1, 0], [1, 1]]), axis=-1)], 18),
    "math": (lambda b, x: [
        b.op("Exp", x), b.op("Log", _pos(b, x)), b.op("Sqrt", _pos(b, x)),
        b.op("Reciprocal", _pos(b, x)), b.op("Floor", x), b.op("Ceil", x), b.op("Erf", x),
        b.op("Neg", x), b.op("Softplus", x), b.op("Softsign", x), b.op("Elu", x, alpha=0.7),
        b.op("Selu", x), b.op("Celu", x, alpha=1.3), b.op("ThresholdedRelu", x, alpha=0.2),
        b.op("Mish", x), b.op("Pow", _pos(b, x), b.const(np.float32(1.7))),
        b.op("Max", x, b.const(np.float32(0.1)), b.op("Neg", x)),
        b.op("Min", x, b.const(np.zeros((4, 1, 6), np.float32))),
        b.op("Sum", x, x, b.const(np.float32(1.0))), b.op("Mean", x, b.op("Exp", x)),
        b.op("Where", b.op("Greater", x, b.const(np.float32(0.0))), x, b.op("Neg", x)),
        b.op("Not", b.op("Less", x, b.const(np.float32(0.3)))),
        b.op("Equal", b.op("Cast", x, to="int64"), b.const(np.int64(0))),
        b.op("GlobalMaxPool", x), b.op("Identity", x), b.op("MatMul", x, b.op("Transpose", x,
                                                                               perm=(0, 1, 3, 2)))],
        18),
    "gelu": (lambda b, x: [b.op("Gelu", x), b.op("Gelu", x, approximate="tanh")], 20),
    "swish": (lambda b, x: [b.op("Swish", x), b.op("Swish", x, alpha=1.5)], 24),
    "depth_space": (lambda b, x: [b.op("DepthToSpace", x, blocksize=2),
                                  b.op("DepthToSpace", x, blocksize=2, mode="CRD"),
                                  b.op("SpaceToDepth", x, blocksize=2)], 18),
    "space_to_depth_crd": (lambda b, x: [b.op("SpaceToDepth", x, blocksize=2, mode="CRD")], 28),
}


@pytest.mark.parametrize("case", sorted(OP_CASES))
def test_op_group_matches_reference(case):
    build, opset = OP_CASES[case]
    b = GraphBuilder(case)
    x = b.input("x", (2, 4, 4, 6))
    model = check_against_reference(b.build(build(b, x)))
    assert model.opset_import[0].version == opset


def test_attribute_to_input_translations():
    b = GraphBuilder("inputs")
    x = b.input("x", (2, 4, 4, 6))
    outs = [b.op("Slice", x, name="slice", starts=(1,), ends=(3,), axes=(2,)),
            b.op("ReduceSum", x, name="reduce_all"),
            b.op("ConstantOfShape", name="fill", shape=(2, 3), value=2.0, dtype="int64"),
            b.op("Cast", x, name="cast", to="float64")]
    model = to_onnx(b.build(outs))
    nodes = {n.name: n for n in model.graph.node}
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    assert [inits[i].tolist() for i in nodes["slice"].input[1:]] == [[1], [3], [2]]
    assert list(nodes["reduce_all"].input) == ["x"]
    (fill_shape,) = nodes["fill"].input
    assert inits[fill_shape].tolist() == [2, 3]
    assert [a.name for a in nodes["fill"].attribute] == ["value"]  # no IR `dtype`
    value = onnx.numpy_helper.to_array(nodes["fill"].attribute[0].t)
    assert value.dtype == np.int64 and value.tolist() == [2]
    assert nodes["cast"].attribute[0].i == onnx.TensorProto.DOUBLE


def test_every_registered_op_has_a_translation():
    missing = sorted(set(registry.all_ops()) - set(exporter.TRANSLATIONS) - exporter.EXPANDED
                     - exporter.TRAINING_ONLY)
    assert not missing, f"ops the ONNX exporter cannot translate: {missing}"


@pytest.mark.parametrize("case", ["pad_wrap", "resize_half_pixel_symmetric"])
def test_attribute_values_raise_the_opset(case):
    b = GraphBuilder(case)
    x = b.input("x", (1, 2, 4, 5))
    if case == "pad_wrap":
        y = b.op("Pad", x, pads=(0, 0, 1, 2, 0, 0, 2, 1), mode="wrap")
    else:
        y = b.op("Resize", x, mode="linear", scales=(1.0, 1.0, 1.5, 2.0),
                 coordinate_transformation_mode="half_pixel_symmetric")
    model = check_against_reference(b.build(y))
    assert model.opset_import[0].version == 19
