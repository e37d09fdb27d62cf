"""``Fused``: a group of ops run as one kernel, produced by the fusion pass.

Its ``body`` attribute is a small Graph whose inputs are the fused node's inputs and whose
nodes are the members in order (e.g. Conv, BatchNormalization, Relu, Add). The reference runs
the members one by one, so fused and unfused graphs can be compared exactly; backends
generate one kernel for the whole body.
"""

from __future__ import annotations

from cnncompiler.ir.types import TensorType
from cnncompiler.ops.opdef import Attr, FusionKind, InferContext, Input, OpDef
from cnncompiler.ops.registry import node_cost, register


def _infer(ctx: InferContext) -> list[TensorType]:
    body = ctx["body"]
    if len(ctx.inputs) != len(body.inputs):
        raise ctx.fail(f"takes {len(body.inputs)} inputs (its body's), got {len(ctx.inputs)}")
    bindings: dict[str, int | str] = {}  # the body's symbolic dims, as the caller binds them
    for i, (t, v) in enumerate(zip(ctx.inputs, body.inputs)):
        ok = t is not None and t.dtype == v.type.dtype and t.rank == v.type.rank
        for outer, inner in zip(t.shape if ok else (), v.type.shape):
            if isinstance(inner, str):
                ok = bindings.setdefault(inner, outer) == outer
            elif outer != inner:
                ok = False
        if not ok:
            raise ctx.fail(f"input {i} is {t}, the body expects {v.type}")
    return [v.type.with_shape(bindings.get(d, d) if isinstance(d, str) else d
                              for d in v.type.shape) for v in body.outputs]


def run_body(inputs, attrs):
    """Run the members in order through their references (intermediates never leave)."""
    body = attrs["body"]
    env = {v.name: x for v, x in zip(body.inputs, inputs)}
    for node in body.nodes:
        out = node.opdef.reference([None if v is None else env[v.name] for v in node.inputs],
                                   node.attrs)
        for v, r in zip(node.outputs, out if isinstance(out, (tuple, list)) else (out,)):
            env[v.name] = r
    results = tuple(env[v.name] for v in body.outputs)
    return results if len(results) > 1 else results[0]


def _flops(ctx: InferContext) -> int:
    batch = next((d for t in ctx.inputs if t is not None for d in t.shape[:1]), 1)
    return sum(node_cost(n, batch if isinstance(batch, int) else 1).flops
               for n in ctx["body"].nodes)


FUSED = register(OpDef(
    name="Fused",
    doc="Several ops run as one kernel; `body` holds them in order.",
    inputs=(Input("inputs", variadic=True),),
    attrs=(Attr("body", "graph", doc="the member ops as a graph"),
           Attr("kind", "str", "elementwise", "what was fused, e.g. 'Conv+BatchNormalization+"
                "Relu'")),
    infer=_infer,
    reference=run_body,
    flops=_flops,
    fusion=FusionKind.OPAQUE,
    outputs=("outputs",),
    variadic_outputs=True,
))
