"""Whole ONNX networks against onnxruntime: the light ImageNet zoo shipped in the onnx wheel."""

import numpy as np
import pytest
from helpers import rel_err

ort = pytest.importorskip("onnxruntime")
from onnx_models import (  # noqa: E402
    LIGHT_MODELS,
    check_passes_preserve_numerics,
    load_light,
    real_inputs,
    run_onnxruntime,
)

import cnncompiler  # noqa: E402
from cnncompiler.frontends.onnx import load  # noqa: E402


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_model_matches_onnxruntime(name):
    model = load_light(name, seed=0)
    graph = load(model)
    rng = np.random.default_rng(1)
    feeds = {}
    for vi in real_inputs(model):
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
    expected = run_onnxruntime(model, feeds)
    got = cnncompiler.compile(graph, backend="reference")(**feeds)
    got = got if isinstance(got, tuple) else (got,)
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        err = rel_err(g, e)
        print(f"{name}: max relative error {err:.2e}")
        assert err < 1e-4, f"{name}: relative error {err:.3g}"
    err = check_passes_preserve_numerics(graph, feeds)
    print(f"{name}: opt_level 2 vs 0 (float64) {err:.2e}")
