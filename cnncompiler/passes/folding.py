"""Folding passes (opt_level 2): absorb per-channel affine maps and explicit padding into the
conv/gemm/pool that they follow or precede, so the op does the work for free.

- ``fold_batchnorm``: Conv/ConvTranspose/Gemm -> BatchNormalization becomes one producer with
  W' = W * s and B' = (B - mean) * s + bias, s = scale / sqrt(var + eps) per output channel;
- ``fold_scale_shift``: Conv/ConvTranspose/Gemm -> Mul/Add/Sub by a stored scalar or
  per-output-channel constant becomes one producer with rescaled W/B (or a shifted B);
- ``fold_pad``: a constant Pad of the two spatial dims of an NCHW tensor -> Conv (value 0),
  AveragePool with count_include_pad (value 0) or MaxPool (value -inf) becomes the op with
  larger ``pads``, provided the folded op's output type is unchanged.

Each fold needs the intermediate value to have exactly one consumer and not be a graph output,
and every tensor it rewrites to be stored with data. New weights are computed in float64 and
cast to the weight dtype; they are new stored tensors (PARAM when the original weight was one).
Each pass repeats its sweep until nothing changes, so chains (Conv -> BN -> BN, Pad -> Pad ->
Conv) fold completely.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from cnncompiler.errors import CnnCompilerError
from cnncompiler.ir.graph import Graph, Node, Value, ValueKind, free_name
from cnncompiler.ir.rewrite import Rewriter
from cnncompiler.ops.registry import infer_node
from cnncompiler.passes.manager import register_pass

WEIGHTED = ("Conv", "ConvTranspose", "Gemm")

# consumer node name -> (producer node it absorbs, how to emit the replacement)
Plan = dict[str, tuple[Node, Callable[["_Emitter"], None]]]


# --------------------------------------------------------------------------------- helpers
def _sole_consumer(graph: Graph, uses: dict[str, list[Node]], value: Value) -> Node | None:
    """The one node reading ``value`` (once), if it is not also a graph output."""
    readers = uses.get(value.name, [])
    if len(readers) != 1 or any(v is value for v in graph.outputs):
        return None
    node = readers[0]
    return node if sum(1 for v in node.inputs if v is value) == 1 else None


def _nchw(*nodes: Node) -> bool:
    """Every node works on logical NCHW tensors (no physical ``layout`` chosen yet)."""
    return all(n.attrs.get("layout") in (None, "NCHW") for n in nodes)


def _stored(graph: Graph, v: Value | None) -> np.ndarray | None:
    """The array behind a stored tensor with data (None otherwise)."""
    if v is None or not v.is_stored:
        return None
    return graph.data.get(v.name)


class _Emitter:
    """What a planned fold needs while the graph is rebuilt: the Rewriter and fresh names."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.rw = Rewriter(graph)
        self._used: set[str] = set()

    def const(self, array: np.ndarray, base: str, trainable: bool) -> Value:
        # a name the old graph does not use either (a later rw.value() may carry that one over)
        base = base.removesuffix("_folded") + "_folded"
        name = free_name(base, lambda n: n in self.graph.values or n in self._used)
        self._used.add(name)
        return self.rw.const(array, name, trainable=trainable)


def _rewrite(graph: Graph, plan: Plan) -> Graph:
    """Copy ``graph``, dropping each planned producer and emitting its fold at the consumer."""
    absorbed = {producer.name for producer, _ in plan.values()}
    em = _Emitter(graph)
    for node in graph.nodes:
        if node.name in plan:
            plan[node.name][1](em)
        elif node.name not in absorbed:
            em.rw.copy(node)
    return em.rw.finish()


def _to_fixpoint(sweep: Callable[[Graph], tuple[Graph, list[str]]], graph: Graph
                 ) -> tuple[Graph, list[str]]:
    changes: list[str] = []
    while True:
        graph, more = sweep(graph)
        if not more:
            return graph, changes
        changes += more


def _out_channels(node: Node) -> int:
    return node.outputs[0].type.shape[1]


def _scale_weight(node: Node, w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """W with output channel k of ``node`` multiplied by s[k]: each product computed in
    float64 and rounded once to W's dtype, streamed without a float64 copy of W (ResNet-50's
    batch norms folded in 0.58 s with those copies, a cost every cached compile pays)."""
    if node.op == "Conv":                     # W [K, C/group, F_h, F_w]
        factor = s.reshape(-1, 1, 1, 1)
    elif node.op == "ConvTranspose":          # W [C, K/group, F_h, F_w], k = g*K/group + j
        group = node.attrs["group"]
        c, kg = w.shape[:2]
        factor = np.broadcast_to(s.reshape(group, 1, kg, 1, 1),
                                 (group, c // group, kg, 1, 1)).reshape(c, kg, 1, 1)
    else:   # Gemm: Y[:, n] uses column n of B' (row n of B when transB)
        factor = s.reshape(-1, 1) if node.attrs["transB"] else s.reshape(1, -1)
    out = np.empty(w.shape, w.dtype if w.dtype.kind == "f" else np.float64)
    return np.multiply(w, factor, out=out, dtype=np.float64, casting="same_kind")


def _gemm_bias_vector(c: np.ndarray, n: int) -> np.ndarray | None:
    """C as a vector over the N outputs, or None when it varies along M."""
    try:
        return np.broadcast_to(c.astype(np.float64), (1, n)).reshape(n)
    except ValueError:
        return None


def _emit_weighted(producer: Node, consumer: Node, w: np.ndarray, b: np.ndarray | None,
                   attrs: dict | None = None) -> Callable[[_Emitter], None]:
    """Emit ``producer`` with new (float64) weights, standing for ``consumer``'s output."""
    w_in, b_in = producer.inputs[1], (producer.inputs[2] if len(producer.inputs) > 2 else None)

    def emit(em: _Emitter) -> None:
        rw = em.rw
        trainable = w_in.kind is ValueKind.PARAM
        new_w = em.const(w.astype(w_in.type.dtype.numpy, copy=False), w_in.name, trainable)
        inputs = [rw.value(producer.inputs[0]), new_w]
        if b is not None:
            b_trainable = b_in.kind is ValueKind.PARAM if b_in is not None else trainable
            base = b_in.name if b_in is not None else f"{producer.name}.bias"
            inputs.append(em.const(b.astype(w_in.type.dtype.numpy), base, b_trainable))
        rw.add(producer.op, inputs, attrs or dict(producer.attrs), producer.name,
               outputs=[consumer.outputs[0]])

    return emit


def _weights(graph: Graph, producer: Node) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(W, B or None) of a Conv/ConvTranspose/Gemm when each is stored with data."""
    w = _stored(graph, producer.inputs[1])
    b_in = producer.inputs[2] if len(producer.inputs) > 2 else None
    b = _stored(graph, b_in)
    if w is None or (b_in is not None and b is None):
        return None
    return w, b


# -------------------------------------------------------------------------- batch norm
def _plan_batchnorm(graph: Graph, uses: dict[str, list[Node]], bn: Node
                    ) -> tuple[Node, Callable[[_Emitter], None]] | None:
    x = bn.inputs[0]
    producer = x.producer
    if producer is None or producer.op not in WEIGHTED or len(bn.outputs) != 1 \
            or not _nchw(producer, bn) or _sole_consumer(graph, uses, x) is not bn:
        return None
    params = [_stored(graph, v) for v in bn.inputs[1:5]]
    weights = _weights(graph, producer)
    if weights is None or len(params) != 4 or any(p is None for p in params):
        return None
    w, b = weights
    scale, shift, mean, var = (p.astype(np.float64) for p in params)
    s = scale / np.sqrt(var + bn.attrs["epsilon"])
    w2 = _scale_weight(producer, w, s)
    attrs = dict(producer.attrs)
    if producer.op == "Gemm":
        # BN(alpha*A'B' + beta*C) = alpha*A'(B's) + ((beta*C - mean)*s + shift), beta' = 1
        n = _out_channels(producer)
        c = np.zeros(n) if b is None else _gemm_bias_vector(b, n)
        if c is None:
            return None
        bias = c * (attrs["beta"] if b is not None else 0.0)
        attrs["beta"] = 1.0
    else:
        bias = np.zeros(_out_channels(producer)) if b is None else b.astype(np.float64)
    b2 = (bias - mean) * s + shift
    return producer, _emit_weighted(producer, bn, w2, b2, attrs)


def _sweep_batchnorm(graph: Graph) -> tuple[Graph, list[str]]:
    uses = graph.consumers()
    plan: Plan = {}
    changes = []
    for node in graph.nodes:
        if node.op == "BatchNormalization":
            fold = _plan_batchnorm(graph, uses, node)
            if fold is not None:
                plan[node.name] = fold
                changes.append(f"folded {node.name} (BatchNormalization) into {fold[0].name}")
    return (_rewrite(graph, plan), changes) if plan else (graph, [])


@register_pass("fold_batchnorm", min_level=2, after="cse")
def fold_batchnorm(graph: Graph) -> tuple[Graph, list[str]]:
    """Fold an inference BatchNormalization into the Conv/ConvTranspose/Gemm before it (whose
    output it alone reads): W' = W*s, B' = (B - mean)*s + bias, s = scale/sqrt(var + eps)."""
    return _to_fixpoint(_sweep_batchnorm, graph)


# ----------------------------------------------------------------------- scale and shift
def _channel_vector(const: np.ndarray, out: Value) -> np.ndarray | None:
    """A constant that broadcasts against ``out`` ([N, K, ...]) without growing it and varies
    at most along axis 1, as a float64 vector over the K channels; else None."""
    rank = out.type.rank
    if const.ndim > rank:
        return None
    shape = (1,) * (rank - const.ndim) + const.shape
    k = out.type.shape[1]
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, k):
        return None
    target = tuple(k if i == 1 else 1 for i in range(rank))
    return np.broadcast_to(const.reshape(shape).astype(np.float64), target).reshape(k)


def _plan_scale_shift(graph: Graph, uses: dict[str, list[Node]], node: Node
                      ) -> tuple[Node, Callable[[_Emitter], None]] | None:
    if len(node.inputs) != 2 or len(node.outputs) != 1:
        return None
    a, c = node.inputs
    # Mul and Add commute; Sub only folds x - const (as x + (-const))
    order = [(a, c), (c, a)] if node.op in ("Mul", "Add") else [(a, c)]
    for x, k in order:
        producer = x.producer
        const = _stored(graph, k)
        if producer is None or producer.op not in WEIGHTED or const is None \
                or not _nchw(producer) or _sole_consumer(graph, uses, x) is not node \
                or node.outputs[0].type != x.type:
            continue
        vec = _channel_vector(const, x)
        weights = _weights(graph, producer)
        if vec is None or weights is None:
            continue
        w, b = weights
        attrs = dict(producer.attrs)
        if node.op == "Mul":
            w2 = _scale_weight(producer, w, vec)
            # Conv: B [K] * s; Gemm: beta*C*s with C of any shape it had ([M, N] included)
            b2 = None if b is None else b.astype(np.float64) * vec
            return producer, _emit_weighted(producer, node, w2, b2, attrs)
        shift = vec if node.op == "Add" else -vec
        w2 = w.astype(np.float64)
        if producer.op == "Gemm":
            # alpha*A'B' + beta*C + shift = alpha*A'B' + (beta*C + shift), beta' = 1
            c0 = 0.0 if b is None else attrs["beta"] * b.astype(np.float64)
            b2 = c0 + shift       # broadcasts: C stays [M, N] when it was
            attrs["beta"] = 1.0
        else:
            b2 = shift if b is None else b.astype(np.float64) + shift
        return producer, _emit_weighted(producer, node, w2, b2, attrs)
    return None


def _sweep_scale_shift(graph: Graph) -> tuple[Graph, list[str]]:
    uses = graph.consumers()
    plan: Plan = {}
    changes = []
    for node in graph.nodes:
        if node.op in ("Mul", "Add", "Sub"):
            fold = _plan_scale_shift(graph, uses, node)
            if fold is not None:
                plan[node.name] = fold
                changes.append(f"folded {node.name} ({node.op}) into {fold[0].name}")
    return (_rewrite(graph, plan), changes) if plan else (graph, [])


@register_pass("fold_scale_shift", min_level=2, after="fold_batchnorm")
def fold_scale_shift(graph: Graph) -> tuple[Graph, list[str]]:
    """Fold a Mul/Add (or Sub of a constant) by a stored scalar or per-output-channel constant
    into the Conv/ConvTranspose/Gemm before it: Mul scales W and B, Add shifts B."""
    return _to_fixpoint(_sweep_scale_shift, graph)


# ---------------------------------------------------------------------------------- pad
def _pad_absorbable(pad: Node, consumer: Node) -> bool:
    attrs = pad.attrs
    if attrs["mode"] != "constant" or consumer.inputs[0] is not pad.outputs[0]:
        return False
    value = attrs["value"]
    if consumer.op == "Conv":
        return value == 0.0
    if consumer.op == "AveragePool":   # explicit zeros count in the divisor: only if pads do
        return value == 0.0 and bool(consumer.attrs["count_include_pad"])
    if consumer.op == "MaxPool":
        return value == -math.inf
    return False


def _plan_pad(graph: Graph, uses: dict[str, list[Node]], pad: Node
              ) -> tuple[Node, Callable[[_Emitter], None]] | None:
    x, y = pad.inputs[0], pad.outputs[0]
    pads = pad.attrs["pads"]
    if x is None or x.type.rank != 4 or len(pads) != 8:
        return None
    if any(pads[i] != 0 for i in (0, 1, 4, 5)) or any(pads[i] < 0 for i in (2, 3, 6, 7)):
        return None
    consumer = _sole_consumer(graph, uses, y)
    if consumer is None or not _nchw(consumer) or not _pad_absorbable(pad, consumer):
        return None
    top, left, bottom, right = pads[2], pads[3], pads[6], pads[7]
    old = consumer.attrs["pads"]
    attrs = dict(consumer.attrs)
    attrs["pads"] = (old[0] + top, old[1] + left, old[2] + bottom, old[3] + right)
    inputs = [x, *consumer.inputs[1:]]
    try:    # e.g. a pool's pads must stay below its window; ceil rounding may change the shape
        types = infer_node(consumer.op, [v.type if v is not None else None for v in inputs],
                           attrs, consumer.name, len(consumer.outputs))
    except CnnCompilerError:
        return None
    if types != [v.type for v in consumer.outputs]:
        return None

    def emit(em: _Emitter) -> None:
        em.rw.add(consumer.op, [em.rw.value(v) for v in inputs], attrs, consumer.name,
                  outputs=consumer.outputs)

    return pad, emit


def _sweep_pad(graph: Graph) -> tuple[Graph, list[str]]:
    uses = graph.consumers()
    plan: Plan = {}
    changes = []
    for node in graph.nodes:
        if node.op == "Pad":
            fold = _plan_pad(graph, uses, node)
            if fold is not None:
                consumer = uses[node.outputs[0].name][0]
                plan[consumer.name] = fold
                changes.append(f"folded {node.name} into {consumer.name}")
    return (_rewrite(graph, plan), changes) if plan else (graph, [])


@register_pass("fold_pad", min_level=2, after="fold_scale_shift")
def fold_pad(graph: Graph) -> tuple[Graph, list[str]]:
    """Fold a constant Pad of the spatial dims into the Conv (value 0), AveragePool with
    count_include_pad (value 0) or MaxPool (value -inf) it feeds, when the result's shape is
    unchanged."""
    return _to_fixpoint(_sweep_pad, graph)
