"""The graph IR: values, nodes and graphs.

A :class:`Graph` has named inputs, parameters (trainable weights), constants (fixed
tensors such as BatchNorm running statistics), nodes in topological order and outputs.
Values are immutable by convention: passes build new graphs rather than editing values
in place. networkx is a *view* of the IR (``to_networkx``) for graph algorithms and DOT.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

import numpy as np

from cnncompiler.errors import GraphError
from cnncompiler.ir.types import TensorType

if TYPE_CHECKING:
    import networkx as nx

    from cnncompiler.ops.opdef import OpDef



def free_name(base: str, taken: Callable[[str], bool]) -> str:
    """``base`` if ``taken(base)`` is false, else the first of ``base_1``, ``base_2``... it is
    false for (the one naming rule of new values, nodes and initializers)."""
    name, k = base, 0
    while taken(name):
        k += 1
        name = f"{base}_{k}"
    return name


class ValueKind(Enum):
    INPUT = "input"          # fed by the caller at run time
    PARAM = "param"          # trainable weight, stored in the graph
    CONST = "const"          # fixed tensor stored in the graph (running stats, shapes)
    INTERMEDIATE = "value"   # produced by a node


@dataclass(eq=False)
class Value:
    """A tensor in the graph: a name, a type and who produces it."""

    name: str
    type: TensorType
    kind: ValueKind = ValueKind.INTERMEDIATE
    producer: Node | None = None

    @property
    def shape(self):
        return self.type.shape

    @property
    def dtype(self):
        return self.type.dtype

    @property
    def is_stored(self) -> bool:
        """True for parameters and constants (their data lives in the graph)."""
        return self.kind in (ValueKind.PARAM, ValueKind.CONST)

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


@dataclass(eq=False)
class Node:
    """One op application. ``inputs`` may hold None for an absent optional input."""

    op: str
    inputs: list[Value | None]
    outputs: list[Value]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""

    @property
    def opdef(self) -> OpDef:
        from cnncompiler.ops.registry import get_op

        return get_op(self.op)

    def __repr__(self) -> str:
        return f"Node({self.name}: {self.op})"


class Graph:
    """A typed dataflow graph with its weights."""

    def __init__(self, name: str, inputs: list[Value], outputs: list[Value], nodes: list[Node],
                 data: dict[str, np.ndarray | None]):
        self.name = name
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.nodes = list(nodes)
        # name -> array for every PARAM/CONST value; None while weights are not materialised
        # (shape-only graphs, e.g. for ``summary`` of a 138M-parameter net).
        self.data = dict(data)
        self._values: dict[str, Value] | None = None

    # ----------------------------------------------------------------- queries
    @property
    def values(self) -> dict[str, Value]:
        """Every value by name: inputs, stored tensors and node outputs."""
        if self._values is None:
            table: dict[str, Value] = {v.name: v for v in self.inputs}
            for n in self.nodes:
                for v in n.inputs:
                    if v is not None and v.is_stored:
                        table[v.name] = v
                for v in n.outputs:
                    table[v.name] = v
            self._values = table
        return self._values

    @property
    def params(self) -> list[Value]:
        return [v for v in self.values.values() if v.kind is ValueKind.PARAM]

    @property
    def constants(self) -> list[Value]:
        return [v for v in self.values.values() if v.kind is ValueKind.CONST]

    @property
    def has_data(self) -> bool:
        return all(a is not None for a in self.data.values())

    def consumers(self) -> dict[str, list[Node]]:
        """Value name -> nodes that read it (graph outputs are not nodes)."""
        uses: dict[str, list[Node]] = {name: [] for name in self.values}
        for n in self.nodes:
            for v in n.inputs:
                if v is not None:
                    uses[v.name].append(n)
        return uses

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"graph {self.name!r} has no node {name!r}")

    def num_params(self) -> int:
        """Number of trainable scalars (running statistics and other constants excluded)."""
        return sum(v.type.numel() for v in self.params)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    # ------------------------------------------------------------ invariants
    def verify(self) -> Graph:
        """Check every IR invariant; raise :class:`GraphError` naming the first broken one.

        Invariants: unique value and node names; each node input is defined before use
        (topological order) and is the very object the graph knows under that name; each
        output's producer is its node; registered ops with valid attributes and arity; the
        stored types equal what the op's inference gives; stored data matches its type;
        graph outputs are defined.
        """
        from cnncompiler.ops.registry import get_op, infer_node

        defined: dict[str, Value] = {}
        for v in self.inputs:
            if v.kind is not ValueKind.INPUT:
                raise GraphError(f"graph input {v.name!r} has kind {v.kind.value}")
            if v.name in defined:
                raise GraphError(f"duplicate value name {v.name!r}")
            defined[v.name] = v
        for name, arr in self.data.items():
            if arr is None:
                continue
            v = self.values.get(name)
            if v is None:
                continue
            if tuple(arr.shape) != v.type.shape or arr.dtype != v.type.dtype.numpy:
                raise GraphError(f"stored tensor {name!r} is {arr.dtype}{list(arr.shape)} "
                                 f"but its value is typed {v.type}")
        node_names: set[str] = set()
        for n in self.nodes:
            if not n.name or n.name in node_names:
                raise GraphError(f"node names must be unique and non-empty: {n.name!r}")
            node_names.add(n.name)
            get_op(n.op)  # raises UnsupportedError for unknown ops
            for v in n.inputs:
                if v is None:
                    continue
                if v.is_stored:
                    if v.name not in self.data:
                        raise GraphError(f"node {n.name!r} reads stored tensor {v.name!r} "
                                         "that the graph does not hold")
                    known = defined.setdefault(v.name, v)
                else:
                    known = defined.get(v.name)
                    if known is None:
                        raise GraphError(f"node {n.name!r} reads {v.name!r} before it is "
                                         "defined (nodes are not in topological order)")
                if known is not v:
                    raise GraphError(f"two different values are named {v.name!r}")
            expected = infer_node(n.op, [v.type if v else None for v in n.inputs], n.attrs,
                                  n.name, num_outputs=len(n.outputs))
            if len(expected) != len(n.outputs):
                raise GraphError(f"node {n.name!r} has {len(n.outputs)} outputs, "
                                 f"op {n.op} gives {len(expected)}")
            for v, t in zip(n.outputs, expected):
                if v.producer is not n:
                    raise GraphError(f"value {v.name!r} does not point back to node {n.name!r}")
                if v.type != t:
                    raise GraphError(f"value {v.name!r} is typed {v.type} but {n.op} "
                                     f"infers {t}")
                if v.name in defined:
                    raise GraphError(f"duplicate value name {v.name!r}")
                defined[v.name] = v
        for v in self.outputs:
            if defined.get(v.name) is not v:
                raise GraphError(f"graph output {v.name!r} is not defined by the graph")
        symbols = {s for v in self.inputs for s in v.type.symbols}
        if len(symbols) > 1:
            raise GraphError(f"at most one symbolic dimension is supported, got {sorted(symbols)}")
        return self

    # -------------------------------------------------------------- printing
    def dump(self) -> str:
        """A readable text form, one line per node, in the style of MLIR/TVM Relay dumps."""
        from cnncompiler.ir.printer import dump_graph

        return dump_graph(self)

    def __str__(self) -> str:
        return self.dump()

    def __repr__(self) -> str:
        return (f"Graph({self.name!r}, {len(self.inputs)} inputs, {len(self.nodes)} nodes, "
                f"{len(self.outputs)} outputs)")

    def summary(self, batch: int = 1):
        """The per-layer table of the CNN lecture (see :mod:`cnncompiler.summary`)."""
        from cnncompiler.summary import summarize

        return summarize(self, batch=batch)

    def to_networkx(self) -> nx.DiGraph:
        from cnncompiler.ir.printer import to_networkx

        return to_networkx(self)

    def to_dot(self, path: str | None = None) -> str:
        from cnncompiler.ir.printer import to_dot

        return to_dot(self, path)
