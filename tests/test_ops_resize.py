"""Resize: the separable reference against a loop over output pixels that maps each one back
with ONNX's coordinate formulas, for every coordinate and nearest mode; shapes and errors."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnncompiler.errors import AttributeValueError, ShapeError
from cnncompiler.ir.builder import GraphBuilder
from cnncompiler.ir.types import DType, TensorType
from cnncompiler.ops.registry import get_op, infer_node, node_cost

RNG = np.random.default_rng(3)
OP = get_op("Resize")
COORD_MODES = ["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel",
               "half_pixel_symmetric"]
NEAREST_MODES = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]


def rand(*shape: int) -> np.ndarray:
    return RNG.uniform(0.5, 2.0, shape) * RNG.choice([-1.0, 1.0], shape)


def run(x: np.ndarray, **attrs) -> np.ndarray:
    return OP.reference([x], OP.normalize_attrs(attrs, "n"))


def infer(shape, **attrs) -> tuple:
    return infer_node("Resize", [TensorType(shape)], attrs, "n")[0].shape


def source(mode: str, x: int, n_in: int, n_out: int, scale: float) -> float:
    """The ONNX spec's x_original for output coordinate x (length_resized = scale * n_in)."""
    length = scale * n_in
    if mode == "asymmetric":
        return x / scale
    if mode == "align_corners":
        return 0.0 if length == 1 else x * (n_in - 1) / (length - 1)
    if mode == "pytorch_half_pixel":
        return 0.0 if length == 1 else (x + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        offset = (n_in / 2) * (1 - n_out / length)
        return offset + (x + 0.5) / scale - 0.5
    return (x + 0.5) / scale - 0.5


def round_nearest(c: float, mode: str) -> int:
    f = math.floor(c)
    r = c - f
    if mode == "floor":
        return f
    if mode == "ceil":
        return math.ceil(c)
    if r == 0.5:
        return f if mode == "round_prefer_floor" else f + 1
    return f if r < 0.5 else f + 1


def resize_loops(x, out_shape, scales, mode, coord, nearest_mode="round_prefer_floor"):
    """Loop over output pixels; gather the nearest pixel or sum the 2^rank linear corners."""
    y = np.zeros(out_shape)
    for idx in itertools.product(*(range(d) for d in out_shape)):
        coords = [source(coord, o, n, m, s)
                  for o, n, m, s in zip(idx, x.shape, out_shape, scales, strict=True)]
        if mode == "nearest":
            src = tuple(min(max(round_nearest(c, nearest_mode), 0), n - 1)
                        for c, n in zip(coords, x.shape, strict=True))
            y[idx] = x[src]
            continue
        taps = []
        for c, n in zip(coords, x.shape, strict=True):
            f = math.floor(c)
            w = c - f
            taps.append([(min(max(f, 0), n - 1), 1 - w), (min(max(f + 1, 0), n - 1), w)])
        total = 0.0
        for corner in itertools.product(*taps):
            weight = math.prod(w for _, w in corner)
            total += weight * x[tuple(i for i, _ in corner)]
        y[idx] = total
    return y


SCALE_SETS = [(1.0, 1.0, 2.0, 2.0), (1.0, 1.0, 0.6, 0.75), (1.0, 1.0, 1.7, 2.5)]


@pytest.mark.parametrize("coord", COORD_MODES)
@pytest.mark.parametrize("nearest_mode", NEAREST_MODES)
@pytest.mark.parametrize("scales", SCALE_SETS)
def test_nearest_scales_matches_loops(coord, nearest_mode, scales):
    x = rand(1, 2, 4, 5)
    y = run(x, scales=scales, coordinate_transformation_mode=coord, nearest_mode=nearest_mode)
    out = tuple(math.floor(d * s) for d, s in zip(x.shape, scales, strict=True))
    assert y.shape == out
    np.testing.assert_allclose(y, resize_loops(x, out, scales, "nearest", coord, nearest_mode),
                               rtol=1e-10)
    assert infer(x.shape, scales=scales) == out


@pytest.mark.parametrize("coord", COORD_MODES)
@pytest.mark.parametrize("scales", SCALE_SETS)
def test_linear_scales_matches_loops(coord, scales):
    x = rand(2, 2, 4, 5)
    y = run(x, mode="linear", scales=scales, coordinate_transformation_mode=coord)
    out = tuple(math.floor(d * s) for d, s in zip(x.shape, scales, strict=True))
    np.testing.assert_allclose(y, resize_loops(x, out, scales, "linear", coord), rtol=1e-10)


@pytest.mark.parametrize("coord", COORD_MODES)
@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("sizes", [(1, 2, 7, 3), (1, 2, 1, 1), (1, 2, 8, 10)])
def test_sizes_matches_loops(coord, mode, sizes):
    x = rand(1, 2, 4, 5)
    y = run(x, mode=mode, sizes=sizes, coordinate_transformation_mode=coord)
    assert y.shape == sizes
    scales = [o / n for o, n in zip(sizes, x.shape, strict=True)]  # ONNX: scale = out / in
    np.testing.assert_allclose(y, resize_loops(x, sizes, scales, mode, coord), rtol=1e-10)
    assert infer(x.shape, sizes=sizes) == sizes


@pytest.mark.parametrize("coord", COORD_MODES)
def test_trilinear_on_every_axis(coord):
    x = rand(3, 4, 2)
    scales = (0.7, 1.5, 2.0)
    y = run(x, mode="linear", scales=scales, coordinate_transformation_mode=coord)
    out = (2, 6, 4)
    np.testing.assert_allclose(y, resize_loops(x, out, scales, "linear", coord), rtol=1e-10)


def test_onnx_examples():
    x = np.array([[[[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]]])
    # ONNX backend tests resize_downsample_scales_{linear, linear_align_corners, nearest}
    lin = run(x, mode="linear", scales=(1, 1, 0.6, 0.6))
    np.testing.assert_allclose(lin, [[[[2.6666666666666665, 4.333333333333333]]]], rtol=1e-12)
    ac = run(x, mode="linear", scales=(1, 1, 0.6, 0.6),
             coordinate_transformation_mode="align_corners")
    np.testing.assert_allclose(ac, [[[[1.0, 3.142857142857143]]]], rtol=1e-12)
    np.testing.assert_array_equal(run(x, scales=(1, 1, 0.6, 0.6)), [[[[1.0, 3.0]]]])


def test_upsample_nearest_replicates_and_keeps_dtype():
    x = rand(1, 3, 2, 2).astype(np.float32)
    y = run(x, scales=(1, 1, 2, 2))
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, x.repeat(2, axis=2).repeat(2, axis=3))
    xi = np.arange(4, dtype=np.int64).reshape(1, 1, 2, 2)
    assert run(xi, scales=(1, 1, 3, 3)).dtype == np.int64


def test_symbolic_batch():
    assert infer(("N", 256, 13, 13), scales=(1.0, 1.0, 2.0, 2.0)) == ("N", 256, 26, 26)
    assert infer(("N", 3, 5, 5), scales=(1.0, 1.0, 0.5, 0.5), mode="linear") == ("N", 3, 2, 2)
    with pytest.raises(ShapeError, match="symbolic axis 0"):
        infer(("N", 3, 5, 5), scales=(2.0, 1.0, 1.0, 1.0))
    with pytest.raises(ShapeError, match="symbolic axis 0"):
        infer(("N", 3, 5, 5), sizes=(1, 3, 10, 10))


@pytest.mark.parametrize("attrs,match", [
    ({}, "exactly one of 'scales' and 'sizes'"),
    ({"scales": (1, 1, 2, 2), "sizes": (1, 1, 4, 4)}, "not both"),
    ({"scales": (2.0, 2.0)}, r"one entry per input axis \(4 for input shape"),
    ({"sizes": (1, 1, 0, 4)}, "must be > 0"),
    ({"scales": (1, 1, 2, 2), "mode": "cubic"}, "is not one of"),
    ({"scales": (1, 1, 2, 2), "coordinate_transformation_mode": "tf_crop_and_resize"},
     "is not one of"),
    ({"scales": (1, 1, 2, 2), "nearest_mode": "round"}, "is not one of"),
])
def test_attr_errors(attrs, match):
    with pytest.raises(AttributeValueError, match=match):
        infer((1, 1, 2, 2), **attrs)


def test_shape_errors():
    with pytest.raises(ShapeError, match=r"floor\(3 \* 0.2\) = 0 leaves nothing"):
        infer((1, 1, 3, 3), scales=(1, 1, 0.2, 1))
    with pytest.raises(ShapeError, match="must be float32 or float64"):
        infer_node("Resize", [TensorType((1, 1, 2, 2), DType.int64)],
                   {"mode": "linear", "scales": (1, 1, 2, 2)}, "n")


def test_flops():
    b = GraphBuilder()
    x = b.input("x", ("N", 2, 3, 3))
    near = b.op("Resize", x, scales=(1.0, 1.0, 2.0, 2.0))
    lin = b.op("Resize", x, mode="linear", scales=(1.0, 1.0, 2.0, 2.0))
    g = b.build([near, lin])
    assert node_cost(g.nodes[0], batch=1).flops == 0
    assert node_cost(g.nodes[1], batch=2).flops == 8 * 2 * 2 * 6 * 6


@settings(max_examples=30, deadline=None)
@given(h=st.integers(1, 5), w=st.integers(1, 5),
       sh=st.sampled_from([0.5, 0.75, 1.0, 1.5, 2.0, 3.0]),
       sw=st.sampled_from([0.6, 1.0, 1.25, 2.0, 2.5]),
       mode=st.sampled_from(["nearest", "linear"]), coord=st.sampled_from(COORD_MODES))
def test_inferred_shape_is_reference_shape(h, w, sh, sw, mode, coord):
    x = rand(1, 2, h, w)
    attrs = dict(mode=mode, scales=(1.0, 1.0, sh, sw), coordinate_transformation_mode=coord)
    try:
        want = infer(x.shape, **attrs)
    except ShapeError:
        assert math.floor(h * sh) == 0 or math.floor(w * sw) == 0
        return
    y = run(x, **attrs)
    assert want == y.shape
    np.testing.assert_allclose(y, resize_loops(x, y.shape, attrs["scales"], mode, coord),
                               rtol=1e-10)
