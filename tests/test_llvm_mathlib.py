"""The inlined f32 exp/log/tanh of backends/llvm/mathlib.py, through the real JIT.

Kernels are rendered with the renderer's default fast-math flags, so these tests also check
that the range reductions and inf/NaN handling survive LLVM's optimiser.
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest

pytest.importorskip("llvmlite")

from llvmlite import ir  # noqa: E402

from cnncompiler.backends.llvm import mathlib  # noqa: E402
from cnncompiler.backends.llvm.engine import JitEngine  # noqa: E402
from cnncompiler.backends.llvm.render import render_module  # noqa: E402
from cnncompiler.kernel import ir as K  # noqa: E402

EXP_TOL = 2e-7    # max relative error, normal results
LOG_TOL = 2e-7
TANH_TOL = 1e-6
ERF_TOL = 2e-7
TINY = 2.0 ** -149  # smallest subnormal float32

REF = {"exp": np.exp, "log": np.log, "tanh": np.tanh,
       "erf": np.vectorize(math.erf, otypes=[np.float64])}

SPECIALS = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1.0, -1.0, 0.5, 2.0,
                     1e-30, -1e-30, 1e-45, -1e-45, 1.1754944e-38, 5e-39, 0.625, -0.625,
                     88.72283, 88.72284, 88.7229, 89.0, 100.0, 1e30, 3.4028235e38,
                     -87.33654, -87.34, -100.0, -103.972, -103.9721, -104.0, -1e30,
                     -3.4028235e38], np.float32)


@pytest.fixture(scope="module")
def engine():
    return JitEngine()


def map_kernel(name: str, fn: str, n: int) -> K.Kernel:
    x, y, i = K.Buffer("x", "f32", n), K.Buffer("y", "f32", n), K.Var("i")
    return K.Kernel(name, [x, y], [K.Loop(i, K.Const(0), K.Const(n),
                                          [K.Store(y, i, K.call(fn, K.Load(x, i)))],
                                          kind="vector")])


_compiled: dict[tuple[str, int], object] = {}


def apply(engine, fn: str, xs) -> np.ndarray:
    """``fn`` over ``xs`` (float32) by a JIT-compiled vector loop."""
    xs = np.ascontiguousarray(xs, np.float32)
    key = (fn, xs.size)
    if key not in _compiled:
        name = f"ml_{fn}_{xs.size}"
        engine.compile(render_module([map_kernel(name, fn, xs.size)], f"m_{name}"))
        _compiled[key] = engine.function(name, 2)
    ys = np.full_like(xs, 12345.0)
    _compiled[key](xs.ctypes.data, ys.ctypes.data)
    return ys


def reference(fn: str, xs) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return REF[fn](np.asarray(xs, np.float32).astype(np.float64))


def check_specials(engine, fn: str) -> None:
    """Same results as float64 numpy rounded to float32: bit-exact for inf, zero (with
    sign) and NaN results, within 2 ulp for the rest."""
    got = apply(engine, fn, SPECIALS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # float64 results beyond float32's range
        want = reference(fn, SPECIALS).astype(np.float32)
    for x, g, w in zip(SPECIALS, got, want):
        if np.isnan(w) or np.isinf(w) or w == 0:
            same = np.isnan(g) if np.isnan(w) else (g == w and np.signbit(g) == np.signbit(w))
            assert same, f"{fn}({x!r}) = {g!r}, want {w!r}"
        else:
            assert abs(float(g) - float(w)) <= 2 * np.spacing(abs(w)), (fn, x, g, w)


def max_rel_err(got, want) -> float:
    return float(np.max(np.abs(got.astype(np.float64) - want) / np.abs(want)))


# ----------------------------------------------------------------------------- exp
def test_exp_sweep(engine):
    rng = np.random.default_rng(0)
    xs = np.concatenate([np.linspace(-110, 100, 1_000_003, dtype=np.float32),
                         rng.uniform(-87, 88, 300_000).astype(np.float32),
                         (rng.standard_normal(100_000) * 1e-3).astype(np.float32)])
    got = apply(engine, "exp", xs)
    want = reference("exp", xs)
    normal = (want >= 2.0 ** -126) & (want <= 3.4e38)
    assert normal.sum() > 900_000
    assert max_rel_err(got[normal], want[normal]) <= EXP_TOL
    # subnormal results: correctly scaled, within one subnormal step
    sub = (want < 2.0 ** -126) & (xs > -103.97)
    assert sub.sum() > 10_000
    assert np.max(np.abs(got[sub] - want[sub])) <= TINY
    assert np.all(got[xs < -103.973] == 0) and np.all(got[xs > 88.7229] == np.inf)
    assert np.all(np.isfinite(got[xs < 88.7228]))


def test_exp_specials(engine):
    check_specials(engine, "exp")


def test_exp_vector_loop_4096(engine):
    xs = np.random.default_rng(1).uniform(-20, 20, 4096).astype(np.float32)
    got = apply(engine, "exp", xs)
    assert max_rel_err(got, reference("exp", xs)) <= EXP_TOL


def test_loop_over_exp_is_vectorised(engine):
    kernel = map_kernel("vec_exp", "exp", 4096)
    optimised = str(engine.optimize(render_module([kernel], "m_vec_exp")))
    vector = "<8 x float>" if "+avx2" in engine.cpu_features else r"<\d+ x float>"
    assert re.search(rf"fmul[^\n]*{vector}", optimised), "the exp loop was not vectorised"
    assert not re.search(r"call[^\n]*@\"?(expf|exp)\b", optimised)
    assert "cnnc.expf" not in optimised  # inlined (and the helper removed)


def test_sigmoid_under_fast_math_keeps_its_limits(engine):
    """1/(1+exp(-x)) with the kernels' fast-math flags: exp's inf for large -x and 0 for
    large x must survive (the range reduction carries no fast-math flags)."""
    n = 16
    x, y, i = K.Buffer("x", "f32", n), K.Buffer("y", "f32", n), K.Var("i")
    kernel = K.Kernel("ml_sigmoid", [x, y], [K.Loop(i, K.Const(0), K.Const(n), [
        K.Store(y, i, 1.0 / (1.0 + K.call("exp", -K.Load(x, i))))], kind="vector")])
    xs = np.array([-1e30, -200, -100, -90, -20, -1, -1e-8, 0, 1e-8, 1, 20, 90, 100, 200,
                   1e30, np.inf], np.float32)
    ys = np.zeros(n, np.float32)
    engine.compile(render_module([kernel], "m_ml_sigmoid"))
    engine.function("ml_sigmoid", 2)(xs.ctypes.data, ys.ctypes.data)
    want = 1 / (1 + reference("exp", -xs))
    np.testing.assert_allclose(ys, want, rtol=1e-6, atol=1e-37)
    assert ys[0] == 0 and ys[-1] == 1 and np.all(np.isfinite(ys))


# ----------------------------------------------------------------------------- log
def test_log_sweep(engine):
    rng = np.random.default_rng(2)
    bits = rng.integers(1, 0x7F800000, 1_000_000, dtype=np.int64).astype(np.uint32)
    xs = np.concatenate([bits.view(np.float32),       # every binade, subnormals included
                         np.linspace(0.5, 2.0, 300_001, dtype=np.float32),
                         np.float32(1) + np.arange(-2000, 2000, dtype=np.float32) * 2.0 ** -24])
    xs = xs[xs != 1]
    got = apply(engine, "log", xs)
    assert max_rel_err(got, reference("log", xs)) <= LOG_TOL


def test_log_specials(engine):
    check_specials(engine, "log")
    assert apply(engine, "log", np.ones(4))[0] == 0


# ----------------------------------------------------------------------------- tanh
def test_tanh_sweep(engine):
    rng = np.random.default_rng(3)
    xs = np.concatenate([np.linspace(-20, 20, 1_000_001, dtype=np.float32),
                         np.linspace(0.55, 0.7, 100_001, dtype=np.float32),
                         (rng.standard_normal(100_000) * 1e-2).astype(np.float32),
                         np.float32(2.0) ** -np.arange(1, 149, dtype=np.float32),
                         -np.float32(2.0) ** -np.arange(1, 149, dtype=np.float32)])
    xs = xs[xs != 0]
    got = apply(engine, "tanh", xs)
    assert max_rel_err(got, reference("tanh", xs)) <= TANH_TOL
    assert np.all(np.abs(got) <= 1)


def test_tanh_specials(engine):
    check_specials(engine, "tanh")


# ----------------------------------------------------------------------------- erf
def test_erf_sweep(engine):
    rng = np.random.default_rng(5)
    xs = np.concatenate([np.linspace(-5, 5, 1_000_001, dtype=np.float32),
                         np.linspace(0.95, 1.05, 100_001, dtype=np.float32),   # the seam
                         (rng.standard_normal(100_000) * 1e-2).astype(np.float32),
                         np.float32(2.0) ** -np.arange(1, 149, dtype=np.float32),
                         -np.float32(2.0) ** -np.arange(1, 149, dtype=np.float32)])
    xs = xs[xs != 0]
    got, want = apply(engine, "erf", xs), reference("erf", xs)
    normal = np.abs(want) >= 2.0 ** -126
    assert max_rel_err(got[normal], want[normal]) <= ERF_TOL
    assert np.max(np.abs(got[~normal] - want[~normal])) <= TINY   # subnormal results
    assert np.all(np.abs(got) <= 1) and np.all(got[xs >= 4] == 1)


def test_erf_specials(engine):
    check_specials(engine, "erf")


def test_gelu_loop_is_vectorised(engine):
    """GELU, x/2 * (1 + erf(x/sqrt 2)), as a vector loop with no call left in it."""
    n = 4096
    x, y, i = K.Buffer("x", "f32", n), K.Buffer("y", "f32", n), K.Var("i")
    v = K.Load(x, i)
    kernel = K.Kernel("ml_gelu", [x, y], [K.Loop(i, K.Const(0), K.Const(n), [
        K.Store(y, i, v * 0.5 * (1.0 + K.call("erf", v * 0.7071067811865476)))], "vector")])
    module = render_module([kernel], "m_ml_gelu")
    optimised = str(engine.optimize(module))
    assert "<8 x float>" in optimised and not re.search(r"call[^\n]*@\"?erff?\b", optimised)
    xs = np.random.default_rng(6).standard_normal(n).astype(np.float32) * 3
    ys = np.zeros(n, np.float32)
    engine.compile(render_module([kernel], "m_ml_gelu2"))
    engine.function("ml_gelu", 2)(xs.ctypes.data, ys.ctypes.data)
    x64 = xs.astype(np.float64)
    want = x64 / 2 * (1 + reference("erf", x64 / math.sqrt(2)))
    assert np.linalg.norm(ys - want) / np.linalg.norm(want) < 1e-6


# ----------------------------------------------------------------------------- plumbing
@pytest.mark.parametrize("fn", ["exp", "log", "tanh", "erf"])
def test_explicit_f32x8_vectors(engine, fn):
    n = 64
    x, y, i = K.Buffer("x", "f32", n), K.Buffer("y", "f32", n), K.Var("i")
    kernel = K.Kernel(f"ml_v8_{fn}", [x, y], [K.Loop(i, K.Const(0), K.Const(n // 8), [
        K.Store(y, i * 8, K.call(fn, K.Load(x, i * 8, 8)))])])
    module = render_module([kernel], f"m_ml_v8_{fn}")
    assert f"cnnc.{fn}f.v8" in str(module)
    xs = np.random.default_rng(4).uniform(0.01 if fn == "log" else -5, 5, n).astype(np.float32)
    ys = np.zeros(n, np.float32)
    engine.compile(module)
    engine.function(kernel.name, 2)(xs.ctypes.data, ys.ctypes.data)
    assert max_rel_err(ys, reference(fn, xs)) <= 2e-7


def test_f64_and_other_functions_still_call_libm():
    n = 8
    x, y, i = K.Buffer("x", "f64", n), K.Buffer("y", "f64", n), K.Var("i")
    xf, yf = K.Buffer("xf", "f32", n), K.Buffer("yf", "f32", n)
    kernel = K.Kernel("ml_libm", [x, y, xf, yf], [K.Loop(i, K.Const(0), K.Const(n), [
        K.Store(y, i, K.call("exp", K.Load(x, i)) + K.call("tanh", K.Load(x, i))),
        K.Store(yf, i, K.call("pow", K.Load(xf, i), K.Load(xf, i))
                + K.call("erf", K.Load(xf, i)) + K.call("exp", K.Load(xf, i)))])])
    text = str(render_module([kernel], "m_ml_libm"))
    assert re.search(r'declare double @"?exp"?\(double', text)
    assert re.search(r'declare double @"?tanh"?\(double', text)
    assert re.search(r'declare float @"?powf"?\(float', text)
    assert not re.search(r'@"?(expf|erff)"?\(', text)


def test_helpers_defined_once_per_module_and_type():
    module = ir.Module(name="once")
    f32 = ir.FloatType()
    a = mathlib.function(module, "exp", f32)
    assert mathlib.function(module, "exp") is a
    t = mathlib.function(module, "tanh", f32)
    v = mathlib.function(module, "exp", ir.VectorType(f32, 4))
    assert len({a.name, t.name, v.name}) == 3
    assert a.linkage == "internal" and "alwaysinline" in a.attributes
    with pytest.raises(ValueError):
        mathlib.function(module, "pow", f32)
    with pytest.raises(TypeError):
        mathlib.function(module, "exp", ir.DoubleType())


def test_unoptimised_engine_takes_several_modules():
    """Without optimisation nothing is inlined: each module's helper keeps its own name."""
    engine = JitEngine(opt_level=0)
    xs = np.linspace(-3, 3, 16, dtype=np.float32)
    for name in ("ml_o0_a", "ml_o0_b"):
        engine.compile(render_module([map_kernel(name, "tanh", 16)], f"m_{name}"))
        ys = np.zeros(16, np.float32)
        engine.function(name, 2)(xs.ctypes.data, ys.ctypes.data)
        assert max_rel_err(ys, reference("tanh", xs)) <= TANH_TOL
