"""The training path's building blocks: matrix products of run-time operands (the tiled
GEMM schedule), Im2Col / Im2ColGrad (reference, adjointness, gradients, kernels) and the
conv-as-GEMM rewrite, on every compiled backend against the float64 reference."""

import numpy as np
import pytest
from helpers import check_backend, rel_err
from test_autodiff import check as check_gradient
from test_autodiff import rand

from cnncompiler.autodiff import gradients, rebuild
from cnncompiler.backends.reference import evaluate
from cnncompiler.ir.builder import GraphBuilder
from cnncompiler.kernel import gemm_tiled
from cnncompiler.ops.conv import conv2d_reference
from cnncompiler.ops.registry import get_op
from cnncompiler.passes.conv_gemm import conv_as_gemm

BACKENDS = ["llvm", "opencl"]


def f32(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def gemm_graph(m, n, k, ta, tb, bias=False, relu=False, op="Gemm"):
    b = GraphBuilder("g")
    a = b.input("A", (k, m) if ta else (m, k))
    bb = b.input("B", (n, k) if tb else (k, n))
    operands = [a, bb] + ([b.input("C", (n,))] if bias else [])
    if op == "Gemm":
        y = b.op("Gemm", *operands, transA=ta, transB=tb, alpha=1.5 if bias else 1.0,
                 beta=0.5 if bias else 1.0)
    else:
        y = b.op("MatMul", a, bb)
    if relu:
        y = b.op("Relu", y)
    graph = b.build(y)
    feeds = {v.name: f32(*v.type.shape, seed=i) for i, v in enumerate(graph.inputs)}
    return graph, feeds


# sizes with tails in every dimension, several row blocks, chunked depths (outer product:
# more than one row tile and K > KC_OUTER; dot product: K > KC_DOT with more than one inner
# tile), transposed Bs both as dot products and packed
SHAPES = [(1, 1, 1), (5, 7, 3), (7, 13, 29), (6, 16, 8), (13, 37, 9), (37, 45, 19),
          (14, 40, gemm_tiled.KC_OUTER + 37), (9, 11, gemm_tiled.KC_DOT + 13),
          (40, 3, 70), (130, 21, gemm_tiled.KC_OUTER + 44), (125, 40, 9)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ta,tb", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_run_time_gemm_matches_the_reference(backend, ta, tb):
    """Every shape of SHAPES as one product of the graph (one compile per case)."""
    b = GraphBuilder("g")
    outputs = []
    for i, (m, n, k) in enumerate(SHAPES):
        a = b.input(f"A{i}", (k, m) if ta else (m, k))
        bb = b.input(f"B{i}", (n, k) if tb else (k, n))
        outputs.append(b.op("Gemm", a, bb, transA=ta, transB=tb))
    graph = b.build(outputs)
    feeds = {v.name: f32(*v.type.shape, seed=i) for i, v in enumerate(graph.inputs)}
    check_backend(graph, feeds, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ta,tb", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_gemm_epilogue_alpha_beta_and_fused_relu(backend, ta, tb):
    check_backend(*gemm_graph(37, 45, 19, ta, tb, bias=True, relu=True), backend)
    check_backend(*gemm_graph(9, 20, 12, 0, 0, op="MatMul", relu=True), backend)


def test_tiled_gemm_schedule_is_chosen_and_threads_agree():
    from cnncompiler.kernel.lower import lower_node

    graph, feeds = gemm_graph(6, 20, 9, 0, 1)
    kernel = lower_node(graph.nodes[0], "gemm")
    assert "unit" in repr(kernel.body[0].var) and kernel.body[0].kind == "parallel"
    b = GraphBuilder("batched")
    y = b.op("MatMul", b.input("a", (2, 3, 4)), b.input("b", (2, 4, 5)))
    assert gemm_tiled.tiled_gemm_problem(b.build(y).nodes[0]) == \
        "the operands are not 2-D matrices (or a MatMul's stack of rows times one)"
    for ta, tb in ((0, 0), (0, 1), (1, 1)):   # 42 MFLOP: enough work for two threads
        check_backend(*gemm_graph(256, 256, 320, ta, tb), "llvm", threads=2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,n", [((1, 14, 14, 24), 40), ((2, 3, 5, 7, 20), 13)])
def test_stacked_rows_times_a_weight_are_one_tiled_product(backend, shape, n):
    """A MatMul of A [..., M, K] by a stored 2-D B (a Linear layer on NHWC activations,
    as in ConvNeXt) runs as one tiled product of all of A's rows; the fused bias and ReLU
    read the output in its own shape."""
    b = GraphBuilder("linear")
    x = b.input("x", shape)
    y = b.op("MatMul", x, b.param("w", f32(shape[-1], n, seed=1)), name="mm")
    y = b.op("Relu", b.op("Add", y, b.param("bias", f32(n, seed=2))))
    graph = b.build(y)
    assert gemm_tiled.tiled_gemm_problem(graph.nodes[0]) is None
    assert gemm_tiled.matrix_rows(graph.nodes[0]) == int(np.prod(shape[:-1]))
    for options in ({"threads": 1}, {"threads": 2}) if backend == "llvm" else ({},):
        check_backend(graph, {"x": f32(*shape)}, backend, **options)


@pytest.mark.parametrize("tb", [0, 1])
@pytest.mark.parametrize("m,n,k", [(13, 37, 9), (130, 21, gemm_tiled.KC_OUTER + 44)])
def test_stored_b_is_read_from_panels_packed_at_compile_time(m, n, k, tb):
    """A stored B (transposed or not; A transposed, so the batched-FC schedule declines)
    is packed once into zero-padded column panels that the tiled product reads in order,
    with tails in every dimension and several depth chunks."""
    from cnncompiler.kernel.lower import lower_node

    b = GraphBuilder("stored")
    a = b.input("A", (k, m))
    w = b.param("B", f32(*((n, k) if tb else (k, n)), seed=3))
    y = b.op("Gemm", a, w, b.param("C", f32(n, seed=4)), transA=1, transB=tb, alpha=1.5,
             beta=0.5)
    graph = b.build(b.op("Relu", y))
    kernel = lower_node(graph.nodes[0], "gemm", graph.data)
    (table,) = kernel.tables.values()
    assert table.shape == (-(-n // gemm_tiled.NR), k, gemm_tiled.NR)
    feeds = {"A": f32(k, m)}
    check_backend(graph, feeds, "llvm")
    check_backend(graph, feeds, "llvm", threads=2)


# ------------------------------------------------------------------------ Im2Col
GEOMETRIES = [
    ((2, 3, 7, 6), dict(kernel_shape=(3, 3), pads=(1, 1, 1, 1))),
    ((2, 2, 9, 8), dict(kernel_shape=(3, 2), strides=(2, 2), pads=(1, 0, 0, 1),
                        dilations=(1, 2), rounding="floor")),
    ((3, 1, 12, 12), dict(kernel_shape=(5, 5))),
    ((1, 2, 5, 5), dict(kernel_shape=(5, 5), pads=(4, 4, 4, 4))),
    ((2, 4, 7, 7), dict(kernel_shape=(1, 1), strides=(2, 2))),
]


def normalized(op, attrs):
    return get_op(op).normalize_attrs(dict(attrs), "n")


@pytest.mark.parametrize("shape,attrs", GEOMETRIES)
def test_im2col_times_weights_is_the_conv(shape, attrs):
    x = rand(*shape)
    a = normalized("Im2Col", attrs)
    cols = get_op("Im2Col").reference([x], a)
    k, fh, fw = 4, *a["kernel_shape"]
    w = rand(k, shape[1], fh, fw, seed=1)
    n = shape[0]
    y = (w.reshape(k, -1) @ cols).reshape(k, n, -1).transpose(1, 0, 2)
    oh_ow = y.shape[2]
    # conv2d_reference takes the output size: the width by the formula, the height from
    # the columns Im2Col made
    ow = (shape[3] + a["pads"][1] + a["pads"][3] - (fw - 1) * a["dilations"][1] - 1) \
        // a["strides"][1] + 1
    ref = conv2d_reference(x, w, None, a["strides"], a["pads"], a["dilations"], 1,
                           (oh_ow // ow, ow))
    assert rel_err(y.reshape(ref.shape), ref) < 1e-12


@pytest.mark.parametrize("shape,attrs", GEOMETRIES)
def test_im2col_grad_is_the_adjoint(shape, attrs):
    x = rand(*shape)
    a = normalized("Im2Col", attrs)
    cols = get_op("Im2Col").reference([x], a)
    c = rand(*cols.shape, seed=3)
    back = get_op("Im2ColGrad").reference(
        [c], normalized("Im2ColGrad", {**attrs, "image_shape": shape}))
    assert abs(np.sum(cols * c) - np.sum(x * back)) < 1e-9 * np.sum(np.abs(cols * c))


def test_im2col_gradients_by_finite_differences():
    shape, attrs = GEOMETRIES[1]
    check_gradient("Im2Col", [rand(*shape)], **attrs)
    cols_shape = get_op("Im2Col").reference([rand(*shape)], normalized("Im2Col", attrs)).shape
    check_gradient("Im2ColGrad", [rand(*cols_shape)], image_shape=shape, **attrs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,attrs", GEOMETRIES)
def test_im2col_kernels_match_the_reference(backend, shape, attrs):
    b = GraphBuilder("g")
    cols = b.op("Im2Col", b.input("x", shape), **attrs)
    check_backend(b.build(cols), {"x": f32(*shape)}, backend)
    b = GraphBuilder("h")
    back = b.op("Im2ColGrad", b.input("c", cols.type.shape), image_shape=shape, **attrs)
    check_backend(b.build(back), {"c": f32(*cols.type.shape, seed=1)}, backend)


def test_im2col_refuses_inconsistent_columns():
    from cnncompiler.errors import ShapeError

    b = GraphBuilder("g")
    with pytest.raises(ShapeError, match="cols must have shape"):
        b.op("Im2ColGrad", b.input("c", (9, 10)), image_shape=(1, 1, 5, 5), kernel_shape=(3, 3))


# ------------------------------------------------------------------- conv as GEMM
CONVS = [
    ((2, 3, 9, 9), (5, 3, 3, 3), dict(pads=(1, 1, 1, 1)), True),
    ((2, 4, 10, 9), (6, 4, 3, 2), dict(strides=(2, 2), pads=(1, 0, 1, 0), dilations=(2, 1),
                                      rounding="floor"), False),
    ((3, 2, 6, 6), (7, 2, 1, 1), {}, True),
    ((2, 3, 8, 8), (4, 3, 3, 3), dict(pads=(2, 2, 0, 0)), True),
]


def conv_graph(x_shape, w_shape, attrs, bias):
    b = GraphBuilder("c")
    x = b.input("x", x_shape, "float64")
    w = b.input("w", w_shape, "float64")
    operands = [x, w] + ([b.input("b", (w_shape[0],), "float64")] if bias else [])
    y = b.op("Conv", *operands, **attrs)
    return b, b.build(y), [x, w] + operands[2:]


@pytest.mark.parametrize("x_shape,w_shape,attrs,bias", CONVS)
def test_conv_as_gemm_gives_the_conv_and_its_gradients(x_shape, w_shape, attrs, bias):
    """The rewritten graph computes the same Y, and autodiff through it the same dX, dW,
    dB as the Conv gradient rule."""
    _, graph, _ = conv_graph(x_shape, w_shape, attrs, bias)
    feeds = {v.name: rand(*v.type.shape, seed=i) for i, v in enumerate(graph.inputs)}
    results = []
    for rewrite in (None, conv_as_gemm):
        b, env = rebuild(graph, rewrite=rewrite)
        y = env[graph.outputs[0].name]
        r = b.const(rand(*y.type.shape, seed=9), "r")
        loss = b.op("ReduceSum", b.op("Mul", y, r), keepdims=False)
        ins = [env[v.name] for v in graph.inputs]
        grads = gradients(b, b.nodes, loss, ins)
        step = b.build([y, *grads])
        if rewrite is not None:
            assert {n.op for n in step.nodes} >= {"Im2Col", "Gemm", "Im2ColGrad"}
            assert "Conv" not in {n.op for n in step.nodes}
        results.append(evaluate(step, feeds))
    for plain, gemm in zip(*results):
        assert rel_err(gemm, plain) < 1e-12


def test_grouped_convs_are_left_alone():
    b, graph, _ = conv_graph((1, 4, 6, 6), (4, 2, 3, 3), dict(group=2), False)
    rewritten, env = rebuild(graph, rewrite=conv_as_gemm)
    assert [n.op for n in rewritten.build(env[graph.outputs[0].name]).nodes] == ["Conv"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_as_gemm_on_the_backends(backend):
    b = GraphBuilder("c")
    x = b.input("x", (2, 3, 11, 10))
    w = b.input("w", (8, 3, 3, 3))
    bias = b.input("b", (8,))
    y = b.op("Relu", b.op("Conv", x, w, bias, strides=(2, 1), pads=(1, 1, 1, 1)))
    graph = b.build(y)
    rewritten, env = rebuild(graph, rewrite=conv_as_gemm)
    graph = rewritten.build(env[graph.outputs[0].name])
    feeds = {v.name: f32(*v.type.shape, seed=i) for i, v in enumerate(graph.inputs)}
    check_backend(graph, feeds, backend)
