"""The backward pass: gradients of a scalar loss with respect to chosen values."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from cnncompiler.errors import UnsupportedError
from cnncompiler.ir.builder import GraphBuilder
from cnncompiler.ir.graph import Graph, Node, Value, ValueKind

#: ``rewrite(b, node, inputs)``: the outputs to use for ``node`` (built with ``b`` from the
#: copy's ``inputs``), or None to copy the node as it is
Rewrite = Callable[[GraphBuilder, Node, list], "list[Value] | None"]


def rebuild(graph: Graph, as_inputs: Iterable[str] = (), rewrite: Rewrite | None = None
            ) -> tuple[GraphBuilder, dict[str, Value]]:
    """A builder holding a copy of ``graph`` (same names), with the stored values named in
    ``as_inputs`` turned into graph inputs (a training step feeds its parameters), and the
    map from old value names to the copy's values. ``rewrite`` may replace nodes on the
    way (train mode rewrites BatchNormalization and Dropout)."""
    as_inputs = set(as_inputs)
    b = GraphBuilder(graph.name)
    env: dict[str, Value] = {}
    for v in graph.inputs:
        env[v.name] = b.input(v.name, v.type.shape, v.type.dtype)
    for name in sorted(as_inputs):
        v = graph.values[name]
        env[name] = b.input(name, v.type.shape, v.type.dtype)
    for name, data in graph.data.items():
        if name not in as_inputs and name in graph.values:
            kind = graph.values[name].kind
            env[name] = b.param(name, data, trainable=kind is ValueKind.PARAM)
    for node in graph.nodes:
        ins = [env[v.name] if v is not None else None for v in node.inputs]
        outs = rewrite(b, node, ins) if rewrite is not None else None
        if outs is None:
            outs = b.add_node(node.op, ins, dict(node.attrs), name=node.name,
                              output_names=[v.name for v in node.outputs])
        env.update((old.name, new) for old, new in zip(node.outputs, outs))
    return b, env


def _on_path(nodes: Sequence[Node], loss: Value, wrt: Sequence[Value]) -> set[str]:
    """Names of the values through which some ``wrt`` value reaches ``loss``."""
    reaches = {v.name for v in wrt}
    for node in nodes:   # forward: values depending on a wrt value
        if any(v is not None and v.name in reaches for v in node.inputs):
            reaches.update(v.name for v in node.outputs)
    needed = {loss.name} if loss.name in reaches else set()
    for node in reversed(nodes):   # backward: of those, the ones the loss depends on
        if any(v.name in needed for v in node.outputs):
            needed.update(v.name for v in node.inputs if v is not None and v.name in reaches)
    return needed


def gradients(b: GraphBuilder, nodes: Sequence[Node], loss: Value,
              wrt: Sequence[Value]) -> list[Value]:
    """Append to ``b`` the gradient of ``loss`` (a value with one element) with respect to
    each of ``wrt``, differentiating through ``nodes`` (the forward nodes, in order).

    A ``wrt`` value the loss does not depend on gets a zero gradient. Raises
    UnsupportedError naming the node when an op on the path has no gradient rule.
    """
    if int(np.prod([d for d in loss.type.shape if isinstance(d, int)])) != 1:
        raise UnsupportedError(f"the loss {loss.name!r} must have one element, not shape "
                               f"{loss.type.shape}")
    needed = _on_path(nodes, loss, wrt)
    grads: dict[str, Value] = {}
    if loss.name in needed:
        grads[loss.name] = b.const(np.ones(loss.type.shape, loss.type.dtype.numpy), "dloss")
    for node in reversed(nodes):
        outs = [grads.get(v.name) for v in node.outputs]
        if all(g is None for g in outs):
            continue
        if not any(v is not None and v.name in needed for v in node.inputs):
            continue
        rule = node.opdef.grad
        if rule is None:
            raise UnsupportedError(f"node '{node.name}' ({node.op}) is on the path from the "
                                   f"parameters to the loss and {node.op} has no gradient "
                                   "rule yet")
        for v, g in zip(node.inputs, rule(b, node, outs)):
            if v is None or g is None or v.name not in needed:
                continue
            grads[v.name] = g if v.name not in grads else b.op("Add", grads[v.name], g)
    out = []
    for v in wrt:
        g = grads.get(v.name)
        if g is None:   # a node, not a stored zero: graph outputs are computed values
            g = b.op("Mul", v, b.const(np.zeros((), v.type.dtype.numpy), "zero"))
        out.append(g)
    return out
