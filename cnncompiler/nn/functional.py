"""Functional DSL: one function per op, for building non-sequential nets in ``forward``.

Each function appends one node through the tracer (named after the calling module) and
returns a symbolic Tensor. Layers in :mod:`cnncompiler.nn.layers` are thin wrappers.
"""

from __future__ import annotations

from collections.abc import Sequence

from cnncompiler.errors import ModelError
from cnncompiler.nn.module import Parameter
from cnncompiler.nn.tensor import Tensor

Padding = int | Sequence[int] | str


def pair(v: int | Sequence[int], what: str = "value") -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(v)
    if len(v) != 2:
        raise ModelError(f"{what} must be an int or a pair, got {v}")
    return v


def conv_pads(padding: Padding, x: Tensor, kernel: tuple[int, int], stride: tuple[int, int],
              dilation: tuple[int, int] = (1, 1)) -> tuple[int, int, int, int]:
    """ONNX pads [top, left, bottom, right] from an int, a pair, a 4-tuple, "valid" or
    "same" (output = ceil(input / stride), extra padding at the end as TensorFlow does)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding != "same":
            raise ModelError(f"padding must be an int, a tuple, 'same' or 'valid', got {padding!r}")
        begin, end = [], []
        for i in range(2):
            size = x.shape[2 + i]
            extent = (kernel[i] - 1) * dilation[i] + 1
            out = -(-size // stride[i])
            total = max((out - 1) * stride[i] + extent - size, 0)
            begin.append(total // 2)
            end.append(total - total // 2)
        return (begin[0], begin[1], end[0], end[1])
    if isinstance(padding, int):
        return (padding,) * 4
    padding = tuple(padding)
    if len(padding) == 2:
        return padding + padding
    if len(padding) == 4:
        return padding
    raise ModelError(f"padding must have 1, 2 or 4 entries, got {padding}")


def conv2d(x: Tensor, weight: Parameter | Tensor, bias: Parameter | Tensor | None = None,
           stride: int | Sequence[int] = 1, padding: Padding = 0,
           dilation: int | Sequence[int] = 1, groups: int = 1, rounding: str = "exact",
           name: str | None = None) -> Tensor:
    kernel = tuple(weight.shape[2:])
    stride, dilation = pair(stride, "stride"), pair(dilation, "dilation")
    return x.tracer.op("Conv", x, weight, bias, name=name, strides=stride,
                       pads=conv_pads(padding, x, kernel, stride, dilation), dilations=dilation,
                       group=groups, rounding=rounding)


def conv_transpose2d(x: Tensor, weight: Parameter | Tensor, bias=None, stride=1, padding=0,
                     output_padding=0, dilation=1, groups: int = 1, name: str | None = None
                     ) -> Tensor:
    return x.tracer.op("ConvTranspose", x, weight, bias, name=name, strides=pair(stride),
                       pads=conv_pads(padding, x, tuple(weight.shape[2:]), pair(stride)),
                       output_padding=pair(output_padding), dilations=pair(dilation),
                       group=groups)


def linear(x: Tensor, weight: Parameter | Tensor, bias=None, name: str | None = None) -> Tensor:
    """y = x @ W^T + b with W of shape [out_features, in_features] (Gemm, transB=1)."""
    return x.tracer.op("Gemm", x, weight, bias, name=name, transB=1)


def _rounding(ceil_mode: bool, rounding: str | None) -> str:
    if rounding is not None:
        return rounding
    return "ceil" if ceil_mode else "exact"


def max_pool2d(x: Tensor, kernel: int | Sequence[int], stride=None, padding: Padding = 0,
               dilation=1, ceil_mode: bool = False, rounding: str | None = None,
               name: str | None = None) -> Tensor:
    kernel = pair(kernel, "kernel")
    stride = pair(stride if stride is not None else kernel, "stride")
    return x.tracer.op("MaxPool", x, name=name, kernel_shape=kernel, strides=stride,
                       pads=conv_pads(padding, x, kernel, stride), dilations=pair(dilation),
                       rounding=_rounding(ceil_mode, rounding))


def avg_pool2d(x: Tensor, kernel: int | Sequence[int], stride=None, padding: Padding = 0,
               ceil_mode: bool = False, count_include_pad: bool = True,
               rounding: str | None = None, name: str | None = None) -> Tensor:
    kernel = pair(kernel, "kernel")
    stride = pair(stride if stride is not None else kernel, "stride")
    return x.tracer.op("AveragePool", x, name=name, kernel_shape=kernel, strides=stride,
                       pads=conv_pads(padding, x, kernel, stride),
                       count_include_pad=count_include_pad, rounding=_rounding(ceil_mode, rounding))


def global_avg_pool2d(x: Tensor, name: str | None = None) -> Tensor:
    return x.tracer.op("GlobalAveragePool", x, name=name)


def _unary(op: str):
    def apply(x: Tensor, name: str | None = None, **attrs) -> Tensor:
        return x.tracer.op(op, x, name=name, **attrs)

    apply.__name__ = op.lower()
    apply.__doc__ = f"Append a {op} node."
    return apply


relu = _unary("Relu")
sigmoid = _unary("Sigmoid")
tanh = _unary("Tanh")
hardswish = _unary("HardSwish")
identity = _unary("Identity")


def leaky_relu(x: Tensor, alpha: float = 0.01, name: str | None = None) -> Tensor:
    return x.tracer.op("LeakyRelu", x, name=name, alpha=alpha)


def hardsigmoid(x: Tensor, alpha: float = 1 / 6, beta: float = 0.5, name: str | None = None
                ) -> Tensor:
    return x.tracer.op("HardSigmoid", x, name=name, alpha=alpha, beta=beta)


def clip(x: Tensor, min: float | None = None, max: float | None = None,
         name: str | None = None) -> Tensor:
    return x.tracer.op("Clip", x, name=name, min=min, max=max)


def relu6(x: Tensor, name: str | None = None) -> Tensor:
    return clip(x, 0.0, 6.0, name=name)


def prelu(x: Tensor, slope: Parameter | Tensor, name: str | None = None) -> Tensor:
    return x.tracer.op("PRelu", x, slope, name=name)


def softmax(x: Tensor, axis: int = -1, name: str | None = None) -> Tensor:
    return x.tracer.op("Softmax", x, name=name, axis=axis)


def log_softmax(x: Tensor, axis: int = -1, name: str | None = None) -> Tensor:
    return x.tracer.op("LogSoftmax", x, name=name, axis=axis)


def lrn(x: Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0,
        name: str | None = None) -> Tensor:
    return x.tracer.op("LRN", x, name=name, size=size, alpha=alpha, beta=beta, bias=k)


def batch_norm(x: Tensor, scale, bias, mean, var, eps: float = 1e-5, momentum: float = 0.9,
               name: str | None = None) -> Tensor:
    return x.tracer.op("BatchNormalization", x, scale, bias, mean, var, name=name,
                       epsilon=eps, momentum=momentum)


def dropout(x: Tensor, p: float = 0.5, name: str | None = None) -> Tensor:
    return x.tracer.op("Dropout", x, name=name, ratio=p)


def flatten(x: Tensor, axis: int = 1, name: str | None = None) -> Tensor:
    return x.tracer.op("Flatten", x, name=name, axis=axis)


def reshape(x: Tensor, shape: Sequence[int], name: str | None = None) -> Tensor:
    return x.tracer.op("Reshape", x, name=name, shape=tuple(shape))


def transpose(x: Tensor, perm: Sequence[int], name: str | None = None) -> Tensor:
    return x.tracer.op("Transpose", x, name=name, perm=tuple(perm))


def pad(x: Tensor, pads: Sequence[int], mode: str = "constant", value: float = 0.0,
        name: str | None = None) -> Tensor:
    return x.tracer.op("Pad", x, name=name, pads=tuple(pads), mode=mode, value=value)


def concat(tensors: Sequence[Tensor], axis: int = 1, name: str | None = None) -> Tensor:
    if not tensors:
        raise ModelError("concat needs at least one tensor")
    return tensors[0].tracer.op("Concat", *tensors, name=name, axis=axis)


def split(x: Tensor, sizes: Sequence[int], axis: int = 1, name: str | None = None
          ) -> list[Tensor]:
    return x.tracer.ops("Split", [x], num_outputs=len(sizes), name=name, axis=axis,
                        split=tuple(sizes))


def add(a: Tensor, b: Tensor, name: str | None = None) -> Tensor:
    return a.tracer.op("Add", a, b, name=name)


def matmul(a: Tensor, b: Tensor, name: str | None = None) -> Tensor:
    return a.tracer.op("MatMul", a, b, name=name)


def interpolate(x: Tensor, scale_factor: float | Sequence[float] | None = None,
                size: Sequence[int] | None = None, mode: str = "nearest",
                align_corners: bool = False, name: str | None = None) -> Tensor:
    """Resize the spatial dims (nearest or bilinear), as torch.nn.functional.interpolate."""
    if (scale_factor is None) == (size is None):
        raise ModelError("interpolate needs exactly one of scale_factor or size")
    mode = {"bilinear": "linear"}.get(mode, mode)
    ctm = "align_corners" if align_corners else ("asymmetric" if mode == "nearest"
                                                 else "pytorch_half_pixel")
    attrs = dict(mode=mode, coordinate_transformation_mode=ctm)
    if mode == "nearest":
        attrs["nearest_mode"] = "floor"
    if size is not None:
        attrs["sizes"] = tuple(x.shape[:2]) + tuple(pair(size, "size"))
    else:
        sh, sw = (scale_factor, scale_factor) if isinstance(scale_factor, (int, float)) \
            else tuple(scale_factor)
        attrs["scales"] = (1.0, 1.0, float(sh), float(sw))
    return x.tracer.op("Resize", x, name=name, **attrs)
