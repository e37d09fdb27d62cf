"""Whole ONNX networks against onnxruntime: the light ImageNet zoo shipped in the onnx wheel,
on every backend.

Each model costs seconds (a compile on llvm and opencl; float64 numpy on the reference
backend: VGG-19 and ZFNet-512 alone took 25 s, with no op AlexNet lacks), so every backend
runs a representative subset by default and every model with ``CNNC_FULL_CONFORMANCE=1``.
A model with an op the backend lacks is skipped with the backend's own message."""

import functools

import numpy as np
import pytest
from helpers import FULL_CONFORMANCE, compile_or_skip, rel_err

ort = pytest.importorskip("onnxruntime")
from onnx_models import (  # noqa: E402
    LIGHT_MODELS,
    check_passes_preserve_numerics,
    load_light,
    real_inputs,
    run_onnxruntime,
)

from cnncompiler.frontends.onnx import load  # noqa: E402

BACKENDS = ["reference", "llvm", "opencl"]
# models each backend runs without CNNC_FULL_CONFORMANCE=1 (None: all of them)
DEFAULT_MODELS: dict[str, set[str] | None] = {
    "reference": set(LIGHT_MODELS) - {"vgg19", "zfnet512"},
    "llvm": {"squeezenet", "resnet50", "inception_v1", "densenet121", "shufflenet"},
    "opencl": {"squeezenet", "shufflenet"},
}


def params() -> list:
    """(model, backend), one model's backends next to each other (they share its data)."""
    out = []
    for name in LIGHT_MODELS:
        for backend in BACKENDS:
            default = DEFAULT_MODELS[backend]
            marks = () if FULL_CONFORMANCE or default is None or name in default else \
                pytest.mark.skip(reason=f"{name} on {backend} runs with CNNC_FULL_CONFORMANCE=1")
            out.append(pytest.param(name, backend, marks=marks, id=f"{name}-{backend}"))
    return out


@functools.lru_cache(maxsize=1)
def model_data(name: str):
    """The model's graph, random inputs and onnxruntime's outputs."""
    model = load_light(name, seed=0)
    rng = np.random.default_rng(1)
    feeds = {}
    for vi in real_inputs(model):
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return load(model), feeds, run_onnxruntime(model, feeds)


@pytest.mark.parametrize("name,backend", params())
def test_light_model_matches_onnxruntime(name, backend):
    graph, feeds, expected = model_data(name)
    got = compile_or_skip(graph, backend)(**feeds)
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        err = rel_err(g, e)
        print(f"{name} on {backend}: relative error {err:.2e}")
        assert err < 1e-4, f"{name} on {backend}: relative error {err:.3g}"
    if backend == "reference":  # the passes' check is the same for every backend
        err = check_passes_preserve_numerics(graph, feeds)
        print(f"{name}: opt_level 2 vs 0 (float64) {err:.2e}")
