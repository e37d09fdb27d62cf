"""The LLVM backend's Winograd F(4x4, 3x3) convolution (kernel/winograd.py) against the
float64 reference backend: the schedule must be the one taken for blocked 3x3 stride-1
convs, and every geometry (sizes that are not multiples of the 4x4 tile, padding 0..2 and
asymmetric, batches, bias or none, fused ReLU / residual Add, two threads) must give the
reference's numbers within 1e-4 relative; plus the transforms themselves and the kernel
IR's ``Local`` scratch arrays."""

import numpy as np
import pytest
from helpers import rel_err
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("llvmlite")

import cnncompiler  # noqa: E402
from cnncompiler.backends.llvm.engine import JitEngine  # noqa: E402
from cnncompiler.backends.llvm.render import render_module  # noqa: E402
from cnncompiler.backends.reference import evaluate  # noqa: E402
from cnncompiler.ir import GraphBuilder  # noqa: E402
from cnncompiler.kernel import ir as K  # noqa: E402
from cnncompiler.kernel import winograd as W  # noqa: E402
from cnncompiler.kernel.lower import lower_node  # noqa: E402

RNG = np.random.default_rng(7)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def conv_graph(x_shape, k, residual=False, relu=False, bias=True, f=3, **attrs):
    c = x_shape[1] // attrs.get("group", 1)
    b = GraphBuilder("wconv")
    x = b.input("x", x_shape)
    params = [b.param("w", rand(k, c, f, f) / np.float32(np.sqrt(c * f * f)))]
    if bias:
        params.append(b.param("b", rand(k)))
    y = b.op("Conv", x, *params, name="conv", rounding="floor", **attrs)
    if residual:
        y = b.op("Add", y, b.op("Conv", x, b.param("w2", rand(k, c, 1, 1)), name="c2",
                                rounding="floor", **{**attrs, "pads": (0, 0, 0, 0)}),
                 name="add")
    if relu:
        y = b.op("Relu", y, name="relu")
    return b.build(y)


def first_conv(node):
    members = node.attrs["body"].nodes if node.op == "Fused" else [node]
    return members[0] if members[0].op == "Conv" else None


def winograd_kernels(cm) -> int:
    """How many kernels of the compiled model run the Winograd schedule (their body opens
    the Local scratch arrays); every conv that says it should must."""
    count = 0
    for node in cm.graph.nodes:
        conv = first_conv(node)
        if conv is None or tuple(conv.inputs[1].type.shape[2:]) != (3, 3):
            continue
        kernel = lower_node(node, "k", cm.graph.data)
        body = kernel.body[0].body if isinstance(kernel.body[0], K.Loop) else []
        taken = any(isinstance(s, K.Local) for s in body)
        assert taken == (W.winograd_problem(conv, weights_known=True) is None)
        count += taken
    return count


def check(graph, threads=1, tol=1e-4, winograd=True):
    x = rand(*graph.inputs[0].type.shape)
    cm = cnncompiler.compile(graph, backend="llvm", threads=threads, cache=False)
    taken = winograd_kernels(cm)
    if winograd is not None:   # None: whatever winograd_problem decides
        assert (taken > 0) == winograd, cm.graph.dump()
    got = cm(x)
    want = evaluate(graph, {"x": x})[0]
    assert got.shape == want.shape
    assert np.abs(want).max() > 0
    err = rel_err(got, want)
    assert err < tol, err
    return err


#: schedule variants (module settings of kernel/winograd.py): the defaults; narrow column
#: blocks (the last one overhanging the image) with the reduction cut into chunks of one
#: channel block; the position-row schedule with chunks of two
SCHEDULES = {
    "blocks": {},
    "narrow": {"BLOCK_TILES": 5, "CHUNK_BLOCKS": 1},
    "rows": {"ROWS_U_BYTES": 0, "CHUNK_BLOCKS": 2},
}


@pytest.fixture(params=list(SCHEDULES))
def schedule(request, monkeypatch):
    for name, value in SCHEDULES[request.param].items():
        monkeypatch.setattr(W, name, value)
    return request.param


@pytest.mark.parametrize("x_shape,k,pads", [
    ((1, 16, 13, 11), 32, 1),        # 4x4 tiles clipped on both edges, 2 x 6 GEMM tile
    ((1, 16, 16, 16), 16, 1),        # multiples of 4
    ((1, 8, 9, 7), 8, 1),            # one output block: 1 x 12 GEMM tile
    ((1, 24, 10, 9), 24, 1),         # 3 output blocks (odd): 1 x 12
    ((1, 16, 8, 10), 16, 0),         # no padding: no masked rows, no border tiles
    ((1, 16, 7, 6), 16, 2),          # padding wider than a tile's overlap
    ((1, 16, 6, 9), 16, (2, 0, 1, 2)),  # asymmetric padding
    ((2, 16, 12, 14), 32, 1),        # batch 2
    ((1, 64, 30, 31), 32, 1),        # several column blocks per tile row
    ((1, 8, 3, 40), 16, 1),          # one tile row, a long one
    ((1, 8, 4, 90), 8, 1),           # several column blocks, the last overhanging
])
def test_winograd_geometries(schedule, x_shape, k, pads):
    pads = (pads,) * 4 if isinstance(pads, int) else pads
    check(conv_graph(x_shape, k, pads=pads))


def test_winograd_schedules_are_taken(schedule):
    graph = conv_graph((1, 32, 13, 30), 16, pads=(1, 1, 1, 1))
    cm = cnncompiler.compile(graph, backend="llvm", cache=False)
    conv = first_conv(next(n for n in cm.graph.nodes if first_conv(n) is not None))
    p = W.plan(W.BlockedConv.of(conv))
    assert p.by_rows == (schedule == "rows")
    assert p.blocks > 1 if schedule == "narrow" else p.blocks == 1


def test_winograd_without_bias_and_fused_epilogue(schedule):
    check(conv_graph((1, 16, 9, 10), 16, residual=True, relu=True, bias=False,
                     pads=(1, 1, 1, 1)))
    check(conv_graph((2, 16, 11, 10), 24, relu=True, pads=(1, 1, 1, 1)))


@pytest.mark.parametrize("threads", [1, 2])
def test_winograd_threads(schedule, threads):
    check(conv_graph((2, 16, 14, 13), 32, residual=True, relu=True, pads=(1, 1, 1, 1)),
          threads=threads)


def test_winograd_accuracy_on_a_wide_layer():
    """Deep reductions (C = 256) stay well inside 1e-4 of the float64 reference."""
    err = check(conv_graph((1, 256, 12, 12), 16, pads=(1, 1, 1, 1)))
    assert err < 2e-5


@settings(max_examples=12, deadline=None)
@given(h=st.integers(1, 15), w=st.integers(1, 17), p=st.integers(0, 2),
       cb=st.integers(1, 3), kb=st.integers(1, 4), n=st.integers(1, 2))
def test_winograd_property(h, w, p, cb, kb, n):
    if min(h, w) + 2 * p < 3:
        return
    check(conv_graph((n, 8 * cb, h, w), 8 * kb, pads=(p,) * 4), winograd=None)


def test_winograd_switch_and_rule(monkeypatch):
    # other convs keep the direct schedule: strided, 1x1, and grouped ones
    check(conv_graph((1, 16, 10, 10), 16, pads=(1, 1, 1, 1), strides=(2, 2)), winograd=False)
    check(conv_graph((1, 16, 10, 10), 16, f=1), winograd=False)
    check(conv_graph((1, 32, 10, 10), 32, pads=(1, 1, 1, 1), group=2), winograd=False)
    # a single tile of many channels: reading the 4x larger transformed filters costs more
    # than the multiplies save (few channels, or 4 tiles and more: Winograd)
    check(conv_graph((1, 128, 3, 3), 128, pads=(1, 1, 1, 1)), winograd=False)
    check(conv_graph((1, 64, 3, 3), 64, pads=(1, 1, 1, 1)), winograd=True)
    check(conv_graph((1, 128, 7, 7), 128, pads=(1, 1, 1, 1)), winograd=True)
    cm = cnncompiler.compile(conv_graph((1, 128, 3, 3), 128, pads=(1, 1, 1, 1)),
                             backend="llvm", cache=False)
    conv = first_conv(next(n for n in cm.graph.nodes if first_conv(n) is not None))
    assert "outputs per image" in W.winograd_problem(conv, weights_known=True)
    monkeypatch.setenv("CNNC_WINOGRAD", "0")
    assert "CNNC_WINOGRAD" in W.winograd_problem(conv, weights_known=True)
    check(conv_graph((1, 16, 13, 11), 16, pads=(1, 1, 1, 1)), winograd=False)


def test_transform_matrices():
    """F(4, 3) in float64: A^T [(G g) * (B^T d)] is the 4-output correlation of d with g,
    and the 1-D kernel-IR transforms compute exactly the matrices."""
    rng = np.random.default_rng(0)
    d, g = rng.standard_normal(6), rng.standard_normal(3)
    want = np.array([d[i:i + 3] @ g for i in range(4)])
    np.testing.assert_allclose(W.AT @ ((W.G @ g) * (W.BT @ d)), want, rtol=1e-12)
    # the weight transform is G g G^T per filter, in U's packed order
    w = rng.standard_normal((16, 8, 3, 3))
    u = W.transform_weights(w, 8)   # [K/8, 36, C, 8]
    k, c = 11, 5
    np.testing.assert_allclose(u[k // 8, :, c, k % 8].reshape(6, 6), W.G @ w[k, c] @ W.G.T,
                               rtol=1e-12)

    def run(fn, values):   # numbers through the transform helpers (+ - * fma neg)
        env = {}

        def ev(e):
            if e is None:
                return 0.0
            if isinstance(e, K.Var):
                return env[e.name]
            if isinstance(e, K.Broadcast):
                return ev(e.value)
            if isinstance(e, K.Const):
                return e.value
            if isinstance(e, K.Call):
                a = [ev(x) for x in e.args]
                return a[0] * a[1] + a[2] if e.fn == "fma" else -a[0]
            a, b = ev(e.a), ev(e.b)
            return {"+": a + b, "-": a - b, "*": a * b}[e.op]

        names = [K.Var(f"v{i}", "f32x8") for i in range(len(values))]
        env.update({v.name: x for v, x in zip(names, values)})
        return np.array([ev(e) for e in fn(names)])

    np.testing.assert_allclose(run(W.input_1d, d), W.BT @ d, rtol=1e-12)
    np.testing.assert_allclose(run(W.output_1d, d), W.AT @ d, rtol=1e-12)
    np.testing.assert_allclose(run(lambda m: W.output_1d(m[:6], m[6]), [*d, 0.5]),
                               W.AT @ d + 0.5, rtol=1e-12)
    # zeros known at compile time (padding) drop out of the expressions
    zeros = run(lambda v: W.input_1d([None, v[0], None, v[1], None, None]), d[:2])
    np.testing.assert_allclose(zeros, W.BT @ np.array([0, d[0], 0, d[1], 0, 0]), rtol=1e-12)


def test_local_scratch_array():
    """``K.Local``: a per-call stack array the kernel stores to and loads from."""
    n = 24
    x, y = K.Buffer("x", "f32", n), K.Buffer("y", "f32", n)
    tmp = K.Buffer("tmp", "f32", n)
    i = K.Var("i")
    kernel = K.Kernel("local_reverse", [x, y], [
        K.Local(tmp),
        K.Loop(i, K.Const(0), K.Const(n), [K.Store(tmp, (n - 1) - i, K.Load(x, i) * 2.0)]),
        K.Loop(i, K.Const(0), K.Const(n // 8),
               [K.Store(y, i * 8, K.Load(tmp, i * 8, 8) + K.broadcast(1.0, 8))])])
    text = str(render_module([kernel], "m_local"))
    assert "alloca [24 x float], align 32" in text
    engine = JitEngine()
    engine.compile(render_module([kernel], "m_local"))
    a = np.arange(n, dtype=np.float32)
    out = np.zeros(n, np.float32)
    engine.function("local_reverse", 2)(a.ctypes.data, out.ctypes.data)
    np.testing.assert_array_equal(out, a[::-1] * 2 + 1)
