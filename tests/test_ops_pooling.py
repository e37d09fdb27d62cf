"""Pooling ops: references against explicit-loop pooling, shape inference, errors, cost."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cnncompiler.errors import AttributeValueError, ShapeError
from cnncompiler.ir.builder import GraphBuilder
from cnncompiler.ir.types import TensorType
from cnncompiler.ops.opdef import FusionKind
from cnncompiler.ops.registry import get_op, infer_node, node_cost


def run(op: str, x: np.ndarray, **attrs) -> np.ndarray:
    opdef = get_op(op)
    return opdef.reference([x], opdef.normalize_attrs(attrs, "n"))


def infer(op: str, shape, dtype: str = "float64", **attrs) -> tuple:
    return infer_node(op, [TensorType(tuple(shape), dtype)], attrs, "n")[0].shape


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)  # non-zero, mixed signs
    return x


# ------------------------------------------------------------- the independent loop oracle
def loop_out(size: int, k: int, s: int, pb: int, pe: int, d: int, ceil: bool) -> int:
    extent = (k - 1) * d + 1
    span = size + pb + pe - extent
    if not ceil:
        return span // s + 1
    out = math.ceil(span / s) + 1
    if (out - 1) * s >= size + pb:  # the last window must start inside input or left padding
        out -= 1
    return out


def loop_pool(x, kind, kernel, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
              ceil=False, count_include_pad=False) -> np.ndarray:
    n_, c_, h, w = x.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilations
    pt, pl, pb, pr = pads
    oh = loop_out(h, kh, sh, pt, pb, dh, ceil)
    ow = loop_out(w, kw, sw, pl, pr, dw, ceil)
    y = np.zeros((n_, c_, oh, ow))
    for n in range(n_):
        for c in range(c_):
            for i in range(oh):
                for j in range(ow):
                    vals, in_padded = [], 0
                    for a in range(kh):
                        for b in range(kw):
                            r = i * sh - pt + a * dh
                            q = j * sw - pl + b * dw
                            if -pt <= r < h + pb and -pl <= q < w + pr:
                                in_padded += 1
                            if 0 <= r < h and 0 <= q < w:
                                vals.append(x[n, c, r, q])
                    if kind == "max":
                        y[n, c, i, j] = max(vals, default=-np.inf)  # only padding seen
                    else:
                        y[n, c, i, j] = sum(vals) / (in_padded if count_include_pad else len(vals))
    return y


ATTR_NAMES = {"kernel": "kernel_shape", "strides": "strides", "pads": "pads",
              "dilations": "dilations", "count_include_pad": "count_include_pad"}


def as_attrs(geo: dict) -> dict:
    attrs = {ATTR_NAMES[k]: v for k, v in geo.items() if k != "ceil"}
    return dict(attrs, rounding="ceil" if geo.get("ceil") else "floor")


def check_max(x, **geo):
    got = run("MaxPool", x, **as_attrs(geo))
    np.testing.assert_allclose(got, loop_pool(x, "max", **geo), rtol=1e-10)
    return got


def check_avg(x, **geo):
    got = run("AveragePool", x, **as_attrs(geo))
    np.testing.assert_allclose(got, loop_pool(x, "avg", **geo), rtol=1e-10)
    return got


# ------------------------------------------------------------------------------ MaxPool
def test_maxpool_basic_2x2_stride_2():
    x = rand(2, 3, 8, 8)
    y = check_max(x, kernel=(2, 2), strides=(2, 2))
    assert y.shape == (2, 3, 4, 4)
    np.testing.assert_array_equal(y, x.reshape(2, 3, 4, 2, 4, 2).max(axis=(3, 5)))


def test_maxpool_alexnet_overlapping_3x3_stride_2():
    check_max(rand(1, 2, 13, 13), kernel=(3, 3), strides=(2, 2))


def test_maxpool_asymmetric_pads_and_strides():
    check_max(rand(1, 2, 7, 9, seed=1), kernel=(3, 2), strides=(2, 3), pads=(1, 0, 2, 1))


def test_maxpool_padding_never_wins_on_negative_input():
    x = -np.abs(rand(1, 1, 4, 4, seed=2))
    y = check_max(x, kernel=(3, 3), pads=(1, 1, 1, 1))
    assert (y < 0).all()


def test_maxpool_dilation():
    check_max(rand(1, 2, 9, 10, seed=3), kernel=(2, 3), strides=(1, 2), dilations=(2, 3),
              pads=(1, 2, 0, 1))


def test_maxpool_ceil_mode_overhanging_window():
    # W1=5, F=2, S=2: floor gives 2 windows, ceil keeps a third that overhangs by one cell
    x = rand(1, 2, 5, 5, seed=4)
    y = check_max(x, kernel=(2, 2), strides=(2, 2), ceil=True)
    assert y.shape == (1, 2, 3, 3)
    np.testing.assert_array_equal(y[..., 2, 2], x[..., 4, 4])


def test_maxpool_ceil_mode_drops_window_starting_in_end_padding():
    # (4 + 2 + 2 - 3)/2 + 1 = 3.5 -> ceil 4, but the 4th window would start at padded index
    # 6 = H + P_top, entirely in the end padding, so it is dropped (PyTorch/ONNX rule)
    assert infer("MaxPool", (1, 1, 4, 4), kernel_shape=[3, 3], strides=[2, 2],
                 pads=[2, 2, 2, 2], rounding="ceil") == (1, 1, 3, 3)
    check_max(rand(1, 1, 4, 4, seed=5), kernel=(3, 3), strides=(2, 2), pads=(2, 2, 2, 2),
              ceil=True)
    # ONNX's maxpool_2d_ceil_output_size_reduce_by_one: 2x2 input, F=1, S=2 -> 1x1
    x = rand(1, 1, 2, 2, seed=5)
    y = check_max(x, kernel=(1, 1), strides=(2, 2), ceil=True)
    np.testing.assert_array_equal(y, x[:, :, :1, :1])


def test_maxpool_ceil_with_dilation():
    check_max(rand(1, 1, 10, 8, seed=6), kernel=(2, 2), strides=(3, 3), dilations=(2, 1),
              ceil=True)


def test_maxpool_preserves_float32():
    x = rand(1, 2, 6, 6).astype(np.float32)
    y = run("MaxPool", x, kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    assert y.dtype == np.float32
    assert infer("MaxPool", x.shape, "float32", kernel_shape=[3, 3], pads=[1, 1, 1, 1]) \
        == (1, 2, 6, 6)


# -------------------------------------------------------------------------- AveragePool
@pytest.mark.parametrize("count_include_pad", [False, True])
def test_avgpool_pads_count_include_pad(count_include_pad):
    check_avg(rand(2, 2, 6, 7, seed=7), kernel=(3, 3), strides=(2, 2), pads=(1, 2, 2, 1),
              count_include_pad=count_include_pad)


def test_avgpool_count_include_pad_changes_border_only():
    x = rand(1, 1, 5, 5, seed=8)
    geo = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    inc = run("AveragePool", x, count_include_pad=True, **geo)
    exc = run("AveragePool", x, count_include_pad=False, **geo)
    np.testing.assert_allclose(inc[..., 1:-1, 1:-1], exc[..., 1:-1, 1:-1], rtol=1e-12)
    # a corner window sees 4 real cells out of 9 padded ones
    np.testing.assert_allclose(inc[0, 0, 0, 0], x[0, 0, :2, :2].sum() / 9, rtol=1e-12)
    np.testing.assert_allclose(exc[0, 0, 0, 0], x[0, 0, :2, :2].sum() / 4, rtol=1e-12)


@pytest.mark.parametrize("count_include_pad", [False, True])
def test_avgpool_ceil_mode_overhang_not_counted(count_include_pad):
    # H=6, F=3, S=2, pads 1/1: (6 + 2 - 3)/2 + 1 = 3.5 -> ceil 4; the last window covers padded
    # rows 6, 7, 8: row 6 real, row 7 end pad, row 8 beyond the padded input (never counted)
    x = rand(1, 2, 6, 6, seed=9)
    y = check_avg(x, kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), ceil=True,
                  count_include_pad=count_include_pad)
    assert y.shape == (1, 2, 4, 4)
    divisor = 4 if count_include_pad else 1  # rows {5, pad} x cols {5, pad}
    np.testing.assert_allclose(y[:, :, 3, 3], x[:, :, 5, 5] / divisor, rtol=1e-12)


def test_avgpool_ceil_without_pads():
    check_avg(rand(1, 1, 7, 5, seed=10), kernel=(2, 3), strides=(2, 3), ceil=True,
              count_include_pad=True)


def test_avgpool_preserves_float32_and_is_close_to_float64():
    x = rand(1, 3, 8, 8, seed=11)
    y32 = run("AveragePool", x.astype(np.float32), kernel_shape=[2, 2], strides=[2, 2])
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, check_avg(x, kernel=(2, 2), strides=(2, 2)), rtol=1e-6,
                               atol=1e-6)


# ------------------------------------------------------------------------- global pools
def test_global_pools():
    x = rand(2, 3, 5, 4, seed=12)
    avg = run("GlobalAveragePool", x)
    mx = run("GlobalMaxPool", x)
    assert avg.shape == mx.shape == (2, 3, 1, 1)
    for n in range(2):
        for c in range(3):
            vals = [x[n, c, i, j] for i in range(5) for j in range(4)]
            np.testing.assert_allclose(avg[n, c, 0, 0], sum(vals) / len(vals), rtol=1e-10)
            assert mx[n, c, 0, 0] == max(vals)
    assert run("GlobalAveragePool", x.astype(np.float32)).dtype == np.float32
    assert infer("GlobalAveragePool", ("N", 512, 7, 7)) == ("N", 512, 1, 1)
    assert infer("GlobalMaxPool", (1, 8, 3, 3), "float32") == (1, 8, 1, 1)


# ---------------------------------------------------------------------- shape inference
def test_infer_symbolic_batch_through_builder():
    b = GraphBuilder()
    x = b.input("x", ("N", 3, 32, 32))
    y = b.op("MaxPool", x, kernel_shape=[2, 2], strides=[2, 2])
    z = b.op("AveragePool", y, kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=True)
    g = b.op("GlobalAveragePool", z)
    assert y.shape == ("N", 3, 16, 16) and z.shape == ("N", 3, 16, 16)
    assert g.shape == ("N", 3, 1, 1)


def test_exact_mode_error_shows_arithmetic():
    with pytest.raises(ShapeError) as e:
        infer("MaxPool", (1, 3, 32, 32), kernel_shape=[5, 5], strides=[2, 2])
    msg = str(e.value)
    assert "(32 - 5 + 0 + 0)/2 + 1" in msg and "14.5" in msg and "rounding='floor'" in msg
    assert infer("MaxPool", (1, 3, 32, 32), kernel_shape=[5, 5], strides=[2, 2],
                 rounding="floor") == (1, 3, 14, 14)
    assert infer("MaxPool", (1, 3, 32, 32), kernel_shape=[5, 5], strides=[2, 2],
                 rounding="ceil") == (1, 3, 15, 15)
    with pytest.raises(ShapeError, match="14.5"):
        run("AveragePool", rand(1, 1, 32, 32), kernel_shape=[5, 5], strides=[2, 2])


def test_window_larger_than_input():
    with pytest.raises(ShapeError, match="larger than the padded input"):
        infer("MaxPool", (1, 1, 2, 2), kernel_shape=[3, 3])


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"])
def test_rank_and_dtype_errors(op):
    attrs = {"kernel_shape": [2, 2]} if "Global" not in op else {}
    with pytest.raises(ShapeError, match=r"rank 4, got shape \[3, 8, 8\]"):
        infer(op, (3, 8, 8), **attrs)
    with pytest.raises(ShapeError, match="float32 or float64, got int64"):
        infer(op, (1, 3, 8, 8), "int64", **attrs)


@pytest.mark.parametrize("attrs, text", [
    ({}, "'kernel_shape' is required"),
    ({"kernel_shape": [2, 2, 2]}, "must have 2 entries"),
    ({"kernel_shape": [0, 2]}, ">= 1"),
    ({"kernel_shape": [2, 2], "strides": [1, 0]}, ">= 1"),
    ({"kernel_shape": [2, 2], "pads": [1, 1]}, "give 4 pads"),
    ({"kernel_shape": [2, 2], "pads": [0, -1, 0, 0]}, ">= 0"),
    ({"kernel_shape": [2, 2], "pads": [2, 0, 0, 0]}, "smaller than the window extent F=2"),
    ({"kernel_shape": [2, 2], "dilations": [0, 1]}, ">= 1"),
    ({"kernel_shape": [2, 2], "rounding": "round"}, "not one of"),
    ({"kernel_shape": [2, 2], "ceil_mode": 1}, "unknown attribute"),
])
def test_maxpool_bad_attributes(attrs, text):
    with pytest.raises(AttributeValueError, match=text):
        infer("MaxPool", (1, 1, 8, 8), **attrs)


def test_avgpool_bad_attributes():
    with pytest.raises(AttributeValueError, match="count_include_pad"):
        infer("AveragePool", (1, 1, 8, 8), kernel_shape=[2, 2], count_include_pad=2)
    with pytest.raises(AttributeValueError, match="unknown attribute"):
        infer("AveragePool", (1, 1, 8, 8), kernel_shape=[2, 2], dilations=[2, 2])


# ------------------------------------------------------------------------ cost, fusion
def test_flops_and_fusion():
    b = GraphBuilder()
    x = b.input("x", (1, 4, 8, 8))
    mp = b.op("MaxPool", x, kernel_shape=[3, 2], strides=[1, 2], pads=[1, 0, 1, 0])
    ap = b.op("AveragePool", x, kernel_shape=[2, 2], strides=[2, 2])
    gp = b.op("GlobalAveragePool", x)
    assert node_cost(mp.producer).flops == 6 * 4 * 8 * 4
    assert node_cost(ap.producer).flops == 5 * 4 * 4 * 4
    assert node_cost(gp.producer).flops == 64 * 4
    assert get_op("MaxPool").fusion is get_op("AveragePool").fusion is FusionKind.OUTPUT_FUSABLE
    assert get_op("GlobalAveragePool").fusion is get_op("GlobalMaxPool").fusion \
        is FusionKind.REDUCTION


# ------------------------------------------------------------------- property tests
@st.composite
def geometries(draw, dilation: bool):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dh, dw = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if dilation else (1, 1)
    pads = tuple(draw(st.integers(0, (k - 1) * d)) for k, d in ((kh, dh), (kw, dw)) * 2)
    return dict(kernel=(kh, kw), strides=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
                pads=pads, dilations=(dh, dw))


def floor_formula(size, k, s, pb, pe, d):
    return (size + pb + pe - ((k - 1) * d + 1)) // s + 1


@settings(max_examples=30, deadline=None)
@given(geo=geometries(dilation=True), h=st.integers(1, 12), w=st.integers(1, 12))
def test_maxpool_floor_shape_property(geo, h, w):
    k, s, p, d = geo["kernel"], geo["strides"], geo["pads"], geo["dilations"]
    assume(h + p[0] + p[2] >= (k[0] - 1) * d[0] + 1 and w + p[1] + p[3] >= (k[1] - 1) * d[1] + 1)
    attrs = dict(kernel_shape=k, strides=s, pads=p, dilations=d, rounding="floor")
    want = (1, 2, floor_formula(h, k[0], s[0], p[0], p[2], d[0]),
            floor_formula(w, k[1], s[1], p[1], p[3], d[1]))
    assert infer("MaxPool", (1, 2, h, w), **attrs) == want
    assert run("MaxPool", rand(1, 2, h, w), **attrs).shape == want


@settings(max_examples=30, deadline=None)
@given(geo=geometries(dilation=True), h=st.integers(1, 8), w=st.integers(1, 8),
       ceil=st.booleans())
def test_maxpool_matches_loops_property(geo, h, w, ceil):
    k, p, d = geo["kernel"], geo["pads"], geo["dilations"]
    assume(h + p[0] + p[2] >= (k[0] - 1) * d[0] + 1 and w + p[1] + p[3] >= (k[1] - 1) * d[1] + 1)
    check_max(rand(1, 2, h, w), ceil=ceil, **geo)


@settings(max_examples=30, deadline=None)
@given(geo=geometries(dilation=False), h=st.integers(1, 8), w=st.integers(1, 8),
       ceil=st.booleans(), include=st.booleans())
def test_avgpool_matches_loops_property(geo, h, w, ceil, include):
    k, s, p = geo["kernel"], geo["strides"], geo["pads"]
    assume(h + p[0] + p[2] >= k[0] and w + p[1] + p[3] >= k[1])
    del geo["dilations"]
    y = check_avg(rand(1, 2, h, w), ceil=ceil, count_include_pad=include, **geo)
    rounding = "ceil" if ceil else "floor"
    assert infer("AveragePool", (1, 2, h, w), kernel_shape=k, strides=s, pads=p,
                 rounding=rounding) == y.shape


# ------------------------------------------------------- ONNX operator-doc examples
def test_onnx_ceil_examples():
    x = np.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    geo = dict(kernel_shape=[3, 3], strides=[2, 2], rounding="ceil")
    np.testing.assert_array_equal(run("MaxPool", x, **geo), [[[[11, 12], [15, 16]]]])
    np.testing.assert_array_equal(run("AveragePool", x, **geo), [[[[6, 7.5], [12, 13.5]]]])


def test_onnx_ceil_last_window_starts_on_pad():
    # averagepool_2d_ceil_last_window_starts_on_pad: 2x2 input, F=3, S=3, pads 1 -> 1x1,
    # the one window is all inside the explicitly padded input: divisor 9
    x = rand(1, 3, 2, 2, seed=13)
    y = run("AveragePool", x, kernel_shape=[3, 3], strides=[3, 3], pads=[1, 1, 1, 1],
            rounding="ceil", count_include_pad=True)
    np.testing.assert_allclose(y, x.sum(axis=(2, 3), keepdims=True) / 9, rtol=1e-12)
