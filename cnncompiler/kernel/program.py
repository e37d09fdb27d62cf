"""A whole graph as kernel calls: what every code-generating backend compiles.

Each node of the optimised graph is lowered to one kernel per output (a view whose output
shares its input's arena bytes needs none); each kernel buffer is bound either to the arena
at the memory plan's byte offset of an activation, or to a weight array (a stored value,
or a compile-time table a schedule derived from one). Backends differ only in what they
render the kernels to and how they launch them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cnncompiler.ir.graph import Graph, Node
from cnncompiler.kernel import ir as K
from cnncompiler.kernel.lower import lower_node
from cnncompiler.passes.memory import MemoryPlan, plan_memory


@dataclass(frozen=True)
class Binding:
    """Where a kernel buffer lives: weight ``slot`` >= 1 (``weights[slot - 1]``), or the arena
    (slot 0) at ``offset`` bytes."""

    slot: int
    offset: int = 0

    @property
    def in_arena(self) -> bool:
        return self.slot == 0


@dataclass
class KernelCall:
    kernel: K.Kernel
    node: Node
    output: int                    # which output of ``node`` the kernel computes
    bindings: list[Binding]        # one per kernel buffer, in order


@dataclass
class GraphProgram:
    graph: Graph
    plan: MemoryPlan
    calls: list[KernelCall] = field(default_factory=list)
    weights: list[np.ndarray] = field(default_factory=list)


def ident(name: str) -> str:
    """``name`` as a C/LLVM identifier."""
    return "".join(c if c.isalnum() else "_" for c in name)


def lower_graph(graph: Graph, alignment: int, target: str = "cpu") -> GraphProgram:
    """Every kernel of ``graph`` (static shapes) in schedule order, with its bindings;
    ``target`` picks the schedules (see :func:`~cnncompiler.kernel.lower.lower_node`).

    The memory plan never reuses an input's bytes for an output (``inplace=False``): kernels
    declare their buffers non-aliasing (LLVM ``noalias``, OpenCL ``restrict``).
    """
    plan = plan_memory(graph, batch=1, alignment=alignment, inplace=False)
    program = GraphProgram(graph, plan)
    weight_slot: dict[str, int] = {}

    def weight(name: str) -> Binding:
        if name not in weight_slot:
            program.weights.append(np.ascontiguousarray(graph.data[name]))
            weight_slot[name] = len(program.weights)
        return Binding(weight_slot[name])

    values = graph.values
    for i, node in enumerate(graph.nodes):
        out = node.outputs[0]
        if node.opdef.view and plan.offsets.get(out.name) == plan.offsets.get(
                node.inputs[0].name):
            continue  # the output aliases the input buffer: nothing to do
        several = len(node.outputs) > 1   # one kernel per output (Split)
        for k, out in enumerate(node.outputs):
            name = f"k{i}_{ident(node.name)}" + (f"_out{k}" if several else "")
            kernel = lower_node(node, name, graph.data, output=k, target=target)
            bindings = [weight(v) if values[v].is_stored else Binding(0, plan.offsets[v])
                        for v in kernel.inputs]
            bindings.append(Binding(0, plan.offsets[out.name]))
            for array in kernel.tables.values():   # compile-time tables travel like weights
                program.weights.append(array)
                bindings.append(Binding(len(program.weights)))
            program.calls.append(KernelCall(kernel, node, k, bindings))
    return program
