"""The gpu schedule's work-group tiled products (``kernel/gpu_tiled.py``) on this machine's
OpenCL device: convs as implicit GEMMs and 2-D Gemm/MatMul, staged through shared
(``__local``) memory between barriers, against the reference backend; their fused
epilogues; edges that do not fill a tile; device limits; and the renderers' rules for
work-group kernels."""

import numpy as np
import pytest
from helpers import check_backend, rel_err, require_backend

import cnncompiler
from cnncompiler import zoo
from cnncompiler.backends.reference import evaluate
from cnncompiler.errors import CnnCompilerError
from cnncompiler.ir.builder import GraphBuilder
from cnncompiler.kernel import ir as K
from cnncompiler.kernel.gpu_tiled import WorkGroupLimits, tile_shape

pytestmark = pytest.mark.usefixtures("opencl")


@pytest.fixture(scope="module")
def opencl():
    require_backend("opencl")


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def tiled_launches(cm, *inputs):
    """The launched kernels that run in work-groups of the tiled schedule."""
    compiled = cm.executable.for_shapes(list(inputs))
    return [kernel for _, kernel, _ in compiled.launches if kernel.local_size is not None]


def check_tiled(graph, feeds, tiled: int = 1, **options):
    """The gpu schedule matches the reference and runs ``tiled`` work-group kernels."""
    check_backend(graph, feeds, "opencl", schedule="gpu", **options)
    cm = cnncompiler.compile(graph, backend="opencl", schedule="gpu", **options)
    launches = tiled_launches(cm, *feeds.values())
    assert len(launches) == tiled
    for kernel in launches:
        assert kernel.global_size[0] % kernel.local_size[0] == 0
        assert "__local float" in kernel.source
        assert "barrier(CLK_LOCAL_MEM_FENCE);" in kernel.source
        assert "long" not in kernel.source   # 32-bit index arithmetic on a GPU


def conv_net(n, c, h, w, k, f, s=1, p=0, d=1, g=1, bias=True, tail="relu"):
    b = GraphBuilder("conv")
    x = b.input("x", (n, c, h, w))
    inputs = [x, b.param("w", rand(k, c // g, f, f, seed=1))]
    if bias:
        inputs.append(b.param("b", rand(k, seed=2)))
    y = b.op("Conv", *inputs, strides=(s, s), pads=(p, p, p, p), dilations=(d, d), group=g,
             name="conv")
    if tail == "relu":
        y = b.op("Relu", y, name="relu")
    elif tail == "residual":   # conv + residual add + relu: one fused kernel
        r = b.input("r", tuple(y.type.shape))
        y = b.op("Relu", b.op("Add", y, r, name="add"), name="relu")
    return b.build(y)


@pytest.mark.parametrize("n, c, h, w, k, f, s, p, d, g", [
    (1, 16, 9, 9, 32, 3, 1, 1, 1, 1),     # pixels (81) not a multiple of the tile
    (2, 8, 11, 7, 20, 3, 2, 1, 1, 1),     # batch folded into the pixels; 20 filters
    (1, 32, 8, 8, 64, 1, 1, 0, 1, 2),     # grouped 1x1
    (1, 3, 17, 17, 16, 5, 2, 2, 2, 1),    # RGB stem: dilation, stride, padding, depth 75
    (1, 24, 6, 6, 72, 3, 1, 0, 1, 3),     # grouped 3x3 without padding
    (3, 12, 5, 13, 9, 2, 1, 1, 1, 1),     # even filter, odd everything else
])
def test_tiled_convs_match_the_reference(n, c, h, w, k, f, s, p, d, g):
    graph = conv_net(n, c, h, w, k, f, s, p, d, g)
    check_tiled(graph, {"x": rand(n, c, h, w, seed=5)})


def test_fused_residual_epilogue_and_convs_without_bias():
    graph = conv_net(2, 16, 7, 7, 24, 3, p=1, tail="residual")
    check_tiled(graph, {"x": rand(2, 16, 7, 7, seed=3), "r": rand(2, 24, 7, 7, seed=4)})
    check_tiled(conv_net(1, 16, 6, 6, 16, 1, bias=False, tail=None),
                {"x": rand(1, 16, 6, 6, seed=6)})


def test_weights_computed_at_run_time_are_staged_along_the_depth():
    """A conv whose weights are an input (a training step's): read as [K, R] rows."""
    b = GraphBuilder("conv_rw")
    x = b.input("x", (2, 8, 9, 9))
    w = b.input("w", (12, 8, 3, 3))
    y = b.op("Conv", x, w, strides=(1, 1), pads=(1, 1, 1, 1), name="conv")
    check_tiled(b.build(y), {"x": rand(2, 8, 9, 9, seed=1), "w": rand(12, 8, 3, 3, seed=2)})


@pytest.mark.parametrize("ta, tb", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_tiled_gemm_with_transposes_alpha_and_beta(ta, tb):
    m, r, n = 37, 45, 70
    b = GraphBuilder("gemm")
    a = b.input("a", (r, m) if ta else (m, r))
    w = b.param("w", rand(*((n, r) if tb else (r, n)), seed=1))
    y = b.op("Gemm", a, w, b.param("c", rand(n, seed=2)), transA=ta, transB=tb, alpha=0.5,
             beta=2.0, name="fc")
    y = b.op("Relu", y, name="relu")
    check_tiled(b.build(y), {"a": rand(*((r, m) if ta else (m, r)), seed=3)})


def test_tiled_matmul_of_two_run_time_operands():
    b = GraphBuilder("matmul")
    a, c = b.input("a", (20, 33)), b.input("b", (33, 17))
    y = b.op("MatMul", a, c, name="mm")
    check_tiled(b.build(y), {"a": rand(20, 33, seed=1), "b": rand(33, 17, seed=2)})


def test_products_too_small_for_a_tile_keep_the_generic_kernel():
    """A depthwise conv (one filter per group) and a batch-1 FC are not tiled."""
    depthwise = conv_net(1, 16, 8, 8, 16, 3, p=1, g=16)
    check_tiled(depthwise, {"x": rand(1, 16, 8, 8)}, tiled=0)
    b = GraphBuilder("fc1")
    a = b.input("a", (1, 64))
    y = b.op("Gemm", a, b.param("w", rand(64, 10)), name="fc")
    check_tiled(b.build(y), {"a": rand(1, 64)}, tiled=0)


def test_tiles_fit_the_device_limits():
    assert tile_shape(512, 3136, WorkGroupLimits()) == (64, 64)
    assert tile_shape(20, 9, WorkGroupLimits()) == (32, 16)
    assert tile_shape(512, 3136, WorkGroupLimits(max_items=64)) == (32, 32)
    assert tile_shape(512, 3136, WorkGroupLimits(local_bytes=2048)) == (16, 16)
    assert tile_shape(512, 3136, WorkGroupLimits(max_items=8)) is None


def test_a_device_with_small_work_groups_gets_smaller_tiles(monkeypatch):
    from cnncompiler.backends.opencl import executable

    monkeypatch.setattr(executable, "WorkGroupLimits",
                        lambda max_items, local_bytes: WorkGroupLimits(64, 4096))
    graph = conv_net(1, 16, 9, 9, 40, 3, p=1)
    x = rand(1, 16, 9, 9)
    cm = cnncompiler.compile(graph, backend="opencl", schedule="gpu", cache=False)
    assert [k.local_size for k in tiled_launches(cm, x)] == [(64,)]
    assert rel_err(cm(x), evaluate(graph, {"x": x})[0]) < 1e-4


def test_resnet18_on_the_gpu_schedule_matches_the_reference():
    net = zoo.get("resnet18")
    net.init_parameters(3)
    graph = net.to_graph((2, 3, 32, 32))
    x = rand(2, 3, 32, 32)
    cm = cnncompiler.compile(graph, backend="opencl", schedule="gpu")
    assert rel_err(cm(x), evaluate(graph, {"x": x})[0]) < 1e-4
    assert len(tiled_launches(cm, x)) >= 20   # every conv and the classifier


# ------------------------------------------------------------------ renderer rules
def _group_kernel(body_of) -> K.Kernel:
    out = K.Buffer("out", "f32", 64)
    tile = K.Buffer("tile", "f32", 64)
    grp, item = K.Var("grp"), K.Var("item")
    return K.Kernel("k", [out], body_of(out, tile, grp, item))


def test_a_work_group_kernel_renders_with_local_memory_and_its_group_size():
    from cnncompiler.backends.opencl.render import render_kernel

    def body(out, tile, grp, item):   # reverse each 16-element block through the tile
        stage = K.Store(tile, item, K.Cast(grp * 16 + item, "f32"))
        back = K.Store(out, grp * 16 + item, K.Load(tile, 15 - item))
        loop = K.Loop(item, K.Const(0), K.Const(16), [stage, K.Barrier(), back], "workitems")
        return [K.Loop(grp, K.Const(0), K.Const(4), [K.Shared(tile), loop], "parallel")]

    rendered = render_kernel(_group_kernel(body))
    assert rendered.global_size == (64,) and rendered.local_size == (16,)
    assert "__local float tile[64]" in rendered.source


@pytest.mark.parametrize("case", ["barrier outside", "workitems outside a group"])
def test_misplaced_work_group_statements_are_clear_errors(case):
    from cnncompiler.backends.opencl.render import render_kernel

    def body(out, tile, grp, item):
        store = K.Store(out, item, K.Const(1.0, "f32"))
        if case == "barrier outside":
            return [K.Loop(item, K.Const(0), K.Const(64), [K.Barrier(), store], "parallel")]
        return [K.Loop(item, K.Const(0), K.Const(64), [store], "workitems")]

    with pytest.raises(CnnCompilerError, match="kernel 'k'.*(Barrier|workitems)"):
        render_kernel(_group_kernel(body))


def test_the_llvm_renderer_refuses_work_group_statements():
    from cnncompiler.backends.llvm.render import render_module

    def body(out, tile, grp, item):
        loop = K.Loop(item, K.Const(0), K.Const(16), [K.Barrier()], "workitems")
        return [K.Loop(grp, K.Const(0), K.Const(4), [K.Shared(tile), loop], "parallel")]

    with pytest.raises(CnnCompilerError, match="gpu schedule"):
        render_module([_group_kernel(body)])
