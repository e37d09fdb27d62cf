"""Export a Graph (or a DSL model) to ONNX: ``to_onnx(model)`` and ``save(model, path)``.

Our op names are ONNX's and most attributes are too, but the IR keeps everything static as an
attribute (Reshape's shape, Pad's pads, Clip's bounds...), where ONNX passes tensor inputs,
and it says ``rounding`` where ONNX says ``ceil_mode``. Every such difference is written once,
in :data:`TRANSLATIONS` (op -> small function); an op missing from that table is refused.

After translation every node is checked against the ONNX schema of the model's opset: an
attribute ONNX does not know, or of the wrong kind, raises :class:`UnsupportedError` instead
of producing an invalid model. The opset is raised automatically (never lowered) when an op
or an attribute value needs a newer one (Pad "wrap", Resize "half_pixel_symmetric": 19;
Gelu: 20; Swish: 24; SpaceToDepth "CRD": 28). Opsets below 18 are not supported: Split's
``num_outputs`` and the Reduce ops' ``axes`` input are what the translations emit.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cnncompiler.errors import ModelError, UnsupportedError
from cnncompiler.ir.graph import Graph, Node, Value, free_name
from cnncompiler.ir.types import DType, TensorType

if TYPE_CHECKING:
    import onnx

MIN_OPSET = 18
DEFAULT_OPSET = 18
PRODUCER = "cnncompiler"
# protobuf cannot serialise a message of 2 GiB or more: bigger models keep weights outside
_PROTO_LIMIT = 2**31 - 2**20


def _onnx():
    try:
        import onnx
    except ImportError as e:  # pragma: no cover - onnx is an optional dependency
        raise UnsupportedError(f"exporting ONNX needs the onnx package (pip install onnx): "
                               f"{e}") from e
    return onnx


# ------------------------------------------------------------------------ per-node context
@dataclass
class _Emit:
    """One node being translated: translators edit ``inputs`` and ``attrs`` in place."""

    node: Node
    inputs: list[str]
    attrs: dict[str, Any]
    exporter: _Exporter
    min_opset: int = MIN_OPSET
    attr_protos: list[Any] = field(default_factory=list)  # ready-made (TENSOR) attributes

    def pop(self, name: str, default: Any = None) -> Any:
        value = self.attrs.pop(name, default)
        return default if value is None else value

    def input_dtype(self, i: int = 0) -> np.dtype:
        v = self.node.inputs[i]
        return v.type.dtype.numpy if v is not None else np.dtype(np.float32)

    def set_input(self, i: int, name: str) -> None:
        """Put ``name`` at input slot ``i`` ("" = absent), padding skipped slots with ""."""
        while len(self.inputs) <= i:
            self.inputs.append("")
        self.inputs[i] = name

    def const(self, array: Any, hint: str, dtype: Any = None) -> str:
        """A new initializer named after the node (``conv1.pads``), unique in the model."""
        return self.exporter.add_const(np.asarray(array, dtype=dtype),
                                       f"{self.node.name or self.node.op}.{hint}")

    def attr_to_input(self, attr: str, slot: int, dtype: Any = np.int64) -> None:
        """Move attribute ``attr`` (if set) to input ``slot`` as a 1-D tensor."""
        value = self.pop(attr)
        if value is not None:
            self.set_input(slot, self.const(np.asarray(value, dtype).reshape(-1), attr))

    def need_opset(self, opset: int) -> None:
        self.min_opset = max(self.min_opset, opset)

    def fail(self, message: str) -> UnsupportedError:
        return UnsupportedError(f"node {self.node.name!r} ({self.node.op}): {message}")


# --------------------------------------------------------------------------- translations
def _same(e: _Emit) -> None:
    """The IR op is the ONNX op: same inputs, same attributes."""


def _conv(e: _Emit) -> None:
    # IR `rounding` says whether a fractional output size is an error ("exact") or floored
    # ("floor"); ONNX Conv always floors and has no such attribute.
    e.attrs.pop("rounding", None)


def _pool(e: _Emit) -> None:
    # IR `rounding` -> ONNX `ceil_mode`: "exact" and "floor" both floor, ONNX's default
    # (ceil_mode omitted). "ceil" keeps a last partial window unless it would start in the end
    # padding; onnxruntime drops such a window too, but onnx's shape inference does not, so
    # ceil_mode=1 is emitted only where the IR's output really is larger than the floored
    # one (when the IR drops that window, its windows are exactly floor mode's).
    if e.attrs.pop("rounding", None) != "ceil":
        return
    kernel = e.attrs["kernel_shape"]
    strides = e.attrs.get("strides") or (1,) * len(kernel)
    pads = e.attrs.get("pads") or (0,) * (2 * len(kernel))
    dilations = e.attrs.get("dilations") or (1,) * len(kernel)
    in_hw, out_hw = e.node.inputs[0].type.shape[2:], e.node.outputs[0].type.shape[2:]
    for i, (size, out) in enumerate(zip(in_hw, out_hw)):
        extent = (kernel[i] - 1) * dilations[i] + 1
        floor = (size + pads[i] + pads[i + len(kernel)] - extent) // strides[i] + 1
        if out != floor:
            e.attrs["ceil_mode"] = 1


def _conv_transpose(e: _Emit) -> None:
    # With output_shape or auto_pad SAME_* the pads follow from the output size, but the split
    # of an odd total between begin and end is a rule runtimes disagree on (onnxruntime 1.32
    # pads the begin more for NOTSET, the IR the end). Emit the pads the IR resolved instead
    # (a negative end pad, which extends the output, becomes output_padding), so the node
    # means what the IR node means; output_shape and auto_pad are then dropped.
    if e.attrs.get("output_shape") is None and e.attrs.get("auto_pad") in (None, "NOTSET"):
        return
    from cnncompiler.ops.conv_transpose import conv_transpose_geometry
    from cnncompiler.ops.opdef import InferContext
    from cnncompiler.ops.registry import get_op

    node = e.node
    attrs = get_op(node.op).normalize_attrs(dict(node.attrs), node.name)
    ctx = InferContext(node.op, node.name, [v.type if v else None for v in node.inputs], attrs)
    _, strides, pads, dilations, out_pad = conv_transpose_geometry(ctx)
    pads, out_pad = list(pads), list(out_pad)
    for i in range(2):
        if pads[i + 2] < 0:
            out_pad[i] -= pads[i + 2]
            pads[i + 2] = 0
        if pads[i] < 0 or (out_pad[i] >= strides[i] and out_pad[i] >= dilations[i]):
            raise e.fail(f"the output size needs pads {pads} / output_padding {out_pad}, "
                         "which ONNX ConvTranspose cannot express")
    for name in ("output_shape", "auto_pad"):
        e.attrs.pop(name, None)
    e.attrs["pads"], e.attrs["output_padding"] = tuple(pads), tuple(out_pad)


def _clip(e: _Emit) -> None:
    # IR min/max attributes -> ONNX (opset >= 11) optional scalar inputs of X's dtype;
    # an absent min is the empty name, an absent max is simply left off.
    low, high = e.pop("min"), e.pop("max")
    dtype = e.input_dtype(0)
    if low is not None or high is not None:
        e.set_input(1, "" if low is None else e.const(low, "min", dtype))
    if high is not None:
        e.set_input(2, e.const(high, "max", dtype))


def _pad(e: _Emit) -> None:
    # IR pads/value attributes -> ONNX (opset >= 11) inputs: pads int64, constant_value a
    # scalar of the data's dtype (only read in constant mode). Mode "wrap" is opset 19.
    e.attr_to_input("pads", 1)
    value = e.pop("value", 0.0)
    mode = e.attrs.get("mode", "constant")
    if mode == "constant":
        e.set_input(2, e.const(value, "constant_value", e.input_dtype(0)))
    if mode == "wrap":
        e.need_opset(19)


def _resize(e: _Emit) -> None:
    # IR scales/sizes attributes -> ONNX (opset >= 11) inputs X, roi, scales, sizes. roi only
    # matters for tf_crop_and_resize (not in the IR), so it is "". scales are float32 whatever
    # X's dtype; sizes are int64. "half_pixel_symmetric" exists from opset 19.
    scales, sizes = e.pop("scales"), e.pop("sizes")
    e.set_input(1, "")
    if scales is not None:
        e.set_input(2, e.const(np.asarray(scales, np.float32), "scales"))
    if sizes is not None:
        e.set_input(2, "")
        e.set_input(3, e.const(np.asarray(sizes, np.int64), "sizes"))
    if e.attrs.get("coordinate_transformation_mode") == "half_pixel_symmetric":
        e.need_opset(19)


def _split(e: _Emit) -> None:
    # IR `split` sizes -> ONNX (opset >= 13) int64 input. Without sizes ONNX 18 requires the
    # num_outputs attribute; with them it must be left off (ONNX rejects both together).
    split, count = e.pop("split"), e.pop("num_outputs")
    if split is not None:
        e.set_input(1, e.const(np.asarray(split, np.int64), "split"))
    else:
        e.attrs["num_outputs"] = count if count is not None else len(e.node.outputs)


def _reshape(e: _Emit) -> None:
    # IR `shape` attribute -> ONNX (opset >= 5) int64 input; allowzero stays an attribute.
    e.attr_to_input("shape", 1)


def _dropout(e: _Emit) -> None:
    # IR `ratio` attribute -> ONNX (opset >= 12) scalar input (training_mode stays absent,
    # so ONNX Dropout is the identity, as in the IR).
    ratio = e.pop("ratio")
    if ratio is not None:
        e.set_input(1, e.const(ratio, "ratio", e.input_dtype(0)))


def _axes_input(e: _Emit) -> None:
    # Squeeze/Unsqueeze (opset >= 13) and every Reduce op (opset >= 18) take `axes` as an
    # optional int64 input, not an attribute; keepdims/noop_with_empty_axes stay attributes.
    e.attr_to_input("axes", 1)


def _slice(e: _Emit) -> None:
    # IR starts/ends/axes/steps attributes -> ONNX (opset >= 10) int64 inputs 1..4.
    for slot, name in enumerate(("starts", "ends", "axes", "steps"), start=1):
        e.attr_to_input(name, slot)


def _expand(e: _Emit) -> None:
    # IR `shape` attribute -> ONNX (opset >= 8) int64 input.
    e.attr_to_input("shape", 1)


def _tile(e: _Emit) -> None:
    # IR `repeats` attribute -> ONNX (opset >= 6) int64 input.
    e.attr_to_input("repeats", 1)


def _cast(e: _Emit) -> None:
    # IR `to` is a dtype name ("float32"); ONNX wants the TensorProto element-type enum.
    to = e.pop("to")
    if to is None:
        raise e.fail("Cast needs a target dtype 'to'")
    e.attrs["to"] = _elem_type(DType.of(to))


def _constant_of_shape(e: _Emit) -> None:
    # IR `shape` attribute -> ONNX's only input (int64); IR scalar `value` -> ONNX's
    # 1-element tensor attribute of the output dtype (which also makes any IR `dtype`
    # attribute redundant: the output type already says it).
    onnx = _onnx()
    shape = e.pop("shape")
    if shape is None:
        raise e.fail("ConstantOfShape needs its 'shape'")
    e.set_input(0, e.const(np.asarray(shape, np.int64).reshape(-1), "shape"))
    e.attrs.pop("dtype", None)
    value = np.asarray([e.pop("value", 0)], dtype=e.node.outputs[0].type.dtype.numpy)
    e.attr_protos.append(onnx.helper.make_attribute(
        "value", onnx.numpy_helper.from_array(value, "value")))


def _since(opset: int, why: str) -> Callable[[_Emit], None]:
    """A translation for an op that is ONNX's but only from ``opset``: raise the model's."""

    def raise_opset(e: _Emit) -> None:
        e.need_opset(opset)

    raise_opset.__doc__ = why
    return raise_opset


def _space_to_depth(e: _Emit) -> None:
    # IR `mode` (DCR or CRD, as DepthToSpace): ONNX SpaceToDepth has no mode before opset 28
    # and always uses the DCR order, so DCR is dropped and CRD raises the opset to 28.
    if e.attrs.get("mode") == "CRD":
        e.need_opset(28)
    else:
        e.attrs.pop("mode", None)


_REDUCE_OPS = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
               "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")
# Ops whose IR form is the ONNX form (inputs and attributes); the schema check below still
# rejects any IR attribute ONNX does not have, so a future IR-only attribute cannot slip out.
_SAME_OPS = (
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "PRelu", "Elu", "Selu",
    "Celu", "Softplus", "Softsign", "Mish", "ThresholdedRelu",
    "Exp", "Log", "Sqrt", "Abs", "Neg", "Reciprocal", "Floor", "Ceil", "Erf", "Not",
    "Add", "Sub", "Mul", "Div", "Pow", "Equal", "Less", "Greater", "Where",
    "Max", "Min", "Sum", "Mean", "ArgMax", "ArgMin",
    "MatMul", "Gemm", "BatchNormalization", "LRN", "Identity", "Softmax", "LogSoftmax",
    "GlobalAveragePool", "GlobalMaxPool", "Concat", "Flatten", "Transpose", "Shape", "Gather",
    "DepthToSpace",
)

#: op -> translation from our IR node to the ONNX node (edits inputs/attrs in place)
# ops that are expanded before translation rather than translated
EXPANDED = {"Fused", "LayoutTransform"}
#: backward-pass ops ONNX has no counterpart for: they only occur in training-step graphs,
#: never in a model to export (a Trainer exports its forward graph)
TRAINING_ONLY = {"MaxPoolGrad", "Im2Col", "Im2ColGrad"}

TRANSLATIONS: dict[str, Callable[[_Emit], None]] = {
    **dict.fromkeys(_SAME_OPS, _same),
    "Conv": _conv,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "ConvTranspose": _conv_transpose,
    "Clip": _clip,
    "Pad": _pad,
    "Resize": _resize,
    "Split": _split,
    "Reshape": _reshape,
    "Dropout": _dropout,
    "Squeeze": _axes_input,
    "Unsqueeze": _axes_input,
    **dict.fromkeys(_REDUCE_OPS, _axes_input),
    "Slice": _slice,
    "Expand": _expand,
    "Tile": _tile,
    "Cast": _cast,
    "ConstantOfShape": _constant_of_shape,
    "SpaceToDepth": _space_to_depth,
    "Gelu": _since(20, "ONNX has Gelu (with `approximate`) from opset 20"),
    "Swish": _since(24, "ONNX has Swish (with `alpha`) from opset 24"),
}


# ----------------------------------------------------------------------- schema and types
def _elem_type(dtype: DType) -> int:
    return _onnx().helper.np_dtype_to_tensor_dtype(dtype.numpy)


@functools.cache
def _first_opset(op: str) -> int | None:
    """The first opset in which ONNX defines ``op`` (None if it never does)."""
    versions = [s.since_version for s in _onnx().defs.get_all_schemas_with_history()
                if s.name == op and s.domain == ""]
    return min(versions) if versions else None


def _schema(op: str, opset: int):
    defs = _onnx().defs
    try:
        return defs.get_schema(op, opset, "")
    except defs.SchemaError:
        return None


def _attribute(e: _Emit, name: str, value: Any, schema) -> Any:
    """An AttributeProto for ``value``, of the kind the ONNX schema declares."""
    onnx = _onnx()
    spec = schema.attributes.get(name)
    if spec is None:
        raise e.fail(f"attribute {name!r} has no ONNX counterpart "
                     f"(ONNX {e.node.op} takes {sorted(schema.attributes)})")
    kinds = onnx.defs.OpSchema.AttrType

    def bad() -> UnsupportedError:
        return e.fail(f"attribute {name!r} = {value!r} does not fit ONNX's {spec.type.name} "
                      "attribute")

    def scalar_int(x: Any) -> int:
        if isinstance(x, (bool, int, np.integer, np.bool_)):
            return int(x)
        raise bad()

    def scalar_float(x: Any) -> float:
        if isinstance(x, (bool, str, bytes)) or not isinstance(
                x, (int, float, np.integer, np.floating)):
            raise bad()
        return float(x)

    def many(x: Any) -> Sequence:
        if isinstance(x, (str, bytes)) or not isinstance(x, (Sequence, np.ndarray)):
            raise bad()
        return list(x)

    if spec.type == kinds.INT:
        value = scalar_int(value)
    elif spec.type == kinds.FLOAT:
        value = scalar_float(value)
    elif spec.type == kinds.STRING:
        if not isinstance(value, str):
            raise bad()
    elif spec.type == kinds.INTS:
        value = [scalar_int(x) for x in many(value)]
    elif spec.type == kinds.FLOATS:
        value = [scalar_float(x) for x in many(value)]
    else:
        raise bad()
    return onnx.helper.make_attribute(name, value, attr_type=spec.type.value)


def _value_info(v: Value) -> Any:
    return _onnx().helper.make_tensor_value_info(v.name, _elem_type(v.type.dtype),
                                                 _dims(v.type))


def _dims(t: TensorType) -> list[int | str]:
    return [d if isinstance(d, str) else int(d) for d in t.shape]


# ------------------------------------------------------------------------------ exporter
class _Exporter:
    def __init__(self, graph: Graph, opset: int):
        self.graph = graph
        self.opset = opset
        self.initializers: list[Any] = []
        self.taken: set[str] = set(graph.values) | {v.name for v in graph.outputs}
        self.taken |= set(graph.data)

    def add_const(self, array: np.ndarray, base: str) -> str:
        name = free_name(base, self.taken.__contains__)
        self.taken.add(name)
        self.initializers.append(_onnx().numpy_helper.from_array(np.array(array, order="C"),
                                                                 name))
        return name

    def stored_initializers(self) -> list[Any]:
        numpy_helper = _onnx().numpy_helper
        out = []
        stored = [v for v in self.graph.values.values() if v.is_stored]
        stored += [v for v in self.graph.outputs if v.is_stored and v not in stored]
        for v in stored:
            arr = self.graph.data.get(v.name)
            if arr is None:
                raise ModelError(f"graph {self.graph.name!r}: stored tensor {v.name!r} has no "
                                 "data; build the graph with weights (to_graph(with_weights="
                                 "True) or load them) before exporting")
            arr = np.asarray(arr, dtype=v.type.dtype.numpy, order="C")
            out.append(numpy_helper.from_array(arr, v.name))
        return out

    def translate(self, node: Node) -> _Emit:
        fn = TRANSLATIONS.get(node.op)
        if node.op in TRAINING_ONLY:
            raise UnsupportedError(f"node {node.name!r} ({node.op}) belongs to a training "
                                   "step; ONNX has no such op: export the model's forward "
                                   "graph (Trainer.model) instead")
        if fn is None:
            raise UnsupportedError(f"node {node.name!r} ({node.op}): the ONNX exporter has no "
                                   f"translation for op {node.op!r}")
        e = _Emit(node, ["" if v is None else v.name for v in node.inputs],
                  {k: v for k, v in node.attrs.items()}, self)
        fn(e)
        first = _first_opset(node.op)
        if first is None:
            raise e.fail(f"ONNX has no op {node.op!r}")
        e.need_opset(first)
        return e

    def make_node(self, e: _Emit, opset: int) -> Any:
        onnx = _onnx()
        node = e.node
        schema = _schema(node.op, opset)
        if schema is None or schema.deprecated:
            raise e.fail(f"ONNX opset {opset} has no (non-deprecated) op {node.op!r}")
        inputs = list(e.inputs)
        while inputs and inputs[-1] == "":
            inputs.pop()
        if not schema.min_input <= len(inputs) <= schema.max_input:
            raise e.fail(f"{len(inputs)} inputs, but ONNX {node.op} (opset {opset}) takes "
                         f"{schema.min_input} to {schema.max_input}")
        n_out = len(node.outputs)
        if not schema.min_output <= n_out <= schema.max_output:
            raise e.fail(f"{n_out} outputs, but ONNX {node.op} (opset {opset}) gives "
                         f"{schema.min_output} to {schema.max_output}")
        attrs = [_attribute(e, k, v, schema) for k, v in e.attrs.items() if v is not None]
        attrs += e.attr_protos
        proto = onnx.helper.make_node(node.op, inputs, [v.name for v in node.outputs],
                                      name=node.name)
        proto.attribute.extend(sorted(attrs, key=lambda a: a.name))
        return proto

    def run(self) -> onnx.ModelProto:
        onnx = _onnx()
        helper = onnx.helper
        g = self.graph
        emitted = [self.translate(n) for n in g.nodes]
        opset = max([self.opset, *(e.min_opset for e in emitted)])
        if opset > onnx.defs.onnx_opset_version():
            raise UnsupportedError(f"graph {g.name!r} needs ONNX opset {opset}, but the "
                                   f"installed onnx {onnx.__version__} knows opsets up to "
                                   f"{onnx.defs.onnx_opset_version()}")
        nodes = [self.make_node(e, opset) for e in emitted]
        outputs = {v.name for v in g.outputs}
        value_info = [_value_info(v) for n in g.nodes for v in n.outputs
                      if v.name not in outputs]
        graph = helper.make_graph(
            nodes, g.name,
            inputs=[_value_info(v) for v in g.inputs],
            outputs=[_value_info(v) for v in g.outputs],
            initializer=self.stored_initializers() + self.initializers,
            value_info=value_info,
        )
        opsets = [helper.make_opsetid("", opset)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name=PRODUCER,
                                  producer_version=_version())
        # the oldest IR version that can carry this opset, so older runtimes load the model
        model.ir_version = helper.find_min_ir_version_for(opsets)
        return model


def _version() -> str:
    import cnncompiler

    return getattr(cnncompiler, "__version__", "")


# ------------------------------------------------------------------------------ public API
def to_onnx(model: Any, *, opset: int = DEFAULT_OPSET,
            input_shape: Sequence[int | str] | None = None) -> onnx.ModelProto:
    """An ``onnx.ModelProto`` of ``model`` (a Graph or a DSL Module; ``input_shape``
    overrides a Module's default). Symbolic dims become ``dim_param``, stored tensors become
    initializers, and graph, node and value names are kept. ``opset`` (>= 18) is raised
    automatically when an op needs a newer one. Raises UnsupportedError for an op the
    exporter cannot translate, ModelError for a stored tensor without data."""
    from cnncompiler.runtime.api import as_graph

    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise UnsupportedError(f"ONNX export supports opset >= {MIN_OPSET}, got {opset!r}")
    from cnncompiler.passes.fusion import inline_fused
    from cnncompiler.passes.layout import strip_layouts

    # ONNX has no fused kernels and no layouts: export the plain NCHW graph
    graph = strip_layouts(inline_fused(as_graph(model, input_shape)))
    return _Exporter(graph, opset).run()


def save(model: Any, path: str | os.PathLike, **kwargs: Any) -> None:
    """Export ``model`` (see :func:`to_onnx`, which takes ``kwargs``), check it with
    ``onnx.checker`` (full check, with shape inference) and write it to ``path``. Models of
    2 GiB or more keep their weights in ``<file name>.data`` next to it."""
    onnx = _onnx()
    proto = to_onnx(model, **kwargs)
    path = os.fspath(path)
    if proto.ByteSize() < _PROTO_LIMIT:
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, path)
        return
    onnx.save(proto, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location=os.path.basename(path) + ".data", size_threshold=1024)
    onnx.checker.check_model(path, full_check=True)
