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
