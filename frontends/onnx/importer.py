"""ONNX -> Graph IR.

The importer walks the (checked, topologically sorted) ONNX graph once. Each node goes
through a converter (``converters.py``) that maps ONNX syntax onto our op definitions: static
operands (shapes, pads, scales, axes) become attributes, which is why they must be known at
import time. Nodes whose inputs are all known are evaluated right here through the ops'
references (constant folding), so exporter shape arithmetic (Shape -> Gather -> Concat ->
Reshape) never reaches codegen. A symbolic batch dim flows through that arithmetic as a
sentinel integer (far below any real size) that converters decode back to its name.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from cnncompiler.errors import CnnCompilerError, FrontendError, UnsupportedError
from cnncompiler.frontends.onnx.functions import (
    DEFAULT_DOMAIN,
    FunctionBody,
    FunctionLibrary,
    domain_of,
    inline,
    live_nodes,
    opset_map,
    type_proto,
)
from cnncompiler.frontends.onnx.reader import read_model
from cnncompiler.ir.builder import GraphBuilder
from cnncompiler.ir.graph import Graph, Value, free_name
from cnncompiler.ir.types import DType, TensorType
from cnncompiler.ops.registry import all_ops, get_op

ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: DType.float32,
    onnx.TensorProto.DOUBLE: DType.float64,
    onnx.TensorProto.INT64: DType.int64,
    onnx.TensorProto.INT32: DType.int64,   # widened: shapes and indices
    onnx.TensorProto.BOOL: DType.bool,
}

# ops that only move shape entries around, so they may fold operands holding a symbol
SYMBOLIC_FOLDABLE = {"Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Identity", "Reshape",
                     "Flatten", "Cast"}

Known = np.ndarray  # an import-time value
SYMBOL_BASE = -(1 << 40)   # symbolic dim k is encoded as SYMBOL_BASE - k in int64 shape data
MAX_SYMBOLS = 1 << 20


def is_symbolic(a: np.ndarray) -> bool:
    """True for int64 shape data that holds an encoded symbolic dim."""
    return a.dtype == np.int64 and bool(
        np.any((a <= SYMBOL_BASE) & (a > SYMBOL_BASE - MAX_SYMBOLS)))


class NodeContext:
    """What a converter sees of one ONNX node, and how it emits IR."""

    def __init__(self, importer: OnnxImporter, node: onnx.NodeProto, name: str,
                 opset: int | None = None):
        self.importer = importer
        self.node = node
        self.name = name
        self.op_type = node.op_type
        # a node inlined from a function body has the body's opset, not the model's
        self.opset = importer.opset if opset is None else opset
        self.attrs: dict[str, Any] = {a.name: _attr_value(a) for a in node.attribute}
        self._emitted = 0

    # -------------------------------------------------------------- reading
    @property
    def num_inputs(self) -> int:
        return len(self.node.input)

    def has_input(self, i: int) -> bool:
        return i < len(self.node.input) and self.node.input[i] != ""

    def known(self, i: int) -> Known | None:
        """The input's value if known at import time (initializer, Constant, folded)."""
        if not self.has_input(i):
            return None
        return self.importer.known.get(self.node.input[i])

    def require_known(self, i: int, what: str) -> Known:
        value = self.known(i)
        if value is None:
            if not self.has_input(i):
                raise self.fail(f"{what} (input {i}) is required")
            raise self.unsupported(f"{what} (input {i}, {self.node.input[i]!r}) must be a "
                                   "constant known at import time; it is computed at run time")
        return value

    def static_ints(self, i: int, what: str) -> list[int]:
        value = self.require_known(i, what)
        if is_symbolic(value):
            names = sorted({d for d in self.importer.decode(value) if isinstance(d, str)})
            raise self.unsupported(f"{what} depends on the symbolic dim(s) {names}; give a "
                                   "concrete batch (batch=...) or input_shapes=...")
        return [int(v) for v in value.ravel()]

    def static_floats(self, i: int, what: str) -> list[float]:
        value = self.require_known(i, what)
        if is_symbolic(value):
            raise self.unsupported(f"{what} depends on a symbolic dim")
        return [float(v) for v in value.ravel()]

    def type(self, i: int) -> TensorType:
        return self.importer.type_of(self.node.input[i], self)

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    # ------------------------------------------------------------- emitting
    def emit(self, op: str, inputs: Sequence[Any], attrs: Mapping[str, Any] | None = None,
             num_outputs: int = 1, outputs: Sequence[str] | None = None) -> list[Value | Known]:
        """Apply ``op``; folded to known arrays when every input is known, else a node.

        ``inputs`` holds input indices of this ONNX node (int), known arrays, Values or None.
        """
        resolved = [self._resolve(x) for x in inputs]
        attrs = dict(attrs or {})
        opdef = get_op(op)
        present = [r for r in resolved if r is not None]
        if present and all(isinstance(r, np.ndarray) for r in present) and self._foldable(
                op, present):
            full = opdef.normalize_attrs(attrs, self.name)
            result = opdef.reference(list(resolved), full)
            results = list(result) if isinstance(result, (tuple, list)) else [result]
            return [np.asarray(r) for r in results]
        values = [None if r is None else self.importer.as_value(r, opdef, i, self.name)
                  for i, r in enumerate(resolved)]
        self._emitted += 1
        node_name = self.name if self._emitted == 1 else f"{self.name}/{op.lower()}"
        names = outputs if outputs is not None else (
            list(self.node.output)[:num_outputs] if self._emitted == 1 else None)
        if names is not None and len(names) != num_outputs:
            names = None
        return self.importer.builder.add_node(op, values, attrs, node_name, num_outputs, names)

    def _resolve(self, x: Any) -> Value | Known | None:
        if isinstance(x, int) and not isinstance(x, bool):
            if not self.has_input(x):
                return None
            name = self.node.input[x]
            k = self.importer.known.get(name)
            return k if k is not None else self.importer.value_of(name, self)
        return x

    @staticmethod
    def _foldable(op: str, arrays: list[np.ndarray]) -> bool:
        return op in SYMBOLIC_FOLDABLE or not any(is_symbolic(a) for a in arrays)

    # --------------------------------------------------------------- errors
    def fail(self, message: str) -> FrontendError:
        return FrontendError(f"ONNX node '{self.name}' ({self.op_type}, opset {self.opset}): "
                             f"{message}")

    def unsupported(self, message: str) -> UnsupportedError:
        return UnsupportedError(f"ONNX node '{self.name}' ({self.op_type}, opset "
                                f"{self.opset}): {message}")


def _attr_value(attr: onnx.AttributeProto) -> Any:
    value = onnx.helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, list):
        return [v.decode() if isinstance(v, bytes) else v for v in value]
    return value


class OnnxImporter:
    def __init__(self, model: onnx.ModelProto, input_shapes: Mapping[str, Sequence] | None,
                 batch: int | None, name: str | None):
        from cnncompiler.frontends.onnx.converters import CONVERTERS

        self.model = model
        self.converters: dict[str, Callable[[NodeContext], list]] = CONVERTERS
        self.opset = next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx"))
        self.input_shapes = dict(input_shapes or {})
        self.batch = batch
        self.builder = GraphBuilder(name or model.graph.name or "onnx_model")
        self.known: dict[str, Known] = {}          # import-time values by ONNX name
        self._known_names: dict[int, str] = {}     # id(array) -> its ONNX name
        self.values: dict[str, Value] = {}         # graph values by ONNX name
        self.initializers: set[str] = set()
        self.symbols: list[str] = []               # symbolic dims seen by Shape, by index
        self._materialized: dict[tuple[str, bool], Value] = {}
        g = model.graph
        # values some node reads (or the graph outputs); expanded function bodies add theirs
        self.used = {name for n in g.node for name in n.input} | {o.name for o in g.output}
        self.opsets = opset_map(model.opset_import)
        self.functions = FunctionLibrary(model)
        self._ours = set(all_ops())
        self._taken_names = ({i.name for i in g.input} | {o.name for o in g.output}
                             | {t.name for t in g.initializer}
                             | {o for n in g.node for o in n.output})
        self._static_types: dict[str, onnx.TypeProto] | None = None

    # ------------------------------------------------------------------ run
    def run(self) -> Graph:
        g = self.model.graph
        self.check_supported()
        for t in g.initializer:
            self._set_known(t.name, _tensor_array(t))
            self.initializers.add(t.name)
        for vi in g.input:
            if vi.name not in self.initializers:
                self.values[vi.name] = self._graph_input(vi)
        node_names: set[str] = set()
        for index, node in enumerate(g.node):
            base = node.name or f"{node.op_type.lower()}_{index}"
            name = base if base not in node_names else f"{base}_{index}"
            node_names.add(name)
            self._convert(node, name)
        outputs = [self._output_value(o.name) for o in g.output]
        return self.builder.build(outputs)

    def check_supported(self) -> None:
        """Raise one error listing every unsupported op type with its nodes and count."""
        missing = self.find_unsupported()
        if missing:
            lines = []
            for (domain, op), (nodes, why) in sorted(missing.items()):
                where = "" if domain == "ai.onnx" else f" (domain {domain})"
                shown = ", ".join(nodes[:5]) + (", ..." if len(nodes) > 5 else "")
                detail = f" (its ONNX function body {'; '.join(why)})" if why else ""
                lines.append(f"  {op}{where}, opset {self.opset}: {len(nodes)} node(s): "
                             f"{shown}{detail}")
            raise UnsupportedError(f"the model uses {len(missing)} unsupported ONNX op type(s):\n"
                                   + "\n".join(lines))

    def find_unsupported(self) -> dict[tuple[str, str], tuple[list[str], list[str]]]:
        """(domain, op) -> (its nodes, why) for every op type the importer cannot convert: no
        converter of ours and no function body that expands into ops we convert ("why" says
        what in the body is missing)."""
        missing: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
        for index, node in enumerate(self.model.graph.node):
            if self.convertible(node):
                continue
            problems = self._body_problems(node, self.opsets, self.used, 0)
            if problems == []:
                continue  # its function body expands into ops we convert
            key = (domain_of(node.domain) or "ai.onnx", node.op_type)
            nodes, why = missing.setdefault(key, ([], []))
            nodes.append(node.name or f"#{index}")
            why.extend(p for p in problems or () if p not in why)
        return missing

    def convertible(self, node: onnx.NodeProto) -> bool:
        """Whether a converter of ours takes ``node`` directly (no function expansion)."""
        return domain_of(node.domain) == DEFAULT_DOMAIN and (
            node.op_type in self.converters or node.op_type in self._ours)

    # ------------------------------------------------------------ functions
    MAX_FUNCTION_DEPTH = 16

    def _body_problems(self, node: onnx.NodeProto, opsets: Mapping[str, int], used: set[str],
                       depth: int) -> list[str] | None:
        """What stops ``node``'s function body from expanding into ops we convert: None when
        it has no function, [] when nothing does (or when only the run-time input types can
        tell: conversion checks again), else what is missing ("uses Loop")."""
        if not self.functions.has_function(node, opsets):
            return None
        if depth > self.MAX_FUNCTION_DEPTH:
            return [f"nests function bodies deeper than {self.MAX_FUNCTION_DEPTH}"]
        types = None
        if self.functions.needs_types(node, opsets):
            static = self.static_types()
            types = [static.get(x, onnx.TypeProto()) for x in node.input]
        body = self.functions.body(node, opsets, types)
        if isinstance(body, str):
            # a context-dependent body may build once the real input types are known
            return [] if types is not None else [f"cannot be used: {body}"]
        counter = iter(range(1 << 62))
        inner = inline(node, body, node.name or node.op_type,
                       lambda hint: f"{hint}#{next(counter)}")
        live = live_nodes(inner, {o for o in node.output if o and o in used})
        consumed = {x for n in live for x in n.input} | used
        problems: list[str] = []
        for n in live:
            if self.convertible(n):
                continue
            sub = self._body_problems(n, body.opsets, consumed, depth + 1)
            label = _op_label(n)
            if sub is None:
                found = [f"uses {label}, which has no converter"]
            else:
                found = [f"{p} (in the body of {label})" for p in sub]
            problems.extend(p for p in found if p not in problems)
        return problems

    def static_types(self) -> dict[str, onnx.TypeProto]:
        """ONNX types of the graph's inputs, initializers and (shape-inferred) values, for
        building context-dependent function bodies before conversion."""
        if self._static_types is None:
            g = self.model.graph
            types = {vi.name: vi.type for vi in [*g.input, *g.value_info, *g.output]}
            for t in g.initializer:
                types[t.name] = onnx.helper.make_tensor_type_proto(t.data_type, list(t.dims))
            try:
                inferred = onnx.shape_inference.infer_shapes(self._skeleton(types)).graph
                types.update((vi.name, vi.type) for vi in inferred.value_info)
            except Exception:  # noqa: BLE001 (best effort: the types are only a hint here)
                pass
            self._static_types = types
        return self._static_types

    def _skeleton(self, types: Mapping[str, onnx.TypeProto]) -> onnx.ModelProto:
        """The model without its weights' data (initializers become typed inputs), for
        shape inference without copying the weights."""
        g, m = self.model.graph, self.model
        skeleton = onnx.GraphProto(name=g.name, node=g.node, output=g.output,
                                   value_info=g.value_info, input=g.input)
        declared = {i.name for i in g.input}
        skeleton.input.extend(onnx.helper.make_value_info(t.name, types[t.name])
                              for t in g.initializer if t.name not in declared)
        return onnx.ModelProto(ir_version=m.ir_version, opset_import=m.opset_import,
                               functions=m.functions, graph=skeleton)

    def fresh(self, hint: str) -> str:
        """A value name that no ONNX name of the model (or of an earlier expansion) uses."""
        name = free_name(hint, self._taken_names.__contains__)
        self._taken_names.add(name)
        return name

    def _expand(self, node: onnx.NodeProto, name: str, opsets: Mapping[str, int],
                depth: int) -> None:
        """Convert ``node`` by inlining its function body (see ``functions.py``): only the
        body nodes that outputs in use depend on, each converted like any node."""
        ctx = NodeContext(self, node, name, opsets.get(DEFAULT_DOMAIN, self.opset))
        label = _op_label(node)
        if not self.functions.has_function(node, opsets):
            raise ctx.unsupported(f"{label} has no converter and no ONNX function body")
        if depth > self.MAX_FUNCTION_DEPTH:
            raise ctx.unsupported(f"function bodies nest deeper than {self.MAX_FUNCTION_DEPTH}")
        types = [type_proto(self.type_of(x, ctx)) if x else onnx.TypeProto()
                 for x in node.input]
        body = self.functions.body(node, opsets, types)
        if isinstance(body, str):
            raise ctx.unsupported(f"{label} has no converter and its function body cannot be "
                                  f"used: {body}")
        inner = live_nodes(inline(node, body, name, self.fresh),
                           {o for o in node.output if o and o in self.used})
        self._check_body(ctx, body, inner)
        self.used.update(x for n in inner for x in n.input if x)
        for n in inner:
            try:
                self._convert(n, n.name, body.opsets, depth + 1)
            except CnnCompilerError as e:
                e.args = (f"ONNX node '{name}' ({label}, opset {ctx.opset}), in its "
                          f"{body.origin}: {e}", *e.args[1:])
                raise
        lost = [o for o in node.output
                if o and o in self.used and o not in self.values and o not in self.known]
        if lost:
            raise ctx.unsupported(f"output(s) {lost} are not produced by its {body.origin}")

    def _check_body(self, ctx: NodeContext, body: FunctionBody,
                    inner: list[onnx.NodeProto]) -> None:
        """Every op of the (live) body converts, directly or as a function in turn."""
        bad: dict[str, list[str]] = defaultdict(list)
        for n in inner:
            if not self.convertible(n) and not self.functions.has_function(n, body.opsets):
                bad[_op_label(n)].append(n.name)
        if bad:
            listed = "; ".join(f"{op} (node(s) {', '.join(repr(x) for x in nodes)})"
                               for op, nodes in sorted(bad.items()))
            raise ctx.unsupported(f"{_op_label(ctx.node)} has no converter, and its "
                                  f"{body.origin} uses op(s) that cnncompiler cannot convert: "
                                  f"{listed}")

    def _convert(self, node: onnx.NodeProto, name: str,
                 opsets: Mapping[str, int] | None = None, depth: int = 0) -> None:
        opsets = self.opsets if opsets is None else opsets
        if not self.convertible(node):
            self._expand(node, name, opsets, depth)
            return
        ctx = NodeContext(self, node, name, opsets.get(DEFAULT_DOMAIN, self.opset))
        convert = self.converters.get(node.op_type, default_converter)
        try:
            results = convert(ctx)
        except CnnCompilerError:
            raise
        except (ValueError, TypeError, IndexError, KeyError, OverflowError) as e:
            raise ctx.fail(f"cannot convert: {type(e).__name__}: {e}") from None
        outs = list(node.output)
        padded = [*results, *[None] * (len(outs) - len(results))]
        needed = [o for o, r in zip(outs, padded) if o in self.used and r is None]
        if needed:
            raise ctx.unsupported(f"output(s) {needed} are not supported")
        for out_name, result in zip(outs, results):
            if not out_name or result is None:
                continue
            if isinstance(result, np.ndarray):
                self._set_known(out_name, result)
            else:
                self.values[out_name] = result

    # ------------------------------------------------------------- symbols
    def encode(self, dims: Sequence[int | str]) -> np.ndarray:
        """Shape data as int64, each symbolic dim replaced by its sentinel."""
        out = []
        for d in dims:
            if isinstance(d, str):
                if d not in self.symbols:
                    self.symbols.append(d)
                d = SYMBOL_BASE - self.symbols.index(d)
            out.append(d)
        return np.array(out, dtype=np.int64)

    def decode(self, a: np.ndarray) -> list[int | str]:
        """Flat shape data with sentinels turned back into symbol names."""
        out: list[int | str] = []
        for v in np.asarray(a).ravel().tolist():
            k = SYMBOL_BASE - v
            out.append(self.symbols[k] if 0 <= k < len(self.symbols) else int(v))
        return out

    # --------------------------------------------------------------- values
    def _set_known(self, name: str, array: Known) -> None:
        self.known[name] = array
        self._known_names.setdefault(id(array), name)

    def _graph_input(self, vi: onnx.ValueInfoProto) -> Value:
        t = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise FrontendError(f"graph input {vi.name!r} is not a tensor")
        dtype = ONNX_DTYPES.get(t.elem_type)
        if dtype is None or t.elem_type == onnx.TensorProto.INT32:
            raise UnsupportedError(f"graph input {vi.name!r} has element type "
                                   f"{onnx.TensorProto.DataType.Name(t.elem_type)}; supported: "
                                   "float, double, int64, bool")
        if vi.name in self.input_shapes:
            shape = tuple(self.input_shapes[vi.name])
        else:
            if not t.HasField("shape"):
                raise FrontendError(f"graph input {vi.name!r} has no shape; pass "
                                    f"input_shapes={{{vi.name!r}: (...)}}")
            if any(d.HasField("dim_value") and d.dim_value == 0 for d in t.shape.dim):
                raise UnsupportedError(f"graph input {vi.name!r} has a zero-size dim; empty "
                                       "tensors are not supported")
            # dim_param, or a missing/negative dim_value (exporters write -1), is symbolic
            shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0
                          else (d.dim_param or "?") for d in t.shape.dim)
            symbolic = [i for i, d in enumerate(shape) if isinstance(d, str)]
            if any(i > 0 for i in symbolic):
                raise FrontendError(
                    f"graph input {vi.name!r} has shape {list(shape)}: only the first (batch) "
                    "dim may be symbolic; pass concrete shapes with "
                    f"input_shapes={{{vi.name!r}: (1, ...)}} (cnnc: --shape {vi.name}=1,...)")
            if symbolic and shape[0] == "?":
                shape = ("N", *shape[1:])
        if self.batch is not None and shape and isinstance(shape[0], str):
            shape = (self.batch, *shape[1:])
        return self.builder.input(vi.name, shape, dtype)

    def value_of(self, name: str, ctx: NodeContext) -> Value:
        v = self.values.get(name)
        if v is None:
            raise ctx.fail(f"input {name!r} is not produced by any earlier node, initializer "
                           "or graph input")
        return v

    def type_of(self, name: str, ctx: NodeContext) -> TensorType:
        if name in self.known:
            return TensorType.of(self.known[name])
        return self.value_of(name, ctx).type

    def as_value(self, x: Value | Known, opdef, slot: int, node: str) -> Value:
        """A graph Value for ``x``: a known array becomes a stored tensor (once per name)."""
        if isinstance(x, Value):
            return x
        if is_symbolic(x):
            raise UnsupportedError(f"ONNX node '{node}': a run-time tensor would depend on the "
                                   "symbolic batch dim; give a concrete batch (batch=...)")
        arr = x
        if arr.dtype == np.int32:
            arr = arr.astype(np.int64)
        name = self._known_names.get(id(x))
        weight_slot = opdef.inputs[min(slot, len(opdef.inputs) - 1)].weight if opdef.inputs \
            else False
        # ONNX initializers and constants in weight slots (conv W, B) are the model's parameters
        trainable = arr.dtype.kind == "f" and (name in self.initializers or weight_slot)
        key = (name or f"@{id(x)}", trainable)
        v = self._materialized.get(key)
        if v is None:
            label = name or f"{node}.const"
            if trainable:
                v = self.builder.param(label, arr, rename=True)
            else:
                v = self.builder.const(arr, name=label)
            self._materialized[key] = v
        return v

    def _output_value(self, name: str) -> Value:
        if name in self.values:
            return self.values[name]
        if name in self.known:  # a constant graph output: keep it a real graph output
            v = self.as_value(self.known[name], get_op("Identity"), 0, name)
            out = self.builder.add_node("Identity", [v], {}, name, output_names=[name])[0]
            self.values[name] = out
            return out
        raise FrontendError(f"graph output {name!r} is not produced by any node")


def _tensor_array(t: onnx.TensorProto) -> np.ndarray:
    if t.data_type not in ONNX_DTYPES:
        raise UnsupportedError(f"initializer {t.name!r} has element type "
                               f"{onnx.TensorProto.DataType.Name(t.data_type)}; supported: "
                               "float, double, int32/int64, bool")
    try:
        arr = numpy_helper.to_array(t)
    except (ValueError, TypeError) as e:
        raise FrontendError(f"initializer {t.name!r} cannot be read: {e}") from None
    return arr.astype(np.int64) if arr.dtype == np.int32 else np.require(arr, requirements="C")


def default_converter(ctx: NodeContext) -> list:
    """ONNX ops whose inputs and attributes match our definition one to one."""
    opdef = get_op(ctx.op_type)
    n_out = len(ctx.node.output)
    return ctx.emit(ctx.op_type, list(range(ctx.num_inputs)), ctx.attrs,
                    num_outputs=n_out if opdef.variadic_outputs else len(opdef.outputs))


def load(model: str | os.PathLike | bytes | onnx.ModelProto, *,
         input_shapes: Mapping[str, Sequence[int | str]] | None = None,
         batch: int | None = None, name: str | None = None) -> Graph:
    """Import an ONNX model (path, bytes or ModelProto) as a verified Graph.

    A symbolic first dim stays symbolic unless ``batch`` pins it; other symbolic dims need
    ``input_shapes={"input": (1, 3, 224, 224)}``. Raises FrontendError for malformed or
    unsafe files and UnsupportedError listing every unsupported op at once.
    """
    proto = read_model(model)
    return OnnxImporter(proto, input_shapes, batch, name).run()


def _op_label(node: onnx.NodeProto) -> str:
    domain = domain_of(node.domain)
    return node.op_type if domain == DEFAULT_DOMAIN else f"{node.op_type} (domain {domain})"


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """Why the importer would reject ``model`` up front, one line per op type ("Range: its
    ONNX function body uses Loop, which has no converter"); [] when every node converts
    (directly or through its function body)."""
    importer = OnnxImporter(model, None, None, None)
    out = []
    for (domain, op), (_, why) in sorted(importer.find_unsupported().items()):
        label = op if domain == "ai.onnx" else f"{op} (domain {domain})"
        out.append(label + (f": its ONNX function body {'; '.join(why)}" if why else ""))
    return out
