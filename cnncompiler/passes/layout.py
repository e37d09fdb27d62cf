"""Layout assignment: run each op in the layout its backend kernel wants, converting rarely.

A backend states a per-op preference, ``choose(node) -> "NCHW8c" | "NHWC" | "NCHW" | None``
(None: no preference), and adds :func:`layout_pass` to its ``PassManager(extra=[...])``; the
pass is not in the default pipeline. :func:`assign_layouts` then walks the graph once, in
order, and decides a physical layout per 4-D activation (see :mod:`cnncompiler.ir.layout`):

- ops with a ``layout`` attribute (Conv, the pools, BatchNormalization) run in the chosen
  layout, or, with no preference, in the layout their input X already has; a layout that
  does not fit (NCHW8c with C=3, say) falls back to the input's layout, then to NCHW;
- layout-agnostic ops (elementwise and broadcasting: Relu, Add, Mul, Clip, PRelu...) run in
  the layout that needs the fewest conversions of their activation operands (a residual Add of
  two NCHW8c tensors stays NCHW8c); stored operands that broadcast (a bias [C, 1, 1], a PRelu
  slope) are re-laid once, as new stored tensors;
- Concat runs in any layout with its axis mapped (a channel concat of NCHW8c tensors whose
  channel counts are multiples of 8 concatenates whole blocks);
- every other op (Flatten, Reshape, Gemm, Softmax, Transpose, Fused...) reads its inputs in
  the layout it read them in before (NCHW); graph inputs and outputs keep their layouts
  (NCHW, unless a layout op reads an input directly in another one) and their names.

Weights stay logical (Conv W is OIHW whatever the layout): packing them is the backend's
business. Run the pass after the folding passes and before ``fuse`` (fusion then groups the
laid-out ops as before; ``Fused`` nodes are opaque to this pass, so after fusion it can only
convert around them). :func:`strip_layouts` undoes it (the ONNX exporter calls it).

A ``LayoutTransform`` is inserted where a consumer needs a value in a layout its producer does
not give, once per (value, layout): later consumers reuse it. LayoutTransforms already in the
graph are dissolved first (a value is the same tensor whatever its layout), so back-to-back
conversions never survive; :func:`cancel_layout_transforms` does that alone.

Guarantees: the result computes the same outputs (exactly: conversions are permutations), with
the same graph input and output names, types and layouts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from cnncompiler.errors import GraphError
from cnncompiler.ir.graph import Graph, Node, Value, ValueKind, free_name
from cnncompiler.ir.layout import NCHW, Layout, parse_layout
from cnncompiler.ir.rewrite import Rewriter
from cnncompiler.ir.types import TensorType
from cnncompiler.ops.layout_ops import input_layout
from cnncompiler.ops.opdef import FusionKind
from cnncompiler.passes.cleanup import eliminate_dead_code
from cnncompiler.passes.manager import Pass

Choose = Callable[[Node], "str | None"]

TRANSFORM = "LayoutTransform"
_AGNOSTIC = (FusionKind.ELEMENTWISE, FusionKind.BROADCAST)


def has_layout_attr(node: Node) -> bool:
    """Does ``node``'s op take a ``layout`` attribute (X and Y in that layout)?"""
    return "layout" in node.opdef.attr_names


def count_transforms(graph: Graph) -> int:
    return sum(1 for n in graph.nodes if n.op == TRANSFORM)


@dataclass
class _State:
    graph: Graph
    choose: Choose
    rw: Rewriter = field(init=False)
    taken: set[str] = field(init=False)
    root: dict[str, str] = field(default_factory=dict)        # value -> value it re-lays
    orig: dict[str, Layout] = field(default_factory=dict)     # value -> its layout, before
    logical: dict[str, TensorType] = field(default_factory=dict)   # root -> NCHW type
    versions: dict[str, dict[Layout, Value]] = field(default_factory=dict)  # root -> new values
    native: dict[str, Layout] = field(default_factory=dict)   # root -> layout its producer gives
    reserved: dict[tuple[str, Layout], str] = field(default_factory=dict)  # output names
    stored_cache: dict[tuple[str, Layout, Layout], Value] = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)
    inserted: int = 0
    modified: bool = False   # some node's attributes changed

    def __post_init__(self) -> None:
        self.rw = Rewriter(self.graph)
        self.taken = set(self.graph.values) | {n.name for n in self.graph.nodes}

    # ---------------------------------------------------------------- names
    def fresh(self, base: str) -> str:
        name = free_name(base, self.taken.__contains__)
        self.taken.add(name)
        return name

    # ---------------------------------------------------- values and layouts
    def logical_type(self, v: Value) -> TensorType:
        """The logical (NCHW) type of an old computed value."""
        return self.logical[self.root[v.name]]

    def define(self, old: Value, new: Value, layout: Layout) -> None:
        """``new`` is old value ``old`` (a root), produced in ``layout``."""
        self.root[old.name] = old.name
        self.versions[old.name] = {layout: new}
        self.native[old.name] = layout
        self.rw.alias(old, new)

    def has(self, v: Value, layout: Layout) -> bool:
        return layout in self.versions[self.root[v.name]]

    def fits(self, v: Value, layout: Layout) -> bool:
        """Can computed value ``v`` be had in ``layout``?"""
        return self.has(v, layout) or layout.problem(self.logical_type(v).shape) is None

    def get(self, v: Value, layout: Layout) -> Value:
        """Old computed value ``v`` in ``layout``: its producer's, or a (shared) conversion."""
        r = self.root[v.name]
        versions = self.versions[r]
        if layout not in versions:
            src = self.native[r]
            name = self.reserved.pop((r, layout), None) or self.fresh(f"{r}_{layout}")
            node = self.fresh(f"{r}_to_{layout}")
            (out,) = self.rw.builder.add_node(TRANSFORM, [versions[src]],
                                              {"src": src.name, "dst": layout.name}, node,
                                              1, [name])
            versions[layout] = out
            self.inserted += 1
            self.changes.append(f"inserted {node}: {r} {src} -> {layout}")
        return versions[layout]

    def output_name(self, old: Value, layout: Layout, wanted: dict[str, list]) -> str:
        """The name for root ``old`` produced in ``layout``: its own, unless it is a graph
        output wanted in another layout (then the conversion to that layout takes it)."""
        name = old.name
        for out_name, want in wanted.get(old.name, ()):
            if out_name == old.name and want == layout:
                continue
            if out_name == old.name:
                name = self.fresh(f"{old.name}_{layout}")
            self.reserved.setdefault((old.name, want), out_name)
        return name

    def stored(self, v: Value, src: Layout, dst: Layout) -> Value:
        """Stored operand ``v``, laid out for an op in ``src``, re-laid for ``dst`` (as a
        broadcasting operand; a full tensor is the special case of C = C)."""
        if src == dst:
            return self.rw.value(v)
        key = (v.name, src, dst)
        if key not in self.stored_cache:
            data = self.rw.data(v)
            name = self.fresh(f"{v.name}_{dst}")
            trainable = v.kind is ValueKind.PARAM
            if data is None:
                shape = dst.broadcast_shape(src.broadcast_logical_shape(v.type.shape))
                new = self.rw.builder.param(name, None, shape=shape, dtype=v.type.dtype,
                                            trainable=trainable)
            else:
                arr = dst.broadcast_to_physical(src.broadcast_to_logical(np.asarray(data)))
                new = self.rw.builder.param(name, arr, trainable=trainable)
            self.stored_cache[key] = new
            self.changes.append(f"re-laid {v.name} {list(v.type.shape)} for {dst} as {name} "
                                f"{list(new.type.shape)}")
        return self.stored_cache[key]


def _concat_axis(node: Node, layout: Layout) -> int | None:
    """Logical axis of a Concat whose inputs are in ``layout`` (None if not a 4-D concat)."""
    rank = node.outputs[0].type.rank
    if rank != layout.rank:
        return None
    try:
        return layout.logical_axis(node.attrs["axis"] % rank)
    except ValueError:
        return None


def _classify(node: Node, orig: dict[str, Layout]) -> tuple[str, Layout]:
    """(kind, layout the node runs in now) for one node of the input graph."""
    if node.op == TRANSFORM and not node.inputs[0].is_stored:
        return "transform", parse_layout(node.attrs["dst"])
    if has_layout_attr(node):
        return "layout_op", parse_layout(node.attrs.get("layout"))
    computed = [v for v in node.inputs if v is not None and not v.is_stored]
    tags = {orig[v.name] for v in computed} - {NCHW}
    if len(tags) > 1 or len(node.outputs) != 1:
        return "other", NCHW
    now = tags.pop() if tags else NCHW
    if not now.is_nchw and any(orig[v.name] != now for v in computed):
        return "other", NCHW   # mixed layouts: only a hand-built graph does this
    if node.op == "Concat" and _concat_axis(node, now) is not None:
        return "concat", now
    if node.opdef.fusion in _AGNOSTIC and not {"axis", "axes"} & set(node.opdef.attr_names):
        return "agnostic", now
    return "other", NCHW


def _reads(node: Node, kind: str, now: Layout) -> Layout | None:
    """The layout ``node`` reads its input X in, for the ops that say so."""
    if node.op == TRANSFORM:
        return parse_layout(node.attrs["src"])
    return input_layout(node.attrs) if kind == "layout_op" else None


def _input_layouts(graph: Graph) -> dict[str, Layout]:
    """Graph inputs are NCHW, unless a layout op or LayoutTransform reads one directly in
    another layout (a backend that takes NHWC input, say); such readers must agree."""
    found: dict[str, tuple[Layout, Node]] = {}
    inputs = {v.name for v in graph.inputs}
    for node in graph.nodes:
        x = node.inputs[0] if node.inputs else None
        if x is None or x.name not in inputs:
            continue
        if node.op == TRANSFORM:
            lay = parse_layout(node.attrs["src"])
        elif has_layout_attr(node):
            lay = input_layout(node.attrs)
        else:
            continue
        first = found.setdefault(x.name, (lay, node))
        if first[0] != lay:
            raise GraphError(f"graph input {x.name!r} is read as {first[0]} by node "
                             f"{first[1].name!r} and as {lay} by node {node.name!r}")
    return {v.name: found[v.name][0] if v.name in found else NCHW for v in graph.inputs}


def _check_reads(node: Node, kind: str, now: Layout, orig: dict[str, Layout]) -> None:
    """A layout op (or LayoutTransform) must read X in the layout X is in."""
    x = node.inputs[0] if node.inputs else None
    lay = _reads(node, kind, now)
    if lay is None or x is None or x.is_stored or orig[x.name] == lay:
        return
    raise GraphError(f"node {node.name!r} ({node.op}) reads {x.name!r} as {lay}, but "
                     f"{x.name!r} is {orig[x.name]}; insert a LayoutTransform")


def assign_layouts(graph: Graph, choose: Choose) -> tuple[Graph, list[str]]:
    """Run each op in the layout ``choose(node)`` prefers where it can, with as few
    LayoutTransforms as the order allows; same outputs, names and types."""
    st = _State(graph, choose)
    # what every node runs in now, and which value each LayoutTransform re-lays
    kinds: dict[str, tuple[str, Layout]] = {}
    st.orig.update(_input_layouts(graph))
    for v in graph.inputs:
        st.root[v.name] = v.name
    for node in graph.nodes:
        kind, now = kinds[node.name] = _classify(node, st.orig)
        _check_reads(node, kind, now, st.orig)
        for v in node.outputs:
            st.orig[v.name] = now if v is node.outputs[0] else NCHW
            st.root[v.name] = st.root[node.inputs[0].name] if kind == "transform" else v.name
    # graph outputs, by the value they are the same tensor as, keep their layout and name
    wanted: dict[str, list[tuple[str, Layout]]] = {}
    for v in graph.outputs:
        if not v.is_stored and v.kind is not ValueKind.INPUT:
            wanted.setdefault(st.root[v.name], []).append((v.name, st.orig[v.name]))

    for v in graph.inputs:
        lay = st.orig[v.name]
        st.logical[v.name] = v.type.with_shape(lay.logical_shape(v.type.shape))
        st.output_name(v, lay, wanted)   # reserves names for re-layings that are outputs
        st.define(v, st.rw.value(v), lay)
    for node in graph.nodes:
        kind, now = kinds[node.name]
        if kind == "transform":
            st.changes.append(f"dissolved {node.name} ({node.attrs['src']} -> "
                              f"{node.attrs['dst']})")
            continue
        for v in node.outputs:
            st.logical[v.name] = v.type if v is not node.outputs[0] or now.is_nchw else \
                v.type.with_shape(now.logical_shape(v.type.shape))
        if kind == "layout_op":
            _layout_op(st, node, now, wanted)
        elif kind in ("agnostic", "concat"):
            _agnostic(st, node, now, kind, wanted)
        else:
            _other(st, node, wanted)

    for v in graph.outputs:
        if v.is_stored or v.kind is ValueKind.INPUT:
            continue
        val = st.get(v, st.orig[v.name])
        if val.name != v.name:
            (val,) = st.rw.builder.add_node("Identity", [val], {}, st.fresh(f"{v.name}_id"),
                                            1, [v.name])
        st.rw.alias(v, val)
    if not st.changes and not st.modified:
        return graph, []
    new = st.rw.finish()
    st.changes.insert(0, f"{count_transforms(new)} LayoutTransform node(s) "
                         f"({st.inserted} inserted)")
    return new, st.changes


def _inputs(st: _State, node: Node, layout: Layout, orig: Layout, broadcast: bool,
            act: int | None = None, act_layout: Layout | None = None) -> list[Value | None]:
    """``node``'s new inputs with its activations in ``layout``: every computed input, or
    only input ``act`` (in ``act_layout`` if given); stored operands re-laid from ``orig`` if
    ``broadcast``."""
    out = []
    for i, v in enumerate(node.inputs):
        if v is None:
            out.append(None)
        elif act is not None and i != act:
            out.append(st.rw.value(v) if v.is_stored else st.get(v, st.orig[v.name]))
        elif v.is_stored:
            out.append(st.stored(v, orig, layout) if broadcast or act is not None
                       else st.rw.value(v))
        else:
            out.append(st.get(v, act_layout or layout if i == act else layout))
    return out


def _emit(st: _State, node: Node, inputs: list, attrs: dict, layout: Layout,
          wanted: dict[str, list]) -> None:
    names = [st.output_name(v, layout if i == 0 else NCHW, wanted)
             for i, v in enumerate(node.outputs)]
    st.modified |= attrs != node.attrs
    outs = st.rw.builder.add_node(node.op, inputs, attrs, node.name, len(node.outputs), names)
    for i, (old, new) in enumerate(zip(node.outputs, outs)):
        st.define(old, new, layout if i == 0 else NCHW)


def _layout_op(st: _State, node: Node, now: Layout, wanted: dict) -> None:
    x, y = node.inputs[0], node.outputs[0]
    out_shape = st.logical[y.name].shape
    pref = st.choose(node)
    candidates = [parse_layout(pref)] if pref is not None else []
    if x is not None and not x.is_stored:
        candidates.append(st.native[st.root[x.name]])
    candidates.append(NCHW)
    layout, x_layout = NCHW, None
    split = "x_layout" in node.opdef.attr_names and x is not None and not x.is_stored
    for i, cand in enumerate(candidates):
        problem = cand.problem(out_shape)
        if x is not None and not problem:
            xs = st.logical_type(x).shape if not x.is_stored else \
                now.broadcast_logical_shape(x.type.shape)
            problem = None if not x.is_stored and st.has(x, cand) else cand.problem(xs)
            if problem and split:   # Y in cand, X read as its producer gives it
                layout, x_layout = cand, st.native[st.root[x.name]]
                break
        if cand.is_nchw or not problem:
            layout = cand
            break
        if i == 0 and pref is not None:
            st.changes.append(f"{node.name} ({node.op}): {cand} does not fit ({problem})")
    attrs = dict(node.attrs, layout=None if layout.is_nchw else layout.name)
    if "x_layout" in node.opdef.attr_names:
        attrs["x_layout"] = None if x_layout in (None, layout) else x_layout.name
    _emit(st, node, _inputs(st, node, layout, now, False, act=0, act_layout=x_layout), attrs,
          layout, wanted)
    if x_layout not in (None, layout):
        st.changes.append(f"{node.name} ({node.op}): reads {x_layout}, writes {layout}")
    elif not layout.is_nchw:
        st.changes.append(f"{node.name} ({node.op}): {layout}")


def _agnostic(st: _State, node: Node, now: Layout, kind: str, wanted: dict) -> None:
    y = node.outputs[0]
    out_shape = st.logical[y.name].shape
    computed = [v for v in node.inputs if v is not None and not v.is_stored]
    stored = [v for v in node.inputs if v is not None and v.is_stored]

    def feasible(cand: Layout) -> bool:
        if cand.is_nchw:
            return True
        if cand.problem(out_shape) is not None:
            return False
        if not all(st.fits(v, cand) for v in computed):
            return False
        for v in stored:
            shape = now.broadcast_logical_shape(v.type.shape)
            problem = cand.problem(shape) if kind == "concat" else cand.broadcast_problem(shape)
            if problem is not None:
                return False
        return True

    pref = st.choose(node)
    seen: list[Layout] = []
    for v in computed:
        for lay in st.versions[st.root[v.name]]:
            if lay not in seen:
                seen.append(lay)
    # fewest conversions first; ties keep the order in which operands offer layouts
    ranked = sorted(seen, key=lambda lay: sum(not st.has(v, lay) for v in computed))
    candidates = ([parse_layout(pref)] if pref is not None else []) + ranked + [NCHW]
    layout = next(c for c in candidates if feasible(c))
    attrs = dict(node.attrs)
    if kind == "concat":
        attrs["axis"] = layout.axis(_concat_axis(node, now))
    _emit(st, node, _inputs(st, node, layout, now, True), attrs, layout, wanted)


def _other(st: _State, node: Node, wanted: dict) -> None:
    inputs = [None if v is None else st.rw.value(v) if v.is_stored else st.get(v, st.orig[v.name])
              for v in node.inputs]
    _emit(st, node, inputs, dict(node.attrs), NCHW, wanted)


def layout_pass(choose: Choose, name: str = "assign_layouts", min_level: int = 2) -> Pass:
    """The layout pass for a backend whose kernels prefer ``choose(node)``; give it to
    ``PassManager(extra=[...])``. It runs before fusion, which then groups the laid-out ops."""

    def run(graph: Graph) -> tuple[Graph, list[str]]:
        return assign_layouts(graph, choose)

    run.__doc__ = assign_layouts.__doc__
    return Pass(name, run, min_level, before="fuse")


def strip_layouts(graph: Graph) -> Graph:
    """The graph in plain NCHW (no ``layout`` attributes, no LayoutTransforms), computing the
    same; only a graph input or output stored in another layout keeps a conversion."""
    if not any(n.op == TRANSFORM or ((n.attrs.get("layout") is not None
                                      or n.attrs.get("x_layout") is not None)
                                     and has_layout_attr(n))
               for n in graph.nodes):
        return graph
    return assign_layouts(graph, lambda node: "NCHW")[0]


def cancel_layout_transforms(graph: Graph) -> tuple[Graph, list[str]]:
    """Fold chains of LayoutTransforms into one (or none, when they cancel) and drop those
    whose src equals dst; a graph output keeps a node of its name."""
    outputs = {v.name for v in graph.outputs}
    source: dict[str, tuple[Value, str]] = {}   # LT output -> (first input, its layout)
    rw = Rewriter(graph)
    changes = []
    for node in graph.nodes:
        if node.op != TRANSFORM:
            rw.copy(node)
            continue
        x, y = node.inputs[0], node.outputs[0]
        first, src = source.get(x.name, (x, node.attrs["src"]))
        dst = node.attrs["dst"]
        source[y.name] = (first, src)
        if first is x and src != dst:
            rw.copy(node)
        elif src == dst and y.name not in outputs:
            rw.alias(y, rw.value(first))
            changes.append(f"removed {node.name}: the value is {first.name} again")
        elif src == dst:
            rw.add("Identity", [rw.value(first)], {}, node.name, outputs=[y])
            changes.append(f"{node.name}: cancels out, now an Identity")
        else:
            rw.add(TRANSFORM, [rw.value(first)], {"src": src, "dst": dst}, node.name,
                   outputs=[y])
            changes.append(f"{node.name}: now converts {first.name} {src} -> {dst} directly")
    if not changes:
        return graph, []
    new, removed = eliminate_dead_code(rw.finish())
    return new, changes + removed


__all__ = ["assign_layouts", "cancel_layout_transforms", "count_transforms", "has_layout_attr",
           "layout_pass", "strip_layouts"]
