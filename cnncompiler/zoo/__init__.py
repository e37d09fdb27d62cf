"""Model zoo: classic CNNs written in the DSL, built without weights until asked.

>>> from cnncompiler import zoo
>>> net = zoo.get("resnet50")                  # Parameters stay empty (data=None)
>>> net.num_parameters()
25557032
>>> g = net.to_graph(with_weights=False)       # shapes only; to_graph() initialises weights
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import NamedTuple

from cnncompiler.errors import ModelError
from cnncompiler.nn.module import Module
from cnncompiler.zoo.alexnet import AlexNet, alexnet
from cnncompiler.zoo.lenet import LeNet5, lenet5
from cnncompiler.zoo.mobilenet import InvertedResidual, MobileNetV2, mobilenet_v2
from cnncompiler.zoo.resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
)
from cnncompiler.zoo.vgg import VGG, vgg11, vgg13, vgg16, vgg19


class _Entry(NamedTuple):
    factory: Callable[..., Module]
    cls: type[Module]
    paper: str


_KRIZHEVSKY = "Krizhevsky, Sutskever & Hinton 2012, ImageNet classification with deep CNNs"
_VGG = "Simonyan & Zisserman 2014, Very deep convolutional networks, config"
_HE = "He, Zhang, Ren & Sun 2015, Deep residual learning (torchvision v1.5)"

_MODELS: dict[str, _Entry] = {
    "lenet5": _Entry(lenet5, LeNet5, "LeCun et al. 1998, Gradient-based learning applied to "
                     "document recognition"),
    "alexnet": _Entry(alexnet, AlexNet, _KRIZHEVSKY + " (single tower, CS231n layout)"),
    "vgg11": _Entry(vgg11, VGG, _VGG + " A"),
    "vgg13": _Entry(vgg13, VGG, _VGG + " B"),
    "vgg16": _Entry(vgg16, VGG, _VGG + " D"),
    "vgg19": _Entry(vgg19, VGG, _VGG + " E"),
    "resnet18": _Entry(resnet18, ResNet, _HE + ", BasicBlock"),
    "resnet34": _Entry(resnet34, ResNet, _HE + ", BasicBlock"),
    "resnet50": _Entry(resnet50, ResNet, _HE + ", Bottleneck"),
    "resnet101": _Entry(resnet101, ResNet, _HE + ", Bottleneck"),
    "resnet152": _Entry(resnet152, ResNet, _HE + ", Bottleneck"),
    "mobilenet_v2": _Entry(mobilenet_v2, MobileNetV2, "Sandler et al. 2018, MobileNetV2: "
                           "Inverted residuals and linear bottlenecks (width 1.0)"),
}


def names() -> list[str]:
    """The registered model names, in the order of their papers."""
    return list(_MODELS)


def _entry(name: str) -> _Entry:
    key = name.lower().replace("-", "_") if isinstance(name, str) else name
    try:
        return _MODELS[key]
    except (KeyError, TypeError):
        raise ModelError(f"unknown model {name!r}; known models: {', '.join(_MODELS)}") \
            from None


def get(name: str, **kwargs) -> Module:
    """Build model ``name`` (e.g. ``get("vgg16", num_classes=10)``) without allocating weights.

    Raises ModelError for an unknown name or an argument the model does not take.
    """
    entry = _entry(name)
    try:
        inspect.signature(entry.factory).bind(**kwargs)
    except TypeError as e:
        params = ", ".join(inspect.signature(entry.factory).parameters)
        raise ModelError(f"model {name!r} takes ({params}); got {sorted(kwargs)}: {e}") \
            from None
    model = entry.factory(**kwargs)
    model.name = _canonical(name)
    return model


def _canonical(name: str) -> str:
    return name.lower().replace("-", "_")


def describe(name: str) -> str:
    """One line: the model, its paper and its input size (``name: paper; input 3x224x224``)."""
    entry = _entry(name)
    _, c, h, w = entry.cls.input_shape
    return f"{_canonical(name)}: {entry.paper}; input {c}x{h}x{w}"


__all__ = ["VGG", "AlexNet", "BasicBlock", "Bottleneck", "InvertedResidual", "LeNet5",
           "MobileNetV2", "ResNet", "alexnet", "describe", "get", "lenet5", "mobilenet_v2",
           "names", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vgg11",
           "vgg13", "vgg16", "vgg19"]
