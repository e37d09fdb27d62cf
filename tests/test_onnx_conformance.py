"""ONNX backend conformance: ONNX's node test cases through our importer, for every backend.

The allowlist, the exclusions and the ``BackendTest`` harness live in ``onnx_conformance.py``;
each allowlisted case is one test per backend here. A backend joins the suite by being added
to ``BACKENDS``; one that is not available on this machine is skipped, saying why.
"""

import functools
import re

import onnx
import pytest
from onnx import numpy_helper
from onnx_conformance import (
    EXCLUDE,
    allowlist,
    backend_test,
    cases,
    make_onnx_backend,
    node_test_methods,
    node_tests,
)

from cnncompiler.backends import available
from cnncompiler.errors import CnnCompilerError, UnsupportedError

BACKENDS = ["reference"]

ALLOWLIST = allowlist()


@functools.cache
def _methods(backend: str) -> dict:
    status = available().get(backend)
    if status is None or not status.ok:
        pytest.skip(f"backend {backend!r} is not available: "
                    f"{status.reason if status else 'unknown backend'}")
    return node_test_methods(backend_test(backend))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ALLOWLIST)
def test_onnx_node(case, backend):
    _methods(backend)[case]()


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
