"""The LLVM renderer and JIT engine on hand-written kernels, checked against numpy."""

from __future__ import annotations

import ctypes
import math
import re

import numpy as np
import pytest

pytest.importorskip("llvmlite")

from cnncompiler.backends.llvm.engine import JitEngine, host_description  # noqa: E402
from cnncompiler.backends.llvm.render import add_entry, render_module  # noqa: E402
from cnncompiler.errors import CnnCompilerError  # noqa: E402
from cnncompiler.kernel import ir as K  # noqa: E402

N = 1000


@pytest.fixture(scope="module")
def engine():
    return JitEngine()


def ptr(a: np.ndarray) -> int:
    assert a.flags.c_contiguous
    return a.ctypes.data


def run(engine, kernel: K.Kernel, *arrays: np.ndarray) -> None:
    engine.compile(render_module([kernel], f"m_{kernel.name}"))
    engine.function(kernel.name, len(arrays))(*(ptr(a) for a in arrays))


def elementwise(name: str, fn, n: int = N, dtype: str = "f32") -> K.Kernel:
    x, y, i = K.Buffer("x", dtype, n), K.Buffer("y", dtype, n), K.Var("i")
    return K.Kernel(name, [x, y], [K.Loop(i, K.Const(0), K.Const(n),
                                          [K.Store(y, i, fn(K.Load(x, i)))])])


def rel_err(got, want) -> float:
    want = np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-30)))


@pytest.mark.parametrize("name,fn,ref", [
    ("relu", lambda v: K.maximum(v, 0.0), lambda x: np.maximum(x, 0)),
    ("sigmoid", lambda v: 1.0 / (1.0 + K.call("exp", -v)), lambda x: 1 / (1 + np.exp(-x))),
    ("tanh", lambda v: K.call("tanh", v), np.tanh),
    ("erf", lambda v: K.call("erf", v), np.vectorize(math.erf)),
    ("sqrtabs", lambda v: K.call("sqrt", K.call("abs", v)), lambda x: np.sqrt(np.abs(x))),
    ("floorceil", lambda v: K.call("floor", v) + K.call("ceil", v * 2.0),
     lambda x: np.floor(x) + np.ceil(2 * x)),
    ("powlog", lambda v: K.call("pow", K.call("abs", v) + 1.0, K.Const(1.5, "f32"))
     + K.call("log", K.call("abs", v) + 1.0),
     lambda x: (np.abs(x) + 1) ** 1.5 + np.log(np.abs(x) + 1)),
])
def test_elementwise_float(engine, name, fn, ref):
    x = np.random.default_rng(0).standard_normal(N).astype(np.float32) * 3
    y = np.zeros(N, np.float32)
    run(engine, elementwise(f"ew_{name}", fn), x, y)
    assert rel_err(y, ref(x.astype(np.float64))) < 1e-6


def test_f64_buffers(engine):
    x = np.linspace(-4, 4, N)
    y = np.zeros(N)
    run(engine, elementwise("ew_f64", lambda v: K.call("exp", v) * v - 0.5, dtype="f64"), x, y)
    np.testing.assert_allclose(y, np.exp(x) * x - 0.5, rtol=1e-14)


def test_casts(engine):
    n = 64
    x, y, z = K.Buffer("x", "f32", n), K.Buffer("y", "f64", n), K.Buffer("z", "i64", n)
    m = K.Buffer("m", "i1", n)
    i = K.Var("i")
    v = K.Load(x, i)
    body = [K.Store(y, i, K.Cast(v, "f64") * 2.0 + K.Cast(i, "f64")),
            K.Store(z, i, K.Cast(v, "i64")),
            K.Store(m, i, v.gt(0.0))]
    kernel = K.Kernel("casts", [x, y, z, m], [K.Loop(i, K.Const(0), K.Const(n), body)])
    xs = np.linspace(-3.7, 3.7, n).astype(np.float32)
    ys, zs, ms = np.zeros(n), np.zeros(n, np.int64), np.zeros(n, np.bool_)
    run(engine, kernel, xs, ys, zs, ms)
    np.testing.assert_allclose(ys, xs.astype(np.float64) * 2 + np.arange(n))
    np.testing.assert_array_equal(zs, np.trunc(xs).astype(np.int64))
    np.testing.assert_array_equal(ms, xs > 0)


def test_reductions_with_accumulator(engine):
    rows, cols = 7, 300
    a, b = K.Buffer("a", "f32", rows * cols), K.Buffer("b", "f32", cols)
    s, d = K.Buffer("s", "f32", rows), K.Buffer("d", "f32", rows)
    i, j = K.Var("i"), K.Var("j")
    acc, dot = K.Var("acc", "f32"), K.Var("dot", "f32")
    v = K.Load(a, i * cols + j)
    body = [K.Declare(acc, K.Const(0.0, "f32")), K.Declare(dot, K.Const(0.0, "f32")),
            K.Loop(j, K.Const(0), K.Const(cols), [
                K.Assign(acc, acc + v), K.Assign(dot, dot + v * K.Load(b, j))]),
            K.Store(s, i, acc), K.Store(d, i, dot)]
    kernel = K.Kernel("rowsums", [a, b, s, d], [K.Loop(i, K.Const(0), K.Const(rows), body)])
    rng = np.random.default_rng(1)
    av = rng.random((rows, cols), dtype=np.float32)
    bv = rng.random(cols, dtype=np.float32)
    sv, dv = np.zeros(rows, np.float32), np.zeros(rows, np.float32)
    run(engine, kernel, av, bv, sv, dv)
    a64 = av.astype(np.float64)
    assert rel_err(sv, a64.sum(1)) < 1e-4
    assert rel_err(dv, a64 @ bv.astype(np.float64)) < 1e-4


def test_max_reduction_from_minus_infinity(engine):
    n = 257
    x, y = K.Buffer("x", "f32", n), K.Buffer("y", "f32", 1)
    i, m = K.Var("i"), K.Var("m", "f32")
    kernel = K.Kernel("maxred", [x, y], [
        K.Declare(m, K.Const(float("-inf"), "f32")),
        K.Loop(i, K.Const(0), K.Const(n), [K.Assign(m, K.maximum(m, K.Load(x, i)))]),
        K.Store(y, K.Const(0), m)])
    xs = -np.abs(np.random.default_rng(2).standard_normal(n).astype(np.float32)) - 1
    ys = np.zeros(1, np.float32)
    run(engine, kernel, xs, ys)
    assert ys[0] == xs.max()


def test_nested_loops_if_and_select(engine):
    # pad a 5x6 image by 2 on every side (select guarding an out-of-range load), and
    # clamp it to [-0.5, 0.5] inside an If on odd rows only
    h, w, p = 5, 6, 2
    hp, wp = h + 2 * p, w + 2 * p
    x, y = K.Buffer("x", "f32", h * w), K.Buffer("y", "f32", hp * wp)
    r, c = K.Var("r"), K.Var("c")
    ih, iw = r - p, c - p
    inside = K.Bin("and", K.Bin("and", ih.ge(0), ih.lt(h)), K.Bin("and", iw.ge(0), iw.lt(w)))
    value = K.select(inside, K.Load(x, ih * w + iw), -9.0)
    out = r * wp + c
    body = [K.Store(y, out, value),
            K.If((r % 2).eq(1), [K.Store(y, out, K.minimum(K.maximum(value, -0.5), 0.5))])]
    kernel = K.Kernel("pad_clamp", [x, y], [
        K.Loop(r, K.Const(0), K.Const(hp), [K.Loop(c, K.Const(0), K.Const(wp), body,
                                                  kind="vector")])])
    xs = np.random.default_rng(3).standard_normal((h, w)).astype(np.float32)
    ys = np.zeros((hp, wp), np.float32)
    run(engine, kernel, xs, ys)
    want = np.pad(xs, p, constant_values=-9.0)
    want[1::2] = np.clip(want[1::2], -0.5, 0.5)
    np.testing.assert_array_equal(ys, want)


def test_if_else_and_comparisons(engine):
    n = 40
    x, y = K.Buffer("x", "i64", n), K.Buffer("y", "i64", n)
    i = K.Var("i")
    v = K.Load(x, i)
    kernel = K.Kernel("ifelse", [x, y], [K.Loop(i, K.Const(0), K.Const(n), [
        K.If(K.Bin("or", v.lt(-5), v.ge(7)),
             [K.Store(y, i, K.maximum(v, 0) * 3)],
             [K.Store(y, i, K.minimum(v, 2) - K.call("abs", v))])])])
    xs = np.arange(-20, 20, dtype=np.int64)
    ys = np.zeros(n, np.int64)
    run(engine, kernel, xs, ys)
    want = np.where((xs < -5) | (xs >= 7), np.maximum(xs, 0) * 3, np.minimum(xs, 2) - abs(xs))
    np.testing.assert_array_equal(ys, want)


def test_integer_floor_div_and_mod(engine):
    n = 64
    z, q, r = K.Buffer("z", "i64", n), K.Buffer("q", "i64", n), K.Buffer("r", "i64", n)
    d = K.Buffer("d", "i64", 1)  # a divisor unknown at compile time
    i = K.Var("i")
    body = [K.Store(z, i, (i // 7) * 100 + i % 3),
            K.Store(q, i, (i - 30) // 4 + (i - 30) // K.Load(d, K.Const(0))),
            K.Store(r, i, (i - 30) % 5 + (30 - i) % -3 + (i - 31) % K.Load(d, K.Const(0)))]
    kernel = K.Kernel("intdiv", [d, z, q, r], [K.Loop(i, K.Const(0), K.Const(n), body)])
    zs, qs, rs = (np.zeros(n, np.int64) for _ in range(3))
    run(engine, kernel, np.array([-2], np.int64), zs, qs, rs)
    idx = np.arange(n)
    np.testing.assert_array_equal(zs, (idx // 7) * 100 + idx % 3)
    np.testing.assert_array_equal(qs, (idx - 30) // 4 + (idx - 30) // (-2))
    np.testing.assert_array_equal(rs, (idx - 30) % 5 + (30 - idx) % -3 + (idx - 31) % -2)


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_float_floor_div_and_mod_of_exact_multiples(engine, dtype):
    """Float ``//`` divides exactly: under fast-math ``arcp`` x / 41 became x * fl(1/41),
    just below 1 for x = 41, and floor made 41 // 41 == 0."""
    n, divisors = 256, range(1, 100)
    np_dtype = np.float32 if dtype == "f32" else np.float64
    x = K.Buffer("x", dtype, n)
    q, r = K.Buffer("q", dtype, n * len(divisors)), K.Buffer("r", dtype, n * len(divisors))
    i = K.Var("i")
    body = []
    for j, d in enumerate(divisors):
        v = K.Load(x, i) * float(d)  # exact multiples of d, of either sign
        body += [K.Store(q, i + j * n, v // float(d)), K.Store(r, i + j * n, v % float(d))]
    kernel = K.Kernel(f"floordiv_{dtype}", [x, q, r],
                      [K.Loop(i, K.Const(0), K.Const(n), body)])
    xs = np.arange(-n // 2, n // 2).astype(np_dtype)
    qs, rs = np.zeros(n * len(divisors), np_dtype), np.zeros(n * len(divisors), np_dtype)
    run(engine, kernel, xs, qs, rs)
    np.testing.assert_array_equal(qs, np.tile(xs, len(divisors)))
    np.testing.assert_array_equal(rs, 0.0)


def test_entry_runs_kernels_at_arena_offsets(engine):
    n = 100
    x, y = K.Buffer("x", "f32", n), K.Buffer("y", "f32", n)
    i = K.Var("i")
    double = K.Kernel("e_double", [x, y], [
        K.Loop(i, K.Const(0), K.Const(n), [K.Store(y, i, K.Load(x, i) * 2.0)])])
    addone = K.Kernel("e_addone", [x, y], [
        K.Loop(i, K.Const(0), K.Const(n), [K.Store(y, i, K.Load(x, i) + 1.0)])])
    module = render_module([double, addone], "entry_module")
    # args: 0 = input, 1 = arena, 2 = output; the intermediates live in the arena at
    # byte offsets 64 and 64 + 4 * n + 32
    mid1, mid2 = 64, 64 + 4 * n + 32
    add_entry(module, "e_run", [
        ("e_double", [(0, 0), (1, mid1)]),
        ("e_addone", [(1, mid1), (1, mid2)]),
        ("e_double", [(1, mid2), (2, 0)]),
    ], num_args=3)
    engine.compile(module)
    xs = np.arange(n, dtype=np.float32)
    arena = np.zeros(mid2 // 4 + n + 8, np.float32)
    out = np.zeros(n, np.float32)
    args = (ctypes.c_void_p * 3)(ptr(xs), ptr(arena), ptr(out))
    engine.entry("e_run")(args)
    np.testing.assert_array_equal(out, (xs * 2 + 1) * 2)
    np.testing.assert_array_equal(arena[mid1 // 4: mid1 // 4 + n], xs * 2)
    assert not arena[: mid1 // 4].any()


def test_entry_rejects_bad_calls():
    module = render_module([elementwise("k", lambda v: v)], "bad")
    # a kernel the module does not define is declared: another object defines it
    add_entry(module, "run", [("elsewhere", [(0, 0)])], 1)
    assert module.globals["elsewhere"].is_declaration
    with pytest.raises(CnnCompilerError, match="takes 2 buffers"):
        add_entry(module, "run2", [("k", [(0, 0)])], 1)
    with pytest.raises(CnnCompilerError, match="argument index 3"):
        add_entry(module, "run3", [("k", [(0, 0), (3, 0)])], 2)


def test_vectorises_and_uses_fma(engine):
    n = 1024
    x, w, y = (K.Buffer(s, "f32", n) for s in "xwy")
    i = K.Var("i")
    axpy = K.Kernel("axpy", [x, w, y], [K.Loop(i, K.Const(0), K.Const(n), [
        K.Store(y, i, K.Load(x, i) * K.Load(w, i) + K.Load(y, i))])])
    optimised = str(engine.optimize(render_module([axpy], "vec")))
    cpu = engine.cpu_features
    if "+avx2" in cpu:
        assert "<8 x float>" in optimised
    else:
        assert re.search(r"<\d+ x float>", optimised)
    if "+fma" in cpu:
        assert "vfmadd" in engine.emit_assembly(render_module([axpy], "fma"))


def test_loop_kind_hints_and_object_code(engine):
    assert "llvm.loop" not in str(render_module([elementwise("plain", lambda v: v)], "p"))
    kernel = elementwise("hinted2", lambda v: v * 3.0)
    kernel.body[0].kind = "unroll"
    text = str(render_module([kernel], "hints2"))
    assert "llvm.loop.unroll.enable" in text
    kernel.body[0].kind = "vector"  # left to LLVM's cost model: no forced hint
    assert "llvm.loop" not in str(render_module([kernel], "hints3"))
    obj = engine.emit_object(render_module([kernel], "aot"))
    assert obj[:4] == b"\x7fELF"
    assert engine.cpu_name and engine.cpu_features
    assert engine.host_description().startswith(engine.cpu_name)
    assert host_description().startswith(engine.cpu_name)


def test_errors_name_the_kernel(engine):
    x = K.Buffer("x", "f32", 4)
    bad = K.Kernel("badvar", [x], [K.Store(x, K.Const(0), K.Var("nowhere", "f32"))])
    with pytest.raises(CnnCompilerError, match="badvar.*nowhere"):
        render_module([bad], "bad")
    other = K.Buffer("other", "f32", 4)
    stray = K.Kernel("stray", [x], [K.Store(other, K.Const(0), K.Const(1.0, "f32"))])
    with pytest.raises(CnnCompilerError, match="stray.*other"):
        render_module([stray], "bad")
    mixed = K.Kernel("mixed", [x], [K.Store(x, K.Const(0), K.Const(1))])
    with pytest.raises(CnnCompilerError, match="mixed"):
        render_module([mixed], "bad")
    text = "define void @broken(ptr %p) {\nentry:\n  store float 1.0, ptr %q\n  ret void\n}\n"
    with pytest.raises(CnnCompilerError, match="broken"):
        engine.compile(text)
    with pytest.raises(CnnCompilerError, match="no compiled function"):
        engine.function("never_compiled", 1)


def test_missing_llvmlite_is_reported(monkeypatch):
    from cnncompiler.backends.llvm import engine as engine_module
    from cnncompiler.backends.llvm import render as render_module_
    from cnncompiler.errors import BackendUnavailableError

    monkeypatch.setattr(engine_module, "llvm", None)
    monkeypatch.setattr(render_module_, "ir", None)
    with pytest.raises(BackendUnavailableError, match="llvmlite"):
        JitEngine()
    with pytest.raises(BackendUnavailableError, match="llvmlite"):
        render_module([], "none")


def test_explicit_vectors(engine):
    """f32x8 values: vector loads/stores, broadcasts, fma, max, compare + select."""
    n = 64
    x, w, y = K.Buffer("x", "f32", n), K.Buffer("w", "f32", 8), K.Buffer("y", "f32", n)
    i = K.Var("i")
    acc = K.Var("acc", "f32x8")
    xv = K.Load(x, i * 8, 8)
    body = [K.Declare(acc, K.broadcast(0.5, 8)),
            K.Assign(acc, K.fma(xv, K.Load(w, K.Const(0), 8), acc)),
            K.Assign(acc, K.fma(K.Broadcast(K.Load(x, i * 8), 8), xv, acc)),
            K.Store(y, i * 8, K.select(acc.gt(1.0), K.maximum(acc, 2.0), -acc))]
    kernel = K.Kernel("vec8", [x, w, y], [K.Loop(i, K.Const(0), K.Const(n // 8), body)])
    rng = np.random.default_rng(0)
    xs = rng.standard_normal(n).astype(np.float32)
    ws = rng.standard_normal(8).astype(np.float32)
    ys = np.zeros(n, np.float32)
    run(engine, kernel, xs, ws, ys)
    x2 = xs.astype(np.float64).reshape(-1, 8)
    a = 0.5 + x2 * ws + x2[:, :1] * x2
    want = np.where(a > 1, np.maximum(a, 2), -a).ravel()
    assert rel_err(ys, want) < 1e-6
    text = str(render_module([kernel], "m_vec_text"))
    assert "<8 x float>" in text and "llvm.fma.v8f32" in text


def test_vector_type_errors():
    x = K.Buffer("x", "f32", 16)
    bad = K.Kernel("badvec", [x], [K.Store(x, K.Const(0), K.Cast(K.Load(x, K.Const(0), 8)))])
    with pytest.raises(CnnCompilerError, match="badvec.*cannot cast"):
        render_module([bad])
