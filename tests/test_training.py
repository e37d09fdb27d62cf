"""Compiled training: optimiser updates against their textbook formulas, losses, a real
training run on scikit-learn's digits, backends against the reference backend, state
save/load and export of the trained model."""

import numpy as np
import pytest
from helpers import rel_err, require_backend

import cnncompiler
from cnncompiler import data, nn, optim
from cnncompiler.backends.reference import evaluate
from cnncompiler.errors import InputError, ModelError
from cnncompiler.ir.builder import GraphBuilder


def small_cnn(seed=0):
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                        nn.Flatten(), nn.Linear(32 * 2 * 2, 10))
    net.input_shape = (1, 1, 8, 8)
    return net.init_parameters(seed)


def run_update(opt, w, grads):
    """The optimiser's graph update applied for len(grads) steps, on the reference."""
    b = GraphBuilder("u")
    wv = b.input("w", w.shape)
    gv = b.input("g", w.shape)
    slots = {s: b.input(s, w.shape) for s in opt.slot_names()}
    hyper = {h: b.input(f"hyper.{h}", (1,)) for h in opt.hyper(1)}
    new_w, new_s = opt.update(b, wv, gv, slots, hyper)
    graph = b.build([new_w, *[new_s[s] for s in opt.slot_names()]])
    state = {s: np.zeros_like(w) for s in opt.slot_names()}
    for t, g in enumerate(grads, start=1):
        feeds = {"w": w, "g": g, **state,
                 **{f"hyper.{h}": np.full(1, v, np.float32) for h, v in opt.hyper(t).items()}}
        w, *rest = (np.asarray(a, np.float32) for a in evaluate(graph, feeds))
        state = dict(zip(opt.slot_names(), rest))
    return w


W0 = np.array([0.5, -1.0, 2.0], np.float32)
GRADS = [np.array(g, np.float32) for g in ([0.1, -0.2, 0.3], [0.4, 0.1, -0.5], [-0.3, 0.2, 0.1])]


def textbook(name, w, grads, lr, wd=0.0, mu=0.9, alpha=0.99, eps=1e-8, b1=0.9, b2=0.999):
    """The update rules written out in numpy, float64."""
    w = w.astype(np.float64)
    v = s = m = np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        g = g + wd * w
        if name == "sgd":
            w = w - lr * g
        elif name == "momentum":
            v = mu * v + g
            w = w - lr * v
        elif name == "nesterov":
            v = mu * v + g
            w = w - lr * (g + mu * v)
        elif name == "rmsprop":
            s = alpha * s + (1 - alpha) * g * g
            w = w - lr * g / (np.sqrt(s) + eps)
        elif name == "adagrad":
            s = s + g * g
            w = w - lr * g / (np.sqrt(s) + 1e-10)
        elif name == "adam":
            m = b1 * m + (1 - b1) * g
            s = b2 * s + (1 - b2) * g * g
            w = w - lr * (m / (1 - b1 ** t)) / (np.sqrt(s / (1 - b2 ** t)) + eps)
    return w


@pytest.mark.parametrize("name,opt", [
    ("sgd", optim.SGD(lr=0.1)),
    ("momentum", optim.SGD(lr=0.1, momentum=0.9)),
    ("nesterov", optim.SGD(lr=0.1, momentum=0.9, nesterov=True)),
    ("rmsprop", optim.RMSProp(lr=0.01)),
    ("adagrad", optim.Adagrad(lr=0.1)),
    ("adam", optim.Adam(lr=0.01)),
])
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_optimizer_updates_follow_the_textbook(name, opt, wd):
    opt.weight_decay = wd
    got = run_update(opt, W0, GRADS)
    np.testing.assert_allclose(got, textbook(name, W0, GRADS, opt.lr, wd), rtol=1e-5)


def test_bad_hyper_parameters_are_refused():
    with pytest.raises(ModelError, match="lr"):
        optim.SGD(lr=-1)
    with pytest.raises(ModelError, match="Nesterov"):
        optim.SGD(lr=0.1, nesterov=True)


def test_schedules():
    opt = optim.SGD(lr=1.0)
    step = optim.StepLR(opt, step_size=2, gamma=0.5)
    assert [step.step() for _ in range(4)] == [1.0, 0.5, 0.5, 0.25]
    opt = optim.SGD(lr=1.0)
    plateau = optim.ReduceLROnPlateau(opt, mode="max", patience=1)
    rates = [plateau.step(acc) for acc in (0.5, 0.6, 0.6, 0.6, 0.7)]
    assert rates == [1.0, 1.0, 1.0, pytest.approx(0.1), pytest.approx(0.1)]


def test_cross_entropy_value_and_label_checks():
    net = small_cnn()
    trainer = cnncompiler.compile_training(net, backend="reference", batch_size=4)
    x = np.random.default_rng(0).random((4, 1, 8, 8), np.float32)
    y = np.array([0, 3, 9, 1])
    logits = trainer.predict(x).astype(np.float64)
    log_p = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1,
                                                                               keepdims=True)) \
        - logits.max(1, keepdims=True)
    expected = -np.mean(log_p[np.arange(4), y])
    assert trainer.step(x, y) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(InputError, match=r"\[0, 10\)"):
        trainer.step(x, np.array([0, 1, 2, 10]))
    with pytest.raises(InputError, match="integer class labels"):
        trainer.step(x, np.zeros(4, np.float32))


def test_digits_reach_97_percent_on_llvm():
    """The lecture's recipe: mini-batch SGD with momentum and L2 decay, the learning rate
    divided by 10 for the last epochs."""
    x_train, y_train, x_test, y_test = data.load_digits()
    opt = optim.SGD(lr=0.1, momentum=0.9, weight_decay=1e-4)
    trainer = cnncompiler.compile_training(small_cnn(), optimizer=opt, backend="llvm",
                                           batch_size=32)
    schedule = optim.StepLR(opt, step_size=9)
    losses = []
    for epoch in range(12):
        losses.append(trainer.fit_epoch(x_train, y_train, np.random.default_rng(epoch)))
        schedule.step()
    accuracy = trainer.evaluate(x_test, y_test)
    print(f"digits on llvm: losses {[round(v, 3) for v in losses]}, accuracy {accuracy:.4f}")
    assert losses[-1] < losses[0] / 10
    assert accuracy >= 0.97


@pytest.mark.parametrize("backend", ["llvm", "opencl"])
def test_backend_training_steps_match_the_reference(backend):
    require_backend(backend)
    x_train, y_train, _, _ = data.load_digits()
    x, y = x_train[:16], y_train[:16]
    opt_args = {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3}
    trainers = [cnncompiler.compile_training(small_cnn(), optimizer=optim.SGD(**opt_args),
                                             backend=name, batch_size=16)
                for name in ("reference", backend)]
    for _ in range(3):
        ref_loss, loss = (t.step(x, y) for t in trainers)
        assert loss == pytest.approx(ref_loss, rel=1e-4)
    for name, ref in trainers[0].state_dict().items():
        assert rel_err(trainers[1].state_dict()[name], ref) < 1e-4, name


def test_save_load_and_export(tmp_path):
    x_train, y_train, x_test, _ = data.load_digits()
    trainer = cnncompiler.compile_training(small_cnn(), optimizer=optim.Adam(lr=1e-3),
                                           backend="llvm", batch_size=32)
    trainer.fit_epoch(x_train[:256], y_train[:256])
    trainer.save(tmp_path / "t.npz")
    again = cnncompiler.compile_training(small_cnn(seed=5), optimizer=optim.Adam(lr=1e-3),
                                         backend="llvm", batch_size=32)
    again.load(tmp_path / "t.npz")
    assert again.steps == trainer.steps
    np.testing.assert_array_equal(again.predict(x_test), trainer.predict(x_test))
    # and one more identical step from the restored optimiser state
    assert again.step(x_train[:32], y_train[:32]) == trainer.step(x_train[:32], y_train[:32])
    from cnncompiler.frontends import onnx as cnn_onnx

    cnn_onnx.save(trainer.model, tmp_path / "m.onnx")
    reloaded = cnncompiler.compile(str(tmp_path / "m.onnx"), backend="llvm")
    assert rel_err(reloaded(x_test[:7]), trainer.predict(x_test[:7])) < 1e-5
    with pytest.raises(ModelError, match="missing"):
        again.load_state_dict({})


def test_augmentation_is_seeded():
    x = np.random.default_rng(0).random((5, 1, 6, 6), np.float32)
    a = data.random_crop(x, 2, np.random.default_rng(1))
    b = data.random_crop(x, 2, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert a.shape == x.shape
    flipped = data.horizontal_flip(x, np.random.default_rng(2), p=1.0)
    np.testing.assert_array_equal(flipped, x[..., ::-1])


def test_missing_data_set_says_how_to_install(tmp_path):
    with pytest.raises(data.DatasetUnavailableError, match="apt install"):
        data.load_fashion_mnist(tmp_path)
