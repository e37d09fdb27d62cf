"""A whole graph as kernel calls: what every code-generating backend compiles.

Each node of the optimised graph is lowered to one kernel per output (a view whose output
shares its input's arena bytes needs none); each kernel buffer is bound either to the arena
at the memory plan's byte offset of an activation, or to a weight array (a stored value,
or a compile-time table a schedule derived from one). Backends differ only in what they
render the kernels to and how they launch them.

State (``lower_graph(..., state={input: next-value output})``): a state input lives at its
arena offset from call to call. Its next value is written over it in place when the kernel
writing it reads the input only at the elements it writes, each element once
(:func:`writes_in_place`: an elementwise optimiser update), and the schedule can run every
other reader of the input first (:func:`~cnncompiler.passes.memory.order_state_writes`).
That kernel's input buffer is merged into its output buffer, so it is one pointer both read
and written (kernels declare their buffers non-aliasing). Any other next value gets its own
buffer and a copy kernel into the input's bytes at the end of the call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace

import numpy as np

from cnncompiler.errors import UnsupportedError
from cnncompiler.ir.graph import Graph, Node, Value
from cnncompiler.kernel import ir as K
from cnncompiler.kernel.gpu_tiled import WorkGroupLimits
from cnncompiler.kernel.lower import lower_node
from cnncompiler.passes.memory import MemoryPlan, buffer_views, order_state_writes, plan_memory


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
    graph: Graph                   # in schedule order (state writes may reorder the nodes)
    plan: MemoryPlan
    calls: list[KernelCall] = field(default_factory=list)
    weights: list[np.ndarray] = field(default_factory=list)
    state_copies: list[str] = field(default_factory=list)  # state inputs updated by a copy


def ident(name: str) -> str:
    """``name`` as a C/LLVM identifier."""
    return "".join(c if c.isalnum() else "_" for c in name)


def lower_graph(graph: Graph, alignment: int, target: str = "cpu",
                state: Mapping[str, str] | None = None,
                limits: WorkGroupLimits | None = None) -> GraphProgram:
    """Every kernel of ``graph`` (static shapes) in schedule order, with its bindings;
    ``target`` and a GPU's work-group ``limits`` pick the schedules (see
    :func:`~cnncompiler.kernel.lower.lower_node`);
    ``state`` maps state inputs to their next values (see the module docstring).

    The memory plan never reuses an input's bytes for an output (``inplace=False``): kernels
    declare their buffers non-aliasing (LLVM ``noalias``, OpenCL ``restrict``); a state
    write in place uses one merged buffer.
    """
    state = dict(state or {})
    in_place: dict[str, str] = {}
    if state:
        _check_state(graph, state)

        def can_write(node: Node, w: str) -> bool:
            kernel = lower_node(node, "probe", graph.data, target=target, limits=limits)
            if len(node.outputs) > 1 + len(kernel.extra_outputs):
                return False   # one kernel per output: a later one may still read w
            return writes_in_place(kernel, w, state[w])

        graph, in_place = order_state_writes(graph, state, can_write)
    plan = plan_memory(graph, batch=1, alignment=alignment, inplace=False, state=state,
                       state_in_place=in_place)
    program = GraphProgram(graph, plan)
    writes = {new: w for w, new in in_place.items()}
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
        several = len(node.outputs) > 1   # one kernel per output (Split)...
        for k, out in enumerate(node.outputs):
            name = f"k{i}_{ident(node.name)}" + (f"_out{k}" if several else "")
            kernel = lower_node(node, name, graph.data, output=k, target=target, limits=limits)
            written = [out.name, *kernel.extra_outputs]
            for value in written:
                if value in writes:
                    kernel = merge_into_output(kernel, writes[value], value)
            bindings = [weight(v) if values[v].is_stored else Binding(0, plan.offsets[v])
                        for v in kernel.inputs]
            bindings += [Binding(0, plan.offsets[v]) for v in written]
            for array in kernel.tables.values():   # compile-time tables travel like weights
                program.weights.append(array)
                bindings.append(Binding(len(program.weights)))
            program.calls.append(KernelCall(kernel, node, k, bindings))
            if kernel.extra_outputs:   # ...unless one kernel wrote them all
                break
    outputs = {v.name: v for v in graph.outputs}
    for w, new in state.items():   # the next values not written in place: copy them over
        if w in in_place or new == w:
            continue
        source, target_value = outputs[new], values[w]
        node = Node("Identity", [source], [Value(w, target_value.type)], name=f"state.{w}")
        kernel = lower_node(node, f"state_copy_{ident(w)}", graph.data, target=target,
                            limits=limits)
        src = weight(new) if source.is_stored else Binding(0, plan.offsets[new])
        assert len(kernel.buffers) == 2, "a copy kernel reads one buffer and writes one"
        program.calls.append(KernelCall(kernel, node, 0, [src, Binding(0, plan.offsets[w])]))
        program.state_copies.append(w)
    return program


def _check_state(graph: Graph, state: Mapping[str, str]) -> None:
    """State bindings this lowering can keep: a state input's bytes are updated during the
    call, so no output may still be (a view of) its old value, except where it stays the
    same (next value = itself)."""
    inputs = {v.name: v for v in graph.inputs}
    outputs = {v.name: v for v in graph.outputs}
    for w, new in state.items():
        if w not in inputs or new not in outputs:
            raise UnsupportedError(f"state {w!r} -> {new!r}: not a graph input and output")
        if inputs[w].type != outputs[new].type:
            raise UnsupportedError(f"state {w!r} -> {new!r}: types differ "
                                   f"({inputs[w].type} vs {outputs[new].type})")
        if new == w:
            continue
        old = buffer_views(graph, w) & set(outputs)
        if old:
            raise UnsupportedError(
                f"output(s) {sorted(old)} hold the old value of state {w!r}, which the call "
                f"overwrites with {new!r}; return a computed copy (e.g. w * 1) instead")


# ---------------------------------------------------------------- in-place state writes
def _output_buffer(kernel: K.Kernel, output: str | None) -> K.Buffer | None:
    """The buffer of the kernel's output value ``output`` (None: its first output)."""
    count = len(kernel.inputs)
    position = 0 if output is None or output not in kernel.extra_outputs else \
        1 + kernel.extra_outputs.index(output)
    return kernel.buffers[count + position] if count + position < len(kernel.buffers) \
        else None


def writes_in_place(kernel: K.Kernel, name: str, output: str | None = None) -> bool:
    """Whether ``kernel`` may write its output (``output``, where it writes several) over
    input ``name``: it stores to that output
    once, at an index that takes each element once over its loops (an injective affine map
    of the loop variables), and reads ``name`` only in that statement or the statements just
    before it in the same loop body, at the very elements it stores (equal indices up to
    affine arithmetic). Then every element is read before it is overwritten, and never
    after. Anything this analysis cannot prove (a reduction, a transpose, a broadcast read,
    non-affine indices) is refused: the caller falls back to a copy."""
    out = _output_buffer(kernel, output)
    if out is None:
        return False
    src = {id(kernel.buffers[k]) for k, n in enumerate(kernel.inputs) if n == name}
    if not src:
        return True   # the kernel does not read the input: only the order matters
    stores: list[tuple[K.Store, dict, dict, list[K.Stmt], int]] = []

    def walk(stmts: list[K.Stmt], env: dict, ranges: dict) -> None:
        for pos, s in enumerate(stmts):
            if isinstance(s, K.Store) and s.buffer is out:
                stores.append((s, env, ranges, stmts, pos))
            elif isinstance(s, K.Loop):
                inner, inner_ranges = dict(env), dict(ranges)
                start = _affine(s.start, env)
                trips = _trip_bound(s, start, env)
                if start is None or trips is None:
                    inner.pop(s.var.name, None)   # any index using it is not affine
                    inner_ranges[s.var.name] = None   # nor is its trip count known
                else:
                    inner[s.var.name] = _add(start, {("v", s.var.name): 1})
                    inner_ranges[s.var.name] = trips
                walk(s.body, inner, inner_ranges)
            elif isinstance(s, K.If):
                walk(s.then, env, ranges)
                walk(s.otherwise, env, ranges)

    walk(kernel.body, {}, {})
    if len(stores) != 1:
        return False
    store, env, ranges, siblings, pos = stores[0]
    near = _loads(siblings[:pos + 1], nested=False)
    rest = _loads(kernel.body, nested=True, skip={id(s) for s in siblings[:pos + 1]})
    if any(id(ld.buffer) in src for ld in rest.values()):
        return False   # read elsewhere (after the store, or in another loop)
    if any(ld.buffer is out for ld in (*near.values(), *rest.values())):
        return False
    index = _affine(store.index, env)
    lanes = K.lanes_of(store.value.dtype)
    if index is None or not _injective(index, ranges, lanes):
        return False
    return all(ld.lanes == lanes and _affine(ld.index, env) == index
               for ld in near.values() if id(ld.buffer) in src)


def merge_into_output(kernel: K.Kernel, name: str, output: str | None = None) -> K.Kernel:
    """``kernel`` with its buffer(s) of input ``name`` replaced by the buffer of its output
    ``output`` (the first if None; :func:`writes_in_place` showed it safe): one pointer,
    read then written."""
    out = _output_buffer(kernel, output)
    drop = {id(kernel.buffers[k]) for k, n in enumerate(kernel.inputs) if n == name}
    body = K.rewrite(kernel.body, lambda b: out if id(b) in drop else b)
    keep = [k for k, b in enumerate(kernel.buffers) if id(b) not in drop]
    return replace(kernel, body=body,
                   buffers=[kernel.buffers[k] for k in keep],
                   inputs=[n for n in kernel.inputs if n != name])


#: an affine index: key -> integer coefficient; () is the constant term, ("v", name) a loop
#: variable's trip counter, ("//" or "%", argument, divisor) a floor division or remainder
Affine = dict


def _add(a: Affine, b: Affine, scale: int = 1) -> Affine:
    out = dict(a)
    for key, c in b.items():
        out[key] = out.get(key, 0) + scale * c
    return _normal(out)


def _normal(a: Affine) -> Affine:
    """Zero terms dropped, and (x // d) * d * c + (x % d) * c folded to x * c."""
    a = {k: c for k, c in a.items() if c}
    for key, c in list(a.items()):
        if key and key[0] == "//" and key in a:
            rem = ("%", key[1], key[2])
            if rem in a and c == a[rem] * key[2]:
                scale = a.pop(rem)
                del a[key]
                return _add(a, dict(key[1]), scale)
    return a


def _affine(e: K.Expr, env: dict) -> Affine | None:
    """``e`` as an affine form over the loop variables in ``env`` (None if it is not one)."""
    if isinstance(e, K.Const):
        return {(): int(e.value)} if e.dtype == "i64" else None
    if isinstance(e, K.Var):
        return dict(env[e.name]) if e.name in env else None
    if not isinstance(e, K.Bin):
        return None
    a, b = _affine(e.a, env), _affine(e.b, env)
    if a is None or b is None:
        return None
    const_a, const_b = set(a) <= {()}, set(b) <= {()}
    if e.op in ("+", "-"):
        return _add(a, b, 1 if e.op == "+" else -1)
    if e.op == "*" and (const_a or const_b):
        factor, form = (a.get((), 0), b) if const_a else (b.get((), 0), a)
        return _normal({k: factor * c for k, c in form.items()})
    if e.op in ("//", "%") and const_b and b.get((), 0) > 0:
        d = b[()]
        if const_a:
            value = a.get((), 0)
            return _normal({(): value // d if e.op == "//" else value % d})
        if d == 1:
            return a if e.op == "//" else {}
        return {(e.op, tuple(sorted(a.items(), key=repr)), d): 1}
    return None


def _trip_bound(loop: K.Loop, start: Affine | None, env: dict) -> int | None:
    """At most how many iterations ``loop`` runs (its stop minus its start, or either arm
    of a ``min`` stop, a constant), or None if that is not known."""
    if start is None:
        return None
    arms = [loop.stop.a, loop.stop.b] if (isinstance(loop.stop, K.Bin)
                                          and loop.stop.op == "min") else [loop.stop]
    bounds = []
    for arm in arms:
        stop = _affine(arm, env)
        if stop is not None:
            span = _add(stop, start, -1)
            if set(span) <= {()}:
                bounds.append(max(0, span.get((), 0)))
    return min(bounds) if bounds else None


def _injective(index: Affine, ranges: dict[str, int | None], lanes: int) -> bool:
    """Whether ``index`` (+ a lane in [0, lanes)) takes distinct values for distinct
    iterations of the loops in ``ranges``: every loop of more than one trip appears, and
    sorted by coefficient each steps over everything the smaller ones span."""
    terms = [(1, lanes)] if lanes > 1 else []
    used = set()
    for key, c in index.items():
        if key == ():
            continue
        if key[0] != "v" or key[1] not in ranges:
            return False
        used.add(key[1])
        terms.append((abs(c), ranges[key[1]]))
    if any(trips is None or (trips > 1 and name not in used)
           for name, trips in ranges.items()):
        return False
    span = 0
    for c, trips in sorted(terms):
        if trips <= 1:
            continue
        if c <= span:
            return False
        span += c * (trips - 1)
    return True


def _loads(stmts: list[K.Stmt], nested: bool, skip: set[int] = frozenset()
           ) -> dict[int, K.Load]:
    """Every Load in ``stmts``' expressions by id (with ``nested``, also inside loops and
    ifs among them), leaving out the expressions (not the nested statements) of the
    statements whose ids are in ``skip``. The expressions kept are searched whole, even
    where they share subexpressions with skipped ones."""
    found: dict[int, K.Load] = {}
    seen: set[int] = set()

    def expr(e) -> None:
        if not isinstance(e, K.Expr) or id(e) in seen:
            return
        seen.add(id(e))
        if isinstance(e, K.Load):
            found[id(e)] = e
        for f in fields(e):
            value = getattr(e, f.name)
            for item in value if isinstance(value, tuple) else (value,):
                expr(item)

    def stmt(s: K.Stmt) -> None:
        for f in fields(s):
            value = getattr(s, f.name)
            if isinstance(value, list):
                if nested:
                    for inner in value:
                        stmt(inner)
            elif id(s) not in skip:
                expr(value)

    for s in stmts:
        stmt(s)
    return found
