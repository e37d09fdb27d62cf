"""Whole zoo networks run on the reference backend: finite outputs of the right shape."""

import numpy as np
import pytest

import cnncompiler
from cnncompiler import zoo


@pytest.mark.parametrize("name", ["lenet5", "alexnet", "resnet18", "mobilenet_v2"])
def test_zoo_net_runs(name):
    net = zoo.get(name)
    cm = cnncompiler.compile(net, backend="reference")
    x = np.random.default_rng(0).standard_normal(
        (1, *net.input_shape[1:])).astype(np.float32)
    y = cm(x)
    classes = 10 if name == "lenet5" else 1000
    assert y.shape == (1, classes) and y.dtype == np.float32
    assert np.all(np.isfinite(y)) and np.std(y) > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vgg16", "resnet50"])
def test_big_zoo_net_runs(name):
    net = zoo.get(name)
    cm = cnncompiler.compile(net, backend="reference")
    y = cm(np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32))
    assert y.shape == (1, 1000) and np.all(np.isfinite(y))
