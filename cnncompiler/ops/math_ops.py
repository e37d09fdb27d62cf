"""Elementwise math, comparisons and selection (ONNX semantics, latest opset).

ONNX exports spell many layers out of primitives: GELU as Erf/Mul/Add, LayerNorm as
ReduceMean/Sub/Pow/Sqrt/Div, SiLU as Sigmoid*x, masks as Equal/Where. Each op here is one
of the existing patterns: unary ops go through :func:`~cnncompiler.ops.activations.unary`
(ELEMENTWISE), binary ones through :func:`~cnncompiler.ops.broadcast.binary` (BROADCAST), and
Max/Min/Sum/Mean take any number of inputs with numpy's multi-way broadcasting.

Type rules follow the ONNX schemas restricted to our dtypes: transcendental ops take float
only, Abs/Neg/Max/Min/Pow/comparisons also take int64, Not takes bool, comparisons return bool.
References keep the input dtype (exact in float64).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from cnncompiler.ir.types import DType, TensorType
from cnncompiler.kernel import ir as K
from cnncompiler.ops.activations import _sigmoid, unary
from cnncompiler.ops.broadcast import binary, broadcast_shapes
from cnncompiler.ops.opdef import Attr, FusionKind, InferContext, Input, OpDef, elementwise_flops
from cnncompiler.ops.registry import register

FLOAT = (DType.float32, DType.float64)
NUMERIC = (DType.float32, DType.float64, DType.int64)


def require_dtype(ctx: InferContext, i: int, allowed: tuple[DType, ...]) -> TensorType:
    """Input ``i``, checked to have one of the ``allowed`` dtypes."""
    t = ctx.input(i)
    if t.dtype not in allowed:
        raise ctx.fail(f"input {i} must be {' or '.join(str(d) for d in allowed)}, "
                       f"got {t.dtype}")
    return t


def broadcast_all(ctx: InferContext, types: list[TensorType]) -> tuple:
    """numpy's multi-way broadcast of the shapes of ``types`` (pairwise, left to right)."""
    return functools.reduce(lambda a, b: broadcast_shapes(ctx, a, b), [t.shape for t in types])


def _keep_dtype(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """``fn`` with its result cast back to the input's dtype (numpy may widen)."""
    def wrapped(x: np.ndarray, **attrs: Any) -> np.ndarray:
        return np.asarray(fn(x, **attrs)).astype(x.dtype, copy=False)
    return wrapped


# ------------------------------------------------------------------------ float unary ops
_erf = np.vectorize(math.erf, otypes=[np.float64])
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _gelu(x: np.ndarray, approximate: str) -> np.ndarray:
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)  # log(1 + e^x) without overflow


def _elu(x: np.ndarray, alpha: float) -> np.ndarray:
    # expm1 of min(x, 0): exact near 0 and no overflow in the branch where() discards
    return np.where(x < 0, alpha * np.expm1(np.minimum(x, 0)), x)


def _selu(x: np.ndarray, alpha: float, gamma: float) -> np.ndarray:
    return gamma * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


def _celu(x: np.ndarray, alpha: float) -> np.ndarray:
    return np.maximum(x, 0) + np.minimum(0, alpha * np.expm1(np.minimum(x, 0) / alpha))


def _nonzero(v: float) -> str | None:
    return None if v != 0 else "must be non-zero"


# ------------------------------------------------------- scalar (kernel IR) forms of them
# The kernel IR has exp and log but not expm1/log1p; e^x - 1 and log(1 + y) lose most digits
# of a small result in float32 (the references use numpy's expm1/log1p). The ops built on
# them therefore evaluate in float64 with a short Taylor polynomial near 0, and round once.
def _in_f64(fn: Callable[..., K.Expr]) -> Callable[..., K.Expr]:
    """``fn(x, **attrs)`` evaluated in float64 and rounded back to ``x``'s type."""
    def wrapped(x: K.Expr, **attrs: Any) -> K.Expr:
        if x.dtype == "f64":
            return fn(x, **attrs)
        return K.Cast(fn(K.Cast(x, "f64"), **attrs), x.dtype)
    return wrapped


def _k_expm1(x: K.Expr) -> K.Expr:
    """e^x - 1 of a float64 ``x`` (relative error < 1e-10)."""
    small = K.call("abs", x).lt(1e-5)
    return K.select(small, x + x * x * (0.5 + x / 6.0), K.call("exp", x) - 1.0)


def _k_log1p(y: K.Expr) -> K.Expr:
    """log(1 + y) of a float64 ``y`` >= 0 (relative error < 1e-10)."""
    return K.select(y.lt(1e-5), y - y * y * (0.5 - y / 3.0), K.call("log", y + 1.0))


def _k_softplus(x: K.Expr) -> K.Expr:
    """log(1 + e^x) as numpy's logaddexp(0, x): max(x, 0) + log1p(e^-|x|) (float64)."""
    return K.select(x.lt(0.0), 0.0, x) + _k_log1p(K.call("exp", -K.call("abs", x)))


def _k_stable_sigmoid(z: K.Expr) -> K.Expr:
    """1 / (1 + e^-z) split by sign like the reference, so e^ never overflows."""
    e = K.call("exp", -K.call("abs", z))
    return K.select(z.ge(0.0), 1.0 / (e + 1.0), e / (e + 1.0))


def _k_gelu(x: K.Expr, approximate: str) -> K.Expr:
    """Float64: 1 + erf(x/sqrt 2) cancels for negative x."""
    if approximate == "tanh":
        inner = (x + x * x * x * 0.044715) * _SQRT_2_OVER_PI
        return x * 0.5 * (K.call("tanh", inner) + 1.0)
    return x * 0.5 * (K.call("erf", x * (1.0 / math.sqrt(2.0))) + 1.0)


def _k_celu(x: K.Expr, alpha: float) -> K.Expr:
    """max(0, x) + min(0, alpha expm1(x / alpha)): x itself unless x < 0 (NaN stays NaN)."""
    return K.select(x.lt(0.0), K.minimum(_k_expm1(x / alpha) * alpha, 0.0), x)


EXP = unary("Exp", "e^x", _keep_dtype(np.exp), 4,
            scalar=lambda x: K.call("exp", x))
LOG = unary("Log", "natural logarithm (-inf at 0, nan below)", _keep_dtype(np.log), 4,
            scalar=lambda x: K.call("log", x))
SQRT = unary("Sqrt", "square root (nan below 0)", _keep_dtype(np.sqrt), 4,
             scalar=lambda x: K.call("sqrt", x))
RECIPROCAL = unary("Reciprocal", "1 / x", _keep_dtype(np.reciprocal), 1,
                   scalar=lambda x: 1.0 / x)
FLOOR = unary("Floor", "largest integer <= x", _keep_dtype(np.floor), 1,
              scalar=lambda x: K.call("floor", x))
CEIL = unary("Ceil", "smallest integer >= x", _keep_dtype(np.ceil), 1,
             scalar=lambda x: K.call("ceil", x))
ERF = unary("Erf", "the error function 2/sqrt(pi) * integral_0^x e^(-t^2) dt",
            _keep_dtype(_erf), 8, scalar=lambda x: K.call("erf", x))
GELU = unary("Gelu", "0.5 x (1 + erf(x / sqrt 2)); approximate='tanh' uses "
             "0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))", _keep_dtype(_gelu), 10,
             (Attr("approximate", "str", "none", "'none' (exact, erf) or 'tanh'",
                   choices=("none", "tanh")),), scalar=_in_f64(_k_gelu))
SOFTPLUS = unary("Softplus", "log(1 + e^x)", _keep_dtype(_softplus), 4,
                 scalar=_in_f64(_k_softplus))
SOFTSIGN = unary("Softsign", "x / (1 + |x|)", _keep_dtype(lambda x: x / (1 + np.abs(x))), 3,
                 scalar=lambda x: x / (K.call("abs", x) + 1.0))
ELU = unary("Elu", "x if x >= 0 else alpha (e^x - 1)", _keep_dtype(_elu), 4,
            (Attr("alpha", "float", 1.0, "scale of the negative branch"),),
            scalar=_in_f64(lambda x, alpha: K.select(x.lt(0.0), _k_expm1(x) * alpha, x)))
SELU = unary("Selu", "gamma * (x if x > 0 else alpha (e^x - 1))", _keep_dtype(_selu), 5,
             (Attr("alpha", "float", 1.67326319217681884765625),
              Attr("gamma", "float", 1.05070102214813232421875)),
             scalar=_in_f64(lambda x, alpha, gamma:
                            K.select(x.gt(0.0), x, _k_expm1(x) * alpha) * gamma))
CELU = unary("Celu", "max(0, x) + min(0, alpha (e^(x/alpha) - 1))", _keep_dtype(_celu), 6,
             (Attr("alpha", "float", 1.0, "scale (non-zero)", check=_nonzero),),
             scalar=_in_f64(_k_celu))
THRESHOLDED_RELU = unary("ThresholdedRelu", "x if x > alpha else 0",
                         _keep_dtype(lambda x, alpha: np.where(x > alpha, x, 0)), 1,
                         (Attr("alpha", "float", 1.0, "the threshold"),),
                         scalar=lambda x, alpha: K.select(x.gt(alpha), x, 0.0))
MISH = unary("Mish", "x tanh(log(1 + e^x))",
             _keep_dtype(lambda x: x * np.tanh(_softplus(x))), 8,
             scalar=_in_f64(lambda x: x * K.call("tanh", _k_softplus(x))))
SWISH = unary("Swish", "x sigmoid(alpha x) (SiLU for alpha = 1)",
              _keep_dtype(lambda x, alpha: x * _sigmoid(alpha * x)), 5,
              (Attr("alpha", "float", 1.0, "scale inside the sigmoid"),),
              scalar=lambda x, alpha: x * _k_stable_sigmoid(x * alpha))


# ---------------------------------------------------------------------- other unary ops
def _numeric_unary_infer(ctx: InferContext) -> TensorType:
    return require_dtype(ctx, 0, NUMERIC)


def _not_infer(ctx: InferContext) -> TensorType:
    return require_dtype(ctx, 0, (DType.bool,))


def _register_unary(name: str, doc: str, fn: Callable[[np.ndarray], np.ndarray],
                    infer: Callable[[InferContext], TensorType],
                    scalar: Callable[[K.Expr], K.Expr]) -> OpDef:
    return register(OpDef(
        name=name, doc=doc, inputs=(Input("X"),), attrs=(), infer=infer,
        reference=lambda inputs, attrs: fn(inputs[0]),
        flops=elementwise_flops(1), fusion=FusionKind.ELEMENTWISE,
        scalar=lambda xs, attrs: scalar(xs[0]),
    ))


ABS = _register_unary("Abs", "|x| (float or int64)", np.abs, _numeric_unary_infer,
                      lambda x: K.call("abs", x))
NEG = _register_unary("Neg", "-x (float or int64)", np.negative, _numeric_unary_infer,
                      lambda x: -x)
NOT = _register_unary("Not", "logical not of a bool tensor", np.logical_not, _not_infer,
                      lambda x: x.eq(False))


# ---------------------------------------------------------------------------- binary ops
def _pow_infer(ctx: InferContext) -> TensorType:
    base = require_dtype(ctx, 0, NUMERIC)
    exponent = require_dtype(ctx, 1, NUMERIC)
    return TensorType(broadcast_shapes(ctx, base.shape, exponent.shape), base.dtype)


def _pow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu" and b.dtype.kind in "iu" and np.any(b < 0):
        # numpy refuses integer ** negative integer; ONNX gives the truncated real power
        return np.trunc(np.power(a.astype(np.float64), b)).astype(a.dtype)
    return np.power(a, b).astype(a.dtype, copy=False)


def _k_pow(a: K.Expr, b: K.Expr) -> K.Expr:
    """A ** B in numpy's promoted type: float32 only when both are float32, else float64;
    rounded (float) or truncated toward zero (int64) to A's type, as the reference does."""
    if a.dtype == b.dtype == "f32":
        return K.call("pow", a, b)
    wide = [x if x.dtype == "f64" else K.Cast(x, "f64") for x in (a, b)]
    result = K.call("pow", *wide)
    return result if a.dtype == "f64" else K.Cast(result, a.dtype)


def _compare_infer(allowed: tuple[DType, ...]) -> Callable[[InferContext], TensorType]:
    def infer(ctx: InferContext) -> TensorType:
        a, b = require_dtype(ctx, 0, allowed), require_dtype(ctx, 1, allowed)
        ctx.same_dtype(0, 1)
        return TensorType(broadcast_shapes(ctx, a.shape, b.shape), DType.bool)
    return infer


POW = binary("Pow", "A ** B with numpy broadcasting; the result has A's dtype (B may differ)",
             _pow, infer=_pow_infer, flops_per_element=4, scalar=_k_pow)
EQUAL = binary("Equal", "A == B (bool result) with numpy broadcasting", np.equal,
               infer=_compare_infer(NUMERIC + (DType.bool,)), scalar=lambda a, b: a.eq(b))
LESS = binary("Less", "A < B (bool result) with numpy broadcasting", np.less,
              infer=_compare_infer(NUMERIC), scalar=lambda a, b: a.lt(b))
GREATER = binary("Greater", "A > B (bool result) with numpy broadcasting", np.greater,
                 infer=_compare_infer(NUMERIC), scalar=lambda a, b: a.gt(b))


# ----------------------------------------------------------------------- variadic ops
def _variadic_infer(allowed: tuple[DType, ...]) -> Callable[[InferContext], TensorType]:
    def infer(ctx: InferContext) -> TensorType:
        if not ctx.inputs:
            raise ctx.fail(f"{ctx.op} needs at least one input, got none")
        types = [require_dtype(ctx, i, allowed) for i in range(len(ctx.inputs))]
        dtype = ctx.same_dtype(*range(len(types)))
        return TensorType(broadcast_all(ctx, types), dtype)
    return infer


def _variadic_flops(per_input: int, extra: int = 0) -> Callable[[InferContext], int]:
    """``per_input`` FLOPs per output element for each input after the first (+ ``extra``)."""
    def flops(ctx: InferContext) -> int:
        n = len(ctx.inputs)
        return (per_input * (n - 1) + extra) * sum(math.prod(t.shape) for t in ctx.outputs)
    return flops


def _variadic(name: str, doc: str, fn: Callable[[list[np.ndarray]], np.ndarray],
              allowed: tuple[DType, ...], extra_flops: int = 0,
              combine: Callable | None = None) -> OpDef:
    """``combine(a, b)`` folds two kernel-IR elements (the op's scalar form, left to right)."""

    def scalar(xs, attrs):
        total = xs[0]
        for x in xs[1:]:
            total = combine(total, x)
        return total / float(len(xs)) if name == "Mean" else total

    return register(OpDef(
        name=name, doc=doc, inputs=(Input("inputs", variadic=True),), attrs=(),
        infer=_variadic_infer(allowed), reference=lambda inputs, attrs: fn(list(inputs)),
        flops=_variadic_flops(1, extra_flops), fusion=FusionKind.BROADCAST,
        scalar=None if combine is None else scalar,
    ))


def _fold(ufunc: np.ufunc) -> Callable[[list[np.ndarray]], np.ndarray]:
    def fn(xs: list[np.ndarray]) -> np.ndarray:
        if len(xs) == 1:
            return xs[0].copy()  # never hand out the input buffer
        return functools.reduce(ufunc, xs[1:], xs[0])
    return fn


def _mean(xs: list[np.ndarray]) -> np.ndarray:
    return functools.reduce(np.add, xs[1:], xs[0]) / len(xs)  # float / int keeps the dtype


MAX = _variadic("Max", "elementwise maximum of any number of inputs (numpy broadcasting)",
                _fold(np.maximum), NUMERIC, combine=K.maximum)
MIN = _variadic("Min", "elementwise minimum of any number of inputs (numpy broadcasting)",
                _fold(np.minimum), NUMERIC, combine=K.minimum)
SUM = _variadic("Sum", "elementwise sum of any number of inputs (numpy broadcasting)",
                _fold(np.add), FLOAT, combine=lambda a, b: a + b)
MEAN = _variadic("Mean", "elementwise mean of any number of inputs (numpy broadcasting)",
                 _mean, FLOAT, extra_flops=1, combine=lambda a, b: a + b)


# ------------------------------------------------------------------------------- Where
def _where_infer(ctx: InferContext) -> TensorType:
    cond = require_dtype(ctx, 0, (DType.bool,))
    x, y = ctx.input(1), ctx.input(2)
    dtype = ctx.same_dtype(1, 2)
    return TensorType(broadcast_all(ctx, [cond, x, y]), dtype)


WHERE = register(OpDef(
    name="Where",
    doc="X where condition else Y, all three broadcast together (numpy.where)",
    inputs=(Input("condition"), Input("X"), Input("Y")), attrs=(), infer=_where_infer,
    reference=lambda inputs, attrs: np.where(inputs[0], inputs[1], inputs[2]),
    flops=elementwise_flops(1), fusion=FusionKind.BROADCAST,
    scalar=lambda xs, attrs: K.select(xs[0], xs[1], xs[2]),
))


# ---------------------------------------------------------------------- gradients
def _neg_grad(b, node, grads):
    return [b.op("Neg", grads[0])]


def _exp_grad(b, node, grads):
    return [b.op("Mul", grads[0], node.outputs[0])]


def _log_grad(b, node, grads):
    return [b.op("Div", grads[0], node.inputs[0])]


NEG.grad, EXP.grad, LOG.grad = _neg_grad, _exp_grad, _log_grad


def _sqrt_grad(b, node, grads):
    """g / (2 sqrt(x)), from the output."""
    from cnncompiler.ops.gradients import scalar

    y = node.outputs[0]
    return [b.op("Div", grads[0], b.op("Mul", y, scalar(b, 2.0, y)))]


SQRT.grad = _sqrt_grad


# The rules below write derivatives with the ops above; where a derivative is simplest in
# terms of the output y (Elu, Selu, Celu, Reciprocal) it reads the node's output rather
# than recomputing it. Piecewise-constant ops (Floor, Ceil, comparisons, Not) pass no
# gradient: their derivative is 0 wherever it exists, as in PyTorch.
def _no_grad(b, node, grads):
    return [None] * len(node.inputs)


FLOOR.grad = CEIL.grad = EQUAL.grad = LESS.grad = GREATER.grad = NOT.grad = _no_grad


def _negative_branch(b, node, g, slope):
    """``g * slope`` where x < 0, else g (Elu, Celu: the identity for x >= 0)."""
    from cnncompiler.ops.gradients import scalar

    x = node.inputs[0]
    return [b.op("Where", b.op("Less", x, scalar(b, 0.0, x)), b.op("Mul", g, slope), g)]


def _elu_grad(b, node, grads):
    """alpha e^x = y + alpha for x < 0, else 1."""
    from cnncompiler.ops.gradients import scalar

    y = node.outputs[0]
    return _negative_branch(b, node, grads[0], b.op("Add", y, scalar(b, node.attrs["alpha"], y)))


def _selu_grad(b, node, grads):
    """gamma for x > 0, gamma alpha e^x = y + gamma alpha for x <= 0."""
    from cnncompiler.ops.gradients import mul_scalar, scalar

    (g,), y = grads, node.outputs[0]
    alpha, gamma = node.attrs["alpha"], node.attrs["gamma"]
    x = node.inputs[0]
    negative = b.op("Mul", g, b.op("Add", y, scalar(b, alpha * gamma, y)))
    return [b.op("Where", b.op("Greater", x, scalar(b, 0.0, x)), mul_scalar(b, g, gamma),
                 negative)]


def _celu_grad(b, node, grads):
    """e^(x/alpha) = y/alpha + 1 for x < 0, else 1."""
    from cnncompiler.ops.gradients import mul_scalar, scalar

    y = node.outputs[0]
    slope = b.op("Add", mul_scalar(b, y, 1.0 / node.attrs["alpha"]), scalar(b, 1.0, y))
    return _negative_branch(b, node, grads[0], slope)


def _thresholded_relu_grad(b, node, grads):
    from cnncompiler.ops.gradients import masked, scalar

    x = node.inputs[0]
    return [masked(b, b.op("Greater", x, scalar(b, node.attrs["alpha"], x)), grads[0])]


def _softplus_grad(b, node, grads):
    """sigmoid(x)."""
    return [b.op("Mul", grads[0], b.op("Sigmoid", node.inputs[0]))]


def _softsign_grad(b, node, grads):
    """1 / (1 + |x|)^2."""
    from cnncompiler.ops.gradients import scalar

    x = node.inputs[0]
    d = b.op("Add", b.op("Abs", x), scalar(b, 1.0, x))
    return [b.op("Div", grads[0], b.op("Mul", d, d))]


def _abs_grad(b, node, grads):
    """sign(x) (0 taken as positive: a subgradient)."""
    from cnncompiler.ops.gradients import scalar

    (g,), x = grads, node.inputs[0]
    return [b.op("Where", b.op("Less", x, scalar(b, 0.0, x)), b.op("Neg", g), g)]


def _reciprocal_grad(b, node, grads):
    """-1/x^2 = -y^2."""
    y = node.outputs[0]
    return [b.op("Neg", b.op("Mul", grads[0], b.op("Mul", y, y)))]


def _erf_grad(b, node, grads):
    """2/sqrt(pi) e^(-x^2)."""
    from cnncompiler.ops.gradients import mul_scalar

    x = node.inputs[0]
    bell = b.op("Exp", b.op("Neg", b.op("Mul", x, x)))
    return [b.op("Mul", grads[0], mul_scalar(b, bell, 2.0 / math.sqrt(math.pi)))]


def _gelu_grad(b, node, grads):
    """Exact: Phi(x) + x phi(x). Tanh form with u = c (x + k x^3), t = tanh u:
    (1 + t)/2 + x (1 - t^2) c (1 + 3 k x^2) / 2."""
    from cnncompiler.ops.gradients import mul_scalar, scalar

    (g,), x = grads, node.inputs[0]
    one = scalar(b, 1.0, x)
    x2 = b.op("Mul", x, x)
    if node.attrs["approximate"] == "tanh":
        k = 0.044715
        inner = b.op("Add", one, mul_scalar(b, x2, k))             # 1 + k x^2
        t = b.op("Tanh", mul_scalar(b, b.op("Mul", x, inner), _SQRT_2_OVER_PI))
        du = b.op("Add", one, mul_scalar(b, x2, 3.0 * k))           # 1 + 3 k x^2
        sech2 = b.op("Sub", one, b.op("Mul", t, t))
        slope = b.op("Mul", b.op("Mul", x, sech2), mul_scalar(b, du, _SQRT_2_OVER_PI))
        d = mul_scalar(b, b.op("Add", b.op("Add", one, t), slope), 0.5)
    else:
        cdf = mul_scalar(b, b.op("Add", one, b.op("Erf", mul_scalar(b, x, 1.0 / math.sqrt(2.0)))),
                         0.5)
        pdf = mul_scalar(b, b.op("Exp", mul_scalar(b, x2, -0.5)), 1.0 / math.sqrt(2.0 * math.pi))
        d = b.op("Add", cdf, b.op("Mul", x, pdf))
    return [b.op("Mul", g, d)]


def _swish_grad(b, node, grads):
    """s + alpha x s (1 - s), s = sigmoid(alpha x)."""
    from cnncompiler.ops.gradients import mul_scalar, scalar

    (g,), x, alpha = grads, node.inputs[0], node.attrs["alpha"]
    s = b.op("Sigmoid", mul_scalar(b, x, alpha))
    one = scalar(b, 1.0, x)
    d = b.op("Mul", s, b.op("Add", one, b.op("Mul", mul_scalar(b, x, alpha),
                                             b.op("Sub", one, s))))
    return [b.op("Mul", g, d)]


def _mish_grad(b, node, grads):
    """t + x (1 - t^2) sigmoid(x), t = tanh(softplus(x))."""
    from cnncompiler.ops.gradients import scalar

    (g,), x = grads, node.inputs[0]
    t = b.op("Tanh", b.op("Softplus", x))
    sech2 = b.op("Sub", scalar(b, 1.0, x), b.op("Mul", t, t))
    d = b.op("Add", t, b.op("Mul", b.op("Mul", x, sech2), b.op("Sigmoid", x)))
    return [b.op("Mul", g, d)]


ELU.grad, SELU.grad, CELU.grad, THRESHOLDED_RELU.grad = _elu_grad, _selu_grad, _celu_grad, \
    _thresholded_relu_grad
SOFTPLUS.grad, SOFTSIGN.grad, ABS.grad, RECIPROCAL.grad = _softplus_grad, _softsign_grad, \
    _abs_grad, _reciprocal_grad
ERF.grad, GELU.grad, SWISH.grad, MISH.grad = _erf_grad, _gelu_grad, _swish_grad, _mish_grad


def _pow_grad(b, node, grads):
    """dA = g B A^(B-1); dB = g y log(A) where A > 0 (else 0: a negative base has a real
    power only at integer exponents, where it is not differentiable in B), each summed
    back to its operand's shape. An integer exponent gets no gradient."""
    from cnncompiler.ops.gradients import masked, scalar, unbroadcast

    (g,), (a, e), y = grads, node.inputs, node.outputs[0]
    if not a.type.dtype.is_float:
        return [None, None]
    ef = e if e.type.dtype == a.type.dtype else b.op("Cast", e, to=a.type.dtype.value)
    da = b.op("Mul", b.op("Mul", g, ef), b.op("Pow", a, b.op("Sub", ef, scalar(b, 1.0, ef))))
    de = None
    if e.type.dtype.is_float:
        zero = scalar(b, 0.0, a)
        positive = b.op("Greater", a, zero)
        log_a = b.op("Log", b.op("Where", positive, a, scalar(b, 1.0, a)))  # no log(<= 0)
        de = masked(b, positive, b.op("Mul", b.op("Mul", g, y), log_a))
        if de.type.dtype != e.type.dtype:
            de = b.op("Cast", de, to=e.type.dtype.value)
        de = unbroadcast(b, de, e)
    return [unbroadcast(b, da, a), de]


POW.grad = _pow_grad


def _select_grad(b, node, grads):
    """Max/Min: the gradient goes to the input that gives the output, the first one where
    several tie (as the MaxPool rule does), summed back to each input's shape."""
    from cnncompiler.ops.gradients import masked, scalar, unbroadcast

    (g,), y = grads, node.outputs[0]
    out, left = [], g
    for i, x in enumerate(node.inputs):
        if i == len(node.inputs) - 1:
            mine = left
        else:
            hit = b.op("Equal", x, y)
            mine = masked(b, hit, left)
            left = b.op("Where", hit, scalar(b, 0.0, g), left)
        out.append(unbroadcast(b, mine, x))
    return out


def _sum_grad(b, node, grads):
    from cnncompiler.ops.gradients import unbroadcast

    return [unbroadcast(b, grads[0], x) for x in node.inputs]


def _mean_grad(b, node, grads):
    from cnncompiler.ops.gradients import mul_scalar, unbroadcast

    g = mul_scalar(b, grads[0], 1.0 / len(node.inputs))
    return [unbroadcast(b, g, x) for x in node.inputs]


def _where_grad(b, node, grads):
    """g to X where the condition holds, to Y elsewhere; none to the condition."""
    from cnncompiler.ops.gradients import masked, scalar, unbroadcast

    (g,), (cond, x, y) = grads, node.inputs
    to_y = b.op("Where", cond, scalar(b, 0.0, g), g)
    return [None, unbroadcast(b, masked(b, cond, g), x), unbroadcast(b, to_y, y)]


MAX.grad = MIN.grad = _select_grad
SUM.grad, MEAN.grad, WHERE.grad = _sum_grad, _mean_grad, _where_grad
