"""The torch mirror of a Graph (``cnncompiler.bench_torch``) computes what our reference
backend computes, forward and training step, so ``cnnc bench --train`` times the same work
on both sides."""

import numpy as np
import pytest

import cnncompiler
from cnncompiler import optim, zoo
from cnncompiler.backends.reference import evaluate
from cnncompiler.errors import UnsupportedError
from cnncompiler.ir.builder import GraphBuilder
from cnncompiler.ir.specialize import bind_symbols
from cnncompiler.nn import (
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    GlobalAvgPool2d,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
)

torch = pytest.importorskip("torch", reason="the torch mirror needs torch "
                                            "(pip install torch==2.13.0)")
from cnncompiler.bench_torch import torch_mirror  # noqa: E402


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _mini_net():
    """A small ResNet/MobileNet mix: stem conv-BN-ReLU, 3x3/2 max pool, a projecting
    BasicBlock, inverted residuals (depthwise conv, ReLU6, residual add), dropout, FC."""
    return Sequential({
        "stem": Conv2d(3, 8, 3, stride=2, padding=1, bias=False, rounding="floor"),
        "bn": BatchNorm2d(8),
        "relu": ReLU(),
        "pool": MaxPool2d(3, 2, padding=1, rounding="floor"),
        "block": zoo.BasicBlock(8, 16, stride=2),
        "ir1": zoo.InvertedResidual(16, 16, 1, 2),
        "ir2": zoo.InvertedResidual(16, 24, 2, 3),
        "gap": GlobalAvgPool2d(),
        "flatten": Flatten(),
        "drop": Dropout(0.25),
        "fc": Linear(24, 10),
    })


def _graph(name: str, shape: tuple):
    net = _mini_net() if name == "mini" else zoo.get(name, num_classes=10)
    return net.to_graph(("N", *shape[1:]), seed=0)


@pytest.mark.parametrize("name, shape", [("lenet5", (2, 1, 32, 32)),
                                         ("resnet18", (1, 3, 32, 32)),
                                         ("mobilenet_v2", (1, 3, 32, 32)),
                                         ("mini", (2, 3, 32, 32))])
def test_forward_matches_the_reference_backend(name, shape):
    graph = _graph(name, shape)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    want = evaluate(bind_symbols(graph, {"N": shape[0]}), {"x": x})[0]
    with torch.no_grad():
        got = torch_mirror(graph).eval()(torch.from_numpy(x)).numpy()
    assert _rel(got, want) < 1e-4


def _one_step(graph, x, y, dtype):
    """(our reference trainer, the mirror) after one SGD step (lr 1: the update is the
    gradient) from the same weights, the mirror fed the trainer's Dropout masks."""
    trainer = cnncompiler.compile_training(graph, optimizer=optim.SGD(lr=1.0), backend="reference",
                               batch_size=len(x))
    trainer.step(x, y)
    mirror = torch_mirror(graph).to(dtype).train()
    opt = torch.optim.SGD(mirror.parameters(), lr=1.0)
    masks = {k: torch.from_numpy(v).to(dtype)
             for k, v in trainer.dropout_masks(len(x), 1).items()}
    out = mirror(torch.from_numpy(x).to(dtype), masks=masks)
    torch.nn.functional.cross_entropy(out, torch.from_numpy(y)).backward()
    opt.step()
    return trainer, mirror


@pytest.mark.parametrize("name, shape, dtype, tol", [
    ("lenet5", (4, 1, 32, 32), torch.float32, 1e-4),
    # BatchNorm over few values per channel amplifies float32 rounding; float64 checks
    # the semantics (batch statistics, running-statistics momentum, masks) exactly
    ("mini", (4, 3, 32, 32), torch.float64, 1e-5),
])
def test_one_training_step_matches_the_reference_trainer(name, shape, dtype, tol):
    """Each parameter's update (its gradient at lr 1) and each running statistic after one
    step agree with our reference backend's compiled training step."""
    graph = _graph(name, shape)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    y = rng.integers(0, 10, shape[0])
    trainer, mirror = _one_step(graph, x, y, dtype)
    ours, theirs = trainer.state_dict(), mirror.numpy_state()
    assert set(trainer.params) == set(mirror.param_names)
    deltas = {n: (ours[n] - graph.data[n], theirs[n] - graph.data[n]) for n in trainer.params}
    biggest = max(np.abs(t).max() for _, t in deltas.values())
    for n, (a, b) in deltas.items():
        # the trainer keeps float32 weights: one ulp of the new weight is rounding, not error;
        # a tensor whose true update is ~0 is compared against the model's largest update
        ulp = np.spacing(np.abs(ours[n]).astype(np.float32))
        err = np.maximum(np.abs(a - b) - ulp, 0).max() / max(np.abs(b).max(), 1e-3 * biggest)
        assert err < tol, (n, err)
    for n in trainer.stats:
        assert _rel(theirs[n], ours[n]) < tol, n
    if name == "mini":   # the net has what the check is about
        assert trainer.stats and mirror.mask_inputs == {"drop": "drop.mask"}


def _check_graph(build, inputs: dict, tol: float = 1e-5):
    b = GraphBuilder("ops")
    out = build(b)
    graph = b.build(out)
    want = evaluate(graph, inputs)
    with torch.no_grad():
        got = torch_mirror(graph).eval()(*(torch.from_numpy(inputs[v.name])
                                           for v in graph.inputs))
    got = got if isinstance(got, tuple) else (got,)
    for g, w in zip(got, want, strict=True):
        assert _rel(g.numpy(), w) < tol


X = np.random.default_rng(2).standard_normal((2, 4, 9, 10)).astype(np.float32)


@pytest.mark.parametrize("op, attrs", [
    ("AveragePool", dict(kernel_shape=(3, 3), strides=(2, 2), pads=(1, 0, 0, 2),
                         rounding="ceil", count_include_pad=False)),
    ("AveragePool", dict(kernel_shape=(2, 3), strides=(2, 2), pads=(1, 1, 1, 1),
                         rounding="ceil", count_include_pad=True)),
    ("AveragePool", dict(kernel_shape=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1),
                         count_include_pad=False)),
    ("MaxPool", dict(kernel_shape=(3, 3), strides=(2, 2), pads=(0, 1, 2, 0),
                     dilations=(1, 2), rounding="ceil")),
    ("LRN", dict(size=4, alpha=0.1, beta=0.75, bias=2.0)),
    ("Clip", dict(min=-0.5)),
    ("Softmax", dict(axis=1)),
    ("Transpose", dict(perm=(0, 2, 3, 1))),
    ("Reshape", dict(shape=(0, -1, 5))),
    ("ReduceMean", dict(axes=(1, 3), keepdims=False)),
])
def test_window_and_shape_ops_match_the_reference(op, attrs):
    _check_graph(lambda b: b.op(op, b.input("x", X.shape), **attrs), {"x": X})


def test_conv_gemm_concat_match_the_reference():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((6, 2, 3, 2)).astype(np.float32)

    def build(b):
        x = b.input("x", X.shape)
        y = b.op("Conv", x, b.param("w", w), pads=(2, 0, 1, 1), strides=(2, 1),
                 dilations=(1, 2), group=2, rounding="floor")
        z = b.op("Concat", y, b.op("Relu", y), axis=1)
        flat = b.op("Flatten", z)
        m = rng.standard_normal((flat.shape[1], 5)).astype(np.float32)
        c = rng.standard_normal((2, 5)).astype(np.float32)
        g = b.op("Gemm", b.op("Transpose", flat, perm=(1, 0)), b.param("m", m),
                 b.param("c", c), transA=True, alpha=0.5, beta=2.0)
        return b.op("MatMul", g, b.param("k", rng.standard_normal((5, 3)).astype(np.float32)))
    _check_graph(build, {"x": X})


def test_an_unsupported_op_names_the_node():
    b = GraphBuilder("tiles")
    graph = b.build(b.op("Tile", b.input("x", (2, 3)), repeats=(2, 1), name="tiler"))
    with pytest.raises(UnsupportedError, match=r"node 'tiler' \(Tile\).*no rule for op Tile"):
        torch_mirror(graph)


def test_train_bench_runs_resnet18():
    """``bench_train.run`` on ResNet-18 (64x64, a tiny batch, one timed step; the reference
    backend, as llvm takes a minute to compile the step): a row per contender, and the losses
    and running statistics agree with torch's. Two examples memorise fast (the loss falls
    from 6.9 to 2.8 in one step), which magnifies float32 rounding: the bounds are loose."""
    from cnncompiler import bench_train

    lines = []
    rows = bench_train.run(["reference"], [1], batch=2, steps=1, log=lines.append,
                           model="resnet18", input_shape=(3, 64, 64))
    by = {r["backend"]: r for r in rows}
    assert set(by) == {"reference", "torch"} and len(lines) == 2
    ours = by["reference"]
    assert ours["input_shape"] == [3, 64, 64] and ours["model"] == "resnet18"
    assert ours["batch"] == 2 and ours["median_ms"] > 0 and by["torch"]["vs_torch"] == 1.0
    assert abs(ours["loss"] - by["torch"]["loss"]) < 2e-3 * abs(by["torch"]["loss"])
    assert ours["params_rel_err"] < 2e-2 and ours["stats_rel_err"] < 2e-2
    assert by["torch"]["params_rel_err"] is None and by["torch"]["stats_rel_err"] is None


def test_cli_train_bench_takes_the_input_shape(tmp_path):
    """``cnnc bench MODEL --train --shape x=[N,]C,H,W``: the size (and batch) of any zoo
    model; a wrong name or a batch that contradicts --batch is a clean error."""
    import json

    from click.testing import CliRunner

    from cnncompiler.cli import main

    out = tmp_path / "rows.json"
    r = CliRunner().invoke(main, ["bench", "lenet5", "--train", "--backends", "reference",
                                  "--repeat", "1", "--shape", "x=2,1,32,32", "--json", str(out)])
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())
    assert {(row["batch"], tuple(row["input_shape"])) for row in rows} == {(2, (1, 32, 32))}
    for args in (["--shape", "y=3,64,64"], ["--shape", "x=4,3,64,64", "--batch", "8"]):
        r = CliRunner().invoke(main, ["bench", "resnet18", "--train", *args])
        assert r.exit_code == 2 and "--shape" in r.output, r.output
