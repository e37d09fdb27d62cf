"""VGG (Simonyan & Zisserman 2014, "Very deep convolutional networks for large-scale image
recognition"), configurations A, B, D and E. Layers are named as in the paper and Caffe
release: ``features.conv3_2``, ``features.pool3``, ``classifier.fc6``."""

from __future__ import annotations

from cnncompiler.errors import ModelError
from cnncompiler.nn import Conv2d, Dropout, Flatten, Linear, MaxPool2d, Module, ReLU, Sequential
from cnncompiler.nn.tensor import Tensor

#: convolutions per block (five blocks of 64, 128, 256, 512, 512 channels)
CONFIGS: dict[str, tuple[int, int, int, int, int]] = {
    "A": (1, 1, 2, 2, 2),   # VGG-11
    "B": (2, 2, 2, 2, 2),   # VGG-13
    "D": (2, 2, 3, 3, 3),   # VGG-16
    "E": (2, 2, 4, 4, 4),   # VGG-19
}
_WIDTHS = (64, 128, 256, 512, 512)


class VGG(Module):
    """VGG (Simonyan & Zisserman 2014): only 3x3/1 pad 1 convs and 2x2/2 max pools, five
    blocks, then FC 25088-4096-4096-classes with dropout; ``config`` is A, B, D or E."""

    input_shape = ("N", 3, 224, 224)

    def __init__(self, config: str = "D", num_classes: int = 1000):
        super().__init__()
        if config not in CONFIGS:
            raise ModelError(f"unknown VGG configuration {config!r}; use one of {sorted(CONFIGS)}")
        layers: dict[str, Module] = {}
        channels = 3
        for block, (convs, width) in enumerate(zip(CONFIGS[config], _WIDTHS, strict=True), start=1):
            for i in range(1, convs + 1):
                layers[f"conv{block}_{i}"] = Conv2d(channels, width, 3, padding=1)
                layers[f"relu{block}_{i}"] = ReLU()
                channels = width
            layers[f"pool{block}"] = MaxPool2d(2, 2)
        self.config = config
        self.num_classes = num_classes
        self.features = Sequential(layers)                        # 512x7x7 at 224x224
        self.flatten = Flatten()
        self.classifier = Sequential({
            "fc6": Linear(512 * 7 * 7, 4096),
            "relu6": ReLU(),
            "drop6": Dropout(0.5),
            "fc7": Linear(4096, 4096),
            "relu7": ReLU(),
            "drop7": Dropout(0.5),
            "fc8": Linear(4096, num_classes, init="xavier_uniform"),
        })

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.flatten(self.features(x)))

    def extra_repr(self) -> str:
        return f"config={self.config!r}"


def vgg11(num_classes: int = 1000) -> VGG:
    """VGG-11 (Simonyan & Zisserman 2014, config A): 8 3x3 convs + 3 FCs."""
    return VGG("A", num_classes)


def vgg13(num_classes: int = 1000) -> VGG:
    """VGG-13 (Simonyan & Zisserman 2014, config B): 10 3x3 convs + 3 FCs."""
    return VGG("B", num_classes)


def vgg16(num_classes: int = 1000) -> VGG:
    """VGG-16 (Simonyan & Zisserman 2014, config D): 13 3x3 convs + 3 FCs, 138.4M params."""
    return VGG("D", num_classes)


def vgg19(num_classes: int = 1000) -> VGG:
    """VGG-19 (Simonyan & Zisserman 2014, config E): 16 3x3 convs + 3 FCs."""
    return VGG("E", num_classes)
