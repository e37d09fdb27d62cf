"""Conv: the lecture's worked example, a direct 7-loop oracle, shape inference and errors."""

import numpy as np
import pytest
from helpers import run_ref
from hypothesis import given, settings
from hypothesis import strategies as st

from cnncompiler.errors import AttributeValueError, ShapeError
from cnncompiler.ir import GraphBuilder, TensorType
from cnncompiler.ops.registry import infer_node


def direct_conv(x, w, b, strides, pads, dilations, group):
    """The textbook 7-loop convolution (n, k, oh, ow, c, i, j), zero padding by bounds checks."""
    n_, c_, h, wd = x.shape
    k_, cg, fh, fw = w.shape
    (sh, sw), (pt, pl, pb, pr), (dh, dw) = strides, pads, dilations
    oh = (h + pt + pb - ((fh - 1) * dh + 1)) // sh + 1
    ow = (wd + pl + pr - ((fw - 1) * dw + 1)) // sw + 1
    kg = k_ // group
    y = np.zeros((n_, k_, oh, ow))
    for n in range(n_):
        for k in range(k_):
            g = k // kg
            for p in range(oh):
                for q in range(ow):
                    acc = 0.0 if b is None else b[k]
                    for c in range(cg):
                        for i in range(fh):
                            for j in range(fw):
                                r, s = p * sh - pt + i * dh, q * sw - pl + j * dw
                                if 0 <= r < h and 0 <= s < wd:
                                    acc += x[n, g * cg + c, r, s] * w[k, c, i, j]
                    y[n, k, p, q] = acc
    return y


def test_lecture_worked_example():
    image = np.array([[1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [0, 0, 1, 1, 0],
                      [0, 1, 1, 0, 0]], dtype=np.float64)
    kernel = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=np.float64)
    (y,) = run_ref("Conv", [image[None, None], kernel[None, None]])
    np.testing.assert_array_equal(y[0, 0], [[4, 3, 4], [2, 4, 3], [2, 3, 4]])


CASES = [
    # (N, C, H, W, K, F, strides, pads, dilations, group)
    (2, 3, 9, 8, 4, (3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    (1, 4, 11, 11, 6, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 2),
    (1, 3, 10, 9, 2, (3, 2), (1, 2), (2, 0, 1, 1), (1, 1), 1),          # asymmetric pads
    (1, 2, 12, 12, 3, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 1),         # dilation
    (2, 6, 7, 7, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 6),           # depthwise
    (1, 3, 8, 8, 5, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),           # 1x1
    (1, 3, 13, 13, 4, (5, 5), (2, 2), (2, 2, 2, 2), (1, 1), 1),
]


@pytest.mark.parametrize("n,c,h,w,k,f,strides,pads,dil,group", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_matches_direct_loops(n, c, h, w, k, f, strides, pads, dil, group, bias):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((k, c // group, *f))
    b = rng.standard_normal(k) if bias else None
    inputs = [x, wt] + ([b] if bias else [])
    (y,) = run_ref("Conv", inputs, strides=strides, pads=pads, dilations=dil, group=group,
                   rounding="floor")
    np.testing.assert_allclose(y, direct_conv(x, wt, b, strides, pads, dil, group), rtol=1e-10,
                               atol=1e-12)


def test_conv_preserves_float32():
    x = np.random.default_rng(1).standard_normal((1, 2, 5, 5)).astype(np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    (y,) = run_ref("Conv", [x, w])
    assert y.dtype == np.float32


def test_non_integer_output_shows_the_arithmetic():
    b = GraphBuilder()
    x = b.input("x", (1, 3, 32, 32))
    w = b.param("w", shape=(8, 3, 5, 5))
    with pytest.raises(ShapeError) as e:
        b.op("Conv", x, w, strides=(2, 2), name="conv1")
    msg = str(e.value)
    assert "conv1" in msg and "Conv" in msg
    assert "(32 - 5 + 0 + 0)/2 + 1" in msg and "14.5" in msg
    # PyTorch's floor semantics are available when asked for explicitly
    y = b.op("Conv", x, w, strides=(2, 2), rounding="floor", name="conv2")
    assert y.shape == (1, 8, 14, 14)


@pytest.mark.parametrize("x_shape,w_shape,attrs,text", [
    ((1, 3, 8, 8), (4, 2, 3, 3), {}, "channel mismatch"),
    ((1, 4, 8, 8), (4, 2, 3, 3), {"group": 3}, "not divisible by group=3"),
    ((3, 8, 8), (4, 3, 3, 3), {}, "rank 4"),
    ((1, 3, 2, 2), (4, 3, 3, 3), {}, "larger than the padded input"),
])
def test_conv_shape_errors(x_shape, w_shape, attrs, text):
    with pytest.raises(ShapeError, match=text):
        infer_node("Conv", [TensorType(x_shape), TensorType(w_shape)], attrs, "c")


@pytest.mark.parametrize("attrs,text", [
    ({"strides": (0, 1)}, ">= 1"),
    ({"pads": (1, 1)}, "4 pads"),
    ({"group": 0}, ">= 1"),
    ({"bogus": 1}, "unknown attribute"),
    ({"strides": "two"}, "expected an int"),
    ({"rounding": "ceil"}, "not one of"),
])
def test_conv_bad_attributes(attrs, text):
    with pytest.raises(AttributeValueError, match=text):
        infer_node("Conv", [TensorType((1, 3, 8, 8)), TensorType((4, 3, 3, 3))], attrs, "c")


def test_symbolic_batch_propagates():
    (t,) = infer_node("Conv", [TensorType(("N", 3, 227, 227)), TensorType((96, 3, 11, 11))],
                      {"strides": (4, 4)}, "conv1")
    assert t.shape == ("N", 96, 55, 55)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), f=st.integers(1, 4), s=st.integers(1, 3),
       p=st.integers(0, 2), d=st.integers(1, 2), g=st.sampled_from([1, 2]))
def test_shape_inference_matches_formula_and_reference(h, w, f, s, p, d, g):
    extent = (f - 1) * d + 1
    x_t, w_t = TensorType((1, 2, h, w)), TensorType((2, 2 // g, f, f))
    attrs = dict(strides=(s, s), pads=(p, p, p, p), dilations=(d, d), group=g, rounding="exact")
    spans = [h + 2 * p - extent, w + 2 * p - extent]
    if min(spans) < 0 or any(span % s for span in spans):
        with pytest.raises(ShapeError):
            infer_node("Conv", [x_t, w_t], attrs, "c")
        return
    (t,) = infer_node("Conv", [x_t, w_t], attrs, "c")
    assert t.shape == (1, 2, spans[0] // s + 1, spans[1] // s + 1)
    x = np.random.default_rng(0).standard_normal(x_t.shape)
    (y,) = run_ref("Conv", [x, np.ones(w_t.shape)], **attrs)
    assert y.shape == t.shape
