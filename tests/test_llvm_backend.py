"""The LLVM backend against the reference backend: single ops, fused groups, whole nets."""

import numpy as np
import pytest
from helpers import check_symbolic_batch, rel_err
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("llvmlite")

import cnncompiler  # noqa: E402
from cnncompiler import nn, zoo  # noqa: E402
from cnncompiler.backends.llvm.engine import JitEngine  # noqa: E402
from cnncompiler.backends.llvm.executable import CompiledGraph  # noqa: E402
from cnncompiler.backends.reference import evaluate  # noqa: E402
from cnncompiler.errors import UnsupportedError  # noqa: E402
from cnncompiler.ir import GraphBuilder  # noqa: E402

RNG = np.random.default_rng(0)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def check(graph, feeds, tol=1e-4, opt_level=2):
    expected = evaluate(graph, feeds)
    got = cnncompiler.compile(graph, backend="llvm", opt_level=opt_level)(**feeds)
    got = got if isinstance(got, tuple) else (got,)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == np.float32
        assert rel_err(g, e) < tol, rel_err(g, e)


def one_op(op, x_shape, *params, **attrs):
    b = GraphBuilder(op.lower())
    x = b.input("x", x_shape)
    stored = [b.param(f"p{i}", p) for i, p in enumerate(params)]
    y = b.op(op, x, *stored, name=op.lower(), **attrs)
    return b.build(y), {"x": rand(*x_shape)}


@pytest.mark.parametrize("attrs,w_shape", [
    ({}, (4, 3, 3, 3)),
    ({"strides": (2, 2), "pads": (1, 1, 1, 1), "rounding": "floor"}, (5, 3, 3, 3)),
    ({"pads": (0, 2, 1, 0), "dilations": (2, 1)}, (4, 3, 3, 2)),
    ({"group": 3, "pads": (1, 1, 1, 1)}, (6, 1, 3, 3)),          # depthwise
    ({"group": 3}, (6, 1, 1, 1)),
    ({}, (7, 3, 1, 1)),                                            # 1x1
])
@pytest.mark.parametrize("bias", [True, False])
def test_conv(attrs, w_shape, bias):
    params = [rand(*w_shape)] + ([rand(w_shape[0])] if bias else [])
    check(*one_op("Conv", (2, 3, 9, 8), *params, **attrs))


@settings(max_examples=15, deadline=None)
@given(h=st.integers(3, 11), w=st.integers(3, 11), f=st.integers(1, 3), s=st.integers(1, 3),
       p=st.integers(0, 2), d=st.integers(1, 2), g=st.sampled_from([1, 2]))
def test_conv_property(h, w, f, s, p, d, g):
    if (f - 1) * d + 1 > min(h, w) + 2 * p:
        return
    params = [rand(4, 4 // g, f, f), rand(4)]
    check(*one_op("Conv", (1, 4, h, w), *params, strides=(s, s), pads=(p,) * 4,
                  dilations=(d, d), group=g, rounding="floor"))


@pytest.mark.parametrize("op,attrs", [
    ("MaxPool", {"kernel_shape": (3, 3), "strides": (2, 2), "rounding": "floor"}),
    ("MaxPool", {"kernel_shape": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1),
                 "rounding": "ceil"}),
    ("AveragePool", {"kernel_shape": (2, 2), "strides": (2, 2), "rounding": "floor"}),
    ("AveragePool", {"kernel_shape": (3, 3), "pads": (1, 1, 1, 1), "count_include_pad": True}),
    ("AveragePool", {"kernel_shape": (3, 3), "pads": (1, 1, 1, 1), "strides": (2, 2),
                     "rounding": "ceil"}),
    ("GlobalAveragePool", {}), ("GlobalMaxPool", {}),
    ("LRN", {"size": 5, "alpha": 1e-3, "bias": 2.0}),
    ("Softmax", {"axis": -1}), ("LogSoftmax", {"axis": -1}),
    ("Pad", {"pads": (0, 0, 1, 2, 0, 1, 0, 1), "value": 0.5}),
    ("Transpose", {"perm": (0, 2, 3, 1)}),
    ("Resize", {"scales": (1.0, 1.0, 2.0, 1.5), "mode": "nearest"}),
    ("Resize", {"sizes": (2, 6, 10, 5), "mode": "linear",
                "coordinate_transformation_mode": "align_corners"}),
    ("Flatten", {"axis": 1}),
    ("Relu", {}), ("Sigmoid", {}), ("Tanh", {}), ("HardSwish", {}), ("Clip", {"min": -0.5}),
])
def test_single_ops(op, attrs):
    check(*one_op(op, (2, 6, 7, 9), **attrs), opt_level=0)


def test_gemm_matmul_concat_and_broadcast():
    b = GraphBuilder("mix")
    x = b.input("x", (3, 8))
    y = b.op("Gemm", x, b.param("w", rand(5, 8)), b.param("c", rand(5)), transB=1, alpha=0.5,
             name="fc")
    m = b.op("MatMul", x, b.param("m", rand(8, 4)), name="mm")
    c = b.op("Concat", y, m, axis=1, name="cat")
    out = b.op("Mul", b.op("Add", c, b.param("bias", rand(9)), name="add"),
               b.param("s", rand(1, 9)), name="mul")
    check(b.build(out), {"x": rand(3, 8)}, opt_level=0)


@pytest.mark.parametrize("name", ["lenet5", "resnet18", "mobilenet_v2"])
def test_zoo_nets_match_the_reference(name):
    net = zoo.get(name)
    net.init_parameters(1)
    shape = (1, *net.input_shape[1:])
    g = net.to_graph(shape)
    check(g, {"x": rand(*shape)})


def test_symbolic_batch_specialises_per_batch():
    check_symbolic_batch("llvm")


def test_unsupported_ops_are_listed_up_front():
    b = GraphBuilder("u")
    x = b.input("x", (1, 2, 4, 4))
    y = b.op("Pad", x, pads=(0, 0, 1, 1, 0, 0, 1, 1), mode="edge", name="edge")
    z = b.op("Pad", y, pads=(0, 0, 1, 1, 0, 0, 1, 1), mode="reflect", name="reflect")
    with pytest.raises(UnsupportedError,
                       match=r"2 node\(s\)[\s\S]*edge \(Pad\)[\s\S]*reflect"):
        cnncompiler.compile(b.build(z), backend="llvm")


def test_backend_is_listed_as_available():
    status = cnncompiler.backends.available()["llvm"]
    assert status.ok and "LLVM" in status.reason


def test_profile_reports_every_kernel():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    cm = cnncompiler.compile(net, backend="llvm", input_shape=(1, 3, 8, 8))
    prof = cm.profile(rand(1, 3, 8, 8), repeats=2)
    # the stem conv writes NCHW8c, the pool follows; Flatten reads NCHW again
    assert [r.kind for r in prof.rows] == ["Conv+Relu", "MaxPool", "LayoutTransform", "Gemm"]
    assert all(r.seconds > 0 for r in prof.rows)
    assert prof.rows[0].flops == 2 * 8 * 8 * 8 * 27 + 2 * 8 * 8 * 8  # conv + bias, relu
    text = str(prof)
    assert "GFLOP/s" in text and "total" in text
    with pytest.raises(UnsupportedError, match="no per-kernel profiler"):
        cnncompiler.compile(net, input_shape=(1, 3, 8, 8)).profile(rand(1, 3, 8, 8))


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_two_threads_match_one(name):
    net = zoo.get(name)
    net.init_parameters(2)
    g = net.to_graph((2, 3, 64, 64))
    x = rand(2, 3, 64, 64)
    one = cnncompiler.compile(g, backend="llvm", threads=1)(x)
    two_threads = cnncompiler.compile(g, backend="llvm", threads=2)
    for _ in range(3):  # the team is reused across calls
        assert rel_err(two_threads(x), one) < 1e-5
    assert rel_err(one, evaluate(g, {"x": x})[0]) < 1e-4


def test_big_models_compile_in_parallel_parts(monkeypatch, tmp_path):
    """Above the size threshold the kernels are split into parts, claimed by this process
    and a worker process; the result is the same as compiling everything here."""
    from cnncompiler.backends.llvm import objects

    net = zoo.get("resnet18")
    x = rand(1, 3, 64, 64)
    g = net.to_graph((1, 3, 64, 64))
    monkeypatch.setattr(objects, "PARALLEL_MIN_CHARS", 0)
    monkeypatch.setenv("CNNC_COMPILE_WORKERS", "1")
    calls = []
    real = objects._run_worker
    monkeypatch.setattr(objects, "_run_worker", lambda job: calls.append(1) or real(job))
    cm = cnncompiler.compile(g, backend="llvm", cache_dir=str(tmp_path))
    parts = 2 * objects.PARTS_PER_LANE   # PARTS_PER_LANE for each of the two lanes
    assert calls and len(list(tmp_path.glob("*.obj"))) == parts + 1   # + the entry
    monkeypatch.setenv("CNNC_COMPILE_WORKERS", "0")
    alone = cnncompiler.compile(g, backend="llvm", cache=False)
    np.testing.assert_allclose(cm(x), alone(x), rtol=1e-5, atol=1e-6)


def test_repeated_layers_share_one_function():
    """Convs of one shape and epilogue compile to one function, called with each one's own
    weights: the answers stay each layer's own."""
    from cnncompiler.kernel.program import lower_graph

    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                        *[m for _ in range(3) for m in (nn.Conv2d(16, 16, 3, padding=1),
                                                        nn.ReLU())])
    net.init_parameters(3)
    g = net.to_graph((1, 3, 12, 12))
    cm = cnncompiler.compile(g, backend="llvm", cache=False)
    compiled = cm.executable.for_shapes([rand(1, 3, 12, 12)])
    names = [name for name, _, node, _ in compiled.kernel_nodes if node.op == "Fused"]
    assert len(names) == 4 and len(set(names[1:])) == 1 and names[0] != names[1]
    program = lower_graph(compiled.graph, 64)
    assert len(program.kernels) == len(program.calls) - 2 == 3
    x = rand(1, 3, 12, 12)
    assert rel_err(cm(x), evaluate(g, {"x": x})[0]) < 1e-4


def test_tiny_graphs_run_on_one_thread(monkeypatch):
    from cnncompiler.backends.llvm import executable

    monkeypatch.setattr(executable, "MIN_FLOPS_PER_THREAD", 20_000_000)
    x = rand(1, 1, 32, 32)
    lenet = cnncompiler.compile(zoo.get("lenet5"), backend="llvm", batch=1, threads=2)
    assert lenet.executable.for_shapes([x]).threads == 1
    np.testing.assert_allclose(lenet(x), evaluate(lenet.graph, {"x": x})[0], rtol=1e-4,
                               atol=1e-6)
    big = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1)).to_graph((1, 16, 64, 64))
    x = rand(1, 16, 64, 64)   # 38 MFLOP: two threads of 19... still one
    assert cnncompiler.compile(big, backend="llvm", threads=2).executable.for_shapes(
        [x]).threads == 1
    monkeypatch.setattr(executable, "MIN_FLOPS_PER_THREAD", 10_000_000)
    assert cnncompiler.compile(big, backend="llvm", threads=2).executable.for_shapes(
        [x]).threads == 2


def test_bad_thread_count():
    g = nn.Sequential(nn.ReLU()).to_graph((1, 3))
    with pytest.raises(UnsupportedError, match="threads must be a positive int"):
        cnncompiler.compile(g, backend="llvm", threads=0)


def test_compile_cache_hit_miss_and_corruption(tmp_path):
    from cnncompiler.backends.llvm.cache import MAGIC

    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    g = net.to_graph((1, 3, 8, 8))
    x = rand(1, 3, 8, 8)

    def build(**options):
        cm = cnncompiler.compile(g, backend="llvm", cache_dir=str(tmp_path), **options)
        return cm, cm.executable.cache

    cm, cache = build()
    expected = cm(x)
    assert (cache.hits, cache.misses) == (0, 2)   # the kernels' object and the entry's
    entries = sorted(tmp_path.glob("*.obj"))
    assert len(entries) == 2 and all(e.read_bytes().startswith(MAGIC) for e in entries)
    cm, cache = build()
    assert (cache.hits, cache.misses) == (2, 0)
    np.testing.assert_array_equal(cm(x), expected)
    cm, cache = build(threads=2)           # other options, other code: new entries
    assert cache.misses == 2 and len(list(tmp_path.glob("*.obj"))) == 4
    for entry in entries:                  # corrupt the stored objects
        data = bytearray(entry.read_bytes())
        data[-10] ^= 0xFF
        entry.write_bytes(bytes(data))
    cm, cache = build()
    assert cache.rejected == 2 and cache.hits == 0
    np.testing.assert_array_equal(cm(x), expected)   # rebuilt, never loaded
    cm, cache = build()
    assert cache.hits == 2
    assert cnncompiler.compile(g, backend="llvm", cache=False).executable.cache is None


def test_compile_cache_keys_code_not_weights(tmp_path):
    """The key is the kernel IR: other weights (also repacked ones, passed as arguments)
    reuse the object code and give their own results; another shape is another entry."""
    x = rand(1, 16, 6, 6)
    results = []
    for seed in (1, 2):
        g = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()).to_graph(
            (1, 16, 6, 6), seed=seed)
        cm = cnncompiler.compile(g, backend="llvm", cache_dir=str(tmp_path))
        results.append(cm(x))
        np.testing.assert_allclose(results[-1], evaluate(g, {"x": x})[0], rtol=1e-4, atol=1e-5)
    assert cm.executable.cache.hits == 2
    assert not np.allclose(results[0], results[1])
    g = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1)).to_graph((1, 16, 7, 6))
    cm = cnncompiler.compile(g, backend="llvm", cache_dir=str(tmp_path))
    assert cm.executable.cache.misses == 2


@pytest.mark.parametrize("attrs", [
    {"strides": (2, 2)},
    {"strides": (2, 2), "pads": (1, 1, 1, 1), "output_padding": (1, 1)},
    {"strides": (3, 2), "dilations": (2, 1), "pads": (0, 1, 2, 0)},
])
def test_conv_transpose(attrs):
    check(*one_op("ConvTranspose", (1, 4, 5, 6), rand(4, 3, 3, 3), rand(3), **attrs),
          opt_level=0)


@pytest.mark.parametrize("batch", [1, 3, 11])
@pytest.mark.parametrize("op,attrs", [("MatMul", {}), ("Gemm", {"transB": 0, "alpha": 0.5}),
                                      ("Gemm", {"transB": 1, "beta": 2.0})])
def test_fc_layers_pack_their_weights(op, attrs, batch):
    """FC weights are packed to Bᵀ [N, K] at compile time where a kernel would read them down
    their columns (batch 1) or always (a batch of rows: kernel/gemm.py, which reads each
    weight once per 8 rows; 11 rows = a block of 8 and one of 3, K = 37 = 4 vectors + 5);
    the kernel then takes the table, not B. A fused bias and ReLU ride along."""
    b = GraphBuilder("fc")
    x = b.input("x", (batch, 37))
    w = b.param("w", rand(37, 29) if attrs.get("transB", 0) == 0 else rand(29, 37))
    args = [x, w] + ([b.param("c", rand(29))] if op == "Gemm" else [])
    g = b.build(b.op("Relu", b.op(op, *args, name="fc", **attrs), name="relu"))
    feeds = {"x": rand(batch, 37)}
    check(g, feeds)
    cm = cnncompiler.compile(g, backend="llvm")
    assert cm.executable.for_shapes([feeds["x"]]).kernels is None   # the IR is not kept...
    cg = CompiledGraph(cm.graph, JitEngine, keep_kernels=True)      # ... unless asked for
    packed = any("bT" in name for k in cg.kernels for name in k.tables)
    assert packed == (batch > 1 or attrs.get("transB", 0) == 0)
