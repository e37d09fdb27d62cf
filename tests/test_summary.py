"""The lecture's VGG-16 table, row by row, and its totals."""

import json

from cnncompiler import zoo
from cnncompiler.summary import summarize

# (layer, H x W x D, activations, weights) as the CS231n lecture lists VGG-16
LECTURE_VGG16 = [
    ("INPUT", "224x224x3", 150_528, 0),
    ("CONV3-64", "224x224x64", 3_211_264, 1_728),
    ("CONV3-64", "224x224x64", 3_211_264, 36_864),
    ("POOL2", "112x112x64", 802_816, 0),
    ("CONV3-128", "112x112x128", 1_605_632, 73_728),
    ("CONV3-128", "112x112x128", 1_605_632, 147_456),
    ("POOL2", "56x56x128", 401_408, 0),
    ("CONV3-256", "56x56x256", 802_816, 294_912),
    ("CONV3-256", "56x56x256", 802_816, 589_824),
    ("CONV3-256", "56x56x256", 802_816, 589_824),
    ("POOL2", "28x28x256", 200_704, 0),
    ("CONV3-512", "28x28x512", 401_408, 1_179_648),
    ("CONV3-512", "28x28x512", 401_408, 2_359_296),
    ("CONV3-512", "28x28x512", 401_408, 2_359_296),
    ("POOL2", "14x14x512", 100_352, 0),
    ("CONV3-512", "14x14x512", 100_352, 2_359_296),
    ("CONV3-512", "14x14x512", 100_352, 2_359_296),
    ("CONV3-512", "14x14x512", 100_352, 2_359_296),
    ("POOL2", "7x7x512", 25_088, 0),
    ("FC-4096", "1x1x4096", 4_096, 102_760_448),
    ("FC-4096", "1x1x4096", 4_096, 16_777_216),
    ("FC-1000", "1x1x1000", 1_000, 4_096_000),
]


def vgg16_summary():
    return summarize(zoo.get("vgg16").to_graph(with_weights=False))


def test_vgg16_rows_match_the_lecture():
    s = vgg16_summary()
    got = [(r.layer, r.output, r.activations, r.weights) for r in s.rows]
    assert got == LECTURE_VGG16


def test_vgg16_totals():
    s = vgg16_summary()
    assert s.params == 138_357_544
    assert s.params - s.weights == 13_416  # K biases per layer
    assert s.activations == sum(row[2] for row in LECTURE_VGG16)  # 15.2M
    assert 60e6 < s.activation_bytes < 62e6
    # 3x3 convs of VGG-16: ~15.5 G multiply-adds (the paper's figure), 2 FLOPs each
    conv_flops = sum(r.flops for r in s.rows if r.layer.startswith("CONV"))
    assert 30.7e9 < conv_flops < 31.0e9
    text = str(s)
    assert "TOTAL params: 138,357,544" in text and "15,237,608" in text


def test_json_has_the_same_numbers():
    d = json.loads(json.dumps(vgg16_summary().to_dict()))
    assert d["totals"]["params"] == 138_357_544
    assert d["layers"][1]["weights"] == 1_728 and d["layers"][1]["output"] == "224x224x64"


def test_resnet_rows_fold_batchnorm_and_relu():
    s = summarize(zoo.get("resnet18").to_graph(with_weights=False))
    stem = s.rows[1]
    assert stem.ops == ["Conv", "BatchNormalization", "Relu"] and stem.output == "112x112x64"
    assert s.params == 11_689_512
