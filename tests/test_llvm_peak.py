"""The profiler's FMA peak: measured once per process by a JIT-compiled FMA benchmark, with
the nominal clock formula as the fallback. No timing thresholds: only that the measurement
is a positive finite number, is cached, and is what the profile's "% peak" divides by."""

import math
import os

import numpy as np
import pytest

pytest.importorskip("llvmlite")

import cnncompiler  # noqa: E402
from cnncompiler import nn  # noqa: E402
from cnncompiler.backends.llvm import peak  # noqa: E402


@pytest.fixture
def fresh_peak():
    """Measure anew in the test, and again for whoever comes after it."""
    peak.clear_cache()
    yield
    peak.clear_cache()


def test_fma_kernel_computes_its_recurrence():
    from cnncompiler.backends.llvm.engine import JitEngine
    from cnncompiler.backends.llvm.render import render_module

    engine = JitEngine()
    engine.compile(render_module([peak.fma_kernel()], "fma_test"))
    fn = engine.function(peak.KERNEL_NAME, 3)
    acc = np.arange(peak.CHAINS * peak.LANES, dtype=np.float32)
    params = np.concatenate([np.full(peak.LANES, 0.5), np.arange(peak.LANES)]).astype(np.float32)
    count = np.array([3], np.int64)
    fn(acc.ctypes.data, params.ctypes.data, count.ctypes.data)
    expected = np.arange(peak.CHAINS * peak.LANES, dtype=np.float64)
    c = np.tile(np.arange(peak.LANES), peak.CHAINS)
    for _ in range(3):
        expected = expected * 0.5 + c
    np.testing.assert_allclose(acc, expected, rtol=1e-6)


def test_measured_peak_is_positive_finite_and_cached(fresh_peak, monkeypatch):
    one = peak.per_core_gflops()
    assert one is not None and math.isfinite(one) and one > 0

    def again(*args, **kwargs):
        raise AssertionError("measured twice")

    monkeypatch.setattr(peak, "measure_gflops", again)
    assert peak.per_core_gflops() == one
    threads = min(2, os.cpu_count() or 1)
    assert peak.peak_gflops(2) == pytest.approx(threads * one)
    assert peak.peak_gflops(1) == one


def test_nominal_formula_is_the_fallback(fresh_peak, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no JIT here")

    monkeypatch.setattr(peak, "measure_gflops", broken)
    monkeypatch.setattr(peak, "clock_ghz", lambda: 2.0)
    # 1 core x 2 FMA units x 8 lanes x 2 FLOPs x 2 GHz
    assert peak.per_core_gflops() is None
    assert peak.peak_gflops(1) == peak.nominal_gflops(1) == 64.0
    monkeypatch.setattr(peak, "clock_ghz", lambda: None)
    assert peak.peak_gflops(1) is None


def test_profile_divides_by_the_measured_peak():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(8 * 8 * 8, 5))
    cm = cnncompiler.compile(net, backend="llvm", input_shape=(1, 3, 8, 8))
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    prof = cm.profile(x, repeats=2)
    measured = peak.per_core_gflops()
    assert measured is not None and prof.peak == measured
    lines = str(prof).splitlines()
    for row, line in zip(prof.rows, lines[1:]):
        assert line.startswith(row.node)
        assert line.endswith(f"{100 * row.gflops / measured:6.1f}%")
    assert lines[-1].endswith(f"; {measured:.0f} GFLOP/s FMA peak (1 thread)")
