"""Real pretrained models: PaddleOCR's classifier (MobileNetV3) and DBNet text detector from
the rapidocr-onnxruntime 1.4.4 wheel, run on scikit-image's scanned page, against onnxruntime.

The wheel is installed with ``pip install --no-deps rapidocr-onnxruntime==1.4.4`` (.ci/run
does so); its model files are located through package metadata, without importing it.

Every backend (reference, llvm, opencl) runs the classifier; the llvm backend runs the
detector only with ``CNNC_FULL_CONFORMANCE=1``.
"""

import importlib.metadata

import numpy as np
import onnx
import pytest
from helpers import FULL_CONFORMANCE, compile_or_skip, rel_err
from onnx_models import check_passes_preserve_numerics, expose_inputs_of, run_onnxruntime

from cnncompiler.frontends.onnx import load

pytest.importorskip("onnxruntime")
skimage_data = pytest.importorskip("skimage.data", reason="scikit-image ships the test image")


def model_path(filename: str) -> str:
    try:
        dist = importlib.metadata.distribution("rapidocr_onnxruntime")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("needs `pip install --no-deps rapidocr-onnxruntime==1.4.4` (PaddleOCR models)")
    return str(dist.locate_file(f"rapidocr_onnxruntime/models/{filename}"))


def page_rgb(height: int, width: int) -> np.ndarray:
    """scikit-image's scanned page, nearest-resized to (height, width), as float RGB in [0, 1]."""
    page = skimage_data.page().astype(np.float32) / 255.0
    rows = np.arange(height) * page.shape[0] // height
    cols = np.arange(width) * page.shape[1] // width
    gray = page[rows][:, cols]
    return np.repeat(gray[None], 3, axis=0)


def compare(path: str, x: np.ndarray, final_op: str, backend: str) -> list[float]:
    model = expose_inputs_of(onnx.load(path), final_op)
    graph = load(model, input_shapes={"x": x.shape})
    expected = run_onnxruntime(model, {"x": x})
    got = compile_or_skip(graph, backend)(x=x)
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape
    # probabilities, absolutely (see expose_inputs_of); float32 end to end (llvm) through
    # ~100 layers gets a little more room than the float64 reference
    atol = 2e-5 if backend == "reference" else 1e-4
    np.testing.assert_allclose(got[0], expected[0], atol=atol, rtol=0)
    if backend == "reference":  # the passes' check is the same for every backend
        check_passes_preserve_numerics(graph, {"x": x})
    return [rel_err(g, e) for g, e in zip(got, expected)]


FULL_ONLY = pytest.mark.skipif(not FULL_CONFORMANCE, reason="runs with CNNC_FULL_CONFORMANCE=1")


@pytest.mark.parametrize("backend", ["reference", "llvm", "opencl"])
def test_ppocr_direction_classifier_on_a_real_page(backend):
    path = model_path("ch_ppocr_mobile_v2.0_cls_infer.onnx")
    x = ((page_rgb(48, 192) - 0.5) / 0.5)[None].astype(np.float32)
    errors = compare(path, x, "Softmax", backend)
    print(f"ppocr cls on {backend}: relative errors {[f'{e:.2e}' for e in errors]}")
    assert max(errors) < 1e-4


@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_ppocr_v4_text_detector_on_a_real_page(backend):
    path = model_path("ch_PP-OCRv4_det_infer.onnx")
    mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1)
    std = np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1)
    x = ((page_rgb(192, 384) - mean) / std)[None].astype(np.float32)
    errors = compare(path, x, "Sigmoid", backend)
    print(f"ppocr det on {backend}: relative errors (probabilities, logits) "
          f"{[f'{e:.2e}' for e in errors]}")
    assert errors[1] < 1e-4  # logits; the probabilities are checked absolutely above
