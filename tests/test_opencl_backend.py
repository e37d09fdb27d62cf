"""The OpenCL backend on this machine's OpenCL device (PoCL in CI): whole networks, conv
properties and both schedules against the reference backend, device selection, the
no-platform report, profiling and the portability rules of the generated OpenCL C."""

import functools
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from helpers import check_backend, check_symbolic_batch, rel_err, require_backend
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cnncompiler
from cnncompiler import nn, zoo
from cnncompiler.backends.reference import evaluate
from cnncompiler.errors import UnsupportedError
from cnncompiler.ir.builder import GraphBuilder

pytestmark = pytest.mark.usefixtures("opencl")


@pytest.fixture(scope="module")
def opencl():
    require_backend("opencl")


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def conv_graph(n, c, h, w, k, f, s, p, d, g, relu=True):
    b = GraphBuilder("conv")
    x = b.input("x", (n, c, h, w))
    y = b.op("Conv", x, b.param("w", rand(k, c // g, f, f, seed=1)),
             b.param("b", rand(k, seed=2)), strides=(s, s), pads=(p, p, p, p),
             dilations=(d, d), group=g, rounding="floor", name="conv")
    if relu:
        y = b.op("Relu", y, name="relu")
    return b.build(y)


@functools.cache
def compiled_net(name: str, schedule: str):
    """(graph, input, compiled model): MobileNetV2 at 32x32, LeNet-5 at its own size."""
    net = zoo.get(name)
    net.init_parameters(1)
    shape = (1, *net.input_shape[1:]) if name == "lenet5" else (1, 3, 32, 32)
    graph = net.to_graph(shape)
    return graph, rand(*shape), cnncompiler.compile(graph, backend="opencl", schedule=schedule)


@pytest.mark.parametrize("schedule", ["cpu", "gpu"])
@pytest.mark.parametrize("name", ["lenet5", "mobilenet_v2"])
def test_zoo_nets_match_the_reference(name, schedule):
    graph, x, cm = compiled_net(name, schedule)
    assert rel_err(cm(x), evaluate(graph, {"x": x})[0]) < 1e-4


def test_resnet18_matches_the_reference_and_llvm():
    """ResNet-18 at 64x64: the CPU schedule's blocked convs, Winograd and its large scratch."""
    net = zoo.get("resnet18")
    net.init_parameters(3)
    g = net.to_graph((2, 3, 64, 64))
    x = rand(2, 3, 64, 64)
    got = cnncompiler.compile(g, backend="opencl", schedule="cpu")(x)
    assert rel_err(got, evaluate(g, {"x": x})[0]) < 1e-4
    assert rel_err(got, cnncompiler.compile(g, backend="llvm")(x)) < 1e-5


@pytest.mark.parametrize("schedule", ["cpu", "gpu"])
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h=st.integers(5, 13), w=st.integers(5, 13), f=st.sampled_from([1, 2, 3, 5]),
       s=st.integers(1, 3), p=st.integers(0, 2), d=st.integers(1, 2),
       g=st.sampled_from([1, 2, 8]), k=st.sampled_from([8, 16]))
def test_conv_property(schedule, h, w, f, s, p, d, g, k):
    c = 8 if g == 8 else 16
    if (f - 1) * d + 1 > min(h, w) + 2 * p:
        return   # no output
    graph = conv_graph(1, c, h, w, k if g != 8 else 8, f, s, p, d, g)
    check_backend(graph, {"x": rand(1, c, h, w)}, "opencl", schedule=schedule)


def test_symbolic_batch_and_input_validation():
    check_symbolic_batch("opencl")


def test_int_and_bool_kernels():
    """int64 arithmetic (long), comparisons to bools (uchar in memory), Where on them."""
    b = GraphBuilder("ints")
    x = b.input("x", (2, 7), dtype="int64")
    y = b.input("y", (2, 7), dtype="int64")
    diff = b.op("Abs", b.op("Sub", x, y, name="sub"), name="abs")
    less = b.op("Less", x, y, name="less")
    pick = b.op("Where", less, diff, b.op("Neg", y, name="neg"), name="where")
    g = b.build([diff, less, pick])
    rng = np.random.default_rng(0)
    xs = rng.integers(-20, 20, (2, 7))
    ys = rng.choice([-7, -3, 2, 5], (2, 7))
    check_backend(g, {"x": xs, "y": ys}, "opencl")


def test_device_selection():
    from cnncompiler.backends.opencl.platform import choose_device, list_devices

    devices = list_devices()
    first = devices[0]
    assert choose_device(first.spec) == first
    assert choose_device(str(first.platform_index)).platform_index == first.platform_index
    graph = conv_graph(1, 8, 6, 6, 8, 3, 1, 1, 1, 1)
    check_backend(graph, {"x": rand(1, 8, 6, 6)}, "opencl", device=first.spec)
    with pytest.raises(UnsupportedError, match="the devices here are"):
        choose_device("99:0")
    with pytest.raises(UnsupportedError, match="platform:device"):
        choose_device("gpu")
    with pytest.raises(UnsupportedError, match="schedule"):
        cnncompiler.compile(graph, backend="opencl", schedule="fpga")
    with pytest.raises(UnsupportedError, match="unknown opencl-backend option"):
        cnncompiler.compile(graph, backend="opencl", threads=2)


def test_no_platform_gives_a_reason(tmp_path):
    """With the ICD loader pointed at an empty vendors folder (and pyopencl's bundled PoCL
    hidden), available() says why instead of crashing."""
    script = (
        "import os, json, pyopencl\n"
        f"os.environ['PYOPENCL_HOME'] = {str(tmp_path)!r}\n"   # read at the first query
        "from cnncompiler.backends import available\n"
        "s = available()['opencl']\n"
        "print(json.dumps([s.ok, s.reason]))\n")
    env = dict(os.environ, OCL_ICD_VENDORS=str(tmp_path))
    # run outside the checkout: there, "import cnncompiler" would find the source folder,
    # which has no backends package (pyproject maps it in from backends/)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120, check=True, cwd=tmp_path)
    ok, reason = json.loads(done.stdout.strip().splitlines()[-1])
    assert not ok
    assert "no OpenCL platform found" in reason and "pocl" in reason.lower()


def test_profile_reports_every_kernel():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    cm = cnncompiler.compile(net, backend="opencl", input_shape=(1, 3, 8, 8))
    prof = cm.profile(rand(1, 3, 8, 8), repeats=2)
    assert len(prof.rows) == len(cm.executable.for_shapes([rand(1, 3, 8, 8)]).launches)
    assert all(r.seconds > 0 for r in prof.rows)
    assert prof.rows[0].kind == "Conv+Relu"
    assert "GFLOP/s" in str(prof)


@pytest.mark.parametrize("schedule", ["cpu", "gpu"])
def test_generated_source_keeps_the_portability_rules(schedule):
    """OpenCL C 1.2 that NVIDIA/AMD compilers take too: no size_t kernel arguments, no LL
    literals; every program was built with -cl-std=CL1.2 -Werror."""
    from cnncompiler.backends.opencl.executable import BUILD_OPTIONS

    _, x, cm = compiled_net("mobilenet_v2", schedule)
    compiled = cm.executable.for_shapes([x])
    assert "-cl-std=CL1.2" in BUILD_OPTIONS and "-Werror" in BUILD_OPTIONS
    heads = re.findall(r"__kernel void \w+\(([^)]*)\)", compiled.source)
    assert len(heads) == len({kernel.name for _, kernel, _ in compiled.launches})
    assert not any("size_t" in head for head in heads)
    assert not re.search(r"\d+[lL][lL]\b", compiled.source)
