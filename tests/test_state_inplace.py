"""State bindings (``compile(..., state={input: next value})``): the compiled model keeps the
state between calls (host arrays on the reference backend, the arena on llvm and opencl),
updates it in place where the schedule allows, copies where it cannot, and the Trainer's
parameters, slots and running statistics live in its step executables."""

import numpy as np
import pytest
from helpers import rel_err, require_backend

import cnncompiler
from cnncompiler import nn, optim
from cnncompiler.errors import GraphError, InputError, ModelError, UnsupportedError
from cnncompiler.ir.builder import GraphBuilder
from cnncompiler.kernel.lower import lower_node
from cnncompiler.kernel.program import lower_graph, writes_in_place
from cnncompiler.passes.memory import check_plan, order_state_writes, plan_memory

BACKENDS = ["reference", "llvm", "opencl"]
RNG = np.random.default_rng(0)
X = RNG.standard_normal((4, 8)).astype(np.float32)
W0 = RNG.standard_normal((8, 3)).astype(np.float32)
LR = np.array([0.01], np.float32)


def sgd_graph(batch=4):
    """y = x @ w; w.new = w - lr * x^T y (a least-squares-like step)."""
    b = GraphBuilder("sgd")
    x = b.input("x", (batch, 8))
    w = b.input("w", (8, 3))
    lr = b.input("lr", (1,))
    y = b.op("MatMul", x, w, name="y")
    g = b.op("MatMul", b.op("Transpose", x, perm=(1, 0)), y)
    w_new = b.op("Sub", w, b.op("Mul", g, lr), name="w.new")
    return b.build([y, w_new])


def sgd_numpy(x, w, steps):
    w = w.astype(np.float64)
    ys = []
    for _ in range(steps):
        ys.append(x @ w)
        w = w - 0.01 * (x.T @ ys[-1])
    return ys, w


def compiled(graph, backend, **kw):
    require_backend(backend)
    return cnncompiler.compile(graph, backend=backend, **kw)


def executable_of(cm):
    """The llvm/opencl object compiled for the model's one static shape."""
    return cm.executable.specialised[()]


# ------------------------------------------------------------------------------ the API
@pytest.mark.parametrize("backend", BACKENDS)
def test_state_lives_in_the_model(backend):
    g = sgd_graph()
    cm = compiled(g, backend, state={"w": g.outputs[1].name})
    assert cm.input_names == ["x", "lr"] and cm.output_names == ["y"]
    assert cm.state_names == ["w"]
    np.testing.assert_array_equal(cm.get_state("w"), np.zeros((8, 3), np.float32))
    cm.set_state("w", W0.astype(np.float64))          # converted to the state's dtype
    ys, w = sgd_numpy(X, W0, 3)
    for ref in ys:
        y = cm(X, LR)                                   # no w: the model holds it
        assert isinstance(y, np.ndarray) and rel_err(y, ref) < 1e-5
    assert rel_err(cm.get_state("w"), w) < 1e-5
    state = cm.state()
    state["w"][...] = 0                                 # reads are copies
    assert rel_err(cm.get_state("w"), w) < 1e-5
    with pytest.raises(InputError, match="missing input"):
        cm(x=X)
    with pytest.raises(InputError, match="unknown input"):
        cm(x=X, lr=LR, w=W0)
    with pytest.raises(InputError, match="not a state of this model; its states: w"):
        cm.get_state("x")
    with pytest.raises(InputError, match=r"shape \[8, 3\], got \[3, 8\]"):
        cm.set_state("w", W0.T)
    with pytest.raises(InputError, match="holds float32, got complex"):
        cm.set_state("w", W0.astype(np.complex64))


@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_a_stored_tensor_as_state_starts_from_its_data(backend):
    b = GraphBuilder("acc")
    x = b.input("x", (5,))
    total = b.param("total", np.arange(5, dtype=np.float32))
    new = b.op("Add", total, x, name="total.new")
    g = b.build([b.op("Mul", new, b.const(np.float32(2.0)), name="twice"), new])
    cm = compiled(g, backend, state={"total": "total.new"})
    np.testing.assert_array_equal(cm.get_state("total"), np.arange(5))
    ones = np.ones(5, np.float32)
    np.testing.assert_allclose(cm(ones), 2 * (np.arange(5) + 1))
    np.testing.assert_allclose(cm(ones), 2 * (np.arange(5) + 2))
    np.testing.assert_allclose(cm.get_state("total"), np.arange(5) + 2)


def test_bad_state_bindings_are_refused():
    g = sgd_graph()
    with pytest.raises(ModelError, match="neither an input nor a stored tensor"):
        cnncompiler.compile(g, state={"nope": "w.new"})
    with pytest.raises(ModelError, match="not an output"):
        cnncompiler.compile(g, state={"w": "nope"})
    with pytest.raises(ModelError, match="its next value 'y' is"):
        cnncompiler.compile(g, state={"w": "y"})
    b = GraphBuilder("sym")
    v = b.input("v", ("N", 3))
    with pytest.raises(ModelError, match="symbolic shape"):
        cnncompiler.compile(b.build(b.op("Relu", v)), state={"v": "relu"})


@pytest.mark.parametrize("backend", ["llvm", "opencl"])
def test_state_follows_the_batch_size(backend):
    """A symbolic batch compiles one object per batch size; the state moves between them."""
    b = GraphBuilder("mean")
    x = b.input("x", ("N", 3))
    w = b.input("w", (3,))
    lr = b.input("lr", (1,))
    y = b.op("Mul", x, w, name="y")
    step = b.op("Mul", b.op("ReduceMean", y, axes=(0,), keepdims=False), lr)
    g = b.build([y, b.op("Sub", w, step, name="w.new")])
    cm = compiled(g, backend, state={"w": "w.new"})
    w = W0[0].astype(np.float64)
    cm.set_state("w", w)
    for batch in (4, 2, 4, 3):
        x = X[:batch, :3]
        y = cm(x, LR)
        assert rel_err(y, x * w) < 1e-5
        w = w - 0.01 * (x * w).mean(axis=0)
    assert len(cm.executable.specialised) == 3
    assert rel_err(cm.get_state("w"), w) < 1e-5


@pytest.mark.parametrize("backend", ["llvm", "opencl"])
def test_profiling_leaves_the_state_alone(backend):
    g = sgd_graph()
    cm = compiled(g, backend, state={"w": g.outputs[1].name})
    cm.set_state("w", W0)
    cm.profile(X, LR, repeats=3)
    np.testing.assert_array_equal(cm.get_state("w"), W0)


# ------------------------------------------------------------------- in place, in order
def writer_first_graph():
    """The node writing w.new comes *before* a node reading the old w: in place is only
    right once the reader is moved first."""
    b = GraphBuilder("order")
    w = b.input("w", (16,))
    g = b.input("g", (16,))
    w_new = b.op("Sub", w, g, name="w.new")              # writer
    y = b.op("Mul", w, b.const(np.float32(3.0)), name="y")   # reader of the old w
    return b.build([y, w_new])


def test_the_schedule_runs_every_reader_before_the_in_place_writer():
    g = writer_first_graph()
    names = [n.name for n in g.nodes]
    assert names.index("w.new") < names.index("y")
    ordered, in_place = order_state_writes(g, {"w": "w.new"})
    assert in_place == {"w": "w.new"}
    names = [n.name for n in ordered.nodes]
    assert names.index("y") < names.index("w.new")
    plan = plan_memory(ordered, inplace=False, state={"w": "w.new"}, state_in_place=in_place)
    check_plan(ordered, plan)
    assert plan.offsets["w.new"] == plan.offsets["w"]
    # the naive order with the same aliasing overwrites w before y reads it
    naive = plan_memory(g, inplace=False, state={"w": "w.new"}, state_in_place=in_place)
    with pytest.raises(GraphError, match="still live|no longer holds"):
        check_plan(g, naive)


@pytest.mark.parametrize("backend,options", [("llvm", {}), ("opencl", {}),
                                             ("opencl", {"schedule": "gpu"})],
                         ids=["llvm", "opencl", "opencl-gpu-schedule"])
def test_in_place_update_after_its_readers_on_the_backend(backend, options):
    g = writer_first_graph()
    cm = compiled(g, backend, opt_level=0, state={"w": "w.new"}, **options)
    exe = executable_of(cm)
    assert exe.plan.state_in_place == ["w"] and exe.state_copies == []
    assert exe.plan.offsets["w.new"] == exe.plan.offsets["w"]
    w = RNG.standard_normal(16).astype(np.float32)
    grad = RNG.standard_normal(16).astype(np.float32)
    cm.set_state("w", w)
    for _ in range(3):
        np.testing.assert_allclose(cm(grad), 3 * w, rtol=1e-6)
        w = w - grad
        np.testing.assert_allclose(cm.get_state("w"), w, rtol=1e-6)


def test_fused_optimiser_updates_are_in_place():
    b = GraphBuilder("update")
    w = b.input("w", (8, 3))
    grad = b.input("g", (8, 3))
    lr = b.input("lr", (1,))
    g = b.build(b.op("Sub", w, b.op("Mul", grad, lr), name="w.new"))
    fused = cnncompiler.compile(g).graph
    assert [n.op for n in fused.nodes] == ["Fused"]
    program = lower_graph(fused, 64, state={"w": "w.new"})
    check_plan(program.graph, program.plan)
    assert program.plan.state_in_place == ["w"] and program.state_copies == []
    (writer,) = program.calls
    assert "w" not in writer.kernel.inputs    # one buffer, read then written
    assert writer.bindings[-1].offset == program.plan.offsets["w"]


def test_an_update_fused_into_a_matmul_epilogue_is_copied():
    """The GEMM stores its product to the output before its epilogue reads w: writing that
    output over w would lose w, so the kernel check refuses and the update is copied."""
    g = sgd_graph()
    fused = cnncompiler.compile(g).graph
    writer = [n for n in fused.nodes if n.outputs[0].name == "w.new"][0]
    assert writer.op == "Fused" and "w" in [v.name for v in writer.inputs]
    assert not writes_in_place(lower_node(writer, "k"), "w")
    program = lower_graph(fused, 64, state={"w": "w.new"})
    check_plan(program.graph, program.plan)
    assert program.plan.state_in_place == [] and program.state_copies == ["w"]


def test_the_kernel_check_refuses_reads_at_other_elements():
    b = GraphBuilder("k")
    w = b.input("w", (4, 4))
    row = b.input("row", (1, 4))
    b.build([b.op("Add", w, w), b.op("Transpose", w, perm=(1, 0)), b.op("Add", w, row),
             b.op("ReduceSum", w, axes=(1,), keepdims=True), b.op("Add", row, w)])
    nodes = b.nodes
    elementwise, transpose, broadcast_out, reduce, broadcast_in = nodes
    assert writes_in_place(lower_node(elementwise, "k"), "w")
    assert not writes_in_place(lower_node(transpose, "k"), "w")
    assert writes_in_place(lower_node(broadcast_out, "k"), "w")
    assert not writes_in_place(lower_node(reduce, "k"), "w")      # not the same shape
    assert not writes_in_place(lower_node(broadcast_out, "k"), "row")   # a row, many times
    assert writes_in_place(lower_node(broadcast_in, "k"), "w")
    big = GraphBuilder("big")   # nested loops (cpu: one flat range in blocks; gpu: a grid)
    big.build(big.op("Mul", big.input("v", (3, 5, 7, 9)), big.const(np.float32(0.5))))
    for target in ("cpu", "gpu"):
        assert writes_in_place(lower_node(big.nodes[0], "k", target=target), "v")


# ------------------------------------------------------------------------ fallbacks
def fallback_graphs():
    """(graph, state, the next states from (w, g[, v]), y from them): bindings that are
    not plain elementwise updates (all but the last fall back to a copy)."""
    out = []
    b = GraphBuilder("transpose")                     # reads w at other elements
    w = b.input("w", (4, 4))
    g = b.input("g", (4, 4))
    out.append((b.build([b.op("Add", w, g, name="y"),
                         b.op("Transpose", w, perm=(1, 0), name="w.new")]),
                {"w": "w.new"}, lambda w, g: {"w": w.T}, lambda w, g: w + g))
    b = GraphBuilder("cycle")                         # a reader of w needs w.new
    w = b.input("w", (4, 4))
    g = b.input("g", (4, 4))
    new = b.op("Sub", w, g, name="w.new")
    out.append((b.build([b.op("Mul", new, w, name="y"), new]), {"w": "w.new"},
                lambda w, g: {"w": w - g}, lambda w, g: (w - g) * w))
    b = GraphBuilder("from_input")                    # the next value is a plain input
    w = b.input("w", (4, 4))
    g = b.input("g", (4, 4))
    out.append((b.build([b.op("Add", w, g, name="y"), g]), {"w": "g"},
                lambda w, g: {"w": g}, lambda w, g: w + g))
    b = GraphBuilder("swap")                          # two states that swap values
    w = b.input("w", (4, 4))
    g = b.input("g", (4, 4))
    v = b.input("v", (4, 4))
    w_new = b.op("Mul", v, b.const(np.float32(1.0)), name="w.new")
    v_new = b.op("Add", w, g, name="v.new")
    out.append((b.build([b.op("Sub", w, v, name="y"), w_new, v_new]),
                {"w": "w.new", "v": "v.new"}, lambda w, g, v: {"w": v, "v": w + g},
                lambda w, g, v: w - v))
    b = GraphBuilder("constant")   # reads no w: written in place once y has read w
    w = b.input("w", (4, 4))
    g = b.input("g", (4, 4))
    reset = b.op("Mul", b.const(np.eye(4, dtype=np.float32)), b.const(np.float32(2.0)),
                 name="reset")
    out.append((b.build([b.op("Add", w, g, name="y"), reset]), {"w": "reset"},
                lambda w, g: {"w": 2 * np.eye(4)}, lambda w, g: w + g))
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(5),
                         ids=["transpose", "cycle", "from_input", "swap", "constant"])
def test_fallback_bindings_stay_correct(backend, case):
    graph, state, step, output = fallback_graphs()[case]
    cm = compiled(graph, backend, state=state)
    values = {n: RNG.standard_normal((4, 4)).astype(np.float32) for n in state}
    for name, value in values.items():
        cm.set_state(name, value)
    grad = RNG.standard_normal((4, 4)).astype(np.float32)
    for _ in range(3):
        args = [values["w"], grad] + ([values["v"]] if "v" in values else [])
        np.testing.assert_allclose(cm(g=grad), output(*args), rtol=1e-6)
        values = step(*args)
        for name, value in values.items():
            np.testing.assert_allclose(cm.get_state(name), value, rtol=1e-6)


def test_what_falls_back_to_a_copy():
    copies = []
    for graph, state, _, _ in fallback_graphs():
        program = lower_graph(cnncompiler.compile(graph, opt_level=1).graph, 64, state=state)
        check_plan(program.graph, program.plan)
        copies.append((sorted(program.plan.state_in_place), sorted(program.state_copies)))
    assert copies == [([], ["w"]), ([], ["w"]), ([], ["w"]), (["w"], ["v"]), (["w"], [])]


def test_an_output_holding_the_old_state_is_refused_where_the_state_is_updated():
    b = GraphBuilder("old")
    w = b.input("w", (4,))
    g = b.input("g", (4,))
    g2 = b.build([b.op("Reshape", w, shape=(2, 2), name="old"), b.op("Sub", w, g, name="n")])
    with pytest.raises(UnsupportedError, match=r"\['old'\] hold the old value of state 'w'"):
        lower_graph(g2, 64, state={"w": "n"})
    ref = cnncompiler.compile(g2, state={"w": "n"}, opt_level=0)   # the host keeps a copy
    np.testing.assert_array_equal(ref(np.ones(4, np.float32)), np.zeros((2, 2)))


# ------------------------------------------------------------------------- Trainer
def bn_cnn(seed=0):
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AvgPool2d(2), nn.Flatten(), nn.Dropout(0.25),
                        nn.Linear(8 * 4 * 4, 10))
    net.input_shape = (1, 1, 8, 8)
    return net.init_parameters(seed)


def batches(sizes, seed=1):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((n, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, n))
            for n in sizes]


def functional_steps(trainer, backend, data):
    """The old way: a step graph compiled without state, every parameter, slot and
    statistic fed in and read back per step. (losses, final state)"""
    state = trainer.state_dict()
    models, losses = {}, []
    for step, (x, y) in enumerate(data, start=1):
        if len(x) not in models:
            models[len(x)] = cnncompiler.compile(trainer.step_graph(len(x)), backend=backend,
                                                 **trainer.options)
        model = models[len(x)]
        target = np.eye(10, dtype=np.float32)[y]
        feeds = {model.graph.inputs[0].name: x, "target": target, **state,
                 **trainer.dropout_masks(len(x), step),
                 **{f"hyper.{h}": np.full(1, v, np.float32)
                    for h, v in trainer.optimizer.hyper(step).items()}}
        loss, *rest = model(**feeds)
        state = dict(zip(trainer.state_names, rest))
        losses.append(float(loss.reshape(-1)[0]))
    return losses, state


@pytest.mark.parametrize("backend", BACKENDS)
def test_trainer_steps_match_a_functional_step(backend):
    """Same numbers as feeding the state in and out, including across batch sizes (the
    state moves between the per-batch step models) and a state read mid-run."""
    require_backend(backend)
    opt = optim.Adam(lr=1e-2)
    data = batches([8, 8, 4, 8, 4])
    options = {"threads": 1} if backend == "llvm" else {}
    trainer = cnncompiler.compile_training(bn_cnn(), optimizer=opt, backend=backend,
                                           batch_size=8, **options)
    start = trainer.state_dict()
    losses = []
    for i, (x, y) in enumerate(data):
        losses.append(trainer.step(x, y))
        if i == 1:
            assert set(trainer.params) == set(trainer.param_names)   # a read in between
    ref_losses, ref_state = functional_steps(fresh_like(trainer, start), backend, data)
    tol = 0 if backend == "reference" else 1e-5
    assert losses == pytest.approx(ref_losses, rel=tol, abs=tol)
    state = trainer.state_dict()
    assert set(state) == set(ref_state)
    for name, ref in ref_state.items():
        assert rel_err(state[name], ref) <= tol, name
    assert trainer.stats and trainer.slots   # running statistics and Adam's slots moved too


def fresh_like(trainer, state):
    again = cnncompiler.compile_training(bn_cnn(), optimizer=trainer.optimizer,
                                         backend=trainer.backend, batch_size=8,
                                         **trainer.options)
    again.load_state_dict(state)
    return again


def test_trainer_state_is_in_the_step_executable():
    trainer = cnncompiler.compile_training(bn_cnn(), optimizer=optim.SGD(lr=0.1, momentum=0.9),
                                           backend="llvm", batch_size=8)
    x, y = batches([8])[0]
    trainer.step(x, y)
    model = trainer._step_models[8]
    masks = list(trainer.dropout_masks(8, 1))
    assert masks and set(model.input_names) == {"x", "target", "hyper.lr", *masks}
    assert len(model.output_names) == 1       # the loss: the state stays inside
    assert set(model.state_names) == set(trainer.state_names)
    exe = executable_of(model)
    assert set(exe.plan.state_in_place) == set(trainer.param_names + trainer.slot_names
                                              + trainer.stat_names)
    assert exe.state_copies == []
    check_plan(exe.program_graph, exe.plan)
    # the trainer's view is the executable's state
    name = trainer.param_names[0]
    np.testing.assert_array_equal(trainer.params[name], model.get_state(name))
    # setting parameters goes through to the next step
    zeros = {n: np.zeros_like(v) for n, v in trainer.params.items()}
    trainer.params = zeros
    np.testing.assert_array_equal(trainer.params[name], 0)
    trainer.step(x, y)
    assert np.any(model.get_state(trainer.param_names[-1]) != 0)   # the bias learnt


def test_trainer_save_load_round_trip(tmp_path):
    data = batches([8] * 4)
    opt = optim.SGD(lr=0.05, momentum=0.9)
    trainer = cnncompiler.compile_training(bn_cnn(), optimizer=opt, backend="llvm",
                                           batch_size=8)
    for x, y in data[:2]:
        trainer.step(x, y)
    trainer.save(tmp_path / "t.npz")
    again = cnncompiler.compile_training(bn_cnn(seed=3), optimizer=opt, backend="llvm",
                                         batch_size=8)
    again.step(*data[0])                       # its step model holds other values now
    again.load(tmp_path / "t.npz")
    assert again.steps == trainer.steps
    for name, value in trainer.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[name], value)
    for x, y in data[2:]:
        assert again.step(x, y) == trainer.step(x, y)
    for name, value in trainer.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[name], value)
    np.testing.assert_array_equal(again.predict(data[0][0]), trainer.predict(data[0][0]))
    model = again.model
    for name in again.param_names:
        np.testing.assert_array_equal(model.data[name], trainer.params[name])
    with pytest.raises(ModelError, match="shape"):
        again.load_state_dict({**trainer.state_dict(),
                               again.param_names[0]: np.zeros(3, np.float32)})
