"""The per-layer table of the CNN lecture: output volume, activations, weights, FLOPs.

A *layer* is a node plus the elementwise ops and views that follow it (conv + BN + ReLU is
one row, as in the lecture where ReLU runs in place); the grouping reads each op's fusion
kind from its definition. Weights are the (F·F·D1)·K kernel entries, biases the K offsets
(and BatchNorm's affine pair); running statistics are not parameters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from cnncompiler.ir.graph import Graph, Node, ValueKind
from cnncompiler.ops.opdef import FusionKind
from cnncompiler.ops.registry import node_cost


@dataclass
class LayerRow:
    name: str
    layer: str                # lecture-style label: CONV3-64, POOL2, FC-4096
    ops: list[str]
    output: str               # H x W x D as in the lecture (batch dropped)
    activations: int          # elements of the row's output, per image
    bytes: int
    weights: int
    biases: int
    flops: int

    @property
    def params(self) -> int:
        return self.weights + self.biases


@dataclass
class Summary:
    model: str
    batch: int
    rows: list[LayerRow] = field(default_factory=list)

    @property
    def activations(self) -> int:
        return sum(r.activations for r in self.rows)

    @property
    def activation_bytes(self) -> int:
        return sum(r.bytes for r in self.rows)

    @property
    def weights(self) -> int:
        return sum(r.weights for r in self.rows)

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def flops(self) -> int:
        return sum(r.flops for r in self.rows)

    def to_dict(self) -> dict:
        return {
            "model": self.model, "batch": self.batch,
            "layers": [asdict(r) | {"params": r.params} for r in self.rows],
            "totals": {"activations": self.activations,
                       "activation_bytes_forward": self.activation_bytes,
                       "activation_bytes_forward_backward": 2 * self.activation_bytes,
                       "weights": self.weights, "params": self.params, "flops": self.flops},
        }

    def __str__(self) -> str:
        return render(self)


def _label(node: Node) -> str:
    op, a = node.op, node.attrs
    if op in ("Conv", "ConvTranspose"):
        w = node.inputs[1].type.shape
        k = w[0] if op == "Conv" else w[1] * a["group"]
        s = a["strides"][0]
        tag = "CONV" if op == "Conv" else "DECONV"
        depthwise = op == "Conv" and 1 < a["group"] == node.inputs[0].shape[1]
        dw = "dw" if depthwise else ""
        return f"{tag}{dw}{w[2]}-{k}" + (f"/{s}" if s > 1 else "")
    if op in ("MaxPool", "AveragePool"):
        return ("POOL" if op == "MaxPool" else "AVGPOOL") + str(a["kernel_shape"][0])
    if op in ("Gemm", "MatMul"):
        return f"FC-{node.outputs[0].shape[-1]}"
    if op in ("GlobalAveragePool", "GlobalMaxPool"):
        return "GLOBALPOOL"
    if op == "LRN":
        return "NORM"
    return op.upper()


def _volume(shape: tuple) -> str:
    dims = shape[1:]
    if len(dims) == 3:  # C, H, W -> H x W x D
        dims = (dims[1], dims[2], dims[0])
    elif len(dims) == 1:
        dims = (1, 1, dims[0])
    return "x".join(str(d) for d in dims) or "1"


def _joins_previous(node: Node, producer: Node | None, uses: dict[str, list[Node]]) -> bool:
    """Elementwise ops and views fold into the row of a single-use producer."""
    if producer is None or len(uses[node.inputs[0].name]) != 1:
        return False
    return node.opdef.view or node.opdef.fusion is FusionKind.ELEMENTWISE


def layer_groups(graph: Graph) -> list[list[Node]]:
    uses = graph.consumers()
    groups: list[list[Node]] = []
    row_of: dict[str, int] = {}
    for n in graph.nodes:
        first = n.inputs[0] if n.inputs else None
        producer = first.producer if first is not None else None
        if producer is not None and producer.name in row_of and _joins_previous(n, producer, uses):
            idx = row_of[producer.name]
            if groups[idx][-1] is producer:
                groups[idx].append(n)
                row_of[n.name] = idx
                continue
        row_of[n.name] = len(groups)
        groups.append([n])
    return groups


def summarize(graph: Graph, batch: int = 1) -> Summary:
    s = Summary(graph.name, batch)
    for v in graph.inputs:
        n = v.type.numel(default=batch)
        s.rows.append(LayerRow(v.name, "INPUT", [], _volume(v.type.shape), n // batch,
                               v.type.nbytes(default=batch) // batch, 0, 0, 0))
    for group in layer_groups(graph):
        # the volume a layer produces; a trailing view (flatten) only renames it
        out = next(n for n in reversed(group) if not n.opdef.view or n is group[0]).outputs[0].type
        weights = biases = flops = 0
        for node in group:
            flops += node_cost(node, batch).flops
            for v in node.inputs:
                if v is not None and v.kind is ValueKind.PARAM:
                    if v.type.rank >= 2 and v.type.numel() > 1 and node.op != "PRelu":
                        weights += v.type.numel()
                    else:
                        biases += v.type.numel()
        s.rows.append(LayerRow(group[0].name, _label(group[0]), [n.op for n in group],
                               _volume(out.shape), out.numel(default=1),
                               out.nbytes(default=1), weights, biases, flops))
    return s


def _human(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def render(s: Summary) -> str:
    head = ("layer", "name", "output", "activations", "weights", "biases", "FLOPs", "ops")
    lines = []
    for r in s.rows:
        acts = f"{r.activations:,} ({_human(r.activations)})"
        lines.append((r.layer, r.name, f"[{r.output}]", acts,
                      f"{r.weights:,}", f"{r.biases:,}", _human(r.flops), "+".join(r.ops)))
    widths = [max(len(str(x[i])) for x in [head, *lines]) for i in range(len(head))]
    fmt = "  ".join(f"{{:{'<' if i in (0, 1, 2, 7) else '>'}{w}}}" for i, w in enumerate(widths))
    out = [f"Model {s.model} (per image; FLOPs at batch {s.batch})", fmt.format(*head),
           "-" * (sum(widths) + 2 * (len(widths) - 1))]
    out += [fmt.format(*line).rstrip() for line in lines]
    mb = s.activation_bytes / 1e6
    out += [
        "",
        f"TOTAL activations: {s.activations:,} ({_human(s.activations)}) = "
        f"{mb:.1f} MB per image forward, ~{2 * mb:.1f} MB forward+backward",
        f"TOTAL params: {s.params:,} ({_human(s.params)}) = {s.weights:,} weights + "
        f"{s.params - s.weights:,} biases; {s.params * 4 / 1e6:.1f} MB as float32",
        f"TOTAL FLOPs: {s.flops:,} ({_human(s.flops, 'FLOP')}) per batch of {s.batch}",
    ]
    return "\n".join(out)
