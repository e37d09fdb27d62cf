"""Binding symbolic dims: the same graph rebuilt with concrete sizes (and every shape
re-inferred), e.g. to pin the batch before compiling for a backend that wants static shapes."""

from __future__ import annotations

from collections.abc import Mapping

from cnncompiler.errors import GraphError
from cnncompiler.ir.builder import GraphBuilder
from cnncompiler.ir.graph import Graph, Value, ValueKind


def bind_symbols(graph: Graph, bindings: Mapping[str, int]) -> Graph:
    """``graph`` with each symbolic dim in ``bindings`` replaced by its size."""
    unknown = set(bindings) - {s for v in graph.inputs for s in v.type.symbols}
    if unknown:
        raise GraphError(f"graph {graph.name!r} has no symbolic dim(s) {sorted(unknown)}")
    for name, size in bindings.items():
        if not isinstance(size, int) or size < 1:
            raise GraphError(f"symbolic dim {name!r} must be bound to a positive int, got {size!r}")
    b = GraphBuilder(graph.name)
    new: dict[str, Value] = {}
    for v in graph.inputs:
        shape = tuple(bindings.get(d, d) if isinstance(d, str) else d for d in v.type.shape)
        new[v.name] = b.input(v.name, shape, v.type.dtype)
    for v in graph.values.values():
        if v.is_stored:
            new[v.name] = b.param(v.name, graph.data.get(v.name), shape=v.type.shape,
                                  dtype=v.type.dtype, trainable=v.kind is ValueKind.PARAM)
    for n in graph.nodes:
        attrs = {k: _bind_body(v, bindings) if isinstance(v, Graph) else v
                 for k, v in n.attrs.items()}
        outs = b.add_node(n.op, [None if v is None else new[v.name] for v in n.inputs],
                          attrs, n.name, len(n.outputs), [v.name for v in n.outputs])
        new.update({old.name: v for old, v in zip(n.outputs, outs)})
    return b.build([new[v.name] for v in graph.outputs])


def _bind_body(body: Graph, bindings: Mapping[str, int]) -> Graph:
    """A node's body graph (``Fused``) bound with the symbols it shares with its graph."""
    mine = {s for v in body.inputs for s in v.type.symbols}
    shared = {k: v for k, v in bindings.items() if k in mine}
    return bind_symbols(body, shared) if shared else body
