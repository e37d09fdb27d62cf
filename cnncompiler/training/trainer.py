"""Compiled training: one graph per step (forward, loss, backward, update), compiled once per
batch size for any backend, run with the parameters and optimiser state it returns.

The step graph takes the batch, its targets, every trainable parameter, every optimiser slot
and the optimiser's scalar hyper-parameters as inputs, and returns the loss, the new
parameters and the new slots. Parameters are inputs rather than stored weights so the same
compiled code serves every step (a backend repacks stored weights at compile time).
Parameters, slots and running statistics are compiled as *state* (``compile(...,
state=...)``): they live in the step executable's buffers and each step updates them there
(in place on llvm and opencl), so a step copies in only the batch and out only the loss.
The trainer reads them back only when asked (``params``, ``state_dict``, ``predict``...),
and moves them to another batch size's step model when the batch size changes.

The step graph runs the model in train mode (:func:`train_mode_graph`): BatchNormalization
normalises with the batch's statistics and updates its running statistics (which, like the
parameters, are step inputs and outputs the trainer keeps), and Dropout multiplies by a
random mask the trainer draws per step from its seed (an input, so runs are reproducible
and every backend sees the same mask). ``predict``, ``evaluate`` and ``model`` use the
inference graph: running statistics, Dropout the identity.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cnncompiler.autodiff import gradients, rebuild
from cnncompiler.errors import InputError, ModelError, UnsupportedError
from cnncompiler.ir.builder import GraphBuilder
from cnncompiler.ir.graph import Graph, Node, Value, ValueKind
from cnncompiler.ir.specialize import bind_symbols
from cnncompiler.ops.gradients import scalar
from cnncompiler.optim import SGD, Optimizer
from cnncompiler.passes.conv_gemm import conv_as_gemm
from cnncompiler.runtime.api import as_graph, compile
from cnncompiler.training.losses import CLASSIFICATION, get_loss


def _batch_symbol(graph: Graph) -> str:
    symbols = sorted({s for v in graph.inputs for s in v.type.symbols})
    if len(symbols) != 1:
        raise ModelError(f"a trained graph needs exactly one symbolic (batch) dim in its "
                         f"input, found {symbols or 'none'}")
    return symbols[0]


# ---------------------------------------------------------------------------- train mode
@dataclass(frozen=True)
class DropoutMask:
    """A train-mode Dropout's mask input: ``input`` of ``shape``, dropping ``ratio``."""

    input: str
    ratio: float
    shape: tuple[int, ...]


@dataclass
class TrainMode:
    """A forward graph in train mode: ``graph``'s outputs are the model's output, then the
    updated value of each running statistic named in ``stats`` (in that order); ``masks``
    are the Dropout mask inputs it takes besides the model's input."""

    graph: Graph
    stats: list[str] = field(default_factory=list)
    masks: list[DropoutMask] = field(default_factory=list)


def running_stats(graph: Graph) -> list[str]:
    """The stored running means and variances of the graph's BatchNormalization nodes, in
    node order (mean, var per node): train mode updates them instead of training them."""
    names: list[str] = []
    for node in graph.nodes:
        if node.op != "BatchNormalization":
            continue
        for v in node.inputs[3:5]:
            if not v.is_stored:
                raise ModelError(f"node '{node.name}' (BatchNormalization): its running "
                                 f"statistic {v.name!r} is computed; train mode needs stored "
                                 "running statistics to update")
            if v.name in names:
                raise ModelError(f"node '{node.name}' (BatchNormalization): the running "
                                 f"statistic {v.name!r} is shared with another node")
            names.append(v.name)
    return names


def _batch_norm_train(b: GraphBuilder, node: Node, x: Value, scale: Value, bias: Value,
                      mean: Value, var: Value) -> tuple[Value, Value, Value]:
    """Train-mode BatchNormalization in ops that have gradient rules: (y, new running mean,
    new running var). y normalises with the batch's mean and biased variance over every
    axis but the channels; the running statistics follow the op's ONNX momentum,
    running * momentum + batch * (1 - momentum), with the unbiased batch variance for the
    running variance (as PyTorch keeps it)."""
    if node.attrs.get("layout") not in (None, "NCHW"):
        raise UnsupportedError(f"node '{node.name}' (BatchNormalization): train mode in "
                               f"layout {node.attrs['layout']} is not implemented")
    shape = x.type.shape
    c, axes = shape[1], (0, *range(2, len(shape)))
    count = math.prod(shape[d] for d in axes)
    if count < 2:
        raise ModelError(f"node '{node.name}' (BatchNormalization): train mode needs more than "
                         f"one value per channel to estimate a variance, got input shape "
                         f"{list(shape)}")
    per_channel = (1, c) + (1,) * (len(shape) - 2)
    eps, momentum = node.attrs["epsilon"], node.attrs["momentum"]

    def op(kind: str, *args: Value, label: str, **attrs: Any) -> Value:
        """An op named after the BatchNormalization node (profiles stay readable)."""
        return b.op(kind, *args, name=f"{node.name}.{label}", **attrs)

    batch_mean = op("ReduceMean", x, axes=axes, keepdims=True, label="batch_mean")
    centred = op("Sub", x, batch_mean, label="centred")
    batch_var = op("ReduceMean", op("Mul", centred, centred, label="square"), axes=axes,
                   keepdims=True, label="batch_var")
    # the per-channel factor first, so the full tensor sees one Mul and one Add
    std = op("Sqrt", op("Add", batch_var, scalar(b, eps, x), label="var_eps"), label="std")
    factor = op("Div", op("Reshape", scale, shape=per_channel, label="scale"), std,
                label="factor")
    y = b.op("Add", op("Mul", centred, factor, label="scaled"),
             op("Reshape", bias, shape=per_channel, label="bias"), name=node.name)

    def update(running: Value, batch: Value, weight: float, label: str) -> Value:
        flat = op("Reshape", batch, shape=(c,), label=f"{label}_flat")
        return op("Add", op("Mul", running, scalar(b, momentum, running), label=f"{label}_old"),
                  op("Mul", flat, scalar(b, weight, running), label=f"{label}_new"),
                  label=f"{label}_update")

    new_mean = update(mean, batch_mean, 1.0 - momentum, "mean")
    new_var = update(var, batch_var, (1.0 - momentum) * count / (count - 1), "var")
    return y, new_mean, new_var


def train_mode_graph(graph: Graph) -> TrainMode:
    """``graph`` (concrete shapes) in train mode: each BatchNormalization rewritten to batch
    statistics plus its running-statistics update (extra outputs), each Dropout with a
    positive ratio to ``x * mask``, ``mask`` an input holding 0 or 1/(1 - ratio) per element.
    Everything else, names included, is copied as is."""
    mode = TrainMode(graph, running_stats(graph))
    updated: dict[str, Value] = {}

    def rewrite(b: GraphBuilder, node: Node, ins: list) -> list[Value] | None:
        if node.op == "BatchNormalization":
            y, new_mean, new_var = _batch_norm_train(b, node, *ins)
            updated[node.inputs[3].name], updated[node.inputs[4].name] = new_mean, new_var
            return [y]
        if node.op == "Dropout" and node.attrs["ratio"] > 0:
            x = ins[0]
            name, i = f"{node.name}.mask", 0
            while name in graph.values:
                i += 1
                name = f"{node.name}.mask{i}"
            mask = b.input(name, x.type.shape, x.type.dtype)
            mode.masks.append(DropoutMask(mask.name, node.attrs["ratio"], x.type.shape))
            return [b.op("Mul", x, mask, name=node.name)]
        return None

    b, env = rebuild(graph, rewrite=rewrite)
    mode.graph = b.build([*(env[v.name] for v in graph.outputs),
                          *(updated[name] for name in mode.stats)])
    return mode


def dropout_masks(masks: Sequence[DropoutMask], seed: int, step: int,
                  dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """The masks of training step ``step``: a generator seeded by (seed, step) draws each
    mask in order, so a step's masks depend only on the seed and the step number (a run
    resumed from a checkpoint draws the same ones) and differ from step to step. Kept
    elements hold 1/(1 - ratio), which keeps each activation's expected value."""
    rng = np.random.default_rng((seed, step))
    out = {}
    for m in masks:
        keep = rng.random(m.shape) >= m.ratio
        out[m.input] = keep.astype(dtype) * np.asarray(1.0 / (1.0 - m.ratio), dtype)
    return out


class Trainer:
    """See :func:`compile_training`."""

    def __init__(self, model: Any, loss: str = "cross_entropy",
                 optimizer: Optimizer | None = None, backend: str = "llvm",
                 batch_size: int = 32, input_shape: Sequence[int | str] | None = None,
                 seed: int = 0, **options: Any):
        from cnncompiler.nn.module import Module

        if input_shape is None and isinstance(model, Module) and model.input_shape:
            input_shape = ("N", *model.input_shape[1:])   # any batch size
        graph = as_graph(model, input_shape)
        if len(graph.inputs) != 1 or len(graph.outputs) != 1:
            raise ModelError("training needs a model with one input and one output, got "
                             f"{len(graph.inputs)} and {len(graph.outputs)}")
        if not graph.has_data:
            raise ModelError(f"graph {graph.name!r} has no weights; call init_parameters()")
        self.graph = graph
        self.symbol = _batch_symbol(graph)
        self.loss_name = loss
        self.loss_fn = get_loss(loss)
        self.optimizer = optimizer or SGD()
        self.backend, self.options = backend, options
        self.batch_size = batch_size
        # running statistics are updated, not trained, even where an importer marked them
        # trainable (ONNX initializers all look alike)
        self.stat_names = running_stats(graph)
        names = [v.name for v in graph.values.values()
                 if v.kind is ValueKind.PARAM and v.name not in self.stat_names]
        self.param_names = sorted(names)
        self.slot_names = [f"{n}.{s}" for n in self.param_names
                           for s in self.optimizer.slot_names()]
        self.seed = seed
        # the current state, here until a step model holds it (then ``_holder``)
        self._host_state: dict[str, np.ndarray] = {
            **{n: np.array(graph.data[n], np.float32) for n in self.param_names},
            **{n: np.array(graph.data[n], np.float32) for n in self.stat_names},
            **{f"{n}.{s}": np.zeros(graph.values[n].type.shape, np.float32)
               for n in self.param_names for s in self.optimizer.slot_names()}}
        self._holder: Any = None
        self.steps = 0
        self._step_models: dict[int, Any] = {}
        self._masks: dict[int, list[DropoutMask]] = {}
        self._eval_model = None

    # ------------------------------------------------------------------ graphs
    def train_mode(self, batch: int) -> TrainMode:
        """The forward graph in train mode for ``batch`` examples (see
        :func:`train_mode_graph`), with the running statistics as stored."""
        return train_mode_graph(bind_symbols(self.graph, {self.symbol: batch}))

    def step_graph(self, batch: int) -> Graph:
        """The training-step graph for ``batch`` examples: outputs the loss, the new
        parameters, the new optimiser slots and the new running statistics."""
        mode = self.train_mode(batch)
        self._masks[batch] = mode.masks
        # dense convs as Im2Col + GEMM: forward and backward become matrix products
        b, env = rebuild(mode.graph, as_inputs=[*self.param_names, *self.stat_names],
                         rewrite=conv_as_gemm)
        out = env[mode.graph.outputs[0].name]
        new_stats = [env[v.name] for v in mode.graph.outputs[1:]]
        target = b.input("target", out.type.shape, out.type.dtype)
        loss = self.loss_fn(b, out, target)
        params = [env[n] for n in self.param_names]
        grads = gradients(b, b.nodes, loss, params)
        hyper = {h: b.input(f"hyper.{h}", (1,), "float32")
                 for h in self.optimizer.hyper(1)}
        new_params, new_slots = [], []
        for name, w, g in zip(self.param_names, params, grads):
            slots = {s: b.input(f"{name}.{s}", w.type.shape, w.type.dtype)
                     for s in self.optimizer.slot_names()}
            new_w, new_s = self.optimizer.update(b, w, g, slots, hyper)
            new_params.append(new_w)
            new_slots += [new_s[s] for s in self.optimizer.slot_names()]
        return b.build([loss, *new_params, *new_slots, *new_stats])

    def prepare(self, batch_sizes: Sequence[int]) -> None:
        """Compile the step graphs of these batch sizes now (they are otherwise compiled
        at their first step)."""
        for batch in batch_sizes:
            self._step_model(batch)

    def _step_model(self, batch: int):
        model = self._step_models.get(batch)
        if model is None:
            graph = self.step_graph(batch)
            names = self.state_names
            updates = graph.outputs[1:1 + len(names)]   # after the loss, in this order
            model = compile(graph, backend=self.backend,
                            state={n: v.name for n, v in zip(names, updates)}, **self.options)
            self._step_models[batch] = model
        return model

    # ------------------------------------------------------ where the state lives
    @property
    def state_names(self) -> list[str]:
        """Parameters, optimiser slots and running statistics: the step models' state, in
        the order of the step graph's outputs after the loss."""
        return [*self.param_names, *self.slot_names, *self.stat_names]

    def _values(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Copies of the current values of ``names``, wherever the state lives."""
        if self._holder is not None:
            return {n: self._holder.get_state(n) for n in names}
        return {n: self._host_state[n].copy() for n in names}

    def _set_values(self, values: dict[str, np.ndarray]) -> None:
        """Replace some of the state: it comes back to the host (one copy), and the next
        step moves it into its step model."""
        state = self._values(self.state_names)
        for name, value in values.items():
            if name not in state:
                raise ModelError(f"{name!r} is not a parameter, slot or running statistic")
            if np.shape(value) != state[name].shape:
                raise ModelError(f"{name}: shape {list(np.shape(value))}, expected "
                                 f"{list(state[name].shape)}")
            state[name] = np.array(value, np.float32)
        self._host_state, self._holder = state, None

    def _hold(self, model) -> None:
        """Make ``model`` hold the state (a copy from the previous holder or the host)."""
        if model is self._holder:
            return
        for name, value in self._values(self.state_names).items():
            model.set_state(name, value)
        self._holder, self._host_state = model, {}

    @property
    def params(self) -> dict[str, np.ndarray]:
        """The current parameters (copies)."""
        return self._values(self.param_names)

    @params.setter
    def params(self, values: dict[str, np.ndarray]) -> None:
        self._set_values(values)

    @property
    def slots(self) -> dict[str, np.ndarray]:
        """The current optimiser slots by ``name.slot`` (copies)."""
        return self._values(self.slot_names)

    @slots.setter
    def slots(self, values: dict[str, np.ndarray]) -> None:
        self._set_values(values)

    @property
    def stats(self) -> dict[str, np.ndarray]:
        """The current running statistics (copies)."""
        return self._values(self.stat_names)

    @stats.setter
    def stats(self, values: dict[str, np.ndarray]) -> None:
        self._set_values(values)

    # ------------------------------------------------------------------ data
    def _targets(self, y: np.ndarray, shape: tuple) -> np.ndarray:
        if self.loss_name in CLASSIFICATION:
            y = np.asarray(y)
            if y.ndim != 1 or y.dtype.kind not in "iu":
                raise InputError(f"{self.loss_name} needs integer class labels of shape "
                                 f"[batch], got {y.dtype}{list(y.shape)}")
            classes = shape[1]
            if y.size and (y.min() < 0 or y.max() >= classes):
                raise InputError(f"class labels must lie in [0, {classes}), got "
                                 f"{y.min()}..{y.max()}")
            onehot = np.zeros(shape, np.float32)
            onehot[np.arange(len(y)), y] = 1.0
            return onehot
        y = np.asarray(y, np.float32)
        if y.shape != tuple(shape):
            raise InputError(f"{self.loss_name} targets must have the output's shape "
                             f"{list(shape)}, got {list(y.shape)}")
        return y

    # ------------------------------------------------------------------ training
    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        """One compiled forward + backward + update on the batch ``(x, y)``; the loss."""
        x = np.ascontiguousarray(x, np.float32)
        model = self._step_model(len(x))
        out_shape = model.graph.values["target"].type.shape
        targets = self._targets(y, out_shape)
        self._hold(model)
        self.steps += 1
        feeds = {model.graph.inputs[0].name: x, "target": targets}
        feeds.update(self.dropout_masks(len(x), self.steps))
        feeds.update({f"hyper.{h}": np.full(1, v, np.float32)
                      for h, v in self.optimizer.hyper(self.steps).items()})
        result = model(**feeds)   # the loss (and any other output); the state stays inside
        loss = result[0] if isinstance(result, tuple) else result
        value = float(np.asarray(loss).reshape(-1)[0])
        if not math.isfinite(value):
            raise ModelError(f"the loss became {value} at step {self.steps}; lower the "
                             "learning rate")
        return value

    def dropout_masks(self, batch: int, step: int) -> dict[str, np.ndarray]:
        """The Dropout masks training step number ``step`` (counted from 1) feeds for a batch
        of ``batch`` (see :func:`dropout_masks`); empty for a model without Dropout."""
        if batch not in self._masks:
            self._masks[batch] = self.train_mode(batch).masks
        return dropout_masks(self._masks[batch], self.seed, step)

    def fit_epoch(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator | None = None,
                  progress=None) -> float:
        """One pass over ``(x, y)`` in shuffled mini-batches; the mean loss."""
        order = (rng or np.random.default_rng(self.steps)).permutation(len(x))
        losses = []
        for start in range(0, len(x), self.batch_size):
            idx = order[start:start + self.batch_size]
            losses.append(self.step(x[idx], y[idx]) * len(idx))
            if progress is not None:
                progress(len(idx), losses[-1] / len(idx))
        return float(np.sum(losses) / len(x))

    # ------------------------------------------------------------------ inference
    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """The model's outputs (inference mode: running statistics, no dropout) with the
        current parameters and running statistics."""
        if self._eval_model is None:
            b, env = rebuild(self.graph, as_inputs=[*self.param_names, *self.stat_names])
            self._eval_model = compile(b.build(env[self.graph.outputs[0].name]),
                                       backend=self.backend, **self.options)
        name = self._eval_model.graph.inputs[0].name
        weights = self._values([*self.param_names, *self.stat_names])   # read once
        outs = [self._eval_model(**{name: np.ascontiguousarray(x[i:i + batch_size],
                                                               np.float32)}, **weights)
                for i in range(0, len(x), batch_size)]
        return np.concatenate(outs)

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> float:
        """Classification accuracy on ``(x, y)``."""
        return float(np.mean(np.argmax(self.predict(x), axis=1) == np.asarray(y)))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters and running statistics by name, optimiser slots as ``name.slot``
        (copies of the values the step model holds)."""
        return self._values([*self.param_names, *self.stat_names, *self.slot_names])

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        expected = set(self.state_names)
        if set(state) != expected:
            raise ModelError(f"state names differ: missing {sorted(expected - set(state))}, "
                             f"unexpected {sorted(set(state) - expected)}")
        self._set_values(state)

    def save(self, path: str | os.PathLike) -> None:
        np.savez(path, **self.state_dict(), __steps__=np.array(self.steps))

    def load(self, path: str | os.PathLike) -> None:
        with np.load(path) as data:
            state = {k: data[k] for k in data.files if k != "__steps__"}
            self.steps = int(data["__steps__"]) if "__steps__" in data.files else 0
        self.load_state_dict(state)

    @property
    def model(self) -> Graph:
        """The forward graph with the trained parameters and running statistics (for ONNX
        export, inference)."""
        data = dict(self.graph.data)
        data.update(self.params)
        data.update(self.stats)
        return Graph(self.graph.name, self.graph.inputs, self.graph.outputs, self.graph.nodes,
                     data)


def compile_training(model: Any, loss: str = "cross_entropy",
                     optimizer: Optimizer | None = None, backend: str = "llvm",
                     batch_size: int = 32, input_shape: Sequence[int | str] | None = None,
                     seed: int = 0, **options: Any) -> Trainer:
    """A :class:`Trainer` for ``model`` (a DSL model with weights, or a Graph with a symbolic
    batch dim): ``trainer.step(x, y)`` runs one compiled training step and returns the
    loss; ``evaluate``, ``predict``, ``save``/``load`` and ``model`` (the trained graph).
    ``seed`` seeds the Dropout masks (one draw per step, reproducible)."""
    return Trainer(model, loss, optimizer, backend, batch_size, input_shape, seed, **options)
