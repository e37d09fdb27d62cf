"""GraphBuilder: the one way to create nodes, so every value is typed when it is created."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from cnncompiler.errors import GraphError
from cnncompiler.ir.graph import Graph, Node, Value, ValueKind
from cnncompiler.ir.types import Dim, DType, TensorType


class GraphBuilder:
    """Builds a :class:`Graph` node by node, running each op's shape inference as it goes."""

    def __init__(self, name: str = "graph"):
        self.name = name
        self._inputs: list[Value] = []
        self._nodes: list[Node] = []
        self._data: dict[str, np.ndarray | None] = {}
        # node names and value names are separate namespaces (a node "conv1" makes "conv1")
        self._taken: dict[str, set[str]] = {"value": set(), "node": set()}
        self._counters: dict[tuple[str, str], int] = {}

    # ---------------------------------------------------------------- names
    def unique(self, base: str, space: str = "value") -> str:
        """``base`` if free in ``space`` ("value" or "node"), else ``base_1``, ``base_2``..."""
        base = re.sub(r"\s+", "_", base) or "v"
        taken, name = self._taken[space], base
        while name in taken:
            key = (space, base)
            self._counters[key] = self._counters.get(key, 0) + 1
            name = f"{base}_{self._counters[key]}"
        taken.add(name)
        return name

    @property
    def nodes(self) -> list[Node]:
        """The nodes appended so far, in order."""
        return list(self._nodes)

    def is_taken(self, name: str, space: str = "value") -> bool:
        return name in self._taken[space]

    def _claim(self, name: str) -> str:
        if name in self._taken["value"]:
            raise GraphError(f"the name {name!r} is already used in graph {self.name!r}")
        self._taken["value"].add(name)
        return name

    # --------------------------------------------------------------- leaves
    def input(self, name: str, shape: Sequence[Dim], dtype: DType | str = DType.float32) -> Value:
        v = Value(self._claim(name), TensorType(tuple(shape), DType.of(dtype)), ValueKind.INPUT)
        self._inputs.append(v)
        return v

    def param(self, name: str, data: np.ndarray | None = None, *,
              shape: Sequence[int] | None = None, dtype: DType | str = DType.float32,
              trainable: bool = True, rename: bool = False) -> Value:
        """A stored tensor: trainable parameter, or constant with ``trainable=False``.

        Give ``data``, or only ``shape`` for a shape-only graph (weights materialised later).
        A taken ``name`` is an error, or is made unique with ``rename=True``.
        """
        name = self.unique(name) if rename else self._claim(name)
        return self._stored(name, data, shape, dtype, trainable)

    def const(self, data: Any, name: str = "const", dtype: DType | str | None = None) -> Value:
        """A constant tensor (not trained); ``name`` is made unique if taken."""
        arr = np.asarray(data, dtype=None if dtype is None else DType.of(dtype).numpy)
        return self._stored(self.unique(name), arr, None, arr.dtype, trainable=False)

    def _stored(self, name: str, data: np.ndarray | None, shape: Sequence[int] | None,
                dtype: DType | str, trainable: bool) -> Value:
        if data is not None:
            data = np.require(data, requirements="C")
            ttype = TensorType(data.shape, DType.of(data.dtype))
        elif shape is not None:
            ttype = TensorType(tuple(shape), DType.of(dtype))
        else:
            raise GraphError(f"stored tensor {name!r} needs data or a shape")
        v = Value(name, ttype, ValueKind.PARAM if trainable else ValueKind.CONST)
        self._data[name] = data
        return v

    # ---------------------------------------------------------------- nodes
    def add_node(self, op: str, inputs: Sequence[Value | None], attrs: dict[str, Any] | None = None,
                 name: str | None = None, num_outputs: int | None = None,
                 output_names: Sequence[str] | None = None) -> list[Value]:
        """Append ``op(inputs)``; its attributes are validated and its outputs typed now.

        Outputs are named ``output_names`` (made unique) or after the node."""
        from cnncompiler.ops.registry import get_op, infer_node

        opdef = get_op(op)
        node_name = self.unique(name or op.lower(), "node")
        full = opdef.normalize_attrs(dict(attrs or {}), node_name)
        types = infer_node(op, [v.type if v is not None else None for v in inputs], full,
                           node_name, num_outputs)
        if opdef.variadic_outputs and full.get("num_outputs", 0) is None \
                and full.get("split") is None:
            full["num_outputs"] = len(types)  # record the count so every consumer sees it
        node = Node(op, list(inputs), [], full, node_name)
        if output_names is not None:
            if len(output_names) != len(types):
                raise GraphError(f"node {node_name!r}: {len(output_names)} output names for "
                                 f"{len(types)} outputs")
            names = [self.unique(n) for n in output_names]
        elif len(types) == 1:
            names = [self.unique(node_name)]
        else:
            labels = (opdef.outputs if len(opdef.outputs) == len(types)
                      else [str(i) for i in range(len(types))])
            names = [self.unique(f"{node_name}.{label}") for label in labels]
        for out_name, t in zip(names, types):
            node.outputs.append(Value(out_name, t, ValueKind.INTERMEDIATE, node))
        self._nodes.append(node)
        return node.outputs

    def op(self, op: str, *inputs: Value | None, name: str | None = None, **attrs: Any) -> Value:
        """Append a single-output op and return its output value."""
        outs = self.add_node(op, list(inputs), attrs, name)
        if len(outs) != 1:
            raise GraphError(f"{op} has {len(outs)} outputs; use add_node")
        return outs[0]

    def build(self, outputs: Value | Iterable[Value], verify: bool = True) -> Graph:
        outs = [outputs] if isinstance(outputs, Value) else list(outputs)
        used = {v.name for n in self._nodes for v in n.inputs if v is not None}
        used |= {v.name for v in outs}
        data = {k: a for k, a in self._data.items() if k in used}
        g = Graph(self.name, self._inputs, outs, self._nodes, data)
        return g.verify() if verify else g
