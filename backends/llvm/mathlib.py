"""Vectorisable f32 ``exp``, ``log``, ``tanh`` and ``erf`` written in LLVM IR.

libm's ``expf``/``logf``/``tanhf``/``erff`` are opaque calls that LLVM's loop vectoriser cannot
widen (llvmlite offers no vector-library mapping), so a loop over them runs one element at
a time. The functions here are small ``internal alwaysinline`` LLVM functions made only of
arithmetic, integer bit operations and ``select``: once inlined into a kernel, a loop that
calls them vectorises like any other arithmetic.

:func:`function` defines one of them, once per module and value type (``float`` or a
vector of floats, e.g. ``<8 x float>``), and returns it; call it with one argument.

Accuracy, measured through the JIT on every float32 input against float64 numpy (with FMA;
sampled sweeps without FMA give the same bounds; tests/test_llvm_mathlib.py keeps sweeps):

* ``exp``: ``x = n*ln2 + r`` (Cody-Waite split of ln2, ``|r| <= ln2/2``), a degree-7
  polynomial for ``exp(r)``, then scaling by ``2**n`` assembled in the exponent field in
  two steps (``2**(n//2) * 2**(n - n//2)``), so results in the subnormal range are
  rounded once and correctly scaled (no flush to zero). Max relative error 8.5e-8 (1.01
  ulp) for normal results; subnormal results within 0.75 of their last place.
  ``x > 88.7228...`` gives ``+inf``, ``x < -103.97...`` gives ``+0``, ``exp(+-inf)`` is
  ``+inf``/``0`` and NaN propagates, like ``expf``.
* ``log``: ``x = 2**e * m`` with ``m`` in ``[sqrt(1/2), sqrt(2))`` (subnormal inputs are
  scaled by ``2**23`` first), a polynomial for ``log(m)``, and ``e*ln2`` added in two
  parts. Max relative error 8.2e-8 (0.83 ulp). ``log(+-0) = -inf``, ``log(x < 0) = NaN``,
  ``log(+inf) = +inf``, NaN propagates.
* ``tanh``: an odd polynomial for ``|x| < 0.625`` (accurate near 0, keeps the sign of
  ``-0``), ``copysign(1 - 2/(exp(2|x|) + 1), x)`` above. Max relative error 1.4e-7 (1.33 ulp);
  ``tanh(+-inf) = +-1``, NaN propagates.
* ``erf`` (GELU's): ``x * P(x**2)`` for ``|x| < 1``; above, ``1 - exp(-x**2) * R(t)`` with
  ``t = 1/(1 + |x|/2)``, ``x**2`` split exactly in two parts by an FMA, ``|x|`` clamped at 4
  (where erf rounds to 1). P and R are our least-squares fits (relative error 1.4e-9 and
  4.6e-10 in float64). Max relative error 1.8e-7 (2.4 ulp) on a sweep of 2**22 inputs in
  [-5, 5] plus the neighbourhoods of 0 and 1; ``erf(+-inf) = +-1``, ``erf(-0) = -0``, NaN
  propagates.

The operations carry no fast-math flags, on purpose: the kernels around them are compiled
with ``reassoc``/``contract``/..., and reassociating ``(x - n*C1) - n*C2`` or the
``t + 1.5*2**23 - 1.5*2**23`` rounding trick would destroy the range reduction. Polynomials
use ``llvm.fmuladd`` (fused where the target has FMA, two roundings elsewhere; both are
within the bounds above). Results assume the default floating-point environment
(round-to-nearest, subnormals not flushed).
"""

from __future__ import annotations

import re

from llvmlite import ir

#: The kernel-IR functions this module implements (for f32 and vectors of f32).
FUNCTIONS = ("exp", "log", "tanh", "erf")

_LOG2E = 1.44269504088896341
_LN2_HI = 0.693359375           # 9 significant bits: n * _LN2_HI is exact for |n| < 2**15
_LN2_LO = -2.12194440e-4        # ln2 - _LN2_HI
_ROUND = 12582912.0             # 1.5 * 2**23: adding it rounds to an integer (|v| < 2**22)
_ROUND_BITS = 0x4B400000        # its bit pattern

# exp(r) = 1 + r + r**2 * P(r) on [-ln2/2, ln2/2] (Cephes expf)
_EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
          1.6666665459e-1, 5.0000001201e-1)
# log(1 + f) = f - f**2/2 + f**3 * P(f) on [sqrt(1/2) - 1, sqrt(2) - 1] (Cephes logf)
_LOG_P = (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1,
          1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1,
          3.3333331174e-1)
# tanh(x) = x + x**3 * P(x**2) on [-0.625, 0.625] (Cephes tanhf)
_TANH_P = (-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1,
           -3.33332819422e-1)
_TANH_SMALL = 0.625
# erf(x) = x * P(x**2) on [0, 1]; erfc(z) = exp(-z**2) * R(1 / (1 + z/2)) on [1, 4]
_ERF_P = (7.8980663725e-05, -8.0243116984e-04, 5.1900488208e-03, -2.6854806018e-02,
          1.1283612365e-01, -3.7612628837e-01, 1.1283791665e+00)
_ERFC_R = (1.9375591991e-02, 4.3283326002e-02, -3.4171042842e-01, 4.3843510850e-01,
           -2.9074525867e-02, 3.1957585740e-01, 2.6630888935e-01, 2.8403282196e-01,
           -1.0348988354e-04)
_ERF_SMALL, _ERF_ONE = 1.0, 4.0


def _tag(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", text or "")


def _lanes(ty) -> int:
    return ty.count if isinstance(ty, ir.VectorType) else 1


def _suffix(ty) -> str:
    n = _lanes(ty)
    return f"v{n}f32" if n > 1 else "f32"


def _check_type(ty) -> None:
    element = ty.element if isinstance(ty, ir.VectorType) else ty
    if not isinstance(element, ir.FloatType):
        raise TypeError(f"mathlib functions take float or vectors of float, not {ty}")


class _Emitter:
    """An IRBuilder plus splatted constants and intrinsics for one value type."""

    def __init__(self, module, builder, fty) -> None:
        self.module = module
        self.b = builder
        self.fty = fty
        n = _lanes(fty)
        self.ity = ir.VectorType(ir.IntType(32), n) if n > 1 else ir.IntType(32)
        self.bty = ir.VectorType(ir.IntType(1), n) if n > 1 else ir.IntType(1)

    def _const(self, ty, value):
        if isinstance(ty, ir.VectorType):
            return ir.Constant(ty, [value] * ty.count)
        return ir.Constant(ty, value)

    def f(self, value: float):
        return self._const(self.fty, float(value))

    def i(self, value: int):
        return self._const(self.ity, int(value))

    def intrinsic(self, name: str, *args):
        full = f"llvm.{name}.{_suffix(self.fty)}"
        fn = self.module.globals.get(full)
        if fn is None:
            fn = ir.Function(self.module, ir.FunctionType(self.fty, [self.fty] * len(args)),
                             name=full)
        return self.b.call(fn, list(args))

    def fmuladd(self, a, b, c):
        return self.intrinsic("fmuladd", a, b, c)

    def horner(self, coefficients, x):
        acc = self.f(coefficients[0])
        for c in coefficients[1:]:
            acc = self.fmuladd(acc, x, self.f(c))
        return acc

    def as_int(self, v):
        return self.b.bitcast(v, self.ity)

    def as_float(self, v):
        return self.b.bitcast(v, self.fty)

    def pow2(self, n):
        """2**n as a float, for integer ``n`` in [-126, 127]."""
        return self.as_float(self.b.shl(self.b.add(n, self.i(127)), self.i(23)))


def _define_exp(em: _Emitter, x):
    b = em.b
    # clamp: NaN (and -inf) become -104 here, the NaN is put back at the end; beyond the
    # clamp the result is inf / 0 anyway
    xc = b.select(b.fcmp_ordered("<", x, em.f(89.0)), x, em.f(89.0))
    xc = b.select(b.fcmp_ordered(">", xc, em.f(-104.0)), xc, em.f(-104.0))
    # n = round(x / ln2), read off the mantissa of x*log2e + 1.5*2**23
    t = em.fmuladd(xc, em.f(_LOG2E), em.f(_ROUND))
    nf = b.fsub(t, em.f(_ROUND))
    n = b.sub(em.as_int(t), em.i(_ROUND_BITS))
    r = em.fmuladd(nf, em.f(-_LN2_HI), xc)          # exact
    r = em.fmuladd(nf, em.f(-_LN2_LO), r)
    p = em.fmuladd(em.horner(_EXP_P, r), b.fmul(r, r), r)
    p = b.fadd(p, em.f(1.0))
    # p * 2**n in two steps: each factor is a normal number for n in [-150, 128], the
    # first product is exact and the second rounds once (also into subnormals / inf)
    half = b.ashr(n, em.i(1))
    y = b.fmul(b.fmul(p, em.pow2(half)), em.pow2(b.sub(n, half)))
    return b.select(b.fcmp_unordered("uno", x, x), x, y)


def _define_log(em: _Emitter, x):
    b = em.b
    # subnormal (and zero/negative: fixed below) inputs: scale into the normal range
    small = b.fcmp_ordered("<", x, em.f(1.1754943508222875e-38))
    xs = b.select(small, b.fmul(x, em.f(8388608.0)), x)
    bias = b.select(small, em.i(-23), em.i(0))
    # x = 2**e * m, m in [sqrt(1/2), sqrt(2))
    ix = b.sub(em.as_int(xs), em.i(0x3F3504F3))
    e = b.ashr(ix, em.i(23))
    m = em.as_float(b.add(b.and_(ix, em.i(0x007FFFFF)), em.i(0x3F3504F3)))
    ef = b.sitofp(b.add(e, bias), em.fty)
    f = b.fsub(m, em.f(1.0))                          # exact
    z = b.fmul(f, f)
    y = b.fmul(b.fmul(em.horner(_LOG_P, f), f), z)
    y = em.fmuladd(ef, em.f(_LN2_LO), y)
    y = em.fmuladd(z, em.f(-0.5), y)
    y = b.fadd(f, y)
    y = em.fmuladd(ef, em.f(_LN2_HI), y)
    y = b.select(b.fcmp_ordered("==", x, em.f(float("inf"))), x, y)
    y = b.select(b.fcmp_ordered("==", x, em.f(0.0)), em.f(float("-inf")), y)
    return b.select(b.fcmp_unordered("<", x, em.f(0.0)), em.f(float("nan")), y)


def _define_tanh(em: _Emitter, x, exp_fn):
    b = em.b
    ax = em.intrinsic("fabs", x)
    z = b.fmul(ax, ax)
    small = em.fmuladd(b.fmul(em.horner(_TANH_P, z), z), ax, ax)
    e = b.call(exp_fn, [b.fmul(ax, em.f(2.0))])
    large = b.fsub(em.f(1.0), b.fdiv(em.f(2.0), b.fadd(e, em.f(1.0))))
    # NaN compares false: takes the exp path, which propagates it
    y = b.select(b.fcmp_ordered("<", ax, em.f(_TANH_SMALL)), small, large)
    return em.intrinsic("copysign", y, x)       # odd; tanh(-0) = -0


def _define_erf(em: _Emitter, x, exp_fn):
    b = em.b
    ax = em.intrinsic("fabs", x)
    small = b.fmul(em.horner(_ERF_P, b.fmul(ax, ax)), ax)
    # NaN compares false: clamped to 4 here, put back at the end
    z = b.select(b.fcmp_ordered("<", ax, em.f(_ERF_ONE)), ax, em.f(_ERF_ONE))
    hi = b.fmul(z, z)
    lo = em.intrinsic("fma", z, z, b.fneg(hi))        # z*z = hi + lo exactly
    e = b.call(exp_fn, [b.fneg(hi)])
    e = em.fmuladd(b.fneg(e), lo, e)                  # exp(-hi - lo) = exp(-hi) (1 - lo)
    t = b.fdiv(em.f(1.0), em.fmuladd(z, em.f(0.5), em.f(1.0)))
    large = em.fmuladd(b.fneg(e), em.horner(_ERFC_R, t), em.f(1.0))
    y = b.select(b.fcmp_ordered("<", ax, em.f(_ERF_SMALL)), small, large)
    y = em.intrinsic("copysign", y, x)                # odd; erf(-0) = -0
    return b.select(b.fcmp_unordered("uno", x, x), x, y)


def function(module, name: str, ty=None):
    """The ``internal alwaysinline`` function computing ``name`` (one of
    :data:`FUNCTIONS`) on values of ``ty`` (default ``float``) in ``module``, defined on
    first use."""
    if name not in FUNCTIONS:
        raise ValueError(f"mathlib has no function {name!r}")
    ty = ir.FloatType() if ty is None else ty
    _check_type(ty)
    lanes = _lanes(ty)
    # the module's name in the symbol: an engine that JITs several modules without
    # optimising (opt_level 0: nothing inlined) sees each module's copy under its own name
    symbol = f"cnnc.{name}f" + (f".v{lanes}" if lanes > 1 else "") + "." + _tag(module.name)
    existing = module.globals.get(symbol)
    if existing is not None:
        return existing
    exp_fn = function(module, "exp", ty) if name in ("tanh", "erf") else None
    fn = ir.Function(module, ir.FunctionType(ty, [ty]), name=symbol)
    fn.linkage = "internal"
    fn.attributes.add("alwaysinline")
    fn.attributes.add("nounwind")
    (x,) = fn.args
    x.name = "x"
    em = _Emitter(module, ir.IRBuilder(fn.append_basic_block("entry")), ty)
    if name == "exp":
        result = _define_exp(em, x)
    elif name == "log":
        result = _define_log(em, x)
    elif name == "erf":
        result = _define_erf(em, x, exp_fn)
    else:
        result = _define_tanh(em, x, exp_fn)
    em.b.ret(result)
    return fn
