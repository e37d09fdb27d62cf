"""Model zoo: exact parameter counts, registry errors, traced shapes and layer names."""

from __future__ import annotations

import numpy as np
import pytest

from cnncompiler import zoo
from cnncompiler.errors import ModelError

# Published / torchvision counts (trainable only: BatchNorm running statistics excluded).
PARAMS = {
    "lenet5": 61_706,
    "alexnet": 62_378_344,
    "vgg11": 132_863_336,
    "vgg13": 133_047_848,
    "vgg16": 138_357_544,
    "vgg19": 143_667_240,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "mobilenet_v2": 3_504_872,
}


def test_names_are_the_registry():
    assert zoo.names() == list(PARAMS)


@pytest.mark.parametrize("name", list(PARAMS))
def test_parameter_count(name):
    model = zoo.get(name)
    assert model.num_parameters() == PARAMS[name]
    # built lazily: no weights allocated until init_parameters / to_graph
    assert all(p.data is None for _, p in model.named_parameters())


@pytest.mark.parametrize("name", list(PARAMS))
def test_describe_is_one_line_with_input_size(name):
    text = zoo.describe(name)
    _, c, h, w = type(zoo.get(name)).input_shape
    assert "\n" not in text and text.startswith(name)
    assert f"{c}x{h}x{w}" in text


def test_num_classes_changes_only_the_classifier():
    assert zoo.get("resnet18", num_classes=10).num_parameters() == 11_689_512 - 990 * 513
    assert zoo.get("lenet5", num_classes=2).num_parameters() == 61_706 - 8 * 85


def test_unknown_name_lists_known_models():
    with pytest.raises(ModelError, match="unknown model 'resnet51'") as info:
        zoo.get("resnet51")
    for name in PARAMS:
        assert name in str(info.value)
    with pytest.raises(ModelError, match="unknown model"):
        zoo.describe("googlenet")


def test_bad_keyword_is_a_model_error():
    with pytest.raises(ModelError, match="num_classes"):
        zoo.get("vgg16", classes=10)


def test_alexnet_layer_names_follow_the_lecture():
    layers = [n for n, _ in zoo.get("alexnet").named_modules() if n]
    assert [n for n in layers if not n.startswith(("relu", "drop", "flatten"))] == [
        "conv1", "pool1", "norm1", "conv2", "pool2", "norm2", "conv3", "conv4", "conv5",
        "pool3", "fc6", "fc7", "fc8"]


@pytest.mark.parametrize("name,classes", [("lenet5", 10), ("alexnet", 1000),
                                          ("resnet18", 1000), ("mobilenet_v2", 1000),
                                          ("resnet50", 7)])
def test_to_graph_output_shape(name, classes):
    model = zoo.get(name, num_classes=classes)
    g = model.to_graph(with_weights=False)
    assert [tuple(v.shape) for v in g.outputs] == [("N", classes)]
    assert g.num_params() == model.num_parameters()


def test_vgg16_intermediate_shapes():
    g = zoo.get("vgg16").to_graph(with_weights=False)
    shapes = {name: list(v.shape) for name, v in g.values.items()}
    assert shapes["features.conv1_1"] == ["N", 64, 224, 224]
    assert shapes["features.pool5"] == ["N", 512, 7, 7]
    assert shapes["classifier.fc6"] == ["N", 4096]
    assert ["N", 64, 224, 224] in shapes.values() and ["N", 512, 7, 7] in shapes.values()


def test_resnet_floor_rounding_gives_torchvision_sizes():
    g = zoo.get("resnet18").to_graph(with_weights=False)
    sizes = {n: tuple(g.values[n].shape[2:]) for n in ("conv1", "maxpool", "layer1.1.relu2",
                                                      "layer2.0.downsample.0", "layer4.1.add")}
    assert sizes == {"conv1": (112, 112), "maxpool": (56, 56), "layer1.1.relu2": (56, 56),
                     "layer2.0.downsample.0": (28, 28), "layer4.1.add": (7, 7)}


def test_lenet5_weights_are_deterministic():
    a = zoo.get("lenet5").to_graph(seed=0).data
    b = zoo.get("lenet5").to_graph(seed=0).data
    assert sorted(a) == sorted(b) and len(a) == 10
    for name in a:
        assert a[name] is not None
        np.testing.assert_array_equal(a[name], b[name])
