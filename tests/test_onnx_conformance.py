"""ONNX backend conformance: ONNX's node test cases through our importer, for every backend.

The allowlist, the exclusions and the ``BackendTest`` harness live in ``onnx_conformance.py``;
each allowlisted case is one test per backend here. A backend joins the suite by being added
to ``BACKENDS``; one that is not available on this machine is skipped, saying why. A case
whose model has nodes a backend's ``supports`` rejects is skipped as "unsupported on
<backend>"; one listed in ``KNOWN_FAILURES`` for a backend is a strict expected failure.
"""

import functools
import re
import zlib

import onnx
import pytest
from helpers import FULL_CONFORMANCE, rejected_nodes, require_backend
from onnx import numpy_helper
from onnx_conformance import (
    EXCLUDE,
    KNOWN_FAILURES,
    UnsupportedOnBackend,
    allowlist,
    backend_test,
    cases,
    make_onnx_backend,
    node_test_methods,
    node_tests,
)

from cnncompiler.errors import CnnCompilerError, UnsupportedError
from cnncompiler.frontends.onnx import load
from cnncompiler.runtime.backend import Backend

BACKENDS = ["reference", "llvm", "opencl"]

ALLOWLIST = allowlist()

#: backends whose every case costs a driver compile (~0.7 s on PoCL) run a fixed third of the
#: cases by default (chosen by a hash of the name, so the same ones each run) and all of them
#: with CNNC_FULL_CONFORMANCE=1; the renderer's constructs recur across many cases
SAMPLED = {"opencl": 3}


def _params() -> list:
    out = []
    for case in ALLOWLIST:
        for backend in BACKENDS:
            every = SAMPLED.get(backend, 1)
            skip = not FULL_CONFORMANCE and zlib.crc32(case.encode()) % every != 0
            marks = pytest.mark.skip(reason=f"{case} on {backend} runs with "
                                            "CNNC_FULL_CONFORMANCE=1") if skip else ()
            out.append(pytest.param(case, backend, marks=marks, id=f"{case}-{backend}"))
    return out


@functools.cache
def _methods(backend: str) -> dict:
    require_backend(backend)
    return node_test_methods(backend_test(backend))


@pytest.mark.parametrize("case,backend", _params())
def test_onnx_node(case, backend):
    run = _methods(backend)[case]
    bug = KNOWN_FAILURES.get(backend, {}).get(case)
    try:
        run()
    except UnsupportedOnBackend as e:  # neither a pass nor a failure
        pytest.skip(str(e))
    except Exception as e:
        if bug is None:
            raise
        pytest.xfail(f"known failure on {backend}: {bug} ({type(e).__name__}: {e})")
    if bug is not None:
        pytest.fail(f"{case} passes on {backend}: remove it from KNOWN_FAILURES[{backend!r}]")


def test_known_failures_name_allowlisted_cases():
    assert set(KNOWN_FAILURES) <= set(BACKENDS)
    for backend, listed in KNOWN_FAILURES.items():
        for case, bug in listed.items():
            assert case in ALLOWLIST, (backend, case)
            assert bug.strip(), (backend, case)


def test_unsupported_is_told_from_failures():
    """Only a backend's up-front report that ``supports`` rejects nodes counts as unsupported;
    any other UnsupportedError is a failure."""

    class Picky(Backend):
        name = "picky"

        def supports(self, node):
            return f"{node.op} is not wanted" if node.op == "Relu" else None

        def compile(self, graph, **options):
            raise UnsupportedError("found out too late")

    graph = load(node_tests()["test_relu"].model)
    with pytest.raises(UnsupportedError) as up_front:
        Picky().check_supported(graph)
    assert rejected_nodes(up_front.value) == ["Relu is not wanted"]
    with pytest.raises(UnsupportedError) as late:
        Picky().compile(graph)
    assert rejected_nodes(late.value) is None
    assert rejected_nodes(ValueError(str(up_front.value))) is None


def test_allowlist_covers_the_core_cnn_ops():
    covered = {c.op for c in cases() if not c.excluded}
    for op in ("Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool",
               "BatchNormalization", "Gemm", "MatMul", "Relu", "LeakyRelu", "Sigmoid",
               "HardSwish", "Softmax", "LogSoftmax", "Add", "Mul", "Concat", "Reshape",
               "Flatten", "Transpose", "Pad", "Resize", "Upsample", "ReduceMean", "Clip"):
        assert op in covered, op
    assert len(ALLOWLIST) >= 400


def test_every_exclusion_pattern_is_used():
    for pattern, reason in EXCLUDE:
        assert any(re.search(pattern, c.name) for c in cases()), (pattern, reason)


@pytest.mark.parametrize("reason", sorted({why for _, why in EXCLUDE}))
def test_excluded_features_are_rejected_clearly(reason):
    """An excluded feature must fail at compile time, never compute something else: with
    UnsupportedError, or for an empty tensor with the shape error that rejects it."""
    tests = node_tests()
    names = [c.name for c in cases() if c.excluded == reason]
    assert names
    expected = CnnCompilerError if reason.startswith("empty") else UnsupportedError
    for name in names:
        inputs = [numpy_helper.to_array(a) if isinstance(a, onnx.TensorProto) else a
                  for a in tests[name].data_sets[0][0]]
        with pytest.raises(expected):  # compile-time operands are bound by run
            make_onnx_backend("reference").prepare(tests[name].model).run(inputs)
