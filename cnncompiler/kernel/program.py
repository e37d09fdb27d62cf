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

Layouts (:class:`ProgramLayout`): everything of a program but its kernels' code — the
schedule, memory plan, bindings and how each weight slot is made from the graph's data
(a stored array, a schedule's repacked table: ``transform(array)``, or a table of shapes
and attributes). A compile cache keyed by :func:`graph_signature` (the structure the
lowering reads: not the weights' values) and :func:`lowering_signature` stores it, and a
later compile of a graph of that structure, whatever its weights, rebuilds its program with
:func:`restore_program` without lowering anything (ResNet-50: 0.5 s less per compile).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import io
import marshal
import pickle
import pkgutil
import sys
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from enum import Enum
from pathlib import Path

import numpy as np

from cnncompiler.errors import UnsupportedError
from cnncompiler.ir.graph import Graph, Node, Value
from cnncompiler.ir.types import DType, TensorType
from cnncompiler.kernel import ir as K
from cnncompiler.kernel.gpu_tiled import WorkGroupLimits
from cnncompiler.kernel.lower import TARGETS, KernelBuilder, lower_node
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


@dataclass(frozen=True)
class WeightSource:
    """How one weight slot's array is made from a graph's data: the array of stored value
    ``stored``; or, with ``transform``, a schedule's table repacked from it
    (``transform(array)`` as ``dtype``, of ``shape``); or, with ``stored`` None, ``array``
    itself (a table computed from shapes and attributes, never from weight values)."""

    stored: str | None = None
    transform: Callable[[np.ndarray], np.ndarray] | None = None
    dtype: str | None = None
    shape: tuple[int, ...] = ()
    array: np.ndarray | None = None

    def make(self, data: Mapping[str, np.ndarray]) -> np.ndarray:
        if self.stored is None:
            return self.array
        array = data[self.stored]
        if self.transform is None:
            return np.ascontiguousarray(array)
        table = np.ascontiguousarray(self.transform(np.asarray(array)), dtype=self.dtype)
        if table.shape != self.shape:
            raise ValueError(f"the table repacked from {self.stored!r} has shape "
                             f"{table.shape}, not {self.shape}")
        return table


@dataclass
class GraphProgram:
    graph: Graph                   # in schedule order (state writes may reorder the nodes)
    plan: MemoryPlan
    calls: list[KernelCall] = field(default_factory=list)
    weights: list[np.ndarray] = field(default_factory=list)
    state_copies: list[str] = field(default_factory=list)  # state inputs updated by a copy
    sources: list[WeightSource] = field(default_factory=list)  # how each weight was made

    @property
    def kernels(self) -> list[K.Kernel]:
        """The kernels to compile: one per name (calls of one code share it; see
        :func:`lower_graph`), in the order of their first call."""
        first: dict[str, K.Kernel] = {}
        for c in self.calls:
            first.setdefault(c.kernel.name, c.kernel)
        return list(first.values())

    @property
    def named_calls(self) -> list[tuple[str, Node, int, list[Binding]]]:
        """(kernel name, node, which output, bindings) of every call, in order."""
        return [(c.kernel.name, c.node, c.output, c.bindings) for c in self.calls]


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

    Kernels with the same code (:func:`K.code_text`: same shapes, schedule and fused
    epilogue; their weights and tables are arguments) take the first one's name, so a
    backend compiles that function once and calls it with each one's arguments: the
    repeated blocks of a ResNet stage make ResNet-50's 57 kernels 28 functions.
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
    names: dict[str, str] = {}   # code text -> the name of the first kernel with that code

    def weight(name: str) -> Binding:
        if name not in weight_slot:
            program.weights.append(np.ascontiguousarray(graph.data[name]))
            program.sources.append(WeightSource(name))
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
            kernel, repacks = _lower(node, name, graph.data, k, target, limits)
            written = [out.name, *kernel.extra_outputs]
            for value in written:
                if value in writes:
                    kernel = merge_into_output(kernel, writes[value], value)
            first = names.setdefault(K.code_text(kernel), kernel.name)
            if first != kernel.name:
                kernel = replace(kernel, name=first)
            bindings = [weight(v) if values[v].is_stored else Binding(0, plan.offsets[v])
                        for v in kernel.inputs]
            bindings += [Binding(0, plan.offsets[v]) for v in written]
            for table, array in kernel.tables.items():   # compile-time tables travel like weights
                program.weights.append(array)
                program.sources.append(_table_source(array, repacks.get(table)))
                bindings.append(Binding(len(program.weights)))
            program.calls.append(KernelCall(kernel, node, k, bindings))
            if kernel.extra_outputs:   # ...unless one kernel wrote them all
                break
    outputs = {v.name: v for v in graph.outputs}
    for w, new in state.items():   # the next values not written in place: copy them over
        if w in in_place or new == w:
            continue
        source = outputs[new]
        node = _state_copy_node(graph, w, new)
        kernel = lower_node(node, f"state_copy_{ident(w)}", graph.data, target=target,
                            limits=limits)
        src = weight(new) if source.is_stored else Binding(0, plan.offsets[new])
        assert len(kernel.buffers) == 2, "a copy kernel reads one buffer and writes one"
        program.calls.append(KernelCall(kernel, node, 0, [src, Binding(0, plan.offsets[w])]))
        program.state_copies.append(w)
    return program


def _state_copy_node(graph: Graph, w: str, new: str) -> Node:
    """The Identity node of the kernel copying state ``w``'s next value ``new`` over it."""
    source = next(v for v in graph.outputs if v.name == new)
    return Node("Identity", [source], [Value(w, graph.values[w].type)], name=f"state.{w}")


class _RecordingBuilder(KernelBuilder):
    """A KernelBuilder that also records how it repacked each weight into a table: table
    buffer name -> (stored graph value, transform)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.repacks: dict[str, tuple[str, Callable]] = {}

    def repack(self, v: Value, name: str, transform: Callable[[np.ndarray], np.ndarray],
               dtype: str) -> K.Buffer:
        buf = super().repack(v, name, transform, dtype)
        self.repacks[buf.name] = (self.outer[v.name].name, transform)
        return buf


def _lower(node: Node, name: str, data: Mapping[str, np.ndarray], output: int, target: str,
           limits: WorkGroupLimits | None) -> tuple[K.Kernel, dict[str, tuple[str, Callable]]]:
    """:func:`~cnncompiler.kernel.lower.lower_node`, and how each of the kernel's tables
    that a schedule repacked from a weight was made (see :class:`WeightSource`)."""
    if target not in TARGETS or not 0 <= output < len(node.outputs):
        return lower_node(node, name, data, output, target, limits), {}   # its error
    builder = _RecordingBuilder(node, name, data, output, target, limits)
    return builder.build(), builder.repacks


def _table_source(array: np.ndarray, repack: tuple[str, Callable] | None) -> WeightSource:
    if repack is None:
        return WeightSource(array=array)
    stored, transform = repack
    return WeightSource(stored, transform, array.dtype.str, array.shape)


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


# ---------------------------------------------------------------- layouts (compile caches)
class NotCacheable(Exception):
    """Something a compile cache cannot key or store faithfully (then it does not)."""


@dataclass(frozen=True)
class CallLayout:
    """One kernel call of a :class:`ProgramLayout`."""

    name: str                      # the kernel's name
    node: int                      # position of its node in the graph's nodes; -1: a state copy
    output: int                    # which output of the node it computes
    bindings: tuple[Binding, ...]
    state: tuple[str, str] | None = None   # a state copy's (state input, next value)


@dataclass
class ProgramLayout:
    """A :class:`GraphProgram` less its kernels' code (see the module docstring)."""

    order: list[int]               # the schedule: positions of the graph's nodes
    plan: MemoryPlan
    calls: list[CallLayout]
    sources: list[WeightSource]    # one per weight slot
    state_copies: list[str]


@dataclass
class RestoredProgram:
    """A program rebuilt from its layout for a graph (:func:`restore_program`): what a
    backend runs, without the kernels (their code comes from the cache too)."""

    graph: Graph
    plan: MemoryPlan
    named_calls: list[tuple[str, Node, int, list[Binding]]]
    weights: list[np.ndarray]
    state_copies: list[str]


def program_layout(program: GraphProgram, graph: Graph) -> ProgramLayout:
    """The layout of ``program``, which :func:`lower_graph` made of ``graph``."""
    position = {id(n): i for i, n in enumerate(graph.nodes)}
    calls = []
    for c in program.calls:
        if id(c.node) in position:
            calls.append(CallLayout(c.kernel.name, position[id(c.node)], c.output,
                                    tuple(c.bindings)))
        else:   # a state copy (see lower_graph)
            w, new = c.node.outputs[0].name, c.node.inputs[0].name
            if c.node.name != f"state.{w}":
                raise NotCacheable(f"node {c.node.name!r} is not one of the graph's")
            calls.append(CallLayout(c.kernel.name, -1, 0, tuple(c.bindings), (w, new)))
    if any(id(n) not in position for n in program.graph.nodes):
        raise NotCacheable("the schedule has nodes that are not the graph's")
    return ProgramLayout([position[id(n)] for n in program.graph.nodes], program.plan, calls,
                         list(program.sources), list(program.state_copies))


def restore_program(layout: ProgramLayout, graph: Graph) -> RestoredProgram:
    """The program of ``graph`` that ``layout`` describes: ``graph`` must have the
    structure of the graph the layout was made of (:func:`graph_signature`; its weights may
    differ: repacked tables are made again from them). Raises if it visibly does not."""
    nodes = graph.nodes
    if sorted(layout.order) != list(range(len(nodes))):
        raise ValueError("the layout's schedule does not cover the graph's nodes")
    schedule = graph
    if layout.order != list(range(len(nodes))):
        schedule = Graph(graph.name, graph.inputs, graph.outputs,
                         [nodes[i] for i in layout.order], graph.data)
    calls = []
    for c in layout.calls:
        node = nodes[c.node] if c.state is None else _state_copy_node(schedule, *c.state)
        calls.append((c.name, node, c.output, list(c.bindings)))
    weights = [source.make(graph.data) for source in layout.sources]
    return RestoredProgram(schedule, layout.plan, calls, weights, list(layout.state_copies))


def dump_layout(layout: ProgramLayout) -> bytes:
    """``layout`` as bytes for :func:`load_layout` (in this Python version). A repacking
    transform that is a lambda or a local function travels as its code and closure values
    (its module's globals are looked up again when it runs), which must hold no arrays:
    a table derived from weights must get them as the transform's argument only."""
    buffer = io.BytesIO()
    try:
        _LayoutPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(layout)
    except NotCacheable:
        raise
    except Exception as e:   # noqa: BLE001 - anything unpicklable
        raise NotCacheable(f"the program's layout cannot be stored: {e}") from e
    return buffer.getvalue()


def load_layout(data: bytes) -> ProgramLayout:
    layout = pickle.loads(data)
    if not isinstance(layout, ProgramLayout):
        raise ValueError(f"not a program layout: {type(layout).__name__}")
    return layout


def _function(module: str, code: bytes, defaults, cells: tuple) -> types.FunctionType:
    """A lambda or local function rebuilt from :class:`_LayoutPickler`'s pieces."""
    return types.FunctionType(marshal.loads(code), importlib.import_module(module).__dict__,
                              None, defaults, tuple(types.CellType(c) for c in cells))


class _NoArrays(pickle.Pickler):
    def reducer_override(self, obj):
        if isinstance(obj, np.ndarray):
            raise NotCacheable("a repacking transform holds an array")
        return NotImplemented


class _LayoutPickler(pickle.Pickler):
    def reducer_override(self, obj):
        if not isinstance(obj, types.FunctionType) or "<" not in obj.__qualname__:
            return NotImplemented   # module-level functions go by name, as usual
        if obj.__kwdefaults__:
            raise NotCacheable(f"{obj.__qualname__} has keyword-only defaults")
        cells = tuple(c.cell_contents for c in obj.__closure__ or ())
        _NoArrays(io.BytesIO()).dump((cells, obj.__defaults__))
        return _function, (obj.__module__, marshal.dumps(obj.__code__), obj.__defaults__,
                           cells)


# ---------------------------------------------------------------- signatures
#: where the code that lowers a graph lives (relative to the package root)
LOWERING_SOURCES = ("kernel", "ir", "ops", "passes")


def graph_signature(graph: Graph, state: Mapping[str, str] | None = None) -> str:
    """sha256 of everything of ``graph`` that :func:`lower_graph` reads but the weights'
    values: every node (op, name, attributes, input and output names, kinds and types),
    the inputs and outputs, which stored values have data (of which shape and dtype), and
    ``state``. Raises :class:`NotCacheable` for an attribute without a faithful text."""
    text = _graph_text(graph) + "\nstate " + repr(sorted((state or {}).items()))
    return hashlib.sha256(text.encode()).hexdigest()


def lowering_signature() -> str:
    """sha256 of what else decides a lowering: the sources of the packages in
    ``LOWERING_SOURCES``, the settings of their loaded modules (constants and functions, as
    they are now: a test may change one) and the Python version (a layout holds code
    objects). Raises :class:`NotCacheable` when one of their functions was replaced from
    outside the package and the standard library (a test's wrapper, a mock): a caller may
    be watching its calls, and a program from the cache runs no lowering."""
    h = hashlib.sha256(_sources_digest().encode())
    h.update(sys.version.encode())
    for name in _lowering_modules():
        for key, value in sorted(vars(sys.modules[name]).items()):
            if not key.startswith("__") and not isinstance(value, types.ModuleType):
                h.update(f"{name}.{key}={_setting(value)}\n".encode())
    return h.hexdigest()


@functools.cache
def _lowering_modules() -> tuple[str, ...]:
    """Every module of the packages in ``LOWERING_SOURCES``, imported: the same list in
    every process, whichever of them it happened to load (keys must not depend on that)."""
    names = []
    for package in LOWERING_SOURCES:
        root = importlib.import_module(f"cnncompiler.{package}")
        names.append(root.__name__)
        for info in pkgutil.walk_packages(root.__path__, f"{root.__name__}."):
            importlib.import_module(info.name)
            names.append(info.name)
    return tuple(sorted(names))


@functools.cache
def _sources_digest() -> str:
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for package in LOWERING_SOURCES:
        for path in sorted((root / package).glob("*.py")):
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _setting(value) -> str:
    """A module global as text: functions and classes by name, data by value, any other
    object by its type."""
    if value is None or isinstance(value, (bool, int, float, str, bytes, Enum)):
        return repr(value)
    if isinstance(value, types.FunctionType):
        package = (value.__module__ or "").partition(".")[0]
        if package != "cnncompiler" and package not in sys.stdlib_module_names:
            raise NotCacheable(f"{value.__module__}.{value.__qualname__} replaces a function "
                               "of the lowering")
    if type(value).__module__ == "unittest.mock":
        raise NotCacheable("a mock replaces part of the lowering")
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, type)):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', '?')}"
    if isinstance(value, dict):
        return "{" + ",".join(f"{_setting(k)}:{_setting(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (set, frozenset)):
        return "set(" + ",".join(sorted(map(_setting, value))) + ")"
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__}(" + ",".join(map(_setting, value)) + ")"
    if isinstance(value, np.ndarray):
        return _text(value)
    return type(value).__qualname__


def _value_text(v: Value | None) -> str:
    return "-" if v is None else f"{v.name!r}:{v.kind.value}:{v.type!r}"


def _graph_text(graph: Graph) -> str:
    lines = [f"graph {graph.name!r}",
             "in " + " ".join(_value_text(v) for v in graph.inputs),
             "out " + " ".join(_value_text(v) for v in graph.outputs)]
    for name in sorted(graph.data):
        a = graph.data[name]
        lines.append(f"data {name!r} " + ("-" if a is None else
                                           f"{np.asarray(a).dtype.str}{np.shape(a)}"))
    for n in graph.nodes:
        attrs = ",".join(f"{k}={_text(v)}" for k, v in sorted(n.attrs.items()))
        lines.append(f"{n.op} {n.name!r} " + " ".join(_value_text(v) for v in n.inputs)
                     + " -> " + " ".join(_value_text(v) for v in n.outputs) + f" {{{attrs}}}")
    return "\n".join(lines)


def _text(x) -> str:
    """An attribute value as text that tells every two different values apart."""
    if x is None or isinstance(x, (bool, int, float, str, bytes, Enum)):
        return repr(x)
    if isinstance(x, (tuple, list)):
        return ("(" if isinstance(x, tuple) else "[") + ",".join(map(_text, x)) + ")"
    if isinstance(x, dict):
        return "{" + ",".join(sorted(f"{_text(k)}:{_text(v)}" for k, v in x.items())) + "}"
    if isinstance(x, np.ndarray):
        data = np.ascontiguousarray(x)
        return f"array({x.dtype.str},{x.shape},{hashlib.sha256(data.tobytes()).hexdigest()})"
    if isinstance(x, np.generic):
        return f"{x.dtype.str}:{x.item()!r}"
    if isinstance(x, Graph):
        return "{" + _graph_text(x) + "}"
    if isinstance(x, (TensorType, DType)):
        return repr(x)
    if is_dataclass(x) and not isinstance(x, type):
        return f"{type(x).__module__}.{type(x).__qualname__}(" + ",".join(
            f"{f.name}={_text(getattr(x, f.name))}" for f in fields(x)) + ")"
    raise NotCacheable(f"an attribute of type {type(x).__name__} has no faithful text")
