"""What a cached compile on the LLVM backend still computes, kept fast and right: the
compile-time Winograd filter transform (redone on every compile: tables travel as
arguments, not in the object cache), batch-norm folding, and the freeing of the IR a cold
compile renders. Every compiled result is checked against the float64 reference
backend on random non-zero inputs: on a miss, on a hit and after a corrupted entry."""

import gc

import numpy as np
import pytest
from helpers import rel_err

pytest.importorskip("llvmlite")

import cnncompiler  # noqa: E402
from cnncompiler.backends.reference import evaluate  # noqa: E402
from cnncompiler.ir import GraphBuilder  # noqa: E402
from cnncompiler.kernel import winograd as W  # noqa: E402

RNG = np.random.default_rng(11)


def rand(*shape) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def conv_bn_relu(c: int = 16, k: int = 16, size: int = 12):
    """Conv 3x3 (Winograd on llvm) + BatchNormalization (folded into it) + ReLU."""
    b = GraphBuilder("conv_bn")
    x = b.input("x", (1, c, size, size))
    w = b.param("w", rand(k, c, 3, 3) / np.float32(np.sqrt(9 * c)))
    y = b.op("Conv", x, w, b.param("b", rand(k)), name="conv", pads=(1, 1, 1, 1))
    var = RNG.uniform(0.5, 2.0, k).astype(np.float32)
    y = b.op("BatchNormalization", y, b.param("scale", rand(k)), b.param("shift", rand(k)),
             b.param("mean", rand(k)), b.param("var", var), name="bn", epsilon=1e-5)
    return b.build(b.op("Relu", y, name="relu"))


@pytest.mark.parametrize("k,c", [(8, 8), (16, 24), (32, 40)])
def test_winograd_filter_transform_packs_g_g_gt(k, c):
    """U[k/8, pos, c, k%8] is (G g G^T)[pos] of filter (k, c), in float64 and in float32
    (the kernel's dtype, written straight into the table)."""
    w = RNG.standard_normal((k, c, 3, 3))
    u64 = W.transform_weights(w, 8)
    u32 = W.transform_weights(w.astype(np.float32), 8, np.float32)
    assert u64.shape == u32.shape == (k // 8, 36, c, 8)
    assert u64.dtype == np.float64 and u32.dtype == np.float32
    assert u32.flags.c_contiguous
    want = np.einsum("ai,kcij,bj->kcab", W.G, w, W.G).reshape(k // 8, 8, c, 36)
    want = want.transpose(0, 3, 2, 1)
    np.testing.assert_allclose(u64, want, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(u32, want, rtol=1e-6, atol=1e-7)


def test_cached_compile_matches_the_reference_on_miss_hit_and_corruption(monkeypatch,
                                                                          tmp_path):
    """The cached path (objects from disk, Winograd tables and folded weights recomputed)
    gives the reference's numbers; a corrupted entry is rebuilt, never loaded."""
    monkeypatch.delenv("CNNC_WINOGRAD", raising=False)
    graph = conv_bn_relu()
    x = rand(1, 16, 12, 12)
    expected = evaluate(graph, {"x": x})[0]
    assert np.abs(expected).max() > 0

    def compiled():
        cm = cnncompiler.compile(graph, backend="llvm", cache_dir=str(tmp_path))
        weights = cm.executable.specialised[()].weights
        assert any(w.shape == (2, 36, 16, 8) for w in weights)   # Winograd's U: it ran
        assert all(n.op != "BatchNormalization" for n in cm.graph.nodes)     # BN folded
        assert rel_err(cm(x), expected) < 1e-4, rel_err(cm(x), expected)
        return cm.executable.cache

    cache = compiled()
    assert cache.hits == 0 and cache.misses > 0
    entries = sorted(tmp_path.glob("*.obj"))
    cache = compiled()
    assert cache.hits == len(entries) and cache.misses == 0
    for entry in entries:
        data = bytearray(entry.read_bytes())
        data[len(data) // 2] ^= 0x5A
        entry.write_bytes(bytes(data))
    cache = compiled()
    assert cache.rejected == len(entries) and cache.hits == 0
    cache = compiled()
    assert cache.hits == len(entries) and cache.rejected == 0


def test_compiled_ir_is_freed_without_waiting_for_the_garbage_collector(monkeypatch, tmp_path):
    """llvmlite's IR is cyclic; once a module is compiled its cycles are cut, so that it is
    freed at once rather than waiting as garbage for a full collection, which then fell
    inside the process's next compile (a cached one: +0.3 s on ResNet-50)."""
    from cnncompiler.backends.llvm import objects

    graph = conv_bn_relu(size=10)

    def cyclic_garbage(cache_dir) -> int:
        gc.collect()
        cnncompiler.compile(graph, backend="llvm", cache_dir=str(cache_dir))
        return gc.collect()

    released = cyclic_garbage(tmp_path / "released")
    monkeypatch.setattr(objects, "_release", lambda module: None)
    kept = cyclic_garbage(tmp_path / "kept")
    assert released * 5 < kept
