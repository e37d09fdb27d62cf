"""The cnnc command line, driven through click's runner."""

import json

import numpy as np
from click.testing import CliRunner

from cnncompiler.cli import main


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def test_models_lists_the_zoo():
    r = invoke("models")
    assert r.exit_code == 0
    for name in ("lenet5", "alexnet", "vgg16", "resnet18", "resnet152", "mobilenet_v2"):
        assert name in r.output


def test_summary_text_and_json():
    r = invoke("summary", "alexnet")
    assert r.exit_code == 0 and "62,378,344" in r.output and "[55x55x96]" in r.output
    r = invoke("summary", "lenet5", "--json")
    assert json.loads(r.output)["totals"]["params"] == 61_706


def test_run_is_seeded_and_reports_shapes():
    a = invoke("run", "lenet5", "--seed", "0")
    b = invoke("run", "lenet5", "--seed", "0", "--batch", "2")
    assert a.exit_code == 0, a.output
    assert "output output: shape [1, 10]" in a.output
    assert "shape [2, 10]" in b.output
    again = invoke("run", "lenet5", "--seed", "0")
    assert a.output.splitlines()[-1] == again.output.splitlines()[-1]


def test_run_with_an_input_file(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).standard_normal((1, 1, 32, 32)).astype(np.float32))
    r = invoke("run", "lenet5", "--input", f"x={path}")
    assert r.exit_code == 0, r.output


def test_errors_exit_nonzero_without_traceback(tmp_path):
    r = invoke("run", "nosuchnet")
    assert r.exit_code != 0 and "unknown model 'nosuchnet'" in r.output
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((1, 1, 30, 30), np.float32) + 1)
    r = invoke("run", "lenet5", "--input", f"x={path}")
    assert r.exit_code == 2 and "error: input 'x' has shape [1, 1, 30, 30]" in r.output
    r = invoke("run", "lenet5", "--backend", "tpu")
    assert r.exit_code == 2 and "unknown backend 'tpu'" in r.output
    assert "Traceback" not in r.output


def test_backends_command():
    r = invoke("backends")
    assert r.exit_code == 0 and "reference" in r.output and "yes" in r.output


def test_onnx_summary_run_and_output(tmp_path):
    import onnx
    from onnx_models import load_light

    path = tmp_path / "squeezenet.onnx"
    onnx.save(load_light("squeezenet"), str(path))
    r = invoke("summary", str(path))
    assert r.exit_code == 0 and "TOTAL params: 1,235,496" in r.output
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32))
    out = tmp_path / "out.npz"
    r = invoke("run", str(path), "--input", f"data_0={x}", "--output", str(out))
    assert r.exit_code == 0, r.output
    with np.load(out) as saved:
        assert saved["softmaxout_1_1"].shape == (1, 1000, 1, 1)
        np.testing.assert_allclose(saved["softmaxout_1_1"].sum(), 1.0, rtol=1e-5)


def test_onnx_symbolic_dims_need_shape_option(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["x"], ["y"])
    m = helper.make_model(helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H", "W"])]),
        opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "dyn.onnx"
    onnx.save(m, str(path))
    r = invoke("run", str(path))
    assert r.exit_code == 2 and "--shape x=1" in r.output
    r = invoke("run", str(path), "--shape", "x=2,3,4,5")
    assert r.exit_code == 0 and "shape [2, 3, 4, 5]" in r.output


def test_compile_explain_and_dump():
    r = invoke("compile", "resnet18", "--explain")
    assert r.exit_code == 0, r.output
    assert ("layer1.0.conv2 + layer1.0.bn2 + layer1.0.add + layer1.0.relu2 -> "
            "fused_layer1.0.conv2") in r.output or "-> fused_layer1.0.conv2" in r.output
    assert "kernels:" in r.output
    r = invoke("compile", "lenet5", "--dump-ir", "after:fuse")
    assert r.exit_code == 0 and "Fused(" in r.output and "body(" in r.output
    r = invoke("compile", "lenet5", "--opt-level", "0", "--dump-ir", "final")
    assert r.exit_code == 0 and "Fused(" not in r.output


def test_compile_dot_and_errors(tmp_path):
    dot = tmp_path / "g.dot"
    r = invoke("compile", "lenet5", "--dot", str(dot))
    assert r.exit_code == 0 and dot.read_text().startswith("digraph")
    r = invoke("compile", "lenet5", "--disable", "nosuchpass")
    assert r.exit_code == 2 and "unknown pass" in r.output
    r = invoke("compile", "lenet5", "--dump-ir", "before:fuse")
    assert r.exit_code != 0 and "after:PASS" in r.output


def test_compile_to_a_shared_library(tmp_path):
    import shutil

    if shutil.which("cc") is None:
        return
    r = invoke("compile", "lenet5", "--backend", "llvm", "-o", str(tmp_path / "lenet.so"))
    assert r.exit_code == 0, r.output
    assert (tmp_path / "lenet.so").exists() and (tmp_path / "lenet.h").exists()
    assert (tmp_path / "lenet.weights").stat().st_size >= 61_706 * 4
