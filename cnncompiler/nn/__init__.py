"""The Python DSL: PyTorch-like layers, Sequential, and a functional API for any topology.

>>> from cnncompiler import nn
>>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
>>> g = net.to_graph(("N", 3, 32, 32))
"""

from cnncompiler.nn import functional
from cnncompiler.nn.layers import (
    LRN,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    ConvTranspose2d,
    Dropout,
    Flatten,
    GlobalAvgPool2d,
    Hardsigmoid,
    Hardswish,
    Identity,
    LeakyReLU,
    Linear,
    LogSoftmax,
    MaxPool2d,
    PReLU,
    ReLU,
    ReLU6,
    Sigmoid,
    Softmax,
    Tanh,
    Upsample,
)
from cnncompiler.nn.module import Module, Parameter, Sequential
from cnncompiler.nn.tensor import Tensor

__all__ = ["LRN", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Conv2d", "ConvTranspose2d",
           "Dropout", "Flatten", "GlobalAvgPool2d", "Hardsigmoid", "Hardswish", "Identity",
           "LeakyReLU", "Linear", "LogSoftmax", "MaxPool2d", "Module", "PReLU", "Parameter",
           "ReLU", "ReLU6", "Sequential", "Sigmoid", "Softmax", "Tanh", "Tensor", "Upsample",
           "functional"]
