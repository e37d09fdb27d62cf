"""ONNX functions: ops defined by a body of other ops, inlined by the importer.

Many ONNX ops are *functions*: their schema gives a body of simpler ops, either fixed
(``schema.has_function``, one body per opset version in ``function_opset_versions``:
MeanVarianceNormalization, Shrink, GreaterOrEqual, ...) or built for the node at hand from
its attributes and input types (``schema.has_context_dependent_function``:
GroupNormalization, RMSNormalization, RotaryEmbedding, ...). A model may also define its own
functions (``ModelProto.functions``, e.g. exporters that keep modules as functions).

When the importer meets a node with no converter of ours (and not one of our ops) but with a
function, it inlines the body (``inline``): the function's formal inputs and outputs become
the node's actual names (a missing optional input stays missing, a missing output becomes an
internal value), every other value gets a fresh name, attribute references (``@name``) take
the node's attribute or the default (the schema's, or the local function's), and only the
body nodes that the used outputs depend on (``live_nodes``) are converted, as usual, nested
functions being expanded the same way. The body's own opset imports decide the semantics of
its nodes (a Shrink-9 node's only body is written against opset 18). A converter of ours
always wins over the body (LayerNormalization's flattens to 2-D, which a symbolic batch
cannot go through, so a converter composes it in place).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import onnx
from onnx import defs

from cnncompiler.ir.types import DType, TensorType

DEFAULT_DOMAIN = ""

TYPE_TO_ONNX = {
    DType.float32: onnx.TensorProto.FLOAT,
    DType.float64: onnx.TensorProto.DOUBLE,
    DType.int64: onnx.TensorProto.INT64,
    DType.bool: onnx.TensorProto.BOOL,
}


def domain_of(domain: str) -> str:
    """The canonical name of an ONNX domain ("ai.onnx" is the default domain "")."""
    return DEFAULT_DOMAIN if domain in ("", "ai.onnx") else domain


def opset_map(imports: Sequence[onnx.OperatorSetIdProto]) -> dict[str, int]:
    """Domain -> version of a model's or a function's ``opset_import``."""
    return {domain_of(i.domain): i.version for i in imports}


def type_proto(t: TensorType | None) -> onnx.TypeProto:
    """An ONNX tensor TypeProto for one of our types (symbolic dims as ``dim_param``); an
    empty TypeProto for an unknown type."""
    if t is None:
        return onnx.TypeProto()
    return onnx.helper.make_tensor_type_proto(TYPE_TO_ONNX[t.dtype], list(t.shape))


@dataclass
class FunctionBody:
    """One function body, ready to inline."""

    proto: onnx.FunctionProto
    opsets: dict[str, int]                      # the body's opset imports
    defaults: dict[str, onnx.AttributeProto] = field(default_factory=dict)
    origin: str = ""                            # where it comes from, for messages


class FunctionLibrary:
    """The function bodies of a model's ops: its local functions and the ONNX schemas'."""

    def __init__(self, model: onnx.ModelProto | None = None):
        self.local: dict[tuple[str, str, str], onnx.FunctionProto] = {}
        for f in (model.functions if model is not None else ()):
            self.local[(domain_of(f.domain), f.name, f.overload)] = f

    # ------------------------------------------------------------------ lookup
    def schema(self, node: onnx.NodeProto, opsets: Mapping[str, int]) -> defs.OpSchema | None:
        """The node's schema at the opset its domain is imported at, if ONNX knows the op."""
        domain = domain_of(node.domain)
        version = opsets.get(domain)
        if version is None:
            return None
        try:
            return defs.get_schema(node.op_type, version, domain)
        except defs.SchemaError:
            return None

    def local_function(self, node: onnx.NodeProto) -> onnx.FunctionProto | None:
        return self.local.get((domain_of(node.domain), node.op_type, node.overload))

    def has_function(self, node: onnx.NodeProto, opsets: Mapping[str, int]) -> bool:
        """Whether the node's op is a function (a body may still fail to build for it)."""
        if self.local_function(node) is not None:
            return True
        s = self.schema(node, opsets)
        return s is not None and (s.has_function or s.has_context_dependent_function)

    def needs_types(self, node: onnx.NodeProto, opsets: Mapping[str, int]) -> bool:
        """Whether the body depends on the node's input types (context-dependent)."""
        if self.local_function(node) is not None:
            return False
        s = self.schema(node, opsets)
        return s is not None and not s.has_function and s.has_context_dependent_function

    def body(self, node: onnx.NodeProto, opsets: Mapping[str, int],
             input_types: Sequence[onnx.TypeProto] | None = None) -> FunctionBody | str:
        """The body of ``node``'s function, or why there is none (a string).

        A schema has one body per opset version it lists: the newest one not newer than the
        model's opset, else the oldest (a later body of the same schema version, written
        against a newer opset: its nodes are converted at that opset).
        """
        local = self.local_function(node)
        if local is not None:
            defaults = {a.name: a for a in local.attribute_proto}
            # domains the function does not import are the model's (the caller's)
            return FunctionBody(local, {**opsets, **opset_map(local.opset_import)}, defaults,
                                f"model-local function {local.domain}.{local.name}")
        s = self.schema(node, opsets)
        if s is None:
            return "ONNX has no schema for it"
        defaults = {name: a.default_value for name, a in s.attributes.items()
                    if a.default_value.type != onnx.AttributeProto.UNDEFINED}
        model_version = opsets[domain_of(node.domain)]
        if s.has_function:
            version = _pick(list(s.function_opset_versions), model_version)
            data = s.get_function_with_opset_version(version)
        elif s.has_context_dependent_function:
            version = _pick(list(s.context_dependent_function_opset_versions), model_version)
            types = [t.SerializeToString() for t in input_types or ()]
            try:
                data = s.get_context_dependent_function_with_opset_version(
                    version, node.SerializeToString(), types)
            except Exception as e:  # noqa: BLE001 (onnx raises bare C++ errors)
                return f"ONNX cannot build its function body for this node: {e}"
        else:
            return f"{node.op_type}-{s.since_version} has no function body in ONNX"
        proto = onnx.FunctionProto()
        proto.ParseFromString(data)
        if not proto.node:
            return ("ONNX cannot build its function body for this node (its input types or "
                    "attributes are not ones the body handles)")
        body_opsets = {**opsets, domain_of(node.domain): version,
                       **opset_map(proto.opset_import)}
        return FunctionBody(proto, body_opsets, defaults,
                            f"{node.op_type}-{s.since_version} function body (opset {version})")


def _pick(versions: list[int], model_version: int) -> int:
    older = [v for v in versions if v <= model_version]
    return max(older) if older else min(versions)


# --------------------------------------------------------------------------- inlining
def inline(node: onnx.NodeProto, body: FunctionBody, prefix: str,
           fresh: Callable[[str], str]) -> list[onnx.NodeProto]:
    """``body``'s nodes with ``node``'s actual inputs, outputs and attributes bound.

    ``fresh(hint)`` returns a new unique value name for an internal value; node names are
    ``prefix/<inner name>``.
    """
    f = body.proto
    names: dict[str, str] = {"": ""}
    for i, formal in enumerate(f.input):
        names[formal] = node.input[i] if i < len(node.input) else ""
    for i, formal in enumerate(f.output):
        if i < len(node.output) and node.output[i]:
            names[formal] = node.output[i]
    attrs = {a.name: a for a in node.attribute}

    def actual(name: str) -> str:
        if name not in names:
            names[name] = fresh(f"{prefix}/{name}")
        return names[name]

    out = []
    for k, inner in enumerate(f.node):
        n = onnx.NodeProto()
        n.op_type = inner.op_type
        n.domain = inner.domain
        n.overload = inner.overload
        label = inner.name or next((o for o in inner.output if o), f"{inner.op_type}_{k}")
        n.name = f"{prefix}/{label}"
        n.input.extend(actual(x) for x in inner.input)
        n.output.extend(actual(x) for x in inner.output)
        for a in inner.attribute:
            if a.ref_attr_name:
                value = attrs.get(a.ref_attr_name) or body.defaults.get(a.ref_attr_name)
                if value is None:  # an optional attribute the node leaves unset
                    continue
                bound = onnx.AttributeProto()
                bound.CopyFrom(value)
                bound.name = a.name
                n.attribute.append(bound)
            else:
                n.attribute.append(a)
        out.append(n)
    return out


def live_nodes(nodes: Sequence[onnx.NodeProto], wanted: set[str]) -> list[onnx.NodeProto]:
    """The nodes that ``wanted`` values depend on (dead body nodes are never converted)."""
    needed = set(wanted)
    keep = []
    for n in reversed(nodes):
        if any(o and o in needed for o in n.output):
            keep.append(n)
            needed.update(x for x in n.input if x)
    return keep[::-1]


# -------------------------------------------------------------------------- catalogue
@functools.cache
def schema_function_ops(domain: str = DEFAULT_DOMAIN) -> frozenset[str]:
    """ONNX ops of ``domain`` whose schema (at some version) is a function."""
    return frozenset({s.name for s in defs.get_all_schemas_with_history()
            if domain_of(s.domain) == domain
            and (s.has_function or s.has_context_dependent_function)})
