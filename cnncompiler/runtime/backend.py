"""The interface every backend implements.

State: ``compile(..., state={input: output})`` hands a backend a :class:`StatefulGraph`.
An executable that keeps the state itself (``native_state = True``: the llvm and opencl
backends' :class:`PerShapeExecutable` subclasses, whose state stays in their arena) then
takes only the other inputs and returns only the other outputs; the runtime wraps any
other executable in :class:`HostState`, which keeps the state in numpy arrays and feeds it
on every call (the reference backend, third-party backends).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cnncompiler.errors import UnsupportedError
from cnncompiler.ir.graph import Graph, Node, Value


class StatefulGraph(Graph):
    """A graph with read-modify-write state: ``state`` maps each state input to the output
    holding its value after a call; ``initial`` holds each state's first value. It travels
    to the backend as the graph itself, so backends keep their ``compile(graph, **options)``
    signature; one that does not know it compiles it as a plain graph."""

    def __init__(self, graph: Graph, state: Mapping[str, str],
                 initial: Mapping[str, np.ndarray]):
        super().__init__(graph.name, graph.inputs, graph.outputs, graph.nodes, graph.data)
        self.state = dict(state)
        self.initial = dict(initial)

    @property
    def free_inputs(self) -> list[Value]:
        """The inputs a call takes (the state inputs excluded)."""
        return [v for v in self.inputs if v.name not in self.state]

    @property
    def free_outputs(self) -> list[Value]:
        """The outputs a call returns (the state updates excluded)."""
        updates = set(self.state.values())
        return [v for v in self.outputs if v.name not in updates]


class Executable(ABC):
    """A compiled graph: takes validated input arrays in graph-input order. A stateful one
    (``native_state``) takes and returns only the non-state inputs and outputs and keeps
    the state, read with ``get_state`` and written with ``set_state``."""

    #: whether this executable keeps a :class:`StatefulGraph`'s state itself
    native_state: bool = False

    @abstractmethod
    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        ...

    def get_state(self, name: str) -> np.ndarray:
        """A copy of state ``name``'s current value."""
        raise UnsupportedError(f"{type(self).__name__} keeps no state")

    def set_state(self, name: str, value: np.ndarray) -> None:
        """Replace state ``name``'s value (``value`` has its shape and dtype)."""
        raise UnsupportedError(f"{type(self).__name__} keeps no state")


class HostState(Executable):
    """The state of an executable that does not keep it: numpy arrays fed on every call
    and replaced by the outputs that update them."""

    native_state = True

    def __init__(self, inner: Executable, graph: StatefulGraph):
        self.inner, self.graph = inner, graph
        self.values = {name: np.array(a) for name, a in graph.initial.items()}
        self._position = {v.name: i for i, v in enumerate(graph.outputs)}

    def _all_inputs(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        given = iter(inputs)
        return [self.values[v.name] if v.name in self.graph.state else next(given)
                for v in self.graph.inputs]

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        outputs = self.inner.run(self._all_inputs(inputs))
        updates = set(self.graph.state.values())
        for name, new in self.graph.state.items():
            self.values[name] = np.array(outputs[self._position[new]], copy=True)
        return [a for v, a in zip(self.graph.outputs, outputs) if v.name not in updates]

    def profile(self, inputs: Sequence[np.ndarray], repeats: int = 5):
        profile = getattr(self.inner, "profile", None)
        if profile is None:
            raise UnsupportedError(f"{type(self.inner).__name__} has no per-kernel profiler")
        return profile(self._all_inputs(inputs), repeats)

    def get_state(self, name: str) -> np.ndarray:
        return self.values[name].copy()

    def set_state(self, name: str, value: np.ndarray) -> None:
        self.values[name] = np.array(value, copy=True)


class PerShapeExecutable(Executable):
    """An executable compiled per concrete input shape: a graph with a symbolic batch is
    specialised (``build``) on the first call with each batch size and kept. A subclass
    builds objects with ``run(inputs)`` and ``profile(inputs, repeats)``; with
    ``native_state``, also ``read_state(name)`` and ``write_state(name, array)``, and
    ``build`` passes ``self.state`` on. The state lives in one specialisation at a time
    (the *holder*); a call on another first moves it there."""

    def __init__(self, graph: Graph):
        self.graph = graph
        stateful = self.native_state and isinstance(graph, StatefulGraph)
        self.state: dict[str, str] = dict(graph.state) if stateful else {}
        self.free_inputs = graph.free_inputs if stateful else list(graph.inputs)
        self._pending: dict[str, np.ndarray] = (
            {name: np.array(a) for name, a in graph.initial.items()} if stateful else {})
        self._holder: Any = None
        self.specialised: dict[tuple, Any] = {}
        # whether any input has a symbolic dim; the specialisation serving each tuple of
        # input shapes met so far (a call's look-up: shapes -> compiled graph)
        self._symbolic = any(isinstance(d, str) for v in self.free_inputs
                             for d in v.type.shape)
        self._by_shapes: dict[tuple, Any] = {}
        if graph.inputs and all(v.type.is_static for v in graph.inputs):
            self.specialised[()] = self.build(graph)

    @abstractmethod
    def build(self, graph: Graph) -> Any:
        """The compiled form of ``graph``, whose shapes are all concrete."""

    def for_shapes(self, inputs: Sequence[np.ndarray]) -> Any:
        shapes = tuple(x.shape for x in inputs) if self._symbolic else ()
        compiled = self._by_shapes.get(shapes)
        if compiled is None:
            compiled = self._by_shapes[shapes] = self._specialise(inputs)
        if self.state and compiled is not self._holder:
            self._hold(compiled)
        return compiled

    def _specialise(self, inputs: Sequence[np.ndarray]) -> Any:
        """The compiled graph for these inputs' shapes (built on first use)."""
        from cnncompiler.ir.specialize import bind_symbols

        bindings: dict[str, int] = {}
        for v, x in zip(self.free_inputs, inputs):
            for d, size in zip(v.type.shape, x.shape):
                if isinstance(d, str):
                    bindings[d] = size
        key = tuple(sorted(bindings.items()))
        compiled = self.specialised.get(key)
        if compiled is None:
            graph = bind_symbols(self.graph, bindings) if bindings else self.graph
            compiled = self.specialised[key] = self.build(graph)
        return compiled

    def _hold(self, compiled: Any) -> None:
        """Move the state into ``compiled`` (from the previous holder, or the values set
        before any call)."""
        for name in self.state:
            compiled.write_state(name, self.get_state(name))
        self._holder, self._pending = compiled, {}

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.for_shapes(inputs).run(inputs)

    def profile(self, inputs: Sequence[np.ndarray], repeats: int = 5):
        """Per-kernel times; a stateful model's state is restored afterwards (profiling
        runs the kernels that update it several times)."""
        compiled = self.for_shapes(inputs)
        saved = {name: compiled.read_state(name) for name in self.state}
        try:
            return compiled.profile(inputs, repeats)
        finally:
            for name, value in saved.items():
                compiled.write_state(name, value)

    def get_state(self, name: str) -> np.ndarray:
        if self._holder is not None:
            return self._holder.read_state(name)
        return self._pending[name].copy()

    def set_state(self, name: str, value: np.ndarray) -> None:
        if self._holder is not None:
            self._holder.write_state(name, value)
        else:
            self._pending[name] = np.array(value, copy=True)


class Backend(ABC):
    name: str = "?"

    def unavailable_reason(self) -> str | None:
        """None if the backend works on this machine, else a sentence saying why not."""
        return None

    def describe(self) -> str:
        """A short line on what it runs on (shown by ``backends.available()``)."""
        return ""

    def passes(self, **options: Any) -> list:
        """Backend-specific passes (layout choice, schedule selection) appended to the
        pipeline, as :class:`cnncompiler.passes.Pass` objects."""
        return []

    def supports(self, node: Node) -> str | None:
        """None if ``node`` can be compiled, else why not."""
        return None

    def check_supported(self, graph: Graph) -> None:
        """Report every unsupported node at once, not one at a time."""
        problems = [(n, why) for n in graph.nodes if (why := self.supports(n))]
        if problems:
            lines = "\n".join(f"  {n.name} ({n.op}): {why}" for n, why in problems)
            raise UnsupportedError(f"backend {self.name!r} cannot compile {len(problems)} "
                                   f"node(s) of graph {graph.name!r}:\n{lines}")

    @abstractmethod
    def compile(self, graph: Graph, **options: Any) -> Executable:
        ...
