"""compile() and CompiledModel: calling conventions, input validation, backend registry."""

import numpy as np
import pytest

import cnncompiler
from cnncompiler import nn
from cnncompiler.backends import available, get_backend
from cnncompiler.errors import (
    BackendUnavailableError,
    InputError,
    ModelError,
    UnsupportedError,
)
from cnncompiler.ir import GraphBuilder


@pytest.fixture(scope="module")
def two_input_model():
    b = GraphBuilder("two")
    x = b.input("x", ("N", 3))
    y = b.input("y", ("N", 3))
    s = b.op("Add", x, y, name="sum")
    d = b.op("Mul", x, y, name="prod")
    return cnncompiler.compile(b.build([s, d]), backend="reference")


def test_positional_and_named_calls(two_input_model):
    x = np.arange(6, dtype=np.float32).reshape(2, 3) + 1
    y = np.full((2, 3), 2, np.float32)
    s, d = two_input_model(x, y)
    np.testing.assert_array_equal(s, x + y)
    s2, d2 = two_input_model(y=y, x=x)
    np.testing.assert_array_equal(d2, x * y)
    assert s.dtype == np.float32


@pytest.mark.parametrize("args,kwargs,text", [
    ((np.ones((2, 3), np.float32),), {}, "takes 2 input"),
    ((), {"x": np.ones((2, 3), np.float32)}, r"missing input\(s\) \['y'\]"),
    ((), {"x": np.ones((2, 3), np.float32), "y": np.ones((2, 3), np.float32), "z": 1},
     r"unknown input\(s\) \['z'\]"),
    ((np.ones((2, 3)), np.ones((2, 3), np.float32)), {}, "dtype float64.*astype"),
    ((np.ones((2, 4), np.float32), np.ones((2, 4), np.float32)), {}, "dimension 1: 4 != 3"),
    ((np.ones((2, 3), np.float32), np.ones((5, 3), np.float32)), {}, "another input set N=2"),
    ((np.ones(3, np.float32), np.ones(3, np.float32)), {}, "rank 1"),
    ((np.ones((0, 3), np.float32), np.ones((0, 3), np.float32)), {}, r"\(N\) must be >= 1"),
])
def test_bad_inputs_are_clear_errors(two_input_model, args, kwargs, text):
    with pytest.raises(InputError, match=text):
        two_input_model(*args, **kwargs)


@pytest.fixture(scope="module", params=["reference", "llvm"])
def static_model(request):
    if request.param == "llvm":
        pytest.importorskip("llvmlite")
    b = GraphBuilder("two_static")
    x = b.input("x", (2, 3))
    y = b.input("y", (2, 3))
    return cnncompiler.compile(b.build([b.op("Add", x, y, name="sum")]), backend=request.param)


@pytest.mark.parametrize("args,text", [
    ((np.ones((2, 3)), np.ones((2, 3), np.float32)), "'x' has dtype float64.*astype"),
    ((np.ones((2, 3), np.float32), np.ones((2, 3), ">f4")), "'y' has dtype >f4"),
    ((np.ones((2, 3), np.float32), np.ones((3, 3), np.float32)), "dimension 0: 3 != 2"),
    ((np.ones((2, 3, 1), np.float32), np.ones((2, 3), np.float32)), "rank 3"),
    ((np.ones((2, 3), np.float32),), "takes 2 input"),
])
def test_bad_inputs_to_a_static_model(static_model, args, text):
    with pytest.raises(InputError, match=text):
        static_model(*args)


def test_every_accepted_input_form_gives_the_same_result(static_model):
    """Plain C-contiguous arrays (checked quickly), and lists, strided views, Fortran-order
    arrays and ndarray subclasses (converted by the full check) give the same result;
    the result never aliases the model's memory."""
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    y = np.full((2, 3), 0.5, np.float32)
    want = x + y
    forms = [(x, y), (x.tolist(), y), (np.ones((3, 2), np.float32).T * x, y),
             (np.asfortranarray(x), y), (x.view(np.matrix), y)]
    first = static_model(x, y)
    for a, b in forms:
        got = static_model(a, b)
        np.testing.assert_array_equal(got, np.asarray(a, np.float32) + b)
    np.testing.assert_array_equal(first, want)
    static_model(y, y)
    np.testing.assert_array_equal(first, want)   # an earlier result is left alone


def test_non_contiguous_input_is_accepted_as_a_copy(two_input_model):
    x = np.ones((3, 2), np.float32).T
    s, _ = two_input_model(x, x)
    np.testing.assert_array_equal(s, 2 * np.ones((2, 3)))


def test_registry():
    status = available()
    assert status["reference"].ok
    assert get_backend("reference").name == "reference"
    with pytest.raises(UnsupportedError, match="unknown backend 'tpu'"):
        get_backend("tpu")


def test_compile_rejects_bad_models():
    with pytest.raises(ModelError, match="cannot compile a int"):
        cnncompiler.compile(42)
    with pytest.raises(UnsupportedError, match="opt_level"):
        cnncompiler.compile(nn.Sequential(nn.ReLU()), input_shape=(1, 3), opt_level=7)
    with pytest.raises(UnsupportedError, match="unknown reference-backend option"):
        cnncompiler.compile(nn.Sequential(nn.ReLU()), input_shape=(1, 3), threads=2)
    g = nn.Sequential(nn.Conv2d(1, 1, 1)).to_graph((1, 1, 2, 2), with_weights=False)
    with pytest.raises(ModelError, match="no data"):
        cnncompiler.compile(g)


def test_unavailable_backend_reports_why(monkeypatch):
    from cnncompiler.runtime import registry
    from cnncompiler.runtime.backend import Backend

    class Broken(Backend):
        name = "broken"

        def unavailable_reason(self):
            return "needs a device this machine lacks"

        def compile(self, graph, **options):
            raise AssertionError

    import sys
    import types
    mod = types.ModuleType("fake_backend_mod")
    mod.Broken = Broken
    monkeypatch.setitem(sys.modules, "fake_backend_mod", mod)
    monkeypatch.setitem(registry.BUILTIN_BACKENDS, "broken", "fake_backend_mod:Broken")
    assert not available()["broken"].ok
    assert "lacks" in available()["broken"].reason
    with pytest.raises(BackendUnavailableError, match="lacks"):
        get_backend("broken")


def test_batch_can_be_pinned():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2))
    dynamic = cnncompiler.compile(net, input_shape=("N", 3, 4, 4))
    pinned = cnncompiler.compile(net, input_shape=("N", 3, 4, 4), batch=2)
    assert pinned.graph.inputs[0].shape == (2, 3, 4, 4)
    assert pinned.graph.outputs[0].shape == (2, 2)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(pinned(x), dynamic(x))
    with pytest.raises(InputError, match="dimension 0: 3 != 2"):
        pinned(np.ones((3, 3, 4, 4), np.float32))
    assert dynamic(np.ones((5, 3, 4, 4), np.float32)).shape == (5, 2)
