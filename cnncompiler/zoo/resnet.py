"""ResNet (He, Zhang, Ren & Sun 2015, "Deep residual learning for image recognition") in
torchvision's layout (v1.5: a Bottleneck strides on its 3x3 conv). Parameter names equal
torchvision's state-dict keys (``layer2.0.downsample.0.weight``), minus ``num_batches_tracked``.

Stride-2 layers use ``rounding="floor"``: at 224x224 the stem conv gives (224+6-7)/2+1 = 112.5
and the 3x3/2 pad-1 convs (56+2-3)/2+1 = 28.5, which PyTorch floors silently.
"""

from __future__ import annotations

from cnncompiler.errors import ModelError
from cnncompiler.nn import (
    BatchNorm2d,
    Conv2d,
    Flatten,
    GlobalAvgPool2d,
    Linear,
    MaxPool2d,
    Module,
    ReLU,
    Sequential,
)
from cnncompiler.nn.tensor import Tensor


def _conv(cin: int, cout: int, kernel: int, stride: int = 1) -> Conv2d:
    """Bias-free conv (a BatchNorm follows) with "same"-style padding kernel // 2."""
    return Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False,
                  rounding="floor" if stride > 1 else "exact")


def _downsample(cin: int, cout: int, stride: int) -> Sequential | None:
    """Projection shortcut (1x1 conv stride s + BN) when the block changes the shape."""
    if stride == 1 and cin == cout:
        return None
    return Sequential(_conv(cin, cout, 1, stride), BatchNorm2d(cout))


class BasicBlock(Module):
    """Two 3x3 convs (ResNet-18/34): relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv(cin, planes, 3, stride)
        self.bn1 = BatchNorm2d(planes)
        self.relu1 = ReLU()
        self.conv2 = _conv(planes, planes, 3)
        self.bn2 = BatchNorm2d(planes)
        self.relu2 = ReLU()
        self.downsample = _downsample(cin, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = self.downsample(x) if self.downsample is not None else x
        return self.relu2(out + identity)


class Bottleneck(Module):
    """1x1 reduce, 3x3 (strided, v1.5), 1x1 expand x4 (ResNet-50/101/152), plus shortcut."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = _conv(cin, planes, 1)
        self.bn1 = BatchNorm2d(planes)
        self.relu1 = ReLU()
        self.conv2 = _conv(planes, planes, 3, stride)
        self.bn2 = BatchNorm2d(planes)
        self.relu2 = ReLU()
        self.conv3 = _conv(planes, cout, 1)
        self.bn3 = BatchNorm2d(cout)
        self.relu3 = ReLU()
        self.downsample = _downsample(cin, cout, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = self.downsample(x) if self.downsample is not None else x
        return self.relu3(out + identity)


#: block type and blocks per stage (layer1..layer4)
DEPTHS: dict[int, tuple[type[Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class ResNet(Module):
    """ResNet (He 2015): 7x7/2 stem + 3x3/2 max pool, four stages of residual blocks (the
    first block of stages 2-4 strides 2 and projects the shortcut), global average pool, FC."""

    input_shape = ("N", 3, 224, 224)

    def __init__(self, depth: int = 50, num_classes: int = 1000):
        super().__init__()
        if depth not in DEPTHS:
            raise ModelError(f"no ResNet of depth {depth}; use one of {sorted(DEPTHS)}")
        block, counts = DEPTHS[depth]
        self.depth, self.num_classes = depth, num_classes
        self.conv1 = _conv(3, 64, 7, stride=2)                     # 64x112x112
        self.bn1 = BatchNorm2d(64)
        self.relu = ReLU()
        self.maxpool = MaxPool2d(3, 2, padding=1, rounding="floor")  # 64x56x56
        cin = 64
        widths = (64, 128, 256, 512)
        for stage, (planes, count) in enumerate(zip(widths, counts, strict=True), start=1):
            stride = 1 if stage == 1 else 2
            blocks = []
            for i in range(count):
                blocks.append(block(cin, planes, stride if i == 0 else 1))
                cin = planes * block.expansion
            setattr(self, f"layer{stage}", Sequential(*blocks))    # 56, 28, 14, 7
        self.avgpool = GlobalAvgPool2d()
        self.flatten = Flatten()
        self.fc = Linear(cin, num_classes, init="xavier_uniform")

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))

    def extra_repr(self) -> str:
        return f"depth={self.depth}"


def resnet18(num_classes: int = 1000) -> ResNet:
    """ResNet-18 (He 2015): BasicBlocks [2, 2, 2, 2], 11.7M params."""
    return ResNet(18, num_classes)


def resnet34(num_classes: int = 1000) -> ResNet:
    """ResNet-34 (He 2015): BasicBlocks [3, 4, 6, 3], 21.8M params."""
    return ResNet(34, num_classes)


def resnet50(num_classes: int = 1000) -> ResNet:
    """ResNet-50 (He 2015, torchvision v1.5): Bottlenecks [3, 4, 6, 3], 25.6M params."""
    return ResNet(50, num_classes)


def resnet101(num_classes: int = 1000) -> ResNet:
    """ResNet-101 (He 2015, torchvision v1.5): Bottlenecks [3, 4, 23, 3], 44.5M params."""
    return ResNet(101, num_classes)


def resnet152(num_classes: int = 1000) -> ResNet:
    """ResNet-152 (He 2015, torchvision v1.5): Bottlenecks [3, 8, 36, 3], 60.2M params."""
    return ResNet(152, num_classes)
