"""``cnnc train``: compiled training from the command line, on offline data sets."""

import json
import math
from importlib.util import find_spec

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import require_backend

from cnncompiler.cli import _fit_images, main
from cnncompiler.data import FASHION_MNIST_DIR

pytest.importorskip("sklearn")   # the digits data set ships with scikit-learn

QUICK = ("lenet", "--dataset", "digits", "--limit", "300", "--epochs", "2",
         "--backend", "reference", "--lr", "0.05", "--momentum", "0.9")


def invoke(*args):
    return CliRunner().invoke(main, ["train", *args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One quick run on digits writing every output file."""
    d = tmp_path_factory.mktemp("train")
    paths = {k: d / f"out.{k}" for k in ("json", "npz", "onnx", "png")}
    args = [*QUICK, "--json", paths["json"], "--save", paths["npz"], "--onnx", paths["onnx"]]
    if find_spec("matplotlib") is not None:
        args += ["--plot", paths["png"]]
    r = invoke(*map(str, args))
    assert r.exit_code == 0, r.output
    return r, paths


def test_prints_a_line_per_epoch(trained):
    r, _ = trained
    assert "300 training and 359 test images 1x8x8 -> 1x32x32 (upsample x4)" in r.output
    assert "training lenet5 (61,706 parameters) with sgd (lr 0.05, momentum 0.9)" in r.output
    for epoch in (1, 2):
        assert f"epoch {epoch}/2: loss " in r.output
    assert "test accuracy" in r.output and "examples/s" in r.output and "lr 0.05" in r.output
    assert "Traceback" not in r.output


def test_json_metrics(trained):
    _, paths = trained
    report = json.loads(paths["json"].read_text())
    assert report["model"] == "lenet5" and report["dataset"] == "digits"
    assert report["backend"] == "reference" and report["train_examples"] == 300
    assert report["optimizer"] == {"name": "sgd", "lr": 0.05, "momentum": 0.9,
                                   "nesterov": False, "weight_decay": 0.0}
    assert report["compile_seconds"] >= 0
    epochs = report["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    for e in epochs:
        assert math.isfinite(e["loss"]) and 0 <= e["accuracy"] <= 1
        assert e["examples_per_s"] > 0 and e["seconds"] > 0 and e["lr"] == 0.05
    assert epochs[1]["loss"] < epochs[0]["loss"]
    assert epochs[1]["accuracy"] > 0.5   # 300 digits, 2 epochs: ~86%
    assert report["final_accuracy"] == epochs[1]["accuracy"]


def test_plot_is_a_png(trained):
    _, paths = trained
    if find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed")
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_saved_weights_and_onnx_reimport(trained):
    _, paths = trained
    with np.load(paths["npz"]) as state:
        assert "__steps__" in state.files and int(state["__steps__"]) == 2 * 5
        assert any(k.endswith(".velocity") for k in state.files)
    pytest.importorskip("onnx")
    from cnncompiler.backends.reference import evaluate
    from cnncompiler.frontends.onnx import load

    graph = load(paths["onnx"], input_shapes={"x": (2, 1, 32, 32)})
    out = evaluate(graph, {"x": np.zeros((2, 1, 32, 32), np.float32)})
    out = out[0] if isinstance(out, (list, tuple)) else out
    assert np.asarray(out).shape == (2, 10)


def test_schedules_change_the_learning_rate(tmp_path):
    path = tmp_path / "m.json"
    r = invoke("lenet5", "--dataset", "digits", "--limit", "64", "--epochs", "3",
               "--backend", "reference", "--optimizer", "adam", "--lr-step", "2",
               "--augment", "--json", str(path))
    assert r.exit_code == 0, r.output
    assert [e["lr"] for e in json.loads(path.read_text())["epochs"]] == \
        pytest.approx([1e-3, 1e-3, 1e-4])


def test_clean_errors():
    r = invoke("lenet", "--dataset", "cifar-100")
    assert r.exit_code == 2 and "Invalid value for '--dataset'" in r.output
    r = invoke("lenet", "--optimizer", "lbfgs")
    assert r.exit_code == 2 and "Invalid value for '--optimizer'" in r.output
    r = invoke("lenet", "--backend", "tpu")
    assert r.exit_code == 2 and r.output.startswith("error: unknown backend 'tpu'")  # at once
    r = invoke("nosuchnet")
    assert r.exit_code == 2 and "unknown model 'nosuchnet'" in r.output
    r = invoke("lenet", "--optimizer", "adam", "--momentum", "0.9")
    assert r.exit_code == 2 and "go with --optimizer sgd" in r.output
    r = invoke("lenet", "--dataset", "digits", "--limit", "8", "--backend", "reference",
               "--nesterov")
    assert r.exit_code == 2 and "error: Nesterov momentum needs momentum > 0" in r.output


def test_missing_fashion_mnist_is_one_line(tmp_path):
    r = invoke("lenet", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path))
    assert r.exit_code == 1
    assert r.output.startswith("Error: Fashion-MNIST files ")
    assert "apt install dataset-fashion-mnist" in r.output and "Traceback" not in r.output
    r = invoke("lenet", "--dataset", "digits", "--data-dir", str(tmp_path))
    assert r.exit_code == 2 and "only fashion-mnist reads a folder" in r.output


def test_fit_images():
    x = np.ones((2, 1, 28, 28), np.float32)
    y, how = _fit_images(x, (1, 32, 32))
    assert y.shape == (2, 1, 32, 32) and how == "pad 2"
    assert y[:, :, 2:30, 2:30].min() == 1 and y.sum() == 2 * 28 * 28
    y, how = _fit_images(np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2), (3, 5, 4))
    assert y.shape == (1, 3, 5, 4) and how == "grey x3, upsample x2, pad to 5x4"
    assert y[0, 2, 0].tolist() == [0, 0, 1, 1] and y[0, 0, 4].tolist() == [0] * 4


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_on_llvm(tmp_path):
    require_backend("llvm")
    path = tmp_path / "fm.json"
    r = invoke("lenet", "--dataset", "fashion-mnist", "--limit", "512", "--epochs", "1",
               "--backend", "llvm", "--lr", "0.05", "--momentum", "0.9", "--json", str(path))
    assert r.exit_code == 0, r.output
    assert "10,000 test images 1x28x28 -> 1x32x32 (pad 2)" in r.output
    report = json.loads(path.read_text())
    assert report["test_examples"] == 10_000
    assert report["epochs"][0]["accuracy"] > 0.4   # 512 images, one epoch: ~55-60%
