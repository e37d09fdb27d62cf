"""LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998, "Gradient-based learning applied to
document recognition"), layer names as in the paper: C1, S2, C3, S4, C5, F6, output."""

from __future__ import annotations

from cnncompiler.nn import AvgPool2d, Conv2d, Flatten, Linear, Sequential, Tanh


class LeNet5(Sequential):
    """LeNet-5 (LeCun 1998): tanh conv net on 32x32 grey digits, average-pool subsampling,
    fully connected C3 (no channel table); 61,706 parameters."""

    input_shape = ("N", 1, 32, 32)

    def __init__(self, num_classes: int = 10):
        xavier = "xavier_uniform"  # Glorot init suits tanh
        super().__init__({
            "c1": Conv2d(1, 6, 5, init=xavier),        # 6@28x28
            "tanh1": Tanh(),
            "s2": AvgPool2d(2, 2),                     # 6@14x14
            "c3": Conv2d(6, 16, 5, init=xavier),       # 16@10x10
            "tanh3": Tanh(),
            "s4": AvgPool2d(2, 2),                     # 16@5x5
            "c5": Conv2d(16, 120, 5, init=xavier),     # 120@1x1
            "tanh5": Tanh(),
            "flatten": Flatten(),
            "f6": Linear(120, 84, init=xavier),
            "tanh6": Tanh(),
            "output": Linear(84, num_classes, init=xavier),
        })
        self.num_classes = num_classes


def lenet5(num_classes: int = 10) -> LeNet5:
    """LeNet-5 (LeCun 1998): tanh, average-pool subsampling, 32x32x1 input, 61,706 params."""
    return LeNet5(num_classes)
