"""Shared test helpers: run one op's reference, compare relative error, compile for a backend
or skip where the backend reports the model unsupported."""

from __future__ import annotations

import os
import re

import numpy as np

from cnncompiler.errors import UnsupportedError
from cnncompiler.ops.registry import get_op

#: ``CNNC_FULL_CONFORMANCE=1`` runs the slow backend/model combinations too.
FULL_CONFORMANCE = os.environ.get("CNNC_FULL_CONFORMANCE") == "1"

# How Backend.check_supported words its error: the backend's ``supports`` rejected nodes of
# the graph (reported up front, before any code is generated).
_REJECTED_NODES = re.compile(r"^backend '[^']*' cannot compile \d+ node\(s\)")
_REJECTED_LINE = re.compile(r"^\s+.* \([^()]+\): (?P<why>.*)$")


def run_ref(op: str, inputs, **attrs):
    """Run op's reference with validated/defaulted attrs; return a tuple of outputs."""
    opdef = get_op(op)
    out = opdef.reference(list(inputs), opdef.normalize_attrs(attrs, "test"))
    return out if isinstance(out, tuple) else (out,)


def reference(op: str, inputs, **attrs):
    """The op's reference output as it returns it (one array or a tuple)."""
    opdef = get_op(op)
    return opdef.reference(list(inputs), opdef.normalize_attrs(attrs, "n"))


def infer(op: str, types: list, **attrs):
    """The single output type of ``op`` on ``types`` (TensorTypes or plain shapes)."""
    from cnncompiler.ir.types import TensorType
    from cnncompiler.ops.registry import infer_node

    types = [t if isinstance(t, TensorType) else TensorType(t) for t in types]
    (out,) = infer_node(op, types, attrs, "n")
    return out


def check_type(op: str, inputs: list, y: np.ndarray, **attrs) -> None:
    """The inferred type is the reference output's type."""
    from cnncompiler.ir.types import TensorType

    t = infer(op, [TensorType.of(x) for x in inputs], **attrs)
    assert t.shape == y.shape and t.dtype.numpy == y.dtype


def rel_err(out, ref) -> float:
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-300))


def rejected_nodes(error: BaseException) -> list[str] | None:
    """The distinct reasons when ``error`` is a backend's up-front report that its
    ``supports`` rejects nodes of the graph; None for any other error (a real failure)."""
    if not isinstance(error, UnsupportedError):
        return None
    lines = str(error).splitlines()
    if not lines or not _REJECTED_NODES.match(lines[0]):
        return None
    reasons: list[str] = []
    for line in lines[1:]:
        m = _REJECTED_LINE.match(line)
        why = m.group("why") if m else line.strip()
        if why and why not in reasons:
            reasons.append(why)
    return reasons


def compile_or_skip(graph, backend: str):
    """``cnncompiler.compile(graph, backend=backend)``; skips the test, with the backend's own
    message, where the backend is unavailable here or rejects nodes of the graph."""
    import pytest

    import cnncompiler

    require_backend(backend)
    try:
        return cnncompiler.compile(graph, backend=backend)
    except UnsupportedError as e:
        if rejected_nodes(e) is None:
            raise
        pytest.skip(str(e))


def require_backend(name: str) -> None:
    """Skip the test where backend ``name`` is unavailable here, with its reason; under CI
    (``CI=true``, set by ``.ci/run``, which installs every backend's platform) fail instead:
    a backend that rots unnoticed because its tests skip is what CI is there to catch."""
    import pytest

    from cnncompiler.backends import available

    status = available().get(name)
    if status is not None and status.ok:
        return
    why = f"backend {name!r} is not available: {status.reason if status else 'unknown'}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why} (CI installs it: this must not be skipped)")
    pytest.skip(why)


def check_backend(graph, feeds, backend: str = "llvm", opt_level: int = 2, tol: float = 1e-4,
                  **options) -> None:
    """Every output of ``backend`` has the graph's dtype and the reference's shape and values:
    floats to relative error ``tol``, ints and bools exactly."""
    import cnncompiler
    from cnncompiler.backends.reference import evaluate

    require_backend(backend)
    expected = evaluate(graph, feeds)
    got = cnncompiler.compile(graph, backend=backend, opt_level=opt_level, **options)(**feeds)
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(expected) == len(graph.outputs)
    for g, e, v in zip(got, expected, graph.outputs):
        assert g.dtype == v.type.dtype.numpy and g.shape == e.shape
        if g.dtype.kind == "f":
            assert rel_err(g, e) < tol, rel_err(g, e)
        else:
            np.testing.assert_array_equal(g, e.astype(g.dtype))


def check_symbolic_batch(backend: str) -> None:
    """A graph with a symbolic batch runs at several batch sizes (specialised per size, in
    any order) and still rejects a wrong spatial size or dtype with InputError."""
    import pytest

    import cnncompiler
    from cnncompiler import nn
    from cnncompiler.backends.reference import evaluate
    from cnncompiler.errors import InputError

    rng = np.random.default_rng(0)

    def rand(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.GlobalAvgPool2d(),
                        nn.Flatten(), nn.Linear(4, 2))
    net.init_parameters(0)
    g = net.to_graph(("N", 3, 8, 8))
    cm = cnncompiler.compile(g, backend=backend)
    for batch in (1, 3, 1):
        x = rand(batch, 3, 8, 8)
        assert rel_err(cm(x), evaluate(g, {"x": x})[0]) < 1e-5
    with pytest.raises(InputError):
        cm(rand(2, 3, 9, 8))
    with pytest.raises(InputError, match="dtype"):
        cm(np.ones((1, 3, 8, 8)))


def check_llvm(graph, feeds, threads: int = 1, opt_level: int = 2, tol: float = 1e-4) -> None:
    """:func:`check_backend` on llvm with ``threads``."""
    check_backend(graph, feeds, "llvm", opt_level, tol, threads=threads)
