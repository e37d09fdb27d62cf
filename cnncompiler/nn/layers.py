"""DSL layers (PyTorch names and argument order). Each owns its Parameters and appends one
node, named after the layer's place in the model (``features.conv1``)."""

from __future__ import annotations

from collections.abc import Sequence

from cnncompiler.errors import ModelError
from cnncompiler.nn import functional as F
from cnncompiler.nn.module import Module, Parameter
from cnncompiler.nn.tensor import Tensor


def _name(x: Tensor, default: str) -> str:
    return x.tracer.layer_name(default)


class Conv2d(Module):
    """CONV layer: K=out_channels filters of extent F=kernel, stride S, zero padding P.
    Holds (F·F·D1/groups)·K weights + K biases. ``padding`` may be "same" or "valid";
    ``rounding="floor"`` accepts a non-integer (W1 - F + 2P)/S + 1 as PyTorch does."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int | Sequence[int],
                 stride: int | Sequence[int] = 1, padding: F.Padding = 0,
                 dilation: int | Sequence[int] = 1, groups: int = 1, bias: bool = True,
                 rounding: str = "exact", init: str = "he_normal"):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ModelError(f"Conv2d: in_channels={in_channels} and out_channels={out_channels}"
                             f" must be divisible by groups={groups}")
        kh, kw = F.pair(kernel, "kernel")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel, self.stride, self.padding = (kh, kw), stride, padding
        self.dilation, self.groups, self.rounding = dilation, groups, rounding
        fan_in = in_channels // groups * kh * kw
        self.weight = Parameter((out_channels, in_channels // groups, kh, kw), init,
                                fan_in=fan_in, fan_out=out_channels // groups * kh * kw)
        self.bias = Parameter((out_channels,), "zeros") if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups, self.rounding, name=_name(x, "conv"))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel={self.kernel}, "
                f"stride={self.stride}, padding={self.padding}, groups={self.groups}")


class ConvTranspose2d(Module):
    """Transposed ("fractionally strided") convolution, for upsampling in segmentation nets."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int | Sequence[int],
                 stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
                 output_padding: int | Sequence[int] = 0, groups: int = 1, bias: bool = True,
                 dilation: int | Sequence[int] = 1):
        super().__init__()
        kh, kw = F.pair(kernel, "kernel")
        self.args = (stride, padding, output_padding, dilation, groups)
        self.weight = Parameter((in_channels, out_channels // groups, kh, kw), "he_normal",
                                fan_in=in_channels * kh * kw)
        self.bias = Parameter((out_channels,), "zeros") if bias else None

    def forward(self, x: Tensor) -> Tensor:
        stride, padding, output_padding, dilation, groups = self.args
        return F.conv_transpose2d(x, self.weight, self.bias, stride, padding, output_padding,
                                  dilation, groups, name=_name(x, "convtranspose"))


class Linear(Module):
    """FC layer: y = x W^T + b with W [out_features, in_features]."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 init: str = "he_normal"):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter((out_features, in_features), init, fan_in=in_features,
                                fan_out=out_features)
        self.bias = Parameter((out_features,), "zeros") if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias, name=_name(x, "fc"))

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}"


class MaxPool2d(Module):
    """POOL layer (max) of extent F=kernel and stride S (default S = F)."""

    def __init__(self, kernel: int | Sequence[int], stride: int | Sequence[int] | None = None,
                 padding: F.Padding = 0, dilation: int | Sequence[int] = 1,
                 ceil_mode: bool = False, rounding: str | None = None):
        super().__init__()
        self.args = (kernel, stride, padding, dilation, ceil_mode, rounding)

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(x, *self.args, name=_name(x, "maxpool"))

    def extra_repr(self) -> str:
        return f"kernel={self.args[0]}, stride={self.args[1]}"


class AvgPool2d(Module):
    """POOL layer (average). ``count_include_pad`` defaults to True, as in PyTorch."""

    def __init__(self, kernel: int | Sequence[int], stride: int | Sequence[int] | None = None,
                 padding: F.Padding = 0, ceil_mode: bool = False, count_include_pad: bool = True,
                 rounding: str | None = None):
        super().__init__()
        self.args = (kernel, stride, padding, ceil_mode, count_include_pad, rounding)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, *self.args, name=_name(x, "avgpool"))


class GlobalAvgPool2d(Module):
    """Average over H and W: [N, C, H, W] -> [N, C, 1, 1]."""

    def forward(self, x: Tensor) -> Tensor:
        return F.global_avg_pool2d(x, name=_name(x, "gap"))


class BatchNorm2d(Module):
    """BatchNorm (inference form: running statistics). Works on [N, C, ...] and [N, C]."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.9):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = Parameter((num_features,), "ones")
        self.bias = Parameter((num_features,), "zeros")
        self.running_mean = Parameter((num_features,), "zeros", trainable=False)
        self.running_var = Parameter((num_features,), "ones", trainable=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var,
                            self.eps, self.momentum, name=_name(x, "bn"))


BatchNorm1d = BatchNorm2d


class LRN(Module):
    """Local response normalisation across channels (AlexNet's NORM layer)."""

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
        super().__init__()
        self.args = (size, alpha, beta, k)

    def forward(self, x: Tensor) -> Tensor:
        return F.lrn(x, *self.args, name=_name(x, "lrn"))


class Dropout(Module):
    """Drops activations with probability p in training; identity at inference."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, name=_name(x, "dropout"))


class Flatten(Module):
    def __init__(self, axis: int = 1):
        super().__init__()
        self.axis = axis

    def forward(self, x: Tensor) -> Tensor:
        return F.flatten(x, self.axis, name=_name(x, "flatten"))


class PReLU(Module):
    """Leaky ReLU with a learned slope: one shared, or one per channel (num_parameters=C)."""

    def __init__(self, num_parameters: int = 1, init: float = 0.25):
        super().__init__()
        self.init_value = init
        self.weight = Parameter((num_parameters, 1, 1), "ones")

    def init_parameters(self, seed: int = 0) -> Module:
        super().init_parameters(seed)
        self.weight.data *= self.init_value
        return self

    def forward(self, x: Tensor) -> Tensor:
        return F.prelu(x, self.weight, name=_name(x, "prelu"))


class Upsample(Module):
    """Resize the spatial dims by ``scale_factor`` or to ``size`` (nearest or bilinear)."""

    def __init__(self, size: int | Sequence[int] | None = None,
                 scale_factor: float | Sequence[float] | None = None, mode: str = "nearest",
                 align_corners: bool = False):
        super().__init__()
        self.args = dict(size=size, scale_factor=scale_factor, mode=mode,
                         align_corners=align_corners)

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, name=_name(x, "upsample"), **self.args)


def _activation(cls_name: str, fn, doc: str, **defaults):
    """A parameter-free layer class calling ``fn(x, **attrs)``."""

    def __init__(self, **attrs):
        Module.__init__(self)
        unknown = set(attrs) - set(defaults)
        if unknown:
            raise ModelError(f"{cls_name} got unknown argument(s) {sorted(unknown)}")
        self.attrs = {**defaults, **attrs}

    def forward(self, x: Tensor) -> Tensor:
        return fn(x, name=_name(x, cls_name.lower()), **self.attrs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.attrs.items())

    return type(cls_name, (Module,), {"__init__": __init__, "forward": forward, "__doc__": doc,
                                      "extra_repr": extra_repr})


ReLU = _activation("ReLU", F.relu, "max(x, 0)")
ReLU6 = _activation("ReLU6", F.relu6, "min(max(x, 0), 6) (MobileNet)")
LeakyReLU = _activation("LeakyReLU", F.leaky_relu, "x if x >= 0 else alpha*x", alpha=0.01)
Sigmoid = _activation("Sigmoid", F.sigmoid, "1 / (1 + exp(-x))")
Tanh = _activation("Tanh", F.tanh, "tanh(x)")
Hardsigmoid = _activation("Hardsigmoid", F.hardsigmoid, "clip(x/6 + 1/2, 0, 1)",
                          alpha=1 / 6, beta=0.5)
Hardswish = _activation("Hardswish", F.hardswish, "x * hardsigmoid(x)")
Softmax = _activation("Softmax", F.softmax, "exp(x) / sum(exp(x)) along axis", axis=-1)
LogSoftmax = _activation("LogSoftmax", F.log_softmax, "log(softmax(x))", axis=-1)
Identity = _activation("Identity", F.identity, "y = x")
