"""The reference backend: interprets a Graph through each op's numpy reference.

It is the oracle every other backend is tested against, so it does nothing clever: nodes run
one by one in topological order, in float64 by default (``precision="float64"``), and outputs
are returned in the dtypes the graph declares. Intermediates are dropped after their last use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cnncompiler.errors import CnnCompilerError, UnsupportedError
from cnncompiler.ir.graph import Graph
from cnncompiler.runtime.backend import Backend, Executable


def _as_tuple(result: Any) -> tuple:
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)


class ReferenceExecutable(Executable):
    def __init__(self, graph: Graph, precision: str):
        self.graph = graph
        self.compute = np.dtype(precision)
        self._stored = {name: self._cast(arr) for name, arr in graph.data.items()}
        last_use: dict[str, int] = {}
        for i, n in enumerate(graph.nodes):
            for v in n.inputs:
                if v is not None:
                    last_use[v.name] = i
        keep = {v.name for v in graph.outputs}
        self._free_after = [[name for name, at in last_use.items() if at == i and name not in keep
                             and name not in self._stored] for i in range(len(graph.nodes))]

    def _cast(self, a: np.ndarray) -> np.ndarray:
        return a.astype(self.compute) if a.dtype.kind == "f" else a

    def run(self, inputs: Sequence[np.ndarray], keep_intermediates: bool = False
            ) -> list[np.ndarray]:
        env: dict[str, np.ndarray] = dict(self._stored)
        for v, a in zip(self.graph.inputs, inputs):
            env[v.name] = self._cast(np.asarray(a))
        for i, node in enumerate(self.graph.nodes):
            args = [None if v is None else env[v.name] for v in node.inputs]
            try:
                results = _as_tuple(node.opdef.reference(args, node.attrs))
            except CnnCompilerError:
                raise
            except Exception as e:  # a reference bug must still name the node
                raise CnnCompilerError(f"node '{node.name}' ({node.op}) failed in the reference "
                                       f"backend: {type(e).__name__}: {e}") from e
            for v, r in zip(node.outputs, results):
                env[v.name] = np.asarray(r)
            if not keep_intermediates:
                for name in self._free_after[i]:
                    env.pop(name, None)
        self.last_env = env if keep_intermediates else None
        return [env[v.name].astype(v.type.dtype.numpy, copy=False) for v in self.graph.outputs]


class ReferenceBackend(Backend):
    name = "reference"

    def describe(self) -> str:
        return "numpy interpreter (float64 oracle), always available"

    def compile(self, graph: Graph, precision: str = "float64", **options: Any
                ) -> ReferenceExecutable:
        if precision not in ("float64", "float32"):
            raise UnsupportedError(f"reference precision must be float64 or float32, "
                                   f"got {precision!r}")
        if options:
            raise UnsupportedError(f"unknown reference-backend option(s): {sorted(options)}")
        return ReferenceExecutable(graph, precision)


def evaluate(graph: Graph, inputs: dict[str, np.ndarray], precision: str = "float64"
             ) -> list[np.ndarray]:
    """Run ``graph`` once and return outputs computed in ``precision`` (not cast back)."""
    exe = ReferenceExecutable(graph, precision)
    exe.run([inputs[v.name] for v in graph.inputs], keep_intermediates=True)
    return [exe.last_env[v.name] for v in graph.outputs]


__all__ = ["ReferenceBackend", "ReferenceExecutable", "evaluate"]
