"""ConvTranspose: the scatter-add reference against a direct loop over input pixels, the
output-size formula, output_shape/auto_pad pads, errors, and costs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnncompiler.errors import AttributeValueError, ShapeError
from cnncompiler.ir.builder import GraphBuilder
from cnncompiler.ir.types import TensorType
from cnncompiler.ops.opdef import FusionKind
from cnncompiler.ops.registry import get_op, infer_node, node_cost

RNG = np.random.default_rng(2)
OP = get_op("ConvTranspose")


def rand(*shape: int) -> np.ndarray:
    return RNG.uniform(0.5, 2.0, shape) * RNG.choice([-1.0, 1.0], shape)


def run(inputs: list, **attrs) -> np.ndarray:
    return OP.reference(inputs, OP.normalize_attrs(attrs, "n"))


def infer(shapes: list, **attrs) -> tuple:
    return infer_node("ConvTranspose", [None if s is None else TensorType(s) for s in shapes],
                      attrs, "n")[0].shape


def deconv_loops(x, w, b, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1,
                 output_padding=(0, 0), out_hw=None) -> np.ndarray:
    """Every input pixel scatters x * W[c, k] at output S*h + D*i - P_top (direct loops)."""
    n, c, h, wd = x.shape
    _, kg, fh, fw = w.shape
    cg = c // group
    if out_hw is None:
        out_hw = tuple(strides[a] * ((h, wd)[a] - 1) + output_padding[a]
                       + ((fh, fw)[a] - 1) * dilations[a] + 1 - pads[a] - pads[a + 2]
                       for a in range(2))
    y = np.zeros((n, kg * group, *out_hw))
    for b_ in range(n):
        for ci in range(c):
            g = ci // cg
            for hi in range(h):
                for wi in range(wd):
                    for k in range(kg):
                        for i in range(fh):
                            for j in range(fw):
                                oh = hi * strides[0] + i * dilations[0] - pads[0]
                                ow = wi * strides[1] + j * dilations[1] - pads[1]
                                if 0 <= oh < out_hw[0] and 0 <= ow < out_hw[1]:
                                    y[b_, g * kg + k, oh, ow] += x[b_, ci, hi, wi] * w[ci, k, i, j]
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y


CASES = [
    dict(),
    dict(strides=(2, 2)),
    dict(strides=(2, 3), pads=(1, 0, 0, 2)),
    dict(strides=(2, 2), pads=(1, 1, 1, 1), output_padding=(1, 1)),
    dict(dilations=(2, 1), pads=(0, 1, 1, 0)),
    dict(strides=(3, 2), dilations=(2, 2), output_padding=(1, 1)),
    dict(group=2),
    dict(group=4, strides=(2, 1), pads=(1, 0, 1, 0)),
]


@pytest.mark.parametrize("attrs", CASES)
@pytest.mark.parametrize("bias", [False, True])
def test_reference_matches_loops(attrs, bias):
    group = attrs.get("group", 1)
    x = rand(2, 4, 3, 4)
    w = rand(4, {1: 3, 2: 3, 4: 2}[group], 3, 2)
    k = w.shape[1] * group
    b = rand(k) if bias else None
    inputs = [x, w] if b is None else [x, w, b]
    y = run(inputs, **attrs)
    np.testing.assert_allclose(y, deconv_loops(x, w, b, **attrs), rtol=1e-10)
    assert infer([t.shape for t in inputs], **attrs) == y.shape


def test_float32_in_float32_out():
    x, w = rand(1, 2, 3, 3).astype(np.float32), rand(2, 3, 2, 2).astype(np.float32)
    y = run([x, w], strides=(2, 2))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, deconv_loops(x.astype(np.float64), w, None, strides=(2, 2)),
                               rtol=1e-5)


def test_onnx_pads_example():
    # ONNX backend test "convtranspose_pads"
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    w = np.ones((1, 2, 3, 3))
    y = run([x, w], strides=(3, 2), pads=(1, 2, 1, 2))
    row = [[1.0, 1.0, 3.0]] * 2 + [[7.0, 4.0, 9.0]] * 3 + [[13.0, 7.0, 15.0]] * 2
    np.testing.assert_array_equal(y, np.array([[row, row]]))


def test_output_shape_larger_than_natural_extends_the_end():
    # ONNX backend test "convtranspose_output_shape": natural size 9x7, asked 10x8
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    w = np.ones((1, 2, 3, 3))
    y = run([x, w], strides=(3, 2), output_shape=(10, 8))
    natural = run([x, w], strides=(3, 2))
    assert y.shape == (1, 2, 10, 8) and natural.shape == (1, 2, 9, 7)
    np.testing.assert_array_equal(y[:, :, :9, :7], natural)
    assert not y[:, :, 9, :].any() and not y[:, :, :, 7].any()


@pytest.mark.parametrize("out_hw,auto_pad,pads", [
    ((7, 7), "NOTSET", (2, 1, 1, 1)),       # totals (3, 2): begin = total - total // 2 (ORT)
    ((7, 7), "SAME_UPPER", (1, 1, 2, 1)),
    ((7, 7), "SAME_LOWER", (2, 1, 1, 1)),
    ((10, 9), "NOTSET", (0, 0, 0, 0)),      # the natural size
    ((11, 11), "NOTSET", None),             # larger: zero rows/columns appended at the end
])
def test_output_shape_sets_pads(out_hw, auto_pad, pads):
    x, w = rand(1, 2, 4, 4), rand(2, 3, 3, 3)
    attrs = dict(strides=(2, 2), output_padding=(1, 0))
    # natural size: H = 2*(4-1) + 1 + 3 = 10, W = 2*(4-1) + 0 + 3 = 9
    y = run([x, w], output_shape=out_hw, auto_pad=auto_pad, **attrs)
    assert y.shape == (1, 3, *out_hw)
    if pads is None:
        want = deconv_loops(x, w, None, out_hw=out_hw, **attrs)
    else:
        assert (pads[0] + pads[2], pads[1] + pads[3]) == (10 - out_hw[0], 9 - out_hw[1])
        want = deconv_loops(x, w, None, pads=pads, **attrs)
    np.testing.assert_allclose(y, want, rtol=1e-10)
    assert infer([x.shape, w.shape], output_shape=out_hw, auto_pad=auto_pad, **attrs) == y.shape


def test_auto_pad_same_upper_doubles():
    # ONNX backend test "convtranspose_autopad_same": output = input * stride
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    w = np.ones((1, 2, 3, 3))
    y = run([x, w], strides=(2, 2), auto_pad="SAME_UPPER")
    assert y.shape == (1, 2, 6, 6)
    full = run([x, w], strides=(2, 2))          # 7x7; SAME_UPPER drops the last row/column
    np.testing.assert_array_equal(y, full[:, :, :6, :6])
    assert run([x, w], strides=(2, 2), auto_pad="VALID", pads=(1, 1, 1, 1)).shape[2:] == (7, 7)


def test_symbolic_batch_and_kernel_shape():
    assert infer([("N", 64, 7, 7), (64, 32, 4, 4), (32,)], strides=(2, 2),
                 pads=(1, 1, 1, 1)) == ("N", 32, 14, 14)
    assert infer([("N", 8, 5, 5), (8, 2, 3, 3)], group=4, kernel_shape=(3, 3)) == \
        ("N", 8, 7, 7)


@pytest.mark.parametrize("shapes,attrs,match", [
    ([(1, 4, 3, 3), (3, 2, 3, 3)], {}, "input has C=4 channels"),
    ([(1, 4, 3, 3), (4, 2, 3, 3), (4,)], {"group": 1}, r"bias B must have shape \[K\] = \[2\]"),
    ([(1, 3, 3, 3), (3, 2, 3, 3)], {"group": 2}, "not divisible by group=2"),
    ([(1, 4, 3), (4, 2, 3, 3)], {}, "rank 4"),
    ([(1, 4, "H", 3), (4, 2, 3, 3)], {}, "height dimension must be concrete"),
    ([(1, 4, 3, 3), (4, 2, 3, 3)], {"kernel_shape": (2, 2)}, "does not match"),
    ([(1, 4, 1, 1), (4, 2, 3, 3)], {"pads": (2, 0, 1, 0)}, r"= 0 is not positive"),
])
def test_shape_errors(shapes, attrs, match):
    with pytest.raises(ShapeError, match=match):
        infer(shapes, **attrs)


@pytest.mark.parametrize("attrs,match", [
    ({"strides": (2, 2), "output_padding": (2, 0)}, "must be less than the stride 2 or the "
                                                     "dilation 1"),
    ({"output_padding": (0, -1)}, ">= 0"),
    ({"pads": (1, 1)}, "must have 4 entries"),
    ({"strides": (0, 1)}, ">= 1"),
    ({"auto_pad": "SAME"}, "is not one of"),
    ({"output_shape": (5, 5, 5)}, "must have 2 entries"),
])
def test_attr_errors(attrs, match):
    with pytest.raises(AttributeValueError, match=match):
        infer([(1, 4, 3, 3), (4, 2, 3, 3)], **attrs)


def test_output_padding_allowed_below_dilation():
    # ONNX: output_padding must be < stride OR < dilation
    assert infer([(1, 1, 3, 3), (1, 1, 3, 3)], dilations=(2, 2),
                 output_padding=(1, 1)) == (1, 1, 8, 8)


def test_cost_and_kind():
    assert OP.fusion is FusionKind.OUTPUT_FUSABLE
    assert OP.inputs[1].weight and OP.inputs[2].weight
    b = GraphBuilder()
    x = b.input("x", ("N", 4, 5, 5))
    y = b.op("ConvTranspose", x, b.param("w", shape=(4, 3, 2, 2)), b.param("b", shape=(6,)),
             group=2, strides=(2, 2))
    node = b.build(y).nodes[0]
    cost = node_cost(node, batch=2)
    assert cost.flops == 2 * (2 * 4 * 5 * 5) * 3 * 2 * 2 + 2 * 6 * 10 * 10
    assert cost.params == 4 * 3 * 2 * 2 + 6


@settings(max_examples=30, deadline=None)
@given(h=st.integers(1, 4), w=st.integers(1, 4), k=st.integers(1, 3), s=st.integers(1, 3),
       d=st.integers(1, 2), p=st.lists(st.integers(0, 2), min_size=4, max_size=4),
       op=st.integers(0, 2), group=st.sampled_from([1, 2]))
def test_inferred_shape_is_reference_shape(h, w, k, s, d, p, op, group):
    attrs = dict(strides=(s, s), dilations=(d, 1), pads=tuple(p), group=group,
                 output_padding=(min(op, max(s, d) - 1), 0))
    x, wt = rand(1, 2, h, w), rand(2, 2, k, k)
    try:
        want = infer([x.shape, wt.shape], **attrs)
    except ShapeError:
        return  # pads larger than the output
    y = run([x, wt], **attrs)
    assert want == y.shape
    np.testing.assert_allclose(y, deconv_loops(x, wt, None, **attrs), rtol=1e-10)
