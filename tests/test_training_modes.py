"""Train mode versus eval mode: BatchNormalization normalises with batch statistics and
updates its running statistics in the training step; Dropout multiplies by seeded,
per-step masks; predict/evaluate/model use the inference graph (running statistics, no
dropout); llvm runs the same steps as the reference backend."""

import numpy as np
import pytest
from helpers import rel_err, require_backend

import cnncompiler
from cnncompiler import data, nn, optim
from cnncompiler.autodiff import gradients, rebuild
from cnncompiler.backends.reference import evaluate
from cnncompiler.errors import ModelError
from cnncompiler.ir.builder import GraphBuilder
from cnncompiler.ir.specialize import bind_symbols
from cnncompiler.training.trainer import running_stats, train_mode_graph

RNG = np.random.default_rng(0)


def bn_graph(shape, dtype="float32", momentum=0.9, eps=1e-5, stats_trainable=False):
    """x -> BatchNormalization with random scale, bias and running statistics."""
    c = shape[1]
    b = GraphBuilder("bn")
    x = b.input("x", ("N", *shape[1:]), dtype)
    scale = b.param("scale", RNG.uniform(0.5, 1.5, c).astype(dtype))
    bias = b.param("bias", RNG.standard_normal(c).astype(dtype))
    mean = b.param("mean", RNG.standard_normal(c).astype(dtype), trainable=stats_trainable)
    var = b.param("var", RNG.uniform(0.5, 2.0, c).astype(dtype), trainable=stats_trainable)
    y = b.op("BatchNormalization", x, scale, bias, mean, var, epsilon=eps, momentum=momentum,
             name="bn")
    return b.build(y)


def batch_stats(x):
    axes = (0, *range(2, x.ndim))
    return x.mean(axis=axes), x.var(axis=axes), x.var(axis=axes, ddof=1)


def per_channel(v, ndim):
    return v.reshape((1, -1) + (1,) * (ndim - 2))


# ------------------------------------------------------------------ BatchNormalization
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (8, 5)])
def test_batch_norm_train_mode_uses_batch_statistics(shape):
    graph = bn_graph(shape, "float64", momentum=0.8, eps=1e-3)
    mode = train_mode_graph(bind_symbols(graph, {"N": shape[0]}))
    assert mode.stats == ["mean", "var"] == running_stats(graph)
    assert "BatchNormalization" not in {n.op for n in mode.graph.nodes}
    x = RNG.standard_normal(shape) * 3 + 1
    y, new_mean, new_var = evaluate(mode.graph, {"x": x})
    mean, var, unbiased = batch_stats(x)
    d = graph.data
    expected = ((x - per_channel(mean, x.ndim)) / np.sqrt(per_channel(var, x.ndim) + 1e-3)
                * per_channel(d["scale"], x.ndim) + per_channel(d["bias"], x.ndim))
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    # ONNX momentum: running * momentum + batch * (1 - momentum); unbiased running variance
    np.testing.assert_allclose(new_mean, d["mean"] * 0.8 + mean * 0.2, rtol=1e-12)
    np.testing.assert_allclose(new_var, d["var"] * 0.8 + unbiased * 0.2, rtol=1e-12)


def test_batch_norm_train_mode_gradients_match_finite_differences():
    """The rewrite differentiates through existing rules: x, scale and bias against
    central differences of sum(y * R), in float64."""
    shape = (3, 2, 3, 2)
    mode = train_mode_graph(bind_symbols(bn_graph(shape, "float64"), {"N": shape[0]}))
    b, env = rebuild(mode.graph, as_inputs=["scale", "bias"])
    y = env[mode.graph.outputs[0].name]
    r = b.const(RNG.standard_normal(shape), "r")
    loss = b.op("ReduceSum", b.op("Mul", y, r), keepdims=False)
    wrt = [env["x"], env["scale"], env["bias"]]
    graph = b.build([loss, *gradients(b, b.nodes, loss, wrt)])
    feeds = {"x": RNG.standard_normal(shape), "scale": RNG.uniform(0.5, 1.5, 2),
             "bias": RNG.standard_normal(2)}
    _, *analytic = evaluate(graph, feeds)
    eps = 1e-6
    for name, got in zip(("x", "scale", "bias"), analytic):
        numeric = np.zeros_like(feeds[name])
        for idx in np.ndindex(numeric.shape):
            plus, minus = feeds[name].copy(), feeds[name].copy()
            plus[idx] += eps
            minus[idx] -= eps
            numeric[idx] = (evaluate(graph, {**feeds, name: plus})[0]
                            - evaluate(graph, {**feeds, name: minus})[0]) / (2 * eps)
        assert rel_err(got, numeric) < 1e-6, (name, rel_err(got, numeric))


def test_running_statistics_follow_the_update_rule_over_steps():
    """A net that normalises its input first: the batch statistics are the input's own."""
    net = nn.Sequential(nn.BatchNorm2d(1, momentum=0.7), nn.Conv2d(1, 4, 3, padding=1),
                        nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    net.input_shape = (1, 1, 8, 8)
    trainer = cnncompiler.compile_training(net.init_parameters(0), backend="reference",
                                           batch_size=8)
    mean_name, var_name = trainer.stat_names
    assert not set(trainer.stat_names) & set(trainer.param_names)
    mean, var = trainer.stats[mean_name].astype(np.float64), trainer.stats[var_name]
    np.testing.assert_array_equal(mean, 0.0)
    np.testing.assert_array_equal(var, 1.0)
    x_train, y_train, _, _ = data.load_digits()
    for step in range(3):
        x = x_train[8 * step: 8 * step + 8]
        trainer.step(x, y_train[8 * step: 8 * step + 8])
        batch_mean, _, unbiased = batch_stats(x.astype(np.float64))
        mean, var = mean * 0.7 + batch_mean * 0.3, var * 0.7 + unbiased * 0.3
        np.testing.assert_allclose(trainer.stats[mean_name], mean, rtol=1e-5)
        np.testing.assert_allclose(trainer.stats[var_name], var, rtol=1e-5)
    # the trained model and its state carry the updated statistics
    np.testing.assert_array_equal(trainer.model.data[var_name], trainer.stats[var_name])
    assert set(trainer.stat_names) <= set(trainer.state_dict())


def test_eval_mode_uses_the_running_statistics():
    graph = bn_graph((4, 3, 5, 5))
    trainer = cnncompiler.compile_training(graph, loss="mse", backend="reference",
                                           batch_size=4)
    x = RNG.standard_normal((4, 3, 5, 5)).astype(np.float32)
    trainer.step(x, np.zeros((4, 3, 5, 5), np.float32))
    got = trainer.predict(x)
    s, p = trainer.stats, trainer.params
    expected = ((x - per_channel(s["mean"], 4)) / np.sqrt(per_channel(s["var"], 4) + 1e-5)
                * per_channel(p["scale"], 4) + per_channel(p["bias"], 4))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(evaluate(trainer.model, {"x": x})[0], got, rtol=1e-6)


def test_imported_statistics_marked_trainable_are_updated_not_trained():
    """ONNX initializers are all trainable to the importer: the trainer still keeps the
    running statistics out of the optimiser (weight decay would shrink them)."""
    graph = bn_graph((4, 2, 3, 3), stats_trainable=True)
    trainer = cnncompiler.compile_training(graph, loss="mse", backend="reference",
                                           optimizer=optim.SGD(lr=0.1, weight_decay=0.5))
    assert trainer.param_names == ["bias", "scale"]
    assert trainer.stat_names == ["mean", "var"]


def test_one_value_per_channel_is_refused():
    graph = bn_graph((1, 3))
    trainer = cnncompiler.compile_training(graph, loss="mse", backend="reference")
    with pytest.raises(ModelError, match="more than one value per channel"):
        trainer.step(np.ones((1, 3), np.float32), np.zeros((1, 3), np.float32))


# ------------------------------------------------------------------ Dropout
def dropout_net(p=0.5, seed=0):
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(p),
                        nn.Linear(32, 10))
    net.input_shape = (1, 1, 8, 8)
    return net.init_parameters(seed)


def test_dropout_masks_are_seeded_and_differ_per_step():
    make = [cnncompiler.compile_training(dropout_net(0.25), backend="reference", seed=s)
            for s in (3, 3, 4)]
    first, again, other = (t.dropout_masks(16, 1) for t in make)
    (name,) = first
    mask = first[name]
    assert mask.shape == (16, 32) and mask.dtype == np.float32
    assert set(np.unique(mask)) == {0.0, np.float32(1 / 0.75)}
    assert 0.1 < np.mean(mask == 0) < 0.4
    np.testing.assert_array_equal(mask, again[name])
    assert not np.array_equal(mask, other[name])
    assert not np.array_equal(mask, make[0].dropout_masks(16, 2)[name])
    # a model without Dropout (or with ratio 0) takes no mask
    assert cnncompiler.compile_training(dropout_net(0.0), backend="reference") \
        .dropout_masks(16, 1) == {}


def test_dropout_in_the_step_and_not_in_predict():
    x_train, y_train, _, _ = data.load_digits()
    x, y = x_train[:16], y_train[:16]
    losses = []
    for seed in (1, 1, 2):
        trainer = cnncompiler.compile_training(dropout_net(0.5), backend="reference",
                                               batch_size=16, seed=seed,
                                               optimizer=optim.SGD(lr=0.0))
        losses.append([trainer.step(x, y) for _ in range(2)])
    assert losses[0] == losses[1]                  # same seed, same masks
    assert losses[0] != losses[2]                  # another seed, other masks
    assert losses[0][0] != losses[0][1]            # lr 0: only the masks changed
    # eval mode: deterministic, and the Dropout is the identity
    a, b = trainer.predict(x), trainer.predict(x)
    np.testing.assert_array_equal(a, b)
    no_dropout = cnncompiler.compile_training(dropout_net(0.0), backend="reference")
    np.testing.assert_allclose(a, no_dropout.predict(x), rtol=1e-6)


# ------------------------------------------------------------------ backends
def bn_dropout_cnn(seed=0):
    """Convs without bias before BN: BN cancels a bias, whose gradient is then rounding
    noise that no two backends agree on."""
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                        nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                        nn.ReLU(), nn.AvgPool2d(2),
                        nn.Flatten(), nn.Dropout(0.3), nn.Linear(16 * 2 * 2, 10))
    net.input_shape = (1, 1, 8, 8)
    return net.init_parameters(seed)


@pytest.mark.parametrize("backend", ["llvm", "opencl"])
def test_batch_norm_and_dropout_steps_match_the_reference(backend):
    require_backend(backend)
    x_train, y_train, x_test, _ = data.load_digits()
    trainers = [cnncompiler.compile_training(bn_dropout_cnn(), backend=name, batch_size=16,
                                             seed=7, optimizer=optim.SGD(lr=0.05,
                                                                         momentum=0.9))
                for name in ("reference", backend)]
    for step in range(4):
        x, y = x_train[16 * step: 16 * step + 16], y_train[16 * step: 16 * step + 16]
        ref_loss, loss = (t.step(x, y) for t in trainers)
        assert loss == pytest.approx(ref_loss, rel=1e-4)
    for name, ref in trainers[0].state_dict().items():
        assert rel_err(trainers[1].state_dict()[name], ref) < 1e-4, name
    assert rel_err(trainers[1].predict(x_test[:32]), trainers[0].predict(x_test[:32])) < 1e-4


def test_save_and_load_keep_the_running_statistics(tmp_path):
    x_train, y_train, _, _ = data.load_digits()
    trainer = cnncompiler.compile_training(bn_dropout_cnn(), backend="reference",
                                           batch_size=16)
    trainer.step(x_train[:16], y_train[:16])
    trainer.save(tmp_path / "t.npz")
    again = cnncompiler.compile_training(bn_dropout_cnn(seed=3), backend="reference",
                                         batch_size=16)
    again.load(tmp_path / "t.npz")
    for name in trainer.stat_names:
        np.testing.assert_array_equal(again.stats[name], trainer.stats[name])
    np.testing.assert_array_equal(again.predict(x_train[:8]), trainer.predict(x_train[:8]))
