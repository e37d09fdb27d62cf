"""The interface every backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from cnncompiler.errors import UnsupportedError
from cnncompiler.ir.graph import Graph, Node


class Executable(ABC):
    """A compiled graph: takes validated input arrays in graph-input order."""

    @abstractmethod
    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        ...


class PerShapeExecutable(Executable):
    """An executable compiled per concrete input shape: a graph with a symbolic batch is
    specialised (``build``) on the first call with each batch size and kept. A subclass
    builds objects with ``run(inputs)`` and ``profile(inputs, repeats)``."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.specialised: dict[tuple, Any] = {}
        if graph.inputs and all(v.type.is_static for v in graph.inputs):
            self.specialised[()] = self.build(graph)

    @abstractmethod
    def build(self, graph: Graph) -> Any:
        """The compiled form of ``graph``, whose shapes are all concrete."""

    def for_shapes(self, inputs: Sequence[np.ndarray]) -> Any:
        from cnncompiler.ir.specialize import bind_symbols

        bindings: dict[str, int] = {}
        for v, x in zip(self.graph.inputs, inputs):
            for d, size in zip(v.type.shape, x.shape):
                if isinstance(d, str):
                    bindings[d] = size
        key = tuple(sorted(bindings.items()))
        compiled = self.specialised.get(key)
        if compiled is None:
            graph = bind_symbols(self.graph, bindings) if bindings else self.graph
            compiled = self.specialised[key] = self.build(graph)
        return compiled

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.for_shapes(inputs).run(inputs)

    def profile(self, inputs: Sequence[np.ndarray], repeats: int = 5):
        return self.for_shapes(inputs).profile(inputs, repeats)


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
