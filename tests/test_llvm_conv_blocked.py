"""The LLVM backend's register-blocked NCHW8c convolution (kernel/conv_nchwc.py) against the
reference backend: the layout pass must pick the blocked layout, and every geometry (odd
widths that do not divide the register tile, padding wider than the kernel, strides,
dilations, groups, depthwise, batches, fused epilogues, two threads) must give the same
numbers as the float64 reference."""

from dataclasses import replace

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


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("width,most", [(56, 6), (7, 6), (6, 6), (1, 6), (13, 6), (112, 6),
                                        (28, 12), (14, 6), (49, 6), (224, 6)])
def test_tile_runs_cover_the_row(width, most, padded):
    runs = tile_runs(width, most, padded)
    covered = [c for lo, w, n in runs for c in range(lo, lo + w * n)]
    assert covered == list(range(width))
    assert all(1 <= w <= most for _, w, _ in runs)
    widths = [w for _, w, n in runs for _ in range(n)]
    if padded and width >= 2 * most:   # the end tiles share the remainder: none narrower
        assert min(widths) >= most // 2   # than half
    if not padded:   # the fewest tiles, of widths one column apart at most
        assert len(widths) == -(-width // most) and max(widths) - min(widths) <= 1


@pytest.mark.parametrize("other", [(1, 16, 5, 7), (1, 16, 1, 1), (1, 16, 5, 1)])
def test_pointwise_conv_as_one_row_with_fused_operands(other):
    """A 1x1 stride-1 conv runs as one H*W-column row; a fused operand broadcast over only
    one spatial dim keeps the row-by-row schedule (the flat column would misaddress it)."""
    b = GraphBuilder("pw")
    x = b.input("x", (1, 16, 5, 7))
    y = b.op("Conv", x, b.param("w", rand(16, 16, 1, 1)), b.param("b", rand(16)), name="conv")
    y = b.op("Relu", b.op("Add", y, b.param("r", rand(*other)), name="add"), name="relu")
    check(b.build(y))


def clip_graph(x_shape, k, f, group=1, residual=False, **attrs):
    """Conv + Clip(0, 6) (MobileNetV2's ReLU6), optionally + a residual input."""
    c = x_shape[1]
    b = GraphBuilder("clip")
    x = b.input("x", x_shape)
    y = b.op("Conv", x, b.param("w", rand(k, c // group, f, f) / np.float32(np.sqrt(c * f * f))),
             b.param("b", rand(k)), name="conv", group=group, rounding="floor", **attrs)
    y = b.op("Clip", y, name="clip", min=0.0, max=0.5)
    if residual:
        y = b.op("Add", y, b.param("r", rand(1, k, *y.type.shape[2:])), name="add")
    return b.build(y)


@pytest.mark.parametrize("x_shape,k,f,group,attrs,residual", [
    ((1, 16, 9, 13), 16, 3, 16, {"pads": (1, 1, 1, 1)}, False),               # depthwise
    ((1, 16, 10, 11), 16, 3, 16, {"strides": (2, 2), "pads": (1, 1, 1, 1)}, False),
    ((1, 16, 7, 9), 32, 1, 1, {}, True),                                      # 1x1 + Add
    ((2, 16, 7, 5), 24, 3, 1, {"pads": (1, 1, 1, 1)}, True),
])
def test_epilogue_in_registers(x_shape, k, f, group, attrs, residual):
    """Clip and a residual Add applied to the accumulators before the store."""
    check(clip_graph(x_shape, k, f, group, residual, **attrs))


def test_lanewise_epilogue_falls_back_to_rows():
    """An epilogue whose element is not a lane-wise vector expression (a Cast, say) runs
    over the stored rows as before; register_epilogue says None for it."""
    from cnncompiler.kernel import ir as K
    from cnncompiler.kernel.conv_nchwc import lanewise

    lane, own = K.Var("lane"), K.Buffer("y", "f32", 0)
    acc = K.Var("acc", "f32x8")
    y = K.Load(own, K.Var("i") * 8 + lane)
    other = K.Buffer("r", "f32", 64)
    assert lanewise(K.maximum(y, 0.0), lane, own, acc, 8) is not None
    assert lanewise(y + K.Load(other, K.Var("k") * 8 + lane), lane, own, acc, 8) is not None
    assert lanewise(y + K.Load(other, K.Var("k")), lane, own, acc, 8) is not None  # broadcast
    assert lanewise(y + K.Load(other, lane * 2), lane, own, acc, 8) is None        # strided
    assert lanewise(y + K.Cast(K.Var("k"), "f32"), lane, own, acc, 8) is None


@pytest.mark.parametrize("x_shape,k,f,attrs", [
    ((1, 16, 9, 11), 24, 3, {"pads": (1, 1, 1, 1)}),     # 3 output blocks: 3 x 4 tiles
    ((1, 24, 8, 13), 24, 1, {}),
    ((2, 16, 7, 7), 72, 1, {"strides": (2, 2)}),         # 9 blocks: 3 x 4
])
def test_three_block_tiles(x_shape, k, f, attrs):
    check(conv_graph(x_shape, k, f, relu=True, **attrs))


@pytest.mark.parametrize("threads", [1, 2])
def test_passes_read_at_most_chunk_planes_input_blocks(threads):
    """A 1x1 conv over 24 input blocks with small filters: passes of 8 blocks (each one
    stream from a plane of X), the residual Add and ReLU on the last pass only."""
    import cnncompiler.kernel.conv_nchwc as C

    g = C.BlockedConv(8, True, True, 2, 192, 1, 392, 16, 1, 392, 1, 1, 1, 1, 0, 0, 1, 1, 1)
    assert C.reduction_chunk(g, 2, 6) == C.CHUNK_PLANES == 8
    assert C.reduction_chunk(replace(g, c=40), 2, 6) == 5   # a divisor of the 5 blocks
    assert C.reduction_chunk(replace(g, c=64), 2, 6) == 8
    small = replace(g, n=1, c=512, w=49, ow=49)   # X (100 KiB) stays in L2: one pass
    assert C.reduction_chunk(small, 2, 6) == 64
    check(conv_graph((2, 192, 14, 28), 16, 1, residual=True, relu=True), threads=threads)


@pytest.mark.parametrize("x_shape,k,f,attrs,residual", [
    ((1, 48, 9, 13), 16, 3, {"pads": (1, 1, 1, 1)}, True),   # 6 blocks in chunks of 2
    ((1, 40, 7, 9), 32, 1, {}, False),                        # 5 blocks: chunks of 1
    ((2, 48, 11, 11), 24, 3, {"strides": (2, 2), "pads": (1, 1, 1, 1)}, True),
])
def test_reduction_in_chunks(monkeypatch, x_shape, k, f, attrs, residual):
    """Filters too big for L1: the reduction runs in chunks over the row, partial sums
    stored and reloaded, the epilogue (ReLU, residual Add) on the last chunk only."""
    import cnncompiler.kernel.conv_nchwc as C

    monkeypatch.setattr(C, "CHUNK_ABOVE", 1024)
    monkeypatch.setattr(C, "CHUNK_BYTES", 2 * 8 * 8 * f * f * 4 * 3)
    monkeypatch.setattr(C, "DENSE_TILE", (2, 4))   # several tiles per row
    check(conv_graph(x_shape, k, f, residual=residual, relu=True, **attrs))
    check(conv_graph(x_shape, k, f, residual=residual, relu=True, **attrs), threads=2)


@pytest.mark.parametrize("pixels,groups,pixel_bytes,rows", [
    (3136, 1, 0, 8), (3136, 9, 0, 1), (49, 1, 0, 1), (196, 2, 0, 4), (12544, 3, 0, 4),
    (97, 1, 0, 1),
    (3136, 4, 1024, 14),   # 256 channels: rows of 224 columns keep 224 KiB of input in L2
    (784, 16, 2048, 7),    # 512 channels at 28x28: 112 columns
    (49, 32, 8192, 1)])    # 2048 channels at 7x7: no row narrower than MIN_ROW
def test_flat_rows(pixels, groups, pixel_bytes, rows):
    from cnncompiler.kernel.conv_nchwc import MIN_ROW, flat_rows

    assert flat_rows(pixels, groups, pixel_bytes) == rows
    assert pixels % rows == 0 and (rows == 1 or pixels // rows >= MIN_ROW)


@pytest.mark.parametrize("threads", [1, 2])
def test_pointwise_conv_cut_into_rows(monkeypatch, threads):
    """Few output channels: the flattened 1x1 conv is cut into several rows (parallel
    units), each not a multiple of the tile width, with a fused Clip."""
    import cnncompiler.kernel.conv_nchwc as C

    monkeypatch.setattr(C, "MIN_ROW", 15)   # 90 pixels as 6 rows of 15, not Y's 9 x 10
    assert C.flat_rows(90, 1) == 6
    check(clip_graph((1, 16, 9, 10), 16, 1, residual=True), threads=threads)
    monkeypatch.setattr(C, "register_epilogue", lambda *a: None)   # the row epilogue
    check(clip_graph((1, 16, 9, 10), 16, 1, residual=True), threads=threads)


@pytest.fixture
def subsampled(monkeypatch):
    """Counts the strided 1x1 convs that run over a subsampled copy of their input."""
    import cnncompiler.kernel.conv_nchwc as C

    calls = []
    original = C.subsample_input

    def counting(kb, g, x):
        calls.append(g.subsample)
        return original(kb, g, x)

    monkeypatch.setattr(C, "subsample_input", counting)
    return calls


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("x_shape,k,attrs", [
    ((1, 16, 13, 11), 32, {"strides": (2, 2)}),                  # 7 x 6 out: 2 x 6 tiles
    ((2, 16, 9, 9), 72, {"strides": (2, 2)}),                    # 5 x 5, batch 2: 3 x 4
    ((1, 16, 10, 11), 16, {"strides": (3, 3)}),                  # 4 x 4, stride 3
    ((1, 16, 9, 5), 24, {"strides": (2, 1)}),                    # 5 x 5, strides differ
    ((1, 32, 11, 9), 32, {"strides": (2, 2), "group": 2}),       # grouped
    ((1, 16, 11, 9), 16, {"strides": (2, 2), "group": 16}),      # depthwise
    ((1, 16, 9, 9), 16, {"strides": (2, 2), "pads": (0, 0, 1, 1)}),  # 5 x 5, right/bottom pad
])
def test_strided_pointwise_over_subsampled_input(subsampled, x_shape, k, attrs, threads):
    """A strided 1x1 conv with narrow output rows runs as one flat row over a copy of the
    pixels it reads (odd sizes that do not divide the tiles), with a fused residual Add of
    another conv and ReLU."""
    check(conv_graph(x_shape, k, 1, residual=True, relu=True, **attrs), threads=threads)
    assert subsampled and all(s is not None for s in subsampled)


@pytest.mark.parametrize("threads", [1, 2])
def test_strided_pointwise_subsampled_with_clip_and_row_epilogue(monkeypatch, subsampled,
                                                                 threads):
    """Clip + a residual input in registers, then the same over the stored rows."""
    import cnncompiler.kernel.conv_nchwc as C

    check(clip_graph((1, 16, 13, 13), 32, 1, residual=True, strides=(2, 2)), threads=threads)
    monkeypatch.setattr(C, "register_epilogue", lambda *a: None)
    check(clip_graph((1, 16, 13, 13), 32, 1, residual=True, strides=(2, 2)), threads=threads)
    assert len(subsampled) == 2


@pytest.mark.parametrize("threads", [1, 2])
def test_strided_pointwise_subsampled_in_chunks(monkeypatch, subsampled, threads):
    """The subsampled conv's reduction in chunks (partial sums stored and reloaded, the
    epilogue on the last chunk), as ResNet-50's layer4 downsample runs."""
    import cnncompiler.kernel.conv_nchwc as C

    monkeypatch.setattr(C, "CHUNK_ABOVE", 1024)
    monkeypatch.setattr(C, "CHUNK_BYTES", 2 * 8 * 8 * 4 * 2)   # 5 input blocks: chunks of 1
    check(conv_graph((1, 40, 13, 13), 32, 1, residual=True, relu=True, strides=(2, 2)),
          threads=threads)
    assert subsampled


@pytest.mark.parametrize("x_shape,k,attrs,other", [
    ((1, 16, 9, 9), 16, {"strides": (2, 2), "pads": (0, 0, 2, 2)}, None),  # bias-only pixels
    ((1, 16, 32, 32), 16, {"strides": (2, 2)}, None),     # 16-column rows: full tiles
    ((1, 16, 13, 11), 32, {"strides": (2, 2)}, (1, 32, 7, 1)),   # operand broadcast on W
])
def test_strided_pointwise_keeps_rows(subsampled, x_shape, k, attrs, other):
    """Where the copy does not pay or would be wrong, the strided 1x1 conv keeps Y's rows."""
    b = GraphBuilder("pw")
    x = b.input("x", x_shape)
    y = b.op("Conv", x, b.param("w", rand(k, x_shape[1], 1, 1)), b.param("b", rand(k)),
             name="conv", rounding="floor", **attrs)
    if other is not None:
        y = b.op("Add", y, b.param("r", rand(*other)), name="add")
    check(b.build(b.op("Relu", y, name="relu")))
    assert not subsampled


def test_subsample_copy_limit(monkeypatch, subsampled):
    """A copy bigger than SUBSAMPLE_BYTES (stack memory of each thread) is not made."""
    import cnncompiler.kernel.conv_nchwc as C

    monkeypatch.setattr(C, "SUBSAMPLE_BYTES", 16 * 7 * 6 * 4 - 4)
    check(conv_graph((1, 16, 13, 11), 32, 1, relu=True, strides=(2, 2)))
    assert not subsampled
    monkeypatch.setattr(C, "SUBSAMPLE_BYTES", 16 * 7 * 6 * 4)
    check(conv_graph((1, 16, 13, 11), 32, 1, relu=True, strides=(2, 2)))
    assert subsampled


@pytest.fixture
def banded(monkeypatch):
    """The output rows per band of each conv that runs in bands of pixels (pixel_bands
    says nonzero)."""
    import cnncompiler.kernel.conv_nchwc as C

    calls = []
    original = C.pixel_bands

    def counting(g):
        rows = original(g)
        if rows:
            calls.append(rows)
        return rows

    monkeypatch.setattr(C, "pixel_bands", counting)
    return calls


@pytest.mark.parametrize("x_shape,k,f,attrs,threads", [
    ((1, 16, 14, 14), 128, 3, {"strides": (2, 2), "pads": (1, 1, 1, 1)}, 1),  # 7 x 7 out
    ((1, 16, 14, 14), 128, 3, {"strides": (2, 2), "pads": (1, 1, 1, 1)}, 2),
    ((1, 16, 13, 13), 64, 3, {"strides": (2, 2), "pads": (1, 1, 1, 1)}, 1),   # odd input
    ((2, 16, 15, 13), 64, 3, {"strides": (2, 2), "pads": (1, 1, 1, 1)}, 2),   # batch 2, 8 x 7
    ((1, 16, 20, 19), 128, 3, {"strides": (3, 3), "pads": (1, 1, 1, 1)}, 1),  # stride 3
    ((1, 16, 12, 13), 128, 3, {"strides": (2, 2), "pads": (2, 0, 1, 3)}, 1),  # uneven pads
    ((1, 16, 7, 8), 128, 3, {"pads": (1, 1, 1, 1)}, 1),                        # stride 1
    ((1, 16, 9, 9), 128, 5, {"pads": (2, 2, 2, 2)}, 1),                        # 5x5
    ((1, 16, 13, 14), 128, 3, {"strides": (2, 2), "dilations": (2, 2), "pads": (2, 2, 2, 2)},
     1),
    ((1, 32, 14, 14), 256, 3, {"strides": (2, 2), "pads": (1, 1, 1, 1), "group": 2}, 2),
    ((1, 16, 9, 9), 72, 3, {"strides": (2, 2), "pads": (1, 1, 1, 1)}, 1),     # 3 x 4 tiles
    ((8, 16, 7, 7), 8, 3, {"pads": (1, 1, 1, 1)}, 1),                          # 1 x 12 tiles
    ((1, 16, 3, 4), 128, 3, {"pads": (1, 1, 1, 1)}, 1),                        # 3 x 4 output
    ((1, 16, 5, 5), 128, 3, {"pads": (3, 3, 3, 3)}, 1),                        # bias-only pixels
    # small filters, a big input: units walk a band's channel groups first ("rows" order)
    ((2, 64, 40, 13), 16, 3, {"strides": (2, 2), "pads": (1, 1, 1, 1)}, 2),
])
def test_narrow_rows_in_bands(banded, x_shape, k, f, attrs, threads):
    """Narrow output rows run as bands of pixels, tiles across rows, each pixel with its
    own taps (odd sizes, strides 1 to 3, padding, dilation, groups, batch 2, 1 and 2
    threads), with a fused residual Add of another conv and ReLU."""
    check(conv_graph(x_shape, k, f, residual=True, relu=True, **attrs), threads=threads)
    assert banded


@pytest.mark.parametrize("threads", [1, 2])
def test_bands_of_several_runs(monkeypatch, banded, threads):
    """Bands of a few rows: a top band, middle ones, a bottom one and a shorter last one
    each with their own code (and units: bands x channel groups x batch)."""
    import cnncompiler.kernel.conv_nchwc as C

    monkeypatch.setattr(C, "BAND_PIXELS", 14)   # 7-column rows: bands of 2 rows
    check(conv_graph((2, 16, 25, 13), 32, 3, residual=True, relu=True, strides=(2, 2),
                     pads=(1, 1, 1, 1)), threads=threads)        # 13 x 7: 6 bands of 2 + 1
    assert banded == [2, 2]
    g = C.BlockedConv(8, True, True, 2, 16, 25, 13, 32, 13, 7, 3, 3, 2, 2, 1, 1, 1, 1, 1)
    assert C.band_runs(g, 2) == [(1, 2), (6, 2), (7, 1)]


@pytest.mark.parametrize("threads", [1, 2])
def test_bands_in_chunks_and_row_epilogue(monkeypatch, banded, threads):
    """A band's reduction in chunks (partial sums stored and reloaded, the epilogue on the
    last), then the same with the epilogue over the stored rows."""
    import cnncompiler.kernel.conv_nchwc as C

    monkeypatch.setattr(C, "CHUNK_ABOVE", 1024)
    monkeypatch.setattr(C, "CHUNK_BYTES", 2 * 8 * 8 * 9 * 4)   # 5 input blocks: chunks of 1
    check(conv_graph((1, 40, 13, 14), 32, 3, residual=True, relu=True, strides=(2, 2),
                     pads=(1, 1, 1, 1)), threads=threads)
    check(clip_graph((1, 40, 13, 14), 32, 3, residual=True, strides=(2, 2),
                     pads=(1, 1, 1, 1)), threads=threads)
    monkeypatch.setattr(C, "register_epilogue", lambda *a: None)
    check(conv_graph((1, 40, 13, 14), 32, 3, residual=True, relu=True, strides=(2, 2),
                     pads=(1, 1, 1, 1)), threads=threads)
    assert len(banded) == 5   # the residual's conv too


@pytest.mark.parametrize("x_shape,attrs", [
    ((1, 16, 10, 10), {"pads": (1, 1, 1, 1)}),                      # tiles of 5 + 5
    ((1, 16, 21, 21), {"strides": (2, 2), "pads": (1, 1, 1, 1)}),   # 5 + 6
    ((1, 16, 14, 14), {"pads": (1, 1, 1, 1)}),                      # two full tiles
    ((1, 16, 6, 6), {"pads": (1, 1, 1, 1)}),                        # one full tile
])
def test_wider_rows_keep_rows(banded, x_shape, attrs):
    check(conv_graph(x_shape, 16, 3, relu=True, **attrs))
    assert not banded


def test_band_tiles():
    from cnncompiler.kernel.conv_nchwc import BlockedConv, band_tiles, pixel_bands, pixel_taps

    full = frozenset((i, j) for i in range(3) for j in range(3))
    assert sorted(w for _, w in band_tiles([full] * 49, 2, 6)) == [5] * 5 + [6] * 4
    # ResNet-50's layer4.0.conv2: one band of 7 rows, every tile within the tap sets
    g = BlockedConv(8, True, True, 1, 512, 14, 14, 512, 7, 7, 3, 3, 2, 2, 1, 1, 1, 1, 1)
    assert pixel_bands(g) == 7
    taps = pixel_taps(g, 0, 7)
    assert taps[0] == {(i, j) for i in (1, 2) for j in (1, 2)} and taps[8] == full
    for most in (4, 6, 12):
        tiles = band_tiles(taps, 2, most)
        assert [p for lo, w in tiles for p in range(lo, lo + w)] == list(range(49))
        assert all(1 <= w <= most for _, w in tiles)
