"""Elementwise activations: out[i] = f(x[i]) (PRelu broadcasts a learned slope)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cnncompiler.kernel import ir as K
from cnncompiler.ops.broadcast import broadcast_infer
from cnncompiler.ops.opdef import Attr, FusionKind, InferContext, Input, OpDef, elementwise_flops
from cnncompiler.ops.registry import register


def _same_as_input(ctx: InferContext):
    return ctx.require_float(0)


def unary(name: str, doc: str, fn: Callable[..., np.ndarray], flops_per_element: int = 1,
          attrs: tuple[Attr, ...] = (), scalar: Callable | None = None) -> OpDef:
    """Register an elementwise op ``Y = fn(X, **attrs)``; ``scalar(x, **attrs)`` is the same
    function on one kernel-IR element, for code generation."""
    return register(OpDef(
        name=name, doc=doc, inputs=(Input("X"),), attrs=attrs, infer=_same_as_input,
        reference=lambda inputs, a: fn(inputs[0], **a),
        flops=elementwise_flops(flops_per_element), fusion=FusionKind.ELEMENTWISE,
        scalar=None if scalar is None else (lambda xs, a: scalar(xs[0], **a)),
    ))


def _k_sigmoid(x):
    return 1.0 / (1.0 + K.call("exp", -x))


def _k_hard_sigmoid(x, alpha, beta):
    return K.minimum(K.maximum(x * alpha + beta, 0.0), 1.0)


def _k_clip(x, min, max):
    if min is not None:
        x = K.maximum(x, min)
    return x if max is None else K.minimum(x, max)


def _sigmoid(x):
    # split by sign so exp never overflows
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype)


def _hard_sigmoid(x, alpha, beta):
    return np.clip(alpha * x + beta, 0.0, 1.0).astype(x.dtype)


RELU = unary("Relu", "max(x, 0)", lambda x: np.maximum(x, 0), scalar=lambda x: K.maximum(x, 0.0))
LEAKY_RELU = unary("LeakyRelu", "x if x >= 0 else alpha*x",
                   lambda x, alpha: np.where(x >= 0, x, alpha * x).astype(x.dtype), 2,
                   (Attr("alpha", "float", 0.01, "slope for x < 0"),),
                   scalar=lambda x, alpha: K.select(x.ge(0.0), x, x * alpha))
SIGMOID = unary("Sigmoid", "1 / (1 + exp(-x))", _sigmoid, 4, scalar=_k_sigmoid)
TANH = unary("Tanh", "tanh(x)", np.tanh, 4, scalar=lambda x: K.call("tanh", x))
HARD_SIGMOID = unary("HardSigmoid", "clip(alpha*x + beta, 0, 1)", _hard_sigmoid, 3,
                     (Attr("alpha", "float", 0.2), Attr("beta", "float", 0.5)),
                     scalar=_k_hard_sigmoid)
HARD_SWISH = unary("HardSwish", "x * clip(x/6 + 1/2, 0, 1) (MobileNetV3)",
                   lambda x: (x * _hard_sigmoid(x, 1.0 / 6.0, 0.5)).astype(x.dtype), 4,
                   scalar=lambda x: x * _k_hard_sigmoid(x, 1.0 / 6.0, 0.5))
CLIP = unary("Clip", "clip(x, min, max); ReLU6 is Clip(min=0, max=6)",
             lambda x, min, max: np.clip(x, -np.inf if min is None else min,
                                         np.inf if max is None else max).astype(x.dtype), 2,
             (Attr("min", "float", None, "lower bound (none if absent)"),
              Attr("max", "float", None, "upper bound (none if absent)")), scalar=_k_clip)


def _prelu_infer(ctx: InferContext):
    x = ctx.require_float(0)
    y = broadcast_infer(ctx)
    if y.shape != x.shape:
        raise ctx.fail(f"slope of shape {list(ctx.input(1).shape)} must broadcast to the input "
                       f"shape {list(x.shape)} without growing it")
    return y


PRELU = register(OpDef(
    name="PRelu", doc="x if x >= 0 else slope*x, slope learned (per channel: shape [C, 1, 1])",
    inputs=(Input("X"), Input("slope", weight=True)), attrs=(), infer=_prelu_infer,
    reference=lambda inputs, a: np.where(inputs[0] >= 0, inputs[0], inputs[0] * inputs[1]),
    flops=elementwise_flops(2), fusion=FusionKind.ELEMENTWISE,
    scalar=lambda xs, a: K.select(xs[0].ge(0.0), xs[0], xs[0] * xs[1]),
))


# ---------------------------------------------------------------------- gradients
def _relu_grad(b, node, grads):
    from cnncompiler.ops.gradients import scalar

    (g,), (x,) = grads, node.inputs
    zero = scalar(b, 0.0, x)
    return [b.op("Where", b.op("Greater", x, zero), g, zero)]


def _sigmoid_grad(b, node, grads):
    """g * y * (1 - y), from the output y."""
    from cnncompiler.ops.gradients import scalar

    (g,), y = grads, node.outputs[0]
    return [b.op("Mul", b.op("Mul", g, y), b.op("Sub", scalar(b, 1.0, y), y))]


def _tanh_grad(b, node, grads):
    """g * (1 - y^2), from the output y."""
    from cnncompiler.ops.gradients import scalar

    (g,), y = grads, node.outputs[0]
    return [b.op("Mul", g, b.op("Sub", scalar(b, 1.0, y), b.op("Mul", y, y)))]


RELU.grad, SIGMOID.grad, TANH.grad = _relu_grad, _sigmoid_grad, _tanh_grad


def _leaky_relu_grad(b, node, grads):
    from cnncompiler.ops.gradients import scalar

    (g,), (x,) = grads, node.inputs
    slope = b.op("Mul", g, scalar(b, node.attrs["alpha"], x))
    return [b.op("Where", b.op("Less", x, scalar(b, 0.0, x)), slope, g)]


def _clip_grad(b, node, grads):
    """g where min < x < max (the bounds, where given), else 0."""
    from cnncompiler.ops.gradients import scalar

    (g,), (x,) = grads, node.inputs
    zero = scalar(b, 0.0, x)
    low, high = node.attrs["min"], node.attrs["max"]
    if low is not None:
        g = b.op("Where", b.op("Greater", x, scalar(b, low, x)), g, zero)
    if high is not None:
        g = b.op("Where", b.op("Less", x, scalar(b, high, x)), g, zero)
    return [g]


LEAKY_RELU.grad, CLIP.grad = _leaky_relu_grad, _clip_grad


def _hard_sigmoid_grad(b, node, grads):
    """g * alpha inside the linear part 0 < alpha x + beta < 1, else 0."""
    from cnncompiler.ops.gradients import masked, mul_scalar, scalar

    (g,), (x,) = grads, node.inputs
    alpha, beta = node.attrs["alpha"], node.attrs["beta"]
    z = b.op("Add", mul_scalar(b, x, alpha), scalar(b, beta, x))
    d = masked(b, b.op("Greater", z, scalar(b, 0.0, x)), mul_scalar(b, g, alpha))
    return [masked(b, b.op("Less", z, scalar(b, 1.0, x)), d)]


def _hard_swish_grad(b, node, grads):
    """d(x clip(x/6 + 1/2, 0, 1)) = 0 below -3, 1 above 3, x/3 + 1/2 between."""
    from cnncompiler.ops.gradients import mul_scalar, scalar

    (g,), (x,) = grads, node.inputs
    ramp = b.op("Mul", g, b.op("Add", mul_scalar(b, x, 1.0 / 3.0), scalar(b, 0.5, x)))
    low = b.op("Where", b.op("Less", x, scalar(b, -3.0, x)), scalar(b, 0.0, x), ramp)
    return [b.op("Where", b.op("Greater", x, scalar(b, 3.0, x)), g, low)]


def _prelu_grad(b, node, grads):
    """dX = g where x >= 0 else g * slope; dslope = g * x where x < 0, summed back to the
    slope's (broadcast) shape."""
    from cnncompiler.ops.gradients import masked, scalar, unbroadcast

    (g,), (x, slope) = grads, node.inputs
    negative = b.op("Less", x, scalar(b, 0.0, x))
    dx = b.op("Where", negative, b.op("Mul", g, slope), g)
    return [dx, unbroadcast(b, masked(b, negative, b.op("Mul", g, x)), slope)]


HARD_SIGMOID.grad, HARD_SWISH.grad, PRELU.grad = _hard_sigmoid_grad, _hard_swish_grad, \
    _prelu_grad
