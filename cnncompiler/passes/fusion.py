"""Operator fusion (opt_level 2): each group becomes one ``Fused`` node, i.e. one kernel.

Rules, read from each op's fusion kind (no second table of ops):
- an output-fusable op (conv, gemm, pooling) absorbs its epilogue: the chain of elementwise
  and broadcast ops that follow it (bias, BatchNorm, ReLU/ReLU6/Sigmoid/HardSwish..., a
  residual Add with a second tensor), as long as each link's value has a single consumer and
  the broadcast does not grow the tensor;
- a chain of two or more elementwise/broadcast ops fuses on its own, and may run through a
  value that is also a graph output: that value becomes a second output of the group, so
  an optimiser's update (new slot, then new weight from it) is one kernel; a chain whose
  result feeds only another such chain (and outputs) joins it (Adam's two moments).
The fused node sits where the group's last member was, which keeps the order topological;
it produces the last member's value under the same name, then any exported values.
"""

from __future__ import annotations

from collections.abc import Sequence

from cnncompiler.ir.builder import GraphBuilder
from cnncompiler.ir.graph import Graph, Node, Value
from cnncompiler.ir.rewrite import Rewriter
from cnncompiler.ops.opdef import FusionKind
from cnncompiler.passes.manager import register_pass

EPILOGUE = (FusionKind.ELEMENTWISE, FusionKind.BROADCAST)


def fusion_groups(graph: Graph) -> list[list[Node]]:
    """Groups of two or more nodes to fuse, each in topological order."""
    return [group for group, _ in _groups(graph)]


def _groups(graph: Graph) -> list[tuple[list[Node], list[Value]]]:
    """The groups, each with the values of its members (other than the last's) that are
    graph outputs and so leave the group as extra outputs."""
    uses = graph.consumers()
    outputs = {v.name for v in graph.outputs}
    taken: set[str] = set()
    groups = []
    for node in graph.nodes:
        kind = node.opdef.fusion
        if node.name in taken or len(node.outputs) != 1 or (
                kind is not FusionKind.OUTPUT_FUSABLE and kind not in EPILOGUE):
            continue
        group, exported = [node], []
        taken.add(node.name)
        while True:
            value = group[-1].outputs[0]
            nxt = uses[value.name]
            # a graph output may pass on only inside an elementwise chain (its one kernel
            # then stores it too); a conv's result stays the last of its group
            if len(nxt) != 1 or (value.name in outputs and kind not in EPILOGUE):
                break
            c = nxt[0]
            if c.name in taken or not _extends(c, value):
                break
            if value.name in outputs:
                exported.append(value)
            group.append(c)
        if len(group) > 1:
            taken.update(n.name for n in group)
        groups.append((group, exported))   # single nodes too: they may join a chain
    groups = _merge_feeding_chains(groups, uses, outputs)
    return [(g, exported) for g, exported in groups if len(g) > 1]


def _merge_feeding_chains(groups: list[tuple[list[Node], list[Value]]], uses: dict,
                          outputs: set[str]) -> list[tuple[list[Node], list[Value]]]:
    """An elementwise chain (or single op) whose result feeds only a member of another
    elementwise chain (and maybe graph outputs) joins that chain, in front: Adam's
    second-moment update feeds the weight update, which then is one kernel. The joined
    group sits where the consumer chain ends, later than the feeding chain, which only
    that chain and outputs read."""
    pure = [g[0].opdef.fusion in EPILOGUE for g, _ in groups]
    where = {n.name: k for k, (g, _) in enumerate(groups) for n in g}
    merged: dict[int, int] = {}     # feeding group -> the group it joined

    def home(k: int) -> int:
        while k in merged:
            k = merged[k]
        return k

    for a, (group, exported) in enumerate(groups):
        value = group[-1].outputs[0]
        nxt = uses[value.name]
        if not pure[a] or len(nxt) != 1 or nxt[0].name not in where:
            continue
        b = home(where[nxt[0].name])
        if b == a or not pure[b] or not _extends(nxt[0], value):
            continue
        into, extra = groups[b]
        groups[b] = (group + into, exported + ([value] if value.name in outputs else [])
                     + extra)
        merged[a] = b
    return [g for k, g in enumerate(groups) if k not in merged]


def _extends(c: Node, value: Value) -> bool:
    """Can ``c`` join a group whose current result is ``value``?"""
    return (c.opdef.fusion in EPILOGUE and len(c.outputs) == 1
            and c.outputs[0].type == value.type            # the broadcast does not grow it
            and sum(1 for v in c.inputs if v is value) == 1)


def fused_body(group: list[Node], exported: Sequence[Value] = ()) -> tuple[Graph, list[Value]]:
    """The members as a graph (outputs: the last member's, then ``exported``), and the
    outer values it takes as inputs."""
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
    results = [mapped[group[-1].outputs[0].name], *(mapped[v.name] for v in exported)]
    return b.build(results if exported else results[0]), outer


@register_pass("fuse", min_level=2)
def fuse(graph: Graph) -> tuple[Graph, list[str]]:
    """Fuse conv/gemm/pool epilogues and elementwise chains into single kernels."""
    groups = _groups(graph)
    if not groups:
        return graph, []
    last = {g[-1].name: (g, exported) for g, exported in groups}
    member = {n.name for g, _ in groups for n in g}
    rw = Rewriter(graph)
    changes = []
    for node in graph.nodes:
        found = last.get(node.name)
        if found is not None:
            group, exported = found
            body, outer = fused_body(group, exported)
            kind = "+".join(n.op for n in group)
            name = f"fused_{group[0].name}"
            rw.add("Fused", [rw.value(v) for v in outer], {"body": body, "kind": kind}, name,
                   outputs=[node.outputs[0], *exported])
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
