"""MobileNetV2 (Sandler, Howard, Zhu, Zhmoginov & Chen 2018, "MobileNetV2: Inverted residuals
and linear bottlenecks"), torchvision's layout at width 1.0. Nodes are named by role:
``features.block3.expand.conv``, ``features.block3.depthwise.bn``, ``features.block3.add``.

Stride-2 3x3 convs (pad 1) on even sizes use ``rounding="floor"`` as PyTorch does:
(224+2-3)/2+1 = 112.5 -> 112.
"""

from __future__ import annotations

from cnncompiler.nn import (
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    GlobalAvgPool2d,
    Linear,
    Module,
    ReLU6,
    Sequential,
)
from cnncompiler.nn.tensor import Tensor

#: (expansion t, output channels c, repeats n, first stride s), Table 2 of the paper
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
            (6, 160, 3, 2), (6, 320, 1, 1))


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
            act: bool = True) -> Sequential:
    """conv (no bias) -> BN [-> ReLU6], padding kernel // 2."""
    layers: dict[str, Module] = {
        "conv": Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups,
                       bias=False, rounding="floor" if stride > 1 else "exact"),
        "bn": BatchNorm2d(cout),
    }
    if act:
        layers["relu6"] = ReLU6()
    return Sequential(layers)


class InvertedResidual(Module):
    """Expand 1x1 (x t, skipped when t = 1) -> depthwise 3x3 -> linear project 1x1; adds the
    input when the stride is 1 and the channel count is unchanged."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        if expand != 1:
            self.expand = conv_bn(cin, hidden, 1)
        self.depthwise = conv_bn(hidden, hidden, 3, stride, groups=hidden)
        self.project = conv_bn(hidden, cout, 1, act=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.expand(x) if "expand" in self._modules else x
        out = self.project(self.depthwise(out))
        return out + x if self.use_residual else out


class MobileNetV2(Module):
    """MobileNetV2 (Sandler 2018): inverted residual bottlenecks with depthwise 3x3 convs,
    ReLU6, linear (activation-free) projections; 3,504,872 parameters at width 1.0."""

    input_shape = ("N", 3, 224, 224)

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self.num_classes = num_classes
        layers: dict[str, Module] = {"conv0": conv_bn(3, 32, 3, stride=2)}   # 32x112x112
        cin = 32
        for t, c, n, s in SETTINGS:
            for i in range(n):
                layers[f"block{len(layers)}"] = InvertedResidual(cin, c, s if i == 0 else 1, t)
                cin = c
        layers[f"conv{len(layers)}"] = conv_bn(cin, 1280, 1)                  # 1280x7x7
        self.features = Sequential(layers)
        self.pool = GlobalAvgPool2d()
        self.flatten = Flatten()
        self.classifier = Sequential({
            "dropout": Dropout(dropout),
            "fc": Linear(1280, num_classes, init="xavier_uniform"),
        })

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


def mobilenet_v2(num_classes: int = 1000) -> MobileNetV2:
    """MobileNetV2 (Sandler 2018): inverted residuals, depthwise 3x3, ReLU6, 3.5M params."""
    return MobileNetV2(num_classes)
