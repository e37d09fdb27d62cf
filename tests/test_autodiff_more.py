"""MaxPool's gradient: the rule against central finite differences (float64, reference
backend), the MaxPoolGrad op's first-max semantics against a plain loop, its kernel on the
compiled backends against the reference (ties included), and a training step of a small
CNN with max pooling on llvm against the reference backend."""

import numpy as np
import pytest
from helpers import check_backend, rel_err, require_backend, run_ref
from test_autodiff import check, rand

import cnncompiler
from cnncompiler import data, nn, optim
from cnncompiler.autodiff import gradients
from cnncompiler.backends.reference import evaluate
from cnncompiler.errors import ShapeError, UnsupportedError
from cnncompiler.ir.builder import GraphBuilder
from cnncompiler.kernel.lower import unsupported_reason

# geometries: tiling windows, overlapping padded ones (floor), windows that do not divide the
# input (floor drops the rest), dilation, ceil mode (a last window over the end padding);
# the kernel finds windows one way where they overlap and another where they do not
GEOMETRIES = [
    {"kernel_shape": (2, 2), "strides": (2, 2)},
    {"kernel_shape": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1), "rounding": "floor"},
    {"kernel_shape": (3, 3), "strides": (2, 2), "rounding": "floor"},
    {"kernel_shape": (2, 3), "strides": (1, 2), "pads": (1, 0, 0, 2), "dilations": (2, 1),
     "rounding": "floor"},
    {"kernel_shape": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1), "rounding": "ceil"},
    # windows apart (cells between them get nothing), one of them dilated
    {"kernel_shape": (2, 2), "strides": (3, 3), "rounding": "ceil"},
    {"kernel_shape": (2, 2), "strides": (3, 2), "dilations": (2, 1), "pads": (1, 0, 0, 0),
     "rounding": "floor"},
]


# ------------------------------------------------------------------ gradient rule
@pytest.mark.parametrize("attrs", GEOMETRIES)
def test_max_pool_gradient_matches_finite_differences(attrs):
    check("MaxPool", [rand(2, 3, 8, 6)], **attrs)


def first_max_oracle(x, dy, kernel_shape, strides=(1, 1), pads=(0, 0, 0, 0),
                     dilations=(1, 1), rounding=None):
    """dX by the definition, one window at a time: the window's gradient goes to its first
    cell (row-major taps, real cells only) that equals the window max."""
    (kh, kw), (sh, sw), (dh, dw) = kernel_shape, strides, dilations
    dx = np.zeros(x.shape)
    n_, c_, oh_, ow_ = dy.shape
    for n, c, oh, ow in np.ndindex(n_, c_, oh_, ow_):
        cells = [(oh * sh + i * dh - pads[0], ow * sw + j * dw - pads[1])
                 for i in range(kh) for j in range(kw)]
        cells = [(r, q) for r, q in cells if 0 <= r < x.shape[2] and 0 <= q < x.shape[3]]
        top = max(x[n, c, r, q] for r, q in cells)
        r, q = next(cell for cell in cells if x[n, c][cell] == top)
        dx[n, c, r, q] += dy[n, c, oh, ow]
    return dx


def ties(shape, seed=0):
    """Values from {0, 1, 2}: nearly every window holds its max more than once."""
    return np.random.default_rng(seed).integers(0, 3, shape).astype(np.float64)


@pytest.mark.parametrize("attrs", GEOMETRIES)
def test_max_pool_grad_sends_each_window_to_its_first_max(attrs):
    x = ties((2, 3, 8, 6))
    (y,) = run_ref("MaxPool", [x], **attrs)
    dy = rand(*y.shape, seed=3)
    (dx,) = run_ref("MaxPoolGrad", [x, y, dy], **attrs)
    assert dx.shape == x.shape
    np.testing.assert_allclose(dx, first_max_oracle(x, dy, **attrs), rtol=1e-12, atol=1e-12)


def test_ties_do_not_multiply_the_gradient():
    """A flat image (a ReLU'd blank region): each window passes its gradient on once."""
    x = np.zeros((1, 1, 4, 4))
    dy = np.ones((1, 1, 2, 2))
    (dx,) = run_ref("MaxPoolGrad", [x, np.zeros((1, 1, 2, 2)), dy], kernel_shape=(2, 2),
                    strides=(2, 2))
    assert dx.sum() == 4.0
    np.testing.assert_array_equal(dx[0, 0, ::2, ::2], np.ones((2, 2)))


def test_max_pool_grad_checks_its_operands():
    b = GraphBuilder("g")
    x = b.input("x", (1, 2, 6, 6))
    y = b.input("y", (1, 2, 3, 3))
    wrong = b.input("dy", (1, 2, 2, 2))
    with pytest.raises(ShapeError, match=r"dY must have MaxPool's output shape \[1, 2, 3, 3\]"):
        b.op("MaxPoolGrad", x, y, wrong, kernel_shape=(2, 2), strides=(2, 2))


def test_gradient_of_a_blocked_max_pool_is_refused():
    b = GraphBuilder("g")
    x = b.input("x", (1, 1, 4, 4, 8), "float64")
    y = b.op("MaxPool", x, kernel_shape=(2, 2), strides=(2, 2), layout="NCHW8c", name="p")
    loss = b.op("ReduceSum", y, keepdims=False)
    with pytest.raises(UnsupportedError, match="'p'.*layout NCHW8c"):
        gradients(b, b.nodes, loss, [x])


# ------------------------------------------------------------------ kernels
def grad_graph(x, attrs, relu_before=False):
    """MaxPoolGrad on inputs x, y (= MaxPool(x)) and dy; with ``relu_before`` the ReLU
    gradient that precedes a pool in a conv net follows it (its fused epilogue)."""
    dtype = str(x.dtype)
    (y,) = run_ref("MaxPool", [x], **attrs)
    dy = np.random.default_rng(5).standard_normal(y.shape).astype(dtype)
    b = GraphBuilder("mpg")
    xs, ys, dys = (b.input(n, a.shape, dtype) for n, a in (("x", x), ("y", y), ("dy", dy)))
    dx = b.op("MaxPoolGrad", xs, ys, dys, name="mpg", **attrs)
    if relu_before:
        zero = b.const(np.zeros((), dtype), "zero")
        dx = b.op("Where", b.op("Greater", xs, zero), dx, zero)
    return b.build(dx), {"x": x, "y": y, "dy": dy}


@pytest.mark.parametrize("backend", ["llvm", "opencl"])
@pytest.mark.parametrize("attrs", GEOMETRIES)
@pytest.mark.parametrize("inputs", ["random", "ties"])
def test_max_pool_grad_kernel_matches_the_reference(backend, attrs, inputs):
    x = rand(2, 3, 10, 8) if inputs == "random" else ties((2, 3, 10, 8)) - 1.0
    graph, feeds = grad_graph(x.astype(np.float32), attrs)
    assert unsupported_reason(graph.nodes[0]) is None
    check_backend(graph, feeds, backend, tol=1e-6)


@pytest.mark.parametrize("opt_level", [0, 2])
def test_max_pool_grad_kernel_fused_with_the_relu_gradient(opt_level):
    x = ties((2, 4, 8, 8)).astype(np.float32) - 1.0
    graph, feeds = grad_graph(x, GEOMETRIES[1], relu_before=True)
    check_backend(graph, feeds, "llvm", opt_level=opt_level, tol=1e-6)
    if opt_level == 2:
        compiled = cnncompiler.compile(graph, backend="llvm")
        kinds = [n.attrs.get("kind") for n in compiled.graph.nodes if n.op == "Fused"]
        assert kinds == ["MaxPoolGrad+Where"]


def test_max_pool_grad_kernel_in_float64():
    graph, feeds = grad_graph(rand(1, 2, 7, 7), GEOMETRIES[3])
    check_backend(graph, feeds, "llvm", tol=1e-12)


# ------------------------------------------------------------------ training
def max_pool_cnn(seed=0):
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(16 * 2 * 2, 10))
    net.input_shape = (1, 1, 8, 8)
    return net.init_parameters(seed)


@pytest.mark.parametrize("backend", ["llvm", "opencl"])
def test_max_pool_training_steps_match_the_reference(backend):
    """The digits images have blank borders: after conv + ReLU whole windows tie, so this
    also checks both backends break ties the same way."""
    require_backend(backend)
    x_train, y_train, _, _ = data.load_digits()
    x, y = x_train[:16], y_train[:16]
    trainers = [cnncompiler.compile_training(max_pool_cnn(), backend=name, batch_size=16,
                                             optimizer=optim.SGD(lr=0.05, momentum=0.9))
                for name in ("reference", backend)]
    losses = []
    for _ in range(3):
        ref_loss, loss = (t.step(x, y) for t in trainers)
        assert loss == pytest.approx(ref_loss, rel=1e-4)
        losses.append(ref_loss)
    assert losses[-1] < losses[0]
    for name, ref in trainers[0].state_dict().items():
        assert rel_err(trainers[1].state_dict()[name], ref) < 1e-4, name


def test_max_pool_gradient_graph_runs_the_pool_once():
    """The backward reads the forward pool's output: no second MaxPool in the step graph."""
    b = GraphBuilder("g")
    x = b.input("x", (1, 2, 4, 4), "float64")
    y = b.op("MaxPool", x, kernel_shape=(2, 2), strides=(2, 2))
    loss = b.op("ReduceSum", b.op("Mul", y, y), keepdims=False)
    (gx,) = gradients(b, b.nodes, loss, [x])
    graph = b.build([loss, gx])
    assert sum(n.op == "MaxPool" for n in graph.nodes) == 1
    xv = rand(1, 2, 4, 4)
    _, got = evaluate(graph, {"x": xv})
    (yv,) = run_ref("MaxPool", [xv], kernel_shape=(2, 2), strides=(2, 2))
    np.testing.assert_allclose(got, first_max_oracle(xv, 2 * yv, (2, 2), (2, 2)))


def test_missing_rule_names_the_node():
    """(GlobalMaxPool has no gradient rule: the error names the node, its op and what is
    missing.)"""
    b = GraphBuilder("g")
    x = b.input("x", (1, 3, 4, 4), "float64")
    y = b.op("GlobalMaxPool", x, name="norm1")
    loss = b.op("ReduceSum", y, keepdims=False)
    with pytest.raises(UnsupportedError, match="norm1.*GlobalMaxPool.*no gradient"):
        gradients(b, b.nodes, loss, [x])
