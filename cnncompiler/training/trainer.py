"""Compiled training: one graph per step (forward, loss, backward, update), compiled once per
batch size for any backend, run with the parameters and optimiser state it returns.

The step graph takes the batch, its targets, every trainable parameter, every optimiser slot
and the optimiser's scalar hyper-parameters as inputs, and returns the loss, the new
parameters and the new slots. Parameters are inputs rather than stored weights so the same
compiled code serves every step (a backend repacks stored weights at compile time).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from cnncompiler.autodiff import gradients, rebuild
from cnncompiler.errors import InputError, ModelError
from cnncompiler.ir.graph import Graph, ValueKind
from cnncompiler.ir.specialize import bind_symbols
from cnncompiler.optim import SGD, Optimizer
from cnncompiler.runtime.api import as_graph, compile
from cnncompiler.training.losses import CLASSIFICATION, get_loss


def _batch_symbol(graph: Graph) -> str:
    symbols = sorted({s for v in graph.inputs for s in v.type.symbols})
    if len(symbols) != 1:
        raise ModelError(f"a trained graph needs exactly one symbolic (batch) dim in its "
                         f"input, found {symbols or 'none'}")
    return symbols[0]


class Trainer:
    """See :func:`compile_training`."""

    def __init__(self, model: Any, loss: str = "cross_entropy",
                 optimizer: Optimizer | None = None, backend: str = "llvm",
                 batch_size: int = 32, input_shape: Sequence[int | str] | None = None,
                 **options: Any):
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
        names = [v.name for v in graph.values.values() if v.kind is ValueKind.PARAM]
        self.param_names = sorted(names)
        self.params = {n: np.array(graph.data[n], np.float32) for n in self.param_names}
        self.slots = {f"{n}.{s}": np.zeros_like(self.params[n])
                      for n in self.param_names for s in self.optimizer.slot_names()}
        self.steps = 0
        self._step_models: dict[int, Any] = {}
        self._eval_model = None

    # ------------------------------------------------------------------ graphs
    def step_graph(self, batch: int) -> Graph:
        """The training-step graph for ``batch`` examples."""
        graph = bind_symbols(self.graph, {self.symbol: batch})
        b, env = rebuild(graph, as_inputs=self.param_names)
        out = env[graph.outputs[0].name]
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
        return b.build([loss, *new_params, *new_slots])

    def _step_model(self, batch: int):
        model = self._step_models.get(batch)
        if model is None:
            model = compile(self.step_graph(batch), backend=self.backend, **self.options)
            self._step_models[batch] = model
        return model

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
        self.steps += 1
        feeds = {model.graph.inputs[0].name: x, "target": self._targets(y, out_shape)}
        feeds.update(self.params)
        feeds.update(self.slots)
        feeds.update({f"hyper.{h}": np.full(1, v, np.float32)
                      for h, v in self.optimizer.hyper(self.steps).items()})
        loss, *rest = model(**feeds)
        n = len(self.param_names)
        self.params = dict(zip(self.param_names, rest[:n]))
        self.slots = dict(zip(self.slots, rest[n:]))
        value = float(np.asarray(loss).reshape(-1)[0])
        if not math.isfinite(value):
            raise ModelError(f"the loss became {value} at step {self.steps}; lower the "
                             "learning rate")
        return value

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
        """The model's outputs with the current parameters."""
        if self._eval_model is None:
            b, env = rebuild(self.graph, as_inputs=self.param_names)
            self._eval_model = compile(b.build(env[self.graph.outputs[0].name]),
                                       backend=self.backend, **self.options)
        name = self._eval_model.graph.inputs[0].name
        outs = [self._eval_model(**{name: np.ascontiguousarray(x[i:i + batch_size],
                                                               np.float32)}, **self.params)
                for i in range(0, len(x), batch_size)]
        return np.concatenate(outs)

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> float:
        """Classification accuracy on ``(x, y)``."""
        return float(np.mean(np.argmax(self.predict(x), axis=1) == np.asarray(y)))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters by name and optimiser slots as ``name.slot``."""
        return {**self.params, **self.slots}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        expected = set(self.params) | set(self.slots)
        if set(state) != expected:
            raise ModelError(f"state names differ: missing {sorted(expected - set(state))}, "
                             f"unexpected {sorted(set(state) - expected)}")
        for name, value in state.items():
            mine = self.params.get(name, self.slots.get(name))
            if mine.shape != value.shape:
                raise ModelError(f"{name}: shape {list(value.shape)}, expected "
                                 f"{list(mine.shape)}")
        self.params = {n: np.array(state[n], np.float32) for n in self.params}
        self.slots = {n: np.array(state[n], np.float32) for n in self.slots}

    def save(self, path: str | os.PathLike) -> None:
        np.savez(path, **self.state_dict(), __steps__=np.array(self.steps))

    def load(self, path: str | os.PathLike) -> None:
        with np.load(path) as data:
            state = {k: data[k] for k in data.files if k != "__steps__"}
            self.steps = int(data["__steps__"]) if "__steps__" in data.files else 0
        self.load_state_dict(state)

    @property
    def model(self) -> Graph:
        """The forward graph with the trained parameters (for ONNX export, inference)."""
        data = dict(self.graph.data)
        data.update(self.params)
        return Graph(self.graph.name, self.graph.inputs, self.graph.outputs, self.graph.nodes,
                     data)


def compile_training(model: Any, loss: str = "cross_entropy",
                     optimizer: Optimizer | None = None, backend: str = "llvm",
                     batch_size: int = 32, input_shape: Sequence[int | str] | None = None,
                     **options: Any) -> Trainer:
    """A :class:`Trainer` for ``model`` (a DSL model with weights, or a Graph with a symbolic
    batch dim): ``trainer.step(x, y)`` runs one compiled training step and returns the
    loss; ``evaluate``, ``predict``, ``save``/``load`` and ``model`` (the trained graph)."""
    return Trainer(model, loss, optimizer, backend, batch_size, input_shape, **options)
