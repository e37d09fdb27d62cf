"""Clean-up passes (opt_level 1): dead code, identities, constants, common subexpressions,
squares."""

from __future__ import annotations

import numpy as np

from cnncompiler.ir.graph import Graph, Node
from cnncompiler.ir.rewrite import Rewriter
from cnncompiler.passes.manager import register_pass


def live_nodes(graph: Graph) -> set[str]:
    """Names of the nodes some graph output depends on."""
    needed = {v.name for v in graph.outputs}
    live: set[str] = set()
    for node in reversed(graph.nodes):
        if any(v.name in needed for v in node.outputs):
            live.add(node.name)
            needed.update(v.name for v in node.inputs if v is not None)
    return live


@register_pass("dce", min_level=1)
def eliminate_dead_code(graph: Graph) -> tuple[Graph, list[str]]:
    """Remove nodes no graph output depends on (and the stored tensors only they read)."""
    live = live_nodes(graph)
    dead = [n for n in graph.nodes if n.name not in live]
    if not dead:
        return graph, []
    rw = Rewriter(graph)
    for node in graph.nodes:
        if node.name in live:
            rw.copy(node)
    return rw.finish(), [f"removed {n.name} ({n.op})" for n in dead]


def _is_noop(node: Node) -> bool:
    """Ops that return their input unchanged, read from their definition and attributes."""
    x, y = node.inputs[0], node.outputs[0]
    if node.op in ("Identity", "Dropout"):   # Dropout is the identity at inference
        return True
    if node.opdef.view or node.op == "Transpose":
        if node.op == "Transpose":
            return list(node.attrs["perm"] or reversed(range(x.type.rank))) == list(
                range(x.type.rank))
        return x.type == y.type
    if node.op == "Cast":
        return x.type == y.type
    return False


@register_pass("eliminate_identities", min_level=1)
def eliminate_identities(graph: Graph) -> tuple[Graph, list[str]]:
    """Drop Identity, inference-mode Dropout, and Reshape/Flatten/Transpose/Cast that change
    nothing. A graph output keeps its producing node so its name stays."""
    outputs = {v.name for v in graph.outputs}
    rw = Rewriter(graph)
    changes = []
    for node in graph.nodes:
        if len(node.outputs) == 1 and node.outputs[0].name not in outputs and node.inputs \
                and node.inputs[0] is not None and _is_noop(node):
            rw.alias(node.outputs[0], rw.value(node.inputs[0]))
            changes.append(f"removed {node.name} ({node.op}): no-op")
        else:
            rw.copy(node)
    return (rw.finish(), changes) if changes else (graph, [])


@register_pass("fold_constants", min_level=1)
def fold_constants(graph: Graph) -> tuple[Graph, list[str]]:
    """Evaluate nodes whose inputs are all stored tensors through the op references; their
    results become constants. (Parameters are constants at inference.)"""
    rw = Rewriter(graph)
    known: dict[str, np.ndarray] = {}
    outputs = {v.name for v in graph.outputs}
    changes = []
    for node in graph.nodes:
        args = []
        for v in node.inputs:
            if v is None:
                args.append(None)
            elif v.name in known:
                args.append(known[v.name])
            elif v.is_stored and graph.data.get(v.name) is not None:
                args.append(graph.data[v.name])
            else:
                break
        else:
            if node.inputs and not any(v.name in outputs for v in node.outputs):
                result = node.opdef.reference(args, node.attrs)
                results = result if isinstance(result, (tuple, list)) else (result,)
                for v, r in zip(node.outputs, results):
                    r = np.asarray(r, dtype=v.type.dtype.numpy)
                    known[v.name] = r
                    rw.alias(v, rw.const(r, v.name))
                changes.append(f"folded {node.name} ({node.op})")
                continue
        rw.copy(node)
    if not changes:
        return graph, []
    folded, _ = eliminate_dead_code(rw.finish())
    return folded, changes


def _attr_key(value) -> object:
    if isinstance(value, (list, tuple)):
        return tuple(_attr_key(v) for v in value)
    if isinstance(value, Graph):
        return ("graph", id(value))
    return value


@register_pass("cse", min_level=1)
def eliminate_common_subexpressions(graph: Graph) -> tuple[Graph, list[str]]:
    """Merge nodes that apply the same op with the same attributes to the same inputs."""
    rw = Rewriter(graph)
    outputs = {v.name for v in graph.outputs}
    seen: dict[tuple, Node] = {}
    changes = []
    for node in graph.nodes:
        key = (node.op, tuple(None if v is None else rw.value(v).name for v in node.inputs),
               tuple(sorted((k, _attr_key(v)) for k, v in node.attrs.items())),
               len(node.outputs))
        first = seen.get(key)
        if first is not None and not any(v.name in outputs for v in node.outputs):
            for old, kept in zip(node.outputs, first.outputs):
                rw.alias(old, rw.value(kept))
            changes.append(f"merged {node.name} into {first.name} ({node.op})")
            continue
        seen.setdefault(key, node)
        rw.copy(node)
    return (rw.finish(), changes) if changes else (graph, [])


@register_pass("square_powers", min_level=1, after="cse")
def square_powers(graph: Graph) -> tuple[Graph, list[str]]:
    """``Pow(x, 2)`` with a stored exponent 2 becomes ``Mul(x, x)``: the same correctly
    rounded square, without a call to ``pow`` per element (LayerNormalization exported by
    torch squares with Pow: ConvNeXt-tiny spent 17% of its time there)."""
    rw = Rewriter(graph)
    changes = []
    for node in graph.nodes:
        exponent = rw.data(node.inputs[1]) if node.op == "Pow" else None
        x = node.inputs[0] if exponent is not None else None
        if (x is not None and exponent.size == 1 and float(exponent.reshape(())) == 2.0
                and x.type.dtype.numpy.kind == "f"
                and node.outputs[0].type == x.type):   # no broadcast by the exponent
            rw.add("Mul", [rw.value(x), rw.value(x)], name=node.name, outputs=node.outputs)
            changes.append(f"{node.name}: Pow(x, 2) -> Mul(x, x)")
        else:
            rw.copy(node)
    return (rw.finish(), changes) if changes else (graph, [])
