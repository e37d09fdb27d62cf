"""The user-facing runtime API: ``compile(model, backend=...)`` -> :class:`CompiledModel`."""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cnncompiler.errors import InputError, ModelError, UnsupportedError
from cnncompiler.ir.graph import Graph
from cnncompiler.ir.specialize import bind_symbols
from cnncompiler.passes.manager import PassManager
from cnncompiler.runtime.backend import HostState, StatefulGraph
from cnncompiler.runtime.registry import get_backend
from cnncompiler.runtime.validate import InputBinder


def as_graph(model: Any, input_shape: Sequence[int | str] | None = None,
             batch: int | None = None) -> Graph:
    """A Graph from a Graph, a DSL model, or (with the ONNX front end) an ONNX file/ModelProto.

    ``batch`` pins a symbolic batch dim to that size.
    """
    from cnncompiler.nn.module import Module

    if isinstance(model, Graph):
        graph = model
    elif isinstance(model, Module):
        graph = model.to_graph(input_shape)
    elif isinstance(model, (str, os.PathLike)) or type(model).__name__ == "ModelProto":
        try:
            onnx_frontend = importlib.import_module("cnncompiler.frontends.onnx")
        except ImportError as e:
            raise UnsupportedError(f"loading ONNX models needs the ONNX front end: {e}") from e
        graph = onnx_frontend.load(model)
    else:
        raise ModelError(f"cannot compile a {type(model).__name__}: pass a cnncompiler.nn model,"
                         " a Graph, an ONNX file path or an onnx.ModelProto")
    symbols = sorted({s for v in graph.inputs for s in v.type.symbols})
    if batch is not None and symbols:
        graph = bind_symbols(graph, {symbols[0]: batch})
    return graph


class CompiledModel:
    """A graph compiled for one backend. Call it with arrays in graph-input order or by name;
    it returns one array for a single-output model and a tuple otherwise.

    A model compiled with ``state`` keeps those inputs itself: calls take only the other
    inputs (``input_names``) and return only the outputs that are not state updates
    (``output_names``); each call replaces every state by its next value. ``get_state``,
    ``set_state`` and ``state()`` read and write it (reads are copies)."""

    def __init__(self, graph: Graph, backend: str, executable, compile_seconds: float,
                 passes: PassManager | None = None, source: Graph | None = None):
        self.graph = graph            # the optimised graph the backend compiled
        self.source = source or graph  # the graph before optimisation
        self.backend = backend
        self.executable = executable
        self.compile_seconds = compile_seconds
        self.passes = passes
        self.state_bindings: dict[str, str] = dict(getattr(graph, "state", {}))
        updates = set(self.state_bindings.values())
        self._inputs = [v for v in graph.inputs if v.name not in self.state_bindings]
        self._bind = InputBinder(self._inputs)
        self._outputs = [v for v in graph.outputs if v.name not in updates]
        self._state_types = {v.name: v.type for v in graph.inputs
                             if v.name in self.state_bindings}

    def explain(self) -> str:
        """What each optimisation pass did, in order."""
        return self.passes.explain() if self.passes else "no passes ran"

    @property
    def input_names(self) -> list[str]:
        """The inputs a call takes (state inputs excluded)."""
        return [v.name for v in self._inputs]

    @property
    def output_names(self) -> list[str]:
        """The outputs a call returns (state updates excluded)."""
        return [v.name for v in self._outputs]

    @property
    def state_names(self) -> list[str]:
        """The state inputs the model keeps, in graph-input order."""
        return list(self._state_types)

    def run(self, *args: Any, **kwargs: Any) -> np.ndarray | tuple[np.ndarray, ...]:
        arrays, _ = self._bind(args, kwargs)
        outputs = self.executable.run(arrays)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    __call__ = run

    def profile(self, *args: Any, repeats: int = 5, **kwargs: Any):
        """Per-kernel time, GFLOP/s and % of this CPU's FMA peak on these inputs."""
        profile = getattr(self.executable, "profile", None)
        if profile is None:
            raise UnsupportedError(f"backend {self.backend!r} has no per-kernel profiler")
        arrays, _ = self._bind(args, kwargs)
        return profile(arrays, repeats)

    # ------------------------------------------------------------------ state
    def _state_name(self, name: str) -> str:
        if name not in self._state_types:
            known = ", ".join(self._state_types) or "none (compiled without state=)"
            raise InputError(f"{name!r} is not a state of this model; its states: {known}")
        return name

    def get_state(self, name: str) -> np.ndarray:
        """A copy of state ``name``'s current value."""
        return self.executable.get_state(self._state_name(name))

    def set_state(self, name: str, value: Any) -> None:
        """Replace state ``name``'s value; ``value`` must have its shape (any dtype that
        converts to its own without changing kind, e.g. float64 to float32)."""
        t = self._state_types[self._state_name(name)]
        want = t.dtype.numpy
        array = np.asarray(value)
        if array.shape != tuple(t.shape):
            raise InputError(f"state {name!r} has shape {list(t.shape)}, got "
                             f"{list(array.shape)}")
        if not np.can_cast(array.dtype, want, casting="same_kind"):
            raise InputError(f"state {name!r} holds {want}, got {array.dtype}")
        self.executable.set_state(name, np.ascontiguousarray(array, dtype=want))

    def state(self) -> dict[str, np.ndarray]:
        """Every state's current value (copies), by name."""
        return {name: self.executable.get_state(name) for name in self._state_types}

    def export(self, path: str, batch: int | None = None) -> dict[str, str]:
        """Ahead-of-time: a shared library, its C header and a weights file (llvm)."""
        export = getattr(self.executable, "export", None)
        if export is None:
            raise UnsupportedError(f"backend {self.backend!r} cannot export a library")
        return export(path, batch=batch)

    def summary(self, batch: int = 1):
        return self.graph.summary(batch=batch)

    def __repr__(self) -> str:
        return (f"CompiledModel({self.graph.name!r}, backend={self.backend!r}, "
                f"inputs={self.input_names}, outputs={self.output_names})")


def compile(model: Any, backend: str = "reference", *, input_shape: Sequence[int | str] | None
            = None, batch: int | None = None, opt_level: int = 2,
            disable_passes: Sequence[str] = (), verify_passes: bool = False,
            keep_snapshots: Sequence[str] = (), state: Mapping[str, str] | None = None,
            **options: Any) -> CompiledModel:
    """Compile ``model`` for ``backend``.

    ``input_shape`` overrides a DSL model's default input shape; ``batch`` pins a symbolic
    batch dim (otherwise it stays symbolic and any batch runs). ``opt_level`` selects the
    pass pipeline (0 = none, the bisection path; 1 = clean-ups; 2 = everything);
    ``disable_passes`` switches single passes off; ``verify_passes`` checks the IR after each
    pass. Backend-specific ``options`` go to the backend, which rejects ones it does not know.

    ``state`` maps names to outputs: ``{"w": "w.new"}`` makes ``w`` state that the compiled
    model keeps between calls, replaced after each call by output ``w.new`` (same shape and
    dtype): a training step's parameters and optimiser slots. ``w`` is a graph input (first
    value zeros) or a stored tensor (first value its data). Calls then take the other
    inputs only and do not return state updates; see :class:`CompiledModel`. The llvm and
    opencl backends keep the state in their buffers and update it in place where they can
    (``kernel/program.py``).
    """
    start = time.perf_counter()
    source = as_graph(model, input_shape, batch)
    if not source.has_data:
        missing = [name for name, a in source.data.items() if a is None]
        raise ModelError(f"graph {source.name!r} has no data for {len(missing)} stored "
                         f"tensor(s) (e.g. {missing[:3]}); build it with weights to run it")
    initial: dict[str, np.ndarray] = {}
    positions: dict[str, int] = {}
    if state:
        source, initial, positions = _state_graph(source, state)
    impl = get_backend(backend)
    passes = PassManager(opt_level, disable_passes, verify_passes, impl.passes(**options))
    graph = passes.run(source, keep=keep_snapshots)
    if state:   # passes keep the outputs' positions, not necessarily their names
        graph = StatefulGraph(graph, {name: graph.outputs[i].name
                                      for name, i in positions.items()}, initial)
    impl.check_supported(graph)
    executable = impl.compile(graph, **options)
    if state and not getattr(executable, "native_state", False):
        executable = HostState(executable, graph)
    return CompiledModel(graph, backend, executable, time.perf_counter() - start, passes, source)


def _state_graph(graph: Graph, state: Mapping[str, str]
                 ) -> tuple[Graph, dict[str, np.ndarray], dict[str, int]]:
    """``graph`` with its stored state tensors turned into inputs, each state's first value,
    and the position among the outputs of each state's next value."""
    from cnncompiler.autodiff import rebuild

    outputs = [v.name for v in graph.outputs]
    output_types = {v.name: v.type for v in graph.outputs}
    inputs = {v.name: v for v in graph.inputs}
    stored = [name for name in state if name not in inputs]
    for name, new in state.items():
        if name not in inputs and not (name in graph.values and graph.values[name].is_stored):
            raise ModelError(f"state {name!r} is neither an input nor a stored tensor of graph "
                             f"{graph.name!r}; its inputs: {list(inputs)}")
        if new not in outputs:
            raise ModelError(f"the next value of state {name!r} is {new!r}, which is not an "
                             f"output of graph {graph.name!r}; its outputs: {outputs}")
        old, nxt = graph.values[name].type, output_types[new]
        if not old.is_static:
            raise ModelError(f"state {name!r} has a symbolic shape {list(old.shape)}: state "
                             "keeps one shape across calls")
        if old != nxt:
            raise ModelError(f"state {name!r} is {old} but its next value {new!r} is {nxt}")
    initial = {}
    for name in state:
        t = graph.values[name].type
        initial[name] = (np.array(graph.data[name], t.dtype.numpy) if name in stored
                         else np.zeros(t.shape, t.dtype.numpy))
    if stored:
        b, env = rebuild(graph, as_inputs=stored)
        graph = b.build([env[name] for name in outputs])
    return graph, initial, {name: outputs.index(new) for name, new in state.items()}
