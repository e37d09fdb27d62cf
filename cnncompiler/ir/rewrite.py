"""Rebuilding a graph with changes: the way passes edit the immutable-by-convention IR.

A :class:`Rewriter` copies a graph into a fresh builder node by node. A pass decides per node
whether to copy it, drop it (aliasing its outputs to other values) or replace it by new nodes;
every new node is typed by its op's inference as it is added, and names are kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cnncompiler.ir.builder import GraphBuilder
from cnncompiler.ir.graph import Graph, Node, Value, ValueKind, free_name


class Rewriter:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.builder = GraphBuilder(graph.name)
        self._map: dict[str, Value] = {}
        self._old_stored = {v.name for v in graph.values.values() if v.is_stored}
        for v in graph.inputs:
            self._map[v.name] = self.builder.input(v.name, v.type.shape, v.type.dtype)

    def value(self, v: Value | None) -> Value | None:
        """The new graph's value for ``v`` (stored tensors are carried over on first use)."""
        if v is None:
            return None
        new = self._map.get(v.name)
        if new is None:
            if not v.is_stored:
                raise KeyError(f"value {v.name!r} is used before it is defined")
            new = self.builder.param(v.name, self.graph.data.get(v.name), shape=v.type.shape,
                                     dtype=v.type.dtype, trainable=v.kind is ValueKind.PARAM)
            self._map[v.name] = new
        return new

    def data(self, v: Value) -> np.ndarray | None:
        """The stored array behind ``v`` (None for computed values)."""
        return self.graph.data.get(v.name) if v.is_stored else None

    def copy(self, node: Node) -> list[Value]:
        """Copy ``node`` unchanged (inputs remapped)."""
        outs = self.builder.add_node(node.op, [self.value(v) for v in node.inputs],
                                     dict(node.attrs), node.name, len(node.outputs),
                                     [v.name for v in node.outputs])
        for old, new in zip(node.outputs, outs):
            self._map[old.name] = new
        return outs

    def add(self, op: str, inputs: list[Value | None], attrs: dict[str, Any] | None = None,
            name: str | None = None, outputs: list[Value] | None = None) -> list[Value]:
        """Add a new node; ``outputs`` are the old values it stands for (names are kept)."""
        outs = self.builder.add_node(op, inputs, attrs or {}, name, None if outputs is None
                                     else len(outputs), None if outputs is None
                                     else [v.name for v in outputs])
        for old, new in zip(outputs or [], outs):
            self._map[old.name] = new
        return outs

    def const(self, array: np.ndarray, name: str, trainable: bool = False) -> Value:
        """A new stored tensor (e.g. folded weights), named ``name`` or a free variant of it
        (free in the new graph and among the old graph's stored tensors still to be copied)."""
        name = free_name(name, lambda n: self.builder.is_taken(n) or (
            n in self._old_stored and n not in self._map))
        return self.builder.param(name, array, trainable=trainable)

    def alias(self, old: Value, new: Value) -> None:
        """From now on, uses of ``old`` read ``new``."""
        self._map[old.name] = new

    def finish(self) -> Graph:
        return self.builder.build([self.value(v) for v in self.graph.outputs])
