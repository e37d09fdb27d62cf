"""Text dump, networkx view and DOT export of a Graph."""

from __future__ import annotations

from typing import TYPE_CHECKING

import networkx as nx
import numpy as np

if TYPE_CHECKING:
    from cnncompiler.ir.graph import Graph


def _fmt_attr(v) -> str:
    if isinstance(v, tuple):
        return "[" + ", ".join(_fmt_attr(e) for e in v) + "]"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, str):
        return repr(v)
    return str(v)


def _node_lines(nodes, indent: str) -> list[str]:
    """One line per node; a node holding a graph (``Fused``) lists its members beneath."""
    from cnncompiler.ir.graph import Graph

    lines = []
    for n in nodes:
        outs = ", ".join(f"%{v.name}: {v.type}" for v in n.outputs)
        args = ", ".join("_" if v is None else f"%{v.name}" for v in n.inputs)
        attrs = ", ".join(f"{k}={_fmt_attr(v)}" for k, v in n.attrs.items()
                          if v is not None and not isinstance(v, Graph))
        lines.append(f"{indent}{outs} = {n.op}({args})" + (f" {{{attrs}}}" if attrs else "")
                     + f"  # {n.name}")
        for k, v in n.attrs.items():
            if isinstance(v, Graph):
                params = ", ".join(f"%{i.name}" for i in v.inputs)
                lines.append(f"{indent}  {k}({params}) {{")
                lines += _node_lines(v.nodes, indent + "    ")
                lines.append(f"{indent}  }}")
    return lines


def dump_graph(g: Graph) -> str:
    """One line per node: ``%out: f32[N, 64, 112, 112] = Conv(%x, %w) {strides=[2, 2]}``."""
    lines = [f"graph {g.name}("]
    for v in g.inputs:
        lines.append(f"    %{v.name}: {v.type},")
    lines.append(") {")
    stored = [v for v in g.values.values() if v.is_stored]
    if stored:
        for v in stored:
            note = "" if g.data.get(v.name) is not None else " (no data)"
            small = g.data.get(v.name)
            if small is not None and small.size <= 8:
                note = " = " + np.array2string(small.ravel(), separator=", ")
            lines.append(f"  {v.kind.value} %{v.name}: {v.type}{note}")
    lines += _node_lines(g.nodes, "  ")
    lines.append("  return " + ", ".join(f"%{v.name}" for v in g.outputs))
    lines.append("}")
    return "\n".join(lines)


def to_networkx(g: Graph) -> nx.DiGraph:
    """Nodes of the DiGraph are op nodes plus graph inputs/outputs; edges carry the value."""
    dg = nx.DiGraph(name=g.name)
    for v in g.inputs:
        dg.add_node(f"input:{v.name}", kind="input", label=f"{v.name}\n{v.type}")
    producer = {v.name: f"input:{v.name}" for v in g.inputs}
    for n in g.nodes:
        dg.add_node(n.name, kind="op", op=n.op, label=f"{n.name}\n{n.op}")
        for v in n.inputs:
            if v is not None and v.name in producer:
                dg.add_edge(producer[v.name], n.name, value=v.name, label=str(v.type))
        for v in n.outputs:
            producer[v.name] = n.name
    for v in g.outputs:
        dg.add_node(f"output:{v.name}", kind="output", label=v.name)
        dg.add_edge(producer[v.name], f"output:{v.name}", value=v.name, label=str(v.type))
    return dg


def to_dot(g: Graph, path: str | None = None) -> str:
    """Graphviz DOT text (written to ``path`` if given). Needs no pydot/pygraphviz."""

    def q(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    dg = to_networkx(g)
    lines = [f"digraph {q(g.name)} {{", "  rankdir=TB;", "  node [fontname=Helvetica];"]
    for name, data in dg.nodes(data=True):
        shape = "box" if data["kind"] == "op" else "ellipse"
        lines.append(f"  {q(name)} [label={q(data['label'])}, shape={shape}];")
    for a, b, data in dg.edges(data=True):
        lines.append(f"  {q(a)} -> {q(b)} [label={q(data['label'])}];")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    if path is not None:
        with open(path, "w") as f:
            f.write(text)
    return text
