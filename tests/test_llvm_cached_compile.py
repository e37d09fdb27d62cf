"""What a cached compile on the LLVM backend still computes, kept fast and right: the
compile-time Winograd filter transform (redone on every compile: tables travel as
arguments, not in the object cache), batch-norm folding, and the freeing of the IR a cold
compile renders. Every compiled result is checked against the float64 reference
backend on random non-zero inputs: on a miss, on a hit and after a corrupted entry.

Program entries (keyed by the graph's structure, not its weights) serve graphs with other
weights, from this process or another; bad ones are rebuilt, never loaded."""

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


# ------------------------------------------------------------------ program entries
def mixed(seed: int, batch: int = 2):
    """A Winograd conv + folded BN, a blocked 1x1 conv, a linear Resize (index and weight
    tables from attributes), a pool and an FC layer on a batch (its weights transposed once
    at compile time): every kind of table, made of weights or of shapes."""
    rng = np.random.default_rng(seed)

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    b = GraphBuilder("mixed")
    x = b.input("x", (batch, 16, 6, 6))
    y = b.op("Conv", x, b.param("w1", r(16, 16, 3, 3) / np.float32(12)), b.param("b1", r(16)),
             name="conv1", pads=(1, 1, 1, 1))
    y = b.op("BatchNormalization", y, b.param("scale", r(16)), b.param("shift", r(16)),
             b.param("mean", r(16)),
             b.param("var", rng.uniform(0.5, 2.0, 16).astype(np.float32)), name="bn",
             epsilon=1e-5)
    y = b.op("Relu", y, name="relu")
    y = b.op("Conv", y, b.param("w2", r(16, 16, 1, 1) / np.float32(4)), name="conv2")
    y = b.op("Resize", y, name="up", mode="linear", scales=(1.0, 1.0, 2.0, 1.5))
    y = b.op("Flatten", b.op("GlobalAveragePool", y, name="pool"), name="flat")
    y = b.op("Gemm", y, b.param("fc", r(16, 10)), b.param("fc_b", r(10)), name="fc")
    return b.build(y)


def test_a_program_entry_serves_other_weights_of_the_same_structure(tmp_path):
    """The program entry is keyed by structure, not weights: a graph with other weights
    reuses it (no lowering) with tables made of its own weights, and gives its own,
    right results; the first graph compiled again still gives its own."""
    from cnncompiler.kernel import program as P

    x = rand(2, 16, 6, 6)
    results = {}
    for seed in (1, 2, 1):
        graph = mixed(seed)
        cm = cnncompiler.compile(graph, backend="llvm", cache_dir=str(tmp_path))
        cache = cm.executable.cache
        exe = cm.executable.specialised[()]
        expected = evaluate(graph, {"x": x})[0]
        assert rel_err(cm(x), expected) < 1e-4, rel_err(cm(x), expected)
        if seed in results:
            np.testing.assert_array_equal(cm(x), results[seed])
        results[seed] = cm(x)
        kinds = {s.transform is not None for s in P.program_layout(
            P.lower_graph(cm.graph, 64), cm.graph).sources if s.stored is not None}
        assert kinds == {True, False}   # repacked tables and weights passed as they are
        assert any(w.shape == (2, 36, 16, 8) for w in exe.weights)   # Winograd's U
    assert (cache.program_hits, cache.program_misses) == (1, 0)
    assert cache.hits == len(list(tmp_path.glob("*.obj"))) and cache.misses == 0
    assert [row.node for row in cm.profile(x, repeats=1).rows] == \
        [node.name for _, _, node, _ in exe.kernel_nodes]
    assert len(list(tmp_path.glob("*.prog"))) == 1
    assert not np.allclose(results[1], results[2])


def test_program_entries_from_another_process(tmp_path):
    """An entry written by another interpreter (repacking lambdas travel as code) serves
    this one."""
    import subprocess
    import sys

    script = ("import sys; sys.path.insert(0, sys.argv[2]); import cnncompiler; "
              "from test_llvm_cached_compile import mixed; "
              "cnncompiler.compile(mixed(5), backend='llvm', cache_dir=sys.argv[1])")
    # run outside the checkout: from its root, "import cnncompiler" would find the source
    # folder rather than the installed package (whose backends/ lives elsewhere in it)
    subprocess.run([sys.executable, "-c", script, str(tmp_path),
                    str(__import__("pathlib").Path(__file__).parent)], check=True, cwd=tmp_path)
    assert len(list(tmp_path.glob("*.prog"))) == 1
    graph = mixed(6)
    cm = cnncompiler.compile(graph, backend="llvm", cache_dir=str(tmp_path))
    assert cm.executable.cache.program_hits == 1
    x = rand(2, 16, 6, 6)
    assert rel_err(cm(x), evaluate(graph, {"x": x})[0]) < 1e-4


def test_bad_program_entries_are_rebuilt_never_loaded(tmp_path):
    """A corrupted program entry, one whose (intact) payload does not load, and one whose
    object entries are gone are each deleted or bypassed, and the model rebuilt right."""
    from cnncompiler.backends.llvm.cache import MAGIC, CompileCache

    graph = mixed(3)
    x = rand(2, 16, 6, 6)
    expected = evaluate(graph, {"x": x})[0]

    def compiled():
        cm = cnncompiler.compile(graph, backend="llvm", cache_dir=str(tmp_path))
        assert rel_err(cm(x), expected) < 1e-4
        return cm.executable.cache

    compiled()
    (entry,) = tmp_path.glob("*.prog")
    data = bytearray(entry.read_bytes())
    data[-3] ^= 0x5A
    entry.write_bytes(bytes(data))
    cache = compiled()
    assert cache.program_rejected == 1 and cache.program_hits == 0
    assert compiled().program_hits == 1
    # a well-formed entry whose payload is not a layout
    payload = entry.read_bytes()[len(MAGIC) + 64:]
    keys = payload.partition(b"\n")[0]
    CompileCache(tmp_path).put(entry.name.removesuffix(".prog"), keys + b"\nnot a pickle",
                               ".prog")
    cache = compiled()
    assert cache.program_rejected == 1 and cache.program_hits == 0
    assert compiled().program_hits == 1
    for obj in tmp_path.glob("*.obj"):   # the object code it names is gone
        obj.unlink()
    cache = compiled()
    assert cache.program_hits == 1 and cache.misses > 0 and cache.hits == 0
    cache = compiled()
    assert cache.program_hits == 1 and cache.misses == 0


def test_program_entries_follow_structure_and_lowering_settings(monkeypatch, tmp_path):
    """Another attribute, another shape, or another setting of a schedule (as a test may
    set) is another program entry: the lowering runs again."""
    import cnncompiler.kernel.conv_nchwc as C
    from cnncompiler.kernel import program as P

    def misses(graph) -> int:
        cm = cnncompiler.compile(graph, backend="llvm", cache_dir=str(tmp_path))
        x = rand(*graph.inputs[0].type.shape)
        assert rel_err(cm(x), evaluate(graph, {"x": x})[0]) < 1e-4
        return cm.executable.cache.program_misses

    assert misses(mixed(1)) == 1
    assert misses(mixed(2)) == 0
    assert misses(mixed(1, batch=3)) == 1
    before = P.lowering_signature()
    monkeypatch.setattr(C, "MIN_ROW", C.MIN_ROW + 1)
    assert P.lowering_signature() != before
    assert misses(mixed(1)) == 1
    assert misses(mixed(1)) == 0
    # a function replaced from outside (a test's wrapper watching the lowering): no
    # program entries at all, so that every compile lowers
    calls = []
    real = C.pack_weights
    monkeypatch.setattr(C, "pack_weights", lambda g, w: calls.append(1) or real(g, w))
    with pytest.raises(P.NotCacheable, match="replaces a function"):
        P.lowering_signature()
    for _ in range(2):
        cm = cnncompiler.compile(mixed(1), backend="llvm", cache_dir=str(tmp_path))
        assert cm.executable.cache.program_hits == cm.executable.cache.program_misses == 0
    assert len(calls) == 2
    monkeypatch.undo()
    assert P.lowering_signature() == before
    a = P.graph_signature(mixed(1))
    assert a == P.graph_signature(mixed(2))
    other = mixed(1)
    other.nodes[0].attrs["pads"] = (1, 1, 1, 2)
    assert P.graph_signature(other) != a
    assert P.graph_signature(mixed(1), {"x": "fc"}) != a


def update_graph(copied: bool):
    """out = 2 w; w.new = w - g, written over w in place, or (behind a MatMul epilogue,
    which stores before it reads w) into a buffer of its own and copied over w."""
    b = GraphBuilder("step")
    w = b.input("w", (8, 3))
    grad = b.input("g", (8, 3))
    if copied:
        eye = b.const(np.eye(8, dtype=np.float32), "eye")
        new = b.op("Sub", b.op("MatMul", eye, w), grad, name="w.new")
    else:   # written first: the schedule moves it after out, which reads w
        new = b.op("Sub", w, grad, name="w.new")
    out = b.op("Mul", w, b.const(np.full((1,), 2, np.float32), "two"), name="out")
    return b.build([out, new])


@pytest.mark.parametrize("copied", [False, True], ids=["in-place", "copied"])
def test_a_stateful_model_from_its_program_entry(tmp_path, copied):
    """State keeps working when the program (schedule, in-place writes or the copy of the
    next value) comes from the cache."""
    g = update_graph(copied)
    for hits in (0, 1):
        cm = cnncompiler.compile(g, backend="llvm", cache_dir=str(tmp_path),
                                 state={"w": "w.new"})
        exe = cm.executable.specialised[()]
        assert cm.executable.cache.program_hits == hits
        assert exe.state_copies == (["w"] if copied else [])
        names = [n.name for n in exe.program_graph.nodes]
        assert copied or names.index("w.new") > names.index("out")
        w0 = rand(8, 3)
        cm.set_state("w", w0)
        for _ in range(2):
            step = rand(8, 3)
            np.testing.assert_allclose(cm(step), 2 * w0, rtol=1e-6)
            w0 = w0 - step
            np.testing.assert_allclose(cm.get_state("w"), w0, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model,shape", [
    ("mixed", None), ("lenet5", (2, 1, 32, 32)), ("mobilenet_v2", (1, 3, 64, 64)),
    ("resnet18", (1, 3, 64, 64)), ("resnet50", (2, 3, 32, 32)),
])
def test_restored_weights_are_what_the_lowering_makes(model, shape):
    """Every weight slot of a program restored from another graph's layout (same
    structure, other weights) is the array the lowering of this graph makes, bit for bit:
    repacked tables are made of this graph's weights, and the tables kept as they are
    (from shapes and attributes) do not depend on weights at all."""
    from cnncompiler import zoo
    from cnncompiler.kernel import program as P
    from cnncompiler.passes.manager import PassManager
    from cnncompiler.runtime.registry import get_backend

    def optimised(seed):
        g = mixed(seed) if model == "mixed" else zoo.get(model).to_graph(shape, seed=seed)
        return PassManager(2, (), False, get_backend("llvm").passes()).run(g)

    first, second = optimised(1), optimised(2)
    assert P.graph_signature(first) == P.graph_signature(second)
    layout = P.load_layout(P.dump_layout(P.program_layout(P.lower_graph(first, 64), first)))
    restored = P.restore_program(layout, second)
    lowered = P.lower_graph(second, 64)
    assert len(restored.weights) == len(lowered.weights)
    for source, got, want in zip(layout.sources, restored.weights, lowered.weights):
        assert got.dtype == want.dtype and got.flags.c_contiguous
        np.testing.assert_array_equal(got, want, err_msg=repr(source.stored))
    assert any(s.transform is not None for s in layout.sources)
    assert [(name, node.name, k, b) for name, node, k, b in restored.named_calls] == \
        [(name, node.name, k, b) for name, node, k, b in lowered.named_calls]
    assert restored.plan == lowered.plan
