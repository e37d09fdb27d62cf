"""The LLVM backend's register-blocked NCHW8c convolution (kernel/conv_nchwc.py) against the
reference backend: the layout pass must pick the blocked layout, and every geometry (odd
widths that do not divide the register tile, padding wider than the kernel, strides,
dilations, groups, depthwise, batches, fused epilogues, two threads) must give the same
numbers as the float64 reference."""

import numpy as np
import pytest
from helpers import rel_err
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("llvmlite")

import cnncompiler  # noqa: E402
from cnncompiler.backends.reference import evaluate  # noqa: E402
from cnncompiler.ir import GraphBuilder  # noqa: E402
from cnncompiler.kernel.conv_nchwc import tile_runs  # noqa: E402

RNG = np.random.default_rng(1)


@pytest.fixture(autouse=True)
def direct_convs(monkeypatch):
    """These tests are about the direct schedule: 3x3 stride-1 convs would otherwise take
    the Winograd path (tested in test_llvm_winograd.py)."""
    monkeypatch.setenv("CNNC_WINOGRAD", "0")


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def conv_graph(x_shape, k, f, residual=False, relu=False, bias=True, **attrs):
    c = x_shape[1]
    group = attrs.get("group", 1)
    b = GraphBuilder("conv")
    x = b.input("x", x_shape)
    params = [b.param("w", rand(k, c // group, f, f) / np.float32(np.sqrt(c * f * f / group)))]
    if bias:
        params.append(b.param("b", rand(k)))
    y = b.op("Conv", x, *params, name="conv", rounding="floor", **attrs)
    if residual:
        y = b.op("Add", y, b.op("Conv", x, b.param("w2", rand(k, c // group, f, f)), name="c2",
                                rounding="floor", **attrs), name="add")
    if relu:
        y = b.op("Relu", y, name="relu")
    return b.build(y)


def check(graph, threads=1, tol=1e-4):
    x = rand(*graph.inputs[0].type.shape)
    cm = cnncompiler.compile(graph, backend="llvm", threads=threads)
    layouts = {n.attrs.get("layout") for n in cm.graph.nodes if n.op == "Conv"} | {
        m.attrs.get("layout") for n in cm.graph.nodes if n.op == "Fused"
        for m in n.attrs["body"].nodes if m.op == "Conv"}
    assert "NCHW8c" in layouts, cm.graph.dump()
    got = cm(x)
    want = evaluate(graph, {"x": x})[0]
    assert got.shape == want.shape
    assert rel_err(got, want) < tol, rel_err(got, want)


@pytest.mark.parametrize("x_shape,k,f,attrs", [
    ((1, 16, 13, 11), 32, 3, {"pads": (1, 1, 1, 1)}),             # 2 x 6 tiles, odd widths
    ((2, 8, 9, 7), 8, 3, {"pads": (1, 1, 1, 1)}),                 # one output block: 1 x 12
    ((1, 24, 7, 7), 24, 3, {"pads": (1, 1, 1, 1)}),               # 3 blocks: 1 x 12 tiles
    ((1, 16, 10, 10), 16, 3, {"strides": (2, 2), "pads": (1, 1, 1, 1)}),
    ((1, 16, 11, 9), 16, 3, {"dilations": (2, 2), "pads": (2, 2, 2, 2)}),
    ((1, 16, 5, 6), 16, 3, {"pads": (4, 3, 2, 5)}),              # columns with no tap at all
    ((1, 16, 9, 9), 16, 1, {}),                                   # 1x1
    ((1, 16, 9, 9), 32, 1, {"strides": (2, 2)}),                  # 1x1 downsample
    ((1, 16, 9, 9), 16, 5, {"pads": (2, 2, 2, 2)}),
    ((1, 32, 8, 9), 32, 3, {"group": 2, "pads": (1, 1, 1, 1)}),   # 16 channels per group
    ((1, 32, 8, 9), 16, 3, {"group": 2, "pads": (1, 1, 1, 1)}),   # 8 out per group: R = 1
    ((1, 16, 9, 13), 16, 3, {"group": 16, "pads": (1, 1, 1, 1)}),  # depthwise
    ((2, 16, 9, 13), 16, 3, {"group": 16, "strides": (2, 2), "pads": (1, 1, 1, 1)}),
    # its NCHW -> NCHW8c input re-laying aborted LLVM 22's SLP vectoriser (now off)
    ((1, 16, 6, 3), 16, 2, {"group": 16}),
    ((1, 3, 17, 15), 16, 7, {"strides": (2, 2), "pads": (3, 3, 3, 3)}),  # 3-channel stem
    ((1, 3, 9, 10), 24, 3, {"pads": (1, 1, 1, 1)}),                     # stem, 1 x 12 tiles
])
def test_blocked_conv_geometries(x_shape, k, f, attrs):
    check(conv_graph(x_shape, k, f, **attrs))


def test_blocked_conv_without_bias_and_fused_epilogue():
    check(conv_graph((1, 16, 9, 10), 16, 3, residual=True, relu=True, bias=False,
                     pads=(1, 1, 1, 1)))


@pytest.mark.parametrize("threads", [1, 2])
def test_blocked_conv_threads(threads):
    check(conv_graph((2, 16, 12, 12), 32, 3, relu=True, pads=(1, 1, 1, 1)), threads=threads)


@settings(max_examples=12, deadline=None)
@given(h=st.integers(3, 14), w=st.integers(3, 17), f=st.integers(1, 3), s=st.integers(1, 2),
       p=st.integers(0, 2), d=st.integers(1, 2), kind=st.sampled_from(["dense", "dw", "grp"]))
def test_blocked_conv_property(h, w, f, s, p, d, kind):
    if (f - 1) * d + 1 > min(h, w) + 2 * p:
        return
    group = {"dense": 1, "dw": 16, "grp": 2}[kind]
    check(conv_graph((1, 16, h, w), 16, f, strides=(s, s), pads=(p,) * 4, dilations=(d, d),
                     group=group))


@pytest.mark.parametrize("width,most", [(56, 6), (7, 6), (6, 6), (1, 6), (13, 6), (112, 6),
                                        (28, 12), (14, 6)])
def test_tile_runs_cover_the_row(width, most):
    runs = tile_runs(width, most)
    covered = [c for lo, w, n in runs for c in range(lo, lo + w * n)]
    assert covered == list(range(width))
    assert all(1 <= w <= most for _, w, _ in runs)
    if width >= 2 * most:   # the end tiles share the remainder: none narrower than half
        assert min(w for _, w, _ in runs) >= most // 2


@pytest.mark.parametrize("other", [(1, 16, 5, 7), (1, 16, 1, 1), (1, 16, 5, 1)])
def test_pointwise_conv_as_one_row_with_fused_operands(other):
    """A 1x1 stride-1 conv runs as one H*W-column row; a fused operand broadcast over only
    one spatial dim keeps the row-by-row schedule (the flat column would misaddress it)."""
    b = GraphBuilder("pw")
    x = b.input("x", (1, 16, 5, 7))
    y = b.op("Conv", x, b.param("w", rand(16, 16, 1, 1)), b.param("b", rand(16)), name="conv")
    y = b.op("Relu", b.op("Add", y, b.param("r", rand(*other)), name="add"), name="relu")
    check(b.build(y))
