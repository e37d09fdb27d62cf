"""AlexNet (Krizhevsky, Sutskever & Hinton 2012, "ImageNet classification with deep
convolutional neural networks"), single-tower as the CS231n lecture lists it."""

from __future__ import annotations

from cnncompiler.nn import LRN, Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU, Sequential


def _norm() -> LRN:
    return LRN(size=5, alpha=1e-4, beta=0.75, k=2.0)  # Krizhevsky's constants


class AlexNet(Sequential):
    """AlexNet (Krizhevsky 2012): 227x227 input, 11x11/4 first conv, ReLU, overlapping
    3x3/2 max pools, LRN after pools 1 and 2, dropout FCs; one tower (no channel groups),
    62,378,344 parameters."""

    input_shape = ("N", 3, 227, 227)

    def __init__(self, num_classes: int = 1000):
        super().__init__({
            "conv1": Conv2d(3, 96, 11, stride=4, padding=0),     # 96x55x55
            "relu1": ReLU(),
            "pool1": MaxPool2d(3, 2),                            # 96x27x27
            "norm1": _norm(),
            "conv2": Conv2d(96, 256, 5, stride=1, padding=2),    # 256x27x27
            "relu2": ReLU(),
            "pool2": MaxPool2d(3, 2),                            # 256x13x13
            "norm2": _norm(),
            "conv3": Conv2d(256, 384, 3, padding=1),             # 384x13x13
            "relu3": ReLU(),
            "conv4": Conv2d(384, 384, 3, padding=1),             # 384x13x13
            "relu4": ReLU(),
            "conv5": Conv2d(384, 256, 3, padding=1),             # 256x13x13
            "relu5": ReLU(),
            "pool3": MaxPool2d(3, 2),                            # 256x6x6
            "flatten": Flatten(),
            "fc6": Linear(256 * 6 * 6, 4096),
            "relu6": ReLU(),
            "drop6": Dropout(0.5),
            "fc7": Linear(4096, 4096),
            "relu7": ReLU(),
            "drop7": Dropout(0.5),
            "fc8": Linear(4096, num_classes, init="xavier_uniform"),
        })
        self.num_classes = num_classes


def alexnet(num_classes: int = 1000) -> AlexNet:
    """AlexNet (Krizhevsky 2012): 11x11/4 conv, LRN, overlapping pools, one tower, 227x227."""
    return AlexNet(num_classes)
