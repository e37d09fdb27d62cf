"""Operator fusion (opt_level 2): each group becomes one ``Fused`` node, i.e. one kernel.

Rules, read from each op's fusion kind (no second table of ops):
- an output-fusable op (conv, gemm, pooling) absorbs its epilogue: the chain of elementwise
  and broadcast ops that follow it (bias, BatchNorm, ReLU/ReLU6/Sigmoid/HardSwish..., a
  residual Add with a second tensor), as long as each link's value has a single consumer and
  the broadcast does not grow the tensor;
- a chain of two or more elementwise/broadcast ops fuses on its own.
The fused node sits where the group's last member was, which keeps the order topological;
it produces the last member's value under the same name.
"""

from __future__ import annotations

from cnncompiler.ir.builder import GraphBuilder
from cnncompiler.ir.graph import Graph, Node, Value
from cnncompiler.ir.rewrite import Rewriter
from cnncompiler.ops.opdef import FusionKind
from cnncompiler.passes.manager import register_pass

EPILOGUE = (FusionKind.ELEMENTWISE, FusionKind.BROADCAST)


def fusion_groups(graph: Graph) -> list[list[Node]]:
    """Groups of two or more nodes to fuse, each in topological order."""
    uses = graph.consumers()
    outputs = {v.name for v in graph.outputs}
    taken: set[str] = set()
    groups = []
    for node in graph.nodes:
        kind = node.opdef.fusion
        if node.name in taken or len(node.outputs) != 1 or (
                kind is not FusionKind.OUTPUT_FUSABLE and kind not in EPILOGUE):
            continue
        group = [node]
        while True:
            value = group[-1].outputs[0]
            nxt = uses[value.name]
            if value.name in outputs or len(nxt) != 1:
                break
            c = nxt[0]
            if c.name in taken or not _extends(c, value):
                break
            group.append(c)
        if len(group) > 1:
            taken.update(n.name for n in group)
            groups.append(group)
    return groups


def _extends(c: Node, value: Value) -> bool:
    """Can ``c`` join a group whose current result is ``value``?"""
    return (c.opdef.fusion in EPILOGUE and len(c.outputs) == 1
            and c.outputs[0].type == value.type            # the broadcast does not grow it
            and sum(1 for v in c.inputs if v is value) == 1)


def fused_body(group: list[Node]) -> tuple[Graph, list[Value]]:
    """The members as a graph, and the outer values it takes as inputs."""
    inner = {v.name for n in group for v in n.outputs}
    outer: list[Value] = []
    for n in group:
        for v in n.inputs:
            if v is not None and v.name not in inner and all(v is not o for o in outer):
                outer.append(v)
    b = GraphBuilder(f"{group[0].name}_body")
    mapped = {v.name: b.input(v.name, v.type.shape, v.type.dtype) for v in outer}
    for n in group:
        outs = b.add_node(n.op, [None if v is None else mapped[v.name] for v in n.inputs],
                          dict(n.attrs), n.name, len(n.outputs), [v.name for v in n.outputs])
        mapped.update({old.name: new for old, new in zip(n.outputs, outs)})
    return b.build(mapped[group[-1].outputs[0].name]), outer


@register_pass("fuse", min_level=2)
def fuse(graph: Graph) -> tuple[Graph, list[str]]:
    """Fuse conv/gemm/pool epilogues and elementwise chains into single kernels."""
    groups = fusion_groups(graph)
    if not groups:
        return graph, []
    last = {g[-1].name: g for g in groups}
    member = {n.name for g in groups for n in g}
    rw = Rewriter(graph)
    changes = []
    for node in graph.nodes:
        group = last.get(node.name)
        if group is not None:
            body, outer = fused_body(group)
            kind = "+".join(n.op for n in group)
            name = f"fused_{group[0].name}"
            rw.add("Fused", [rw.value(v) for v in outer], {"body": body, "kind": kind}, name,
                   outputs=[node.outputs[0]])
            changes.append(" + ".join(n.name for n in group) + f" -> {name} ({kind})")
        elif node.name not in member:
            rw.copy(node)
    return rw.finish(), changes


def inline_fused(graph: Graph) -> Graph:
    """The inverse of :func:`fuse`: every ``Fused`` node replaced by its members (for
    exporting an optimised graph, or debugging a fusion)."""
    if not any(n.op == "Fused" for n in graph.nodes):
        return graph
    rw = Rewriter(graph)
    for node in graph.nodes:
        if node.op != "Fused":
            rw.copy(node)
            continue
        body = node.attrs["body"]
        inner = {v.name: rw.value(outer) for v, outer in zip(body.inputs, node.inputs)}
        for member in body.nodes:
            outs = rw.builder.add_node(member.op, [None if v is None else inner[v.name]
                                                   for v in member.inputs],
                                       dict(member.attrs), member.name, len(member.outputs),
                                       [v.name for v in member.outputs])
            inner.update({old.name: new for old, new in zip(member.outputs, outs)})
        for old, new in zip(node.outputs, body.outputs):
            rw.alias(old, inner[new.name])
    return rw.finish()
