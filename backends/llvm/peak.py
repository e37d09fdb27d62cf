"""This CPU's FMA peak, the yardstick of the profiler's "% peak" column.

The nominal formula, *cores x FMA units x 8 lanes x 2 FLOPs x clock*, needs the clock, and
the clock the kernel reports (``cpu MHz`` in /proc/cpuinfo) is the base clock: a core that
turbos higher runs our kernels at more than "100% of peak". So the peak is *measured*: a
tiny kernel of :data:`CHAINS` independent ``<8 x float>`` FMA chains (enough to cover the
FMA latency on every FMA pipe), built through the kernel IR and the LLVM renderer like
every model kernel, JIT-compiled, timed for :data:`TARGET_SECONDS` (best of
:data:`REPEATS` runs) on one thread, once per process. It measures what our kernels can
reach: 8-lane (AVX2) FMAs, at the clock the core runs at right now.

The peak of ``n`` threads is ``n`` times the one-thread figure (at most one per CPU): it is
not measured on ``n`` threads at once, because we do not assume the other cores are idle.
When the measurement cannot run (no llvmlite, a JIT failure), :func:`nominal_gflops` (the
formula on the reported clock) stands in, and None when even the clock is unknown.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import time

#: AVX2 + FMA (Zen 3, Haswell and later): 2 FMA pipes x 8 float lanes
FMA_UNITS, LANES = 2, 8
#: independent accumulator chains: FMA latency (4-5 cycles) x 2 pipes, and some to spare
CHAINS = 12
#: seconds one timed run lasts, and how many runs the best is taken of
TARGET_SECONDS, REPEATS = 0.03, 3
#: FLOPs of one iteration of the benchmark's loop (an FMA is 2 per lane)
FLOPS_PER_ITERATION = CHAINS * LANES * 2
KERNEL_NAME = "cnnc_fma_peak"

_LOCK = threading.Lock()


def clock_ghz() -> float | None:
    """The CPU clock the kernel reports (first ``cpu MHz`` in /proc/cpuinfo): the base
    clock on most machines, not the turbo clock the cores actually run at."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return float(line.split(":")[1]) / 1000.0
    except (OSError, ValueError):
        return None
    return None


def _cores(threads: int) -> int:
    return max(1, min(threads, os.cpu_count() or 1))


def nominal_gflops(threads: int = 1) -> float | None:
    """The formula: threads x FMA units x 8 lanes x 2 FLOPs x reported clock (None when the
    clock is unknown). Documentation, and the fallback when measuring fails."""
    ghz = clock_ghz()
    return None if ghz is None else _cores(threads) * FMA_UNITS * LANES * 2 * ghz


def fma_kernel():
    """The benchmark as a kernel: ``out`` holds the CHAINS x 8 accumulators (read, then
    written back, so nothing is dead), ``params`` the multiplier and addend vectors,
    ``count`` the iteration count. Each iteration does ``acc = acc * m + c`` on every
    chain: a true recurrence, so the optimiser can neither hoist nor fold it."""
    from cnncompiler.kernel import ir as K

    vec = K.vector("f32", LANES)
    out = K.Buffer("out", "f32", CHAINS * LANES)
    params = K.Buffer("params", "f32", 2 * LANES)
    count = K.Buffer("count", "i64", 1)
    names = K.Names()
    m, c = names.var("m", vec), names.var("c", vec)
    accs = [names.var("acc", vec) for _ in range(CHAINS)]
    i = names.var("i")
    body: list[K.Stmt] = [K.Declare(m, K.Load(params, K.Const(0), LANES)),
                          K.Declare(c, K.Load(params, K.Const(LANES), LANES))]
    body += [K.Declare(a, K.Load(out, K.Const(j * LANES), LANES)) for j, a in enumerate(accs)]
    body.append(K.Loop(i, K.Const(0), K.Load(count, K.Const(0)),
                       [K.Assign(a, K.fma(a, m, c)) for a in accs]))
    body += [K.Store(out, K.Const(j * LANES), a) for j, a in enumerate(accs)]
    return K.Kernel(KERNEL_NAME, [out, params, count], body)


def measure_gflops(target_seconds: float = TARGET_SECONDS, repeats: int = REPEATS) -> float:
    """One thread's FMA GFLOP/s, measured now (not cached: see :func:`per_core_gflops`)."""
    import numpy as np

    from cnncompiler.backends.llvm.engine import JitEngine
    from cnncompiler.backends.llvm.render import render_module

    engine = JitEngine()
    engine.compile(render_module([fma_kernel()], "cnnc_peak"))
    fn = engine.function(KERNEL_NAME, 3)
    acc = np.ones(CHAINS * LANES, np.float32)
    # acc -> acc * 0.5 + 0.5 converges to 1: no overflow, no denormals, however long
    params = np.full(2 * LANES, 0.5, np.float32)
    count = np.zeros(1, np.int64)

    def run(n: int) -> float:
        count[0] = n
        start = time.perf_counter()
        fn(acc.ctypes.data, params.ctypes.data, count.ctypes.data)
        return time.perf_counter() - start

    n = 1 << 12   # grow until one run takes a tenth of the target (this also warms up)
    while (t := run(n)) < target_seconds / 10:
        n *= 4 if t < target_seconds / 100 else 2
    n = max(1, int(n * target_seconds / t))
    best = min(run(n) for _ in range(repeats))
    gflops = n * FLOPS_PER_ITERATION / best / 1e9
    if not (math.isfinite(gflops) and gflops > 0):
        raise ArithmeticError(f"FMA benchmark measured {gflops} GFLOP/s")
    return gflops


@functools.cache
def _cached() -> float | None:
    try:
        return measure_gflops()
    except Exception:  # noqa: BLE001 - any failure: the caller falls back to the formula
        return None


def per_core_gflops() -> float | None:
    """One thread's measured FMA peak in GFLOP/s, measured on first use and cached for the
    process (None when the benchmark could not run)."""
    with _LOCK:   # two threads asking at once must not measure side by side
        return _cached()


def peak_gflops(threads: int = 1) -> float | None:
    """The FMA peak of ``threads`` threads in GFLOP/s: ``threads`` x the measured one-thread
    peak (at most one per CPU). Not measured on all threads at once: we do not assume the
    other cores are idle. Falls back to :func:`nominal_gflops` when measuring fails."""
    one = per_core_gflops()
    return nominal_gflops(threads) if one is None else _cores(threads) * one


def clear_cache() -> None:
    """Forget the measurement (the next :func:`peak_gflops` measures again)."""
    with _LOCK:
        _cached.cache_clear()
