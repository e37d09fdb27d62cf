"""The DSL: sequential and functional nets trace to typed graphs; weights are seeded and saved."""

import numpy as np
import pytest

import cnncompiler
from cnncompiler import nn
from cnncompiler.errors import ModelError, ShapeError
from cnncompiler.nn import functional as F


def lecture_alexnet_front():
    return nn.Sequential(
        conv1=nn.Conv2d(3, 96, kernel=11, stride=4), relu1=nn.ReLU(),
        pool1=nn.MaxPool2d(3, 2), norm1=nn.LRN(5, k=2.0),
        conv2=nn.Conv2d(96, 256, kernel=5, padding=2), relu2=nn.ReLU(), pool2=nn.MaxPool2d(3, 2))


def test_sequential_traces_with_shapes_and_names():
    g = lecture_alexnet_front().to_graph(("N", 3, 227, 227), with_weights=False)
    shapes = {n.name: n.outputs[0].shape for n in g.nodes}
    assert shapes["conv1"] == ("N", 96, 55, 55)
    assert shapes["pool1"] == ("N", 96, 27, 27)
    assert shapes["conv2"] == ("N", 256, 27, 27)
    assert shapes["pool2"] == ("N", 256, 13, 13)
    assert g.num_params() == 34_944 + 614_656
    assert {p.name for p in g.params} >= {"conv1.weight", "conv1.bias", "conv2.weight"}


class Residual(nn.Module):
    input_shape = ("N", 8, 6, 6)

    def __init__(self):
        super().__init__()
        self.conv_a = nn.Conv2d(8, 8, 3, padding=1)
        self.conv_b = nn.Conv2d(8, 8, 3, padding="same")
        self.side = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = F.relu(self.conv_a(x))
        y = self.conv_b(y) + x
        return F.concat([F.relu(y), self.side(x)], axis=1)


def test_functional_residual_and_concat_run_on_reference():
    model = Residual()
    g = model.to_graph(seed=3)
    assert g.outputs[0].shape == ("N", 12, 6, 6)
    assert any(n.op == "Add" for n in g.nodes) and any(n.op == "Concat" for n in g.nodes)
    x = np.random.default_rng(0).standard_normal((2, 8, 6, 6)).astype(np.float32)
    y = cnncompiler.compile(g)(x)
    w = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    xd = x.astype(np.float64)

    def conv(t, name, pad):
        from helpers import run_ref
        return run_ref("Conv", [t, w[f"{name}.weight"], w[f"{name}.bias"]], pads=(pad,) * 4)[0]

    a = np.maximum(conv(xd, "conv_a", 1), 0)
    b = np.maximum(conv(a, "conv_b", 1) + xd, 0)
    expected = np.concatenate([b, conv(xd, "side", 0)], axis=1)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_seeded_init_is_reproducible_and_he_scaled():
    a = Residual().init_parameters(seed=7).state_dict()
    b = Residual().init_parameters(seed=7).state_dict()
    c = Residual().init_parameters(seed=8).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["conv_a.weight"], c["conv_a.weight"])
    big = nn.Conv2d(64, 256, 3).init_parameters(0).weight.data
    assert abs(big.std() - np.sqrt(2 / (64 * 9))) < 0.01 * np.sqrt(2 / (64 * 9)) * 5


def test_save_load_roundtrip(tmp_path):
    m = Residual().init_parameters(1)
    path = tmp_path / "w.npz"
    m.save(str(path))
    m2 = Residual().load(str(path))
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, m2.state_dict()[k])
    np.savez(tmp_path / "bad.npz", nope=np.zeros(3))
    with pytest.raises(ModelError, match="missing"):
        Residual().load(str(tmp_path / "bad.npz"))
    with pytest.raises(ModelError, match="cannot read"):
        Residual().load(str(tmp_path / "absent.npz"))


def test_shape_error_names_the_layer():
    net = nn.Sequential(features=nn.Sequential(conv1=nn.Conv2d(3, 8, 5, stride=2)))
    with pytest.raises(ShapeError, match=r"node 'features.conv1' \(Conv\).*14.5"):
        net.to_graph((1, 3, 32, 32), with_weights=False)


def test_channel_mismatch_in_dsl():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(16, 8, 3))
    with pytest.raises(ShapeError, match="input has D1=8 channels"):
        net.to_graph((1, 3, 16, 16), with_weights=False)


def test_calling_a_module_on_arrays_is_a_clear_error():
    with pytest.raises(ModelError, match="cnncompiler.compile"):
        nn.ReLU()(np.zeros(3))


class Scaled(nn.Module):
    input_shape = ("N", 3, 4, 4)

    def __init__(self):
        super().__init__()
        self.gamma = nn.Parameter((3, 1, 1), "ones")

    def forward(self, x):
        return x * self.gamma + 1.0


def test_arithmetic_with_parameters_and_numbers():
    model = Scaled()
    g = model.to_graph()
    assert [n.op for n in g.nodes] == ["Mul", "Add"]
    assert g.num_params() == 3
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(cnncompiler.compile(g)(x), x + 1.0, rtol=1e-6)
