"""Memory planning: liveness-based buffer reuse in one arena (an analysis, not a transform).

:func:`plan_memory` reads the graph's node order as the schedule (node ``i`` runs at step
``i``; graph outputs are read by the caller at the extra step ``len(graph.nodes)``) and
gives every activation a byte offset in a single arena:

- *liveness*: a value is live from the step that defines it (graph inputs: step 0) to the
  last step that reads it (graph outputs: the final step); a value nobody reads still
  occupies its buffer for the step that writes it;
- *views* (``opdef.view``: Reshape, Flatten, Squeeze, Identity, Dropout...) allocate
  nothing: their output aliases their input's buffer, which then lives until the last use
  of either;
- *in-place*: an elementwise or broadcast op (read from its ``FusionKind``; a ``Fused`` node
  is opaque and never in place) may write its output over an input of exactly the same
  shape and dtype whose buffer dies at this step. Caller-provided graph inputs are never
  overwritten;
- *assignment*: buffers are placed largest first (ties: earlier first), each into the
  tightest free gap among the already-placed buffers whose lifetimes overlap (best fit),
  at the top of them when no gap fits, offsets rounded up to ``alignment``. On VGG-16 and
  ResNet-50 this gives the same or lower peaks than placing in schedule order
  (``order="schedule"``), which is kept for comparison.

Stored tensors (parameters, constants) live outside the arena: their bytes are reported as
``weights_bytes``. Intermediates inside a ``Fused`` body never reach memory and are not
planned. Symbolic dims (the batch) are bound to ``batch``.

*State* (read-modify-write bindings, ``state={input: next-value output}``): a state input's
bytes persist from call to call, so its buffer is live over the whole schedule and nothing
else may take it. A next value written *in place* (``state_in_place``) shares its input's
buffer; that is only correct when every other reader of the input (and of views of it) runs
before the node writing it, which :func:`order_state_writes` arranges (it reorders the
schedule, or leaves a binding to a copy at the end of the call where no order works).

:func:`check_plan` is an independent checker that replays the schedule against a plan.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cnncompiler.errors import GraphError
from cnncompiler.ir.graph import Graph, Node, Value
from cnncompiler.ops.opdef import FusionKind

INPLACE_KINDS = (FusionKind.ELEMENTWISE, FusionKind.BROADCAST)
ORDERS = ("size", "schedule")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


@dataclass
class MemoryPlan:
    """Where every activation lives: ``offsets[name]`` bytes into one arena of
    ``arena_bytes``. ``aliases`` maps each view / in-place value to the input whose buffer
    it uses (follow the chain with :meth:`owner`); aliased values share that offset."""

    offsets: dict[str, int]
    sizes: dict[str, int]
    lifetimes: dict[str, tuple[int, int]]      # (first step, last step), inclusive
    aliases: dict[str, str]
    arena_bytes: int                           # the planned peak: max(offset + size)
    naive_bytes: int                           # a buffer per activation (views excepted)
    weights_bytes: int                         # stored parameters and constants
    live_bytes: int = 0                        # most bytes live at one step: a lower bound
    batch: int = 1
    alignment: int = 64
    order: str = "size"
    num_steps: int = 0                         # nodes in the schedule (+1 for the outputs)
    inplace: list[str] = field(default_factory=list)  # values written over an input
    state: dict[str, str] = field(default_factory=dict)  # state input -> its next value
    state_in_place: list[str] = field(default_factory=list)  # state inputs updated in place

    def owner(self, name: str) -> str:
        """The value that allocated ``name``'s buffer (itself unless it is an alias)."""
        while name in self.aliases:
            name = self.aliases[name]
        return name

    def buffer_lifetime(self, name: str) -> tuple[int, int]:
        """The steps over which ``name``'s buffer is in use: from the first to the last step
        of any value that shares it."""
        root = self.owner(name)
        spans = [span for v, span in self.lifetimes.items() if self.owner(v) == root]
        return min(s for s, _ in spans), max(e for _, e in spans)

    @property
    def num_buffers(self) -> int:
        return sum(1 for v in self.offsets if v not in self.aliases)

    @property
    def saving(self) -> float:
        return self.naive_bytes / self.arena_bytes if self.arena_bytes else 1.0

    def to_dict(self) -> dict:
        return {"arena_bytes": self.arena_bytes, "naive_bytes": self.naive_bytes,
                "weights_bytes": self.weights_bytes, "live_bytes": self.live_bytes,
                "batch": self.batch,
                "alignment": self.alignment, "order": self.order,
                "values": len(self.offsets), "buffers": self.num_buffers,
                "views": len(self.aliases) - len(self.inplace), "in_place": len(self.inplace),
                "offsets": dict(self.offsets), "sizes": dict(self.sizes),
                "lifetimes": {k: list(v) for k, v in self.lifetimes.items()},
                "aliases": dict(self.aliases), "state": dict(self.state),
                "state_in_place": list(self.state_in_place)}

    def describe(self) -> str:
        views = len(self.aliases) - len(self.inplace)
        return (f"Memory plan (batch {self.batch}): planned peak {_mb(self.arena_bytes)} in one "
                f"arena vs {_mb(self.naive_bytes)} naive ({self.saving:.1f}x less); "
                f"weights {_mb(self.weights_bytes)}. The most bytes live at one step, a lower "
                f"bound for any placement, are {_mb(self.live_bytes)}"
                f"{' (reached)' if self.live_bytes == self.arena_bytes else ''}. "
                f"{len(self.offsets)} activations in "
                f"{self.num_buffers} buffers ({_count(views, 'view')}, "
                f"{len(self.inplace)} in place) "
                f"over {self.num_steps} steps, best fit by "
                f"{'decreasing size' if self.order == 'size' else 'schedule order'}, "
                f"offsets aligned to {self.alignment} bytes.")

    def __str__(self) -> str:
        return self.describe()


# ---------------------------------------------------------------------------- planner
def _nbytes(v: Value, batch: int) -> int:
    return v.type.nbytes(default=batch)


def plan_memory(graph: Graph, batch: int = 1, alignment: int = 64, inplace: bool = True,
                order: str = "size", state: Mapping[str, str] | None = None,
                state_in_place: Mapping[str, str] | None = None) -> MemoryPlan:
    """Plan one arena for ``graph``'s activations (see the module docstring).

    ``state`` maps each state input to the output holding its next value; ``state_in_place``
    is the subset whose next value shares the input's buffer (from
    :func:`order_state_writes`, whose node order ``graph`` must have)."""
    state = dict(state or {})
    state_in_place = dict(state_in_place or {})
    if alignment < 1:
        raise ValueError(f"alignment must be >= 1, got {alignment}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    end = len(graph.nodes)  # the step at which the caller reads the outputs
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for v in graph.inputs:
        first[v.name] = last[v.name] = 0
        sizes[v.name] = _nbytes(v, batch)
    for i, node in enumerate(graph.nodes):
        for v in node.inputs:
            if v is not None and not v.is_stored:
                last[v.name] = i
        for v in node.outputs:
            first[v.name] = last[v.name] = i
            sizes[v.name] = _nbytes(v, batch)
    for v in graph.outputs:
        last[v.name] = end
    for name in state:
        if name not in state_in_place:   # its bytes outlive the call
            last[name] = end
    writes_state = {new: name for name, new in state_in_place.items()}

    # buffers: owner value -> member values; aliases: value -> the input it reuses
    aliases: dict[str, str] = {}
    owner: dict[str, str] = {}
    members: dict[str, list[str]] = {}
    graph_inputs = {v.name for v in graph.inputs}
    in_place: list[str] = []

    def own(name: str) -> None:
        owner[name] = name
        members[name] = [name]

    def share(name: str, source: str) -> None:
        aliases[name] = source
        owner[name] = owner[source]
        members[owner[source]].append(name)

    for v in graph.inputs:
        own(v.name)
    for i, node in enumerate(graph.nodes):
        src = _alias_source(node, i, inplace, sizes, last, owner, members, graph_inputs)
        for k, out in enumerate(node.outputs):
            # a state's next value takes its input's bytes (any output of the writer: a
            # multi-output optimiser update writes the weight and its slot)
            source = writes_state.get(out.name, src if k == 0 else None)
            if source is not None:
                share(out.name, source)
                if not node.opdef.view:
                    in_place.append(out.name)
            else:
                own(out.name)

    buffers = []  # (owner, size, start, stop)
    for name, group in members.items():
        buffers.append((name, sizes[name], min(first[m] for m in group),
                        max(last[m] for m in group)))
    live = [0] * (end + 1)  # bytes live at each step: no placement can do better
    for _, size, start, stop in buffers:
        for step in range(start, stop + 1):
            live[step] += size
    placed = _assign(buffers, alignment, order)
    offsets = {name: placed[owner[name]] for name in owner}
    arena = max((placed[b] + size for b, size, _, _ in buffers), default=0)
    weights = sum(_nbytes(v, batch) for v in graph.values.values() if v.is_stored)
    return MemoryPlan(offsets=offsets, sizes=sizes,
                      lifetimes={n: (first[n], last[n]) for n in owner}, aliases=aliases,
                      arena_bytes=arena,
                      naive_bytes=sum(size for name, size in sizes.items()
                                      if name not in aliases or name in in_place),
                      weights_bytes=weights, live_bytes=max(live), batch=batch,
                      alignment=alignment, order=order, num_steps=end + 1, inplace=in_place,
                      state=state, state_in_place=list(state_in_place))


def _alias_source(node: Node, step: int, inplace: bool, sizes: dict[str, int],
                  last: dict[str, int], owner: dict[str, str], members: dict[str, list[str]],
                  graph_inputs: set[str]) -> str | None:
    """The input whose buffer ``node``'s first output may use, or None."""
    if not node.outputs or not node.inputs or node.inputs[0] is None:
        return None
    out = node.outputs[0]
    if node.opdef.view:
        x = node.inputs[0]
        if not x.is_stored and sizes[x.name] == sizes[out.name]:
            return x.name
        return None
    if not inplace or node.opdef.fusion not in INPLACE_KINDS or len(node.outputs) != 1:
        return None
    for x in node.inputs:
        if x is None or x.is_stored or x.type != out.type:
            continue
        buf = owner[x.name]
        # the whole buffer (the input and every view of it) must die here, and a
        # caller-provided input is never overwritten
        if buf not in graph_inputs and all(last[m] <= step for m in members[buf]):
            return x.name
    return None


# ---------------------------------------------------------------------------- state order
def buffer_views(graph: Graph, name: str) -> set[str]:
    """``name`` and every value that views its bytes (a chain of view ops whose output the
    planner aliases to its input): all of them are readers of ``name``'s buffer."""
    names = {name}
    sizes = {name: graph.values[name].type.nbytes(default=1)}
    for node in graph.nodes:
        x = node.inputs[0] if node.inputs else None
        if (node.opdef.view and x is not None and x.name in names and node.outputs
                and node.outputs[0].type.nbytes(default=1) == sizes[x.name]):
            names.add(node.outputs[0].name)
            sizes[node.outputs[0].name] = sizes[x.name]
    return names


def order_state_writes(graph: Graph, state: Mapping[str, str],
                       can_write: Callable[[Node, str], bool] | None = None
                       ) -> tuple[Graph, dict[str, str]]:
    """A schedule in which state next values can be written over their inputs, and the
    bindings that can (``{input: next value}``); the others need a copy at the end.

    Writing ``new`` over ``w`` in place is correct only if every other node reading ``w``
    (or a view of it) runs before the node writing ``new``: that is added as an ordering
    constraint. A binding is left out when its writer is not a node (``new`` is an input or
    stored), is a view, reads a view of ``w`` besides ``w`` itself,
    or is refused by ``can_write(writer, w)`` (the backend's check that its kernel reads
    ``w`` only where it writes; by default only plain elementwise ops of ``w``'s type, the
    ops that may run in place anyway); or when the constraint would close a cycle (a reader
    of ``w`` needs ``new``: both values must then be live at once). The schedule is the
    original node order wherever the constraints allow (a stable topological sort)."""
    if can_write is None:
        def can_write(node: Node, w: str) -> bool:
            return (node.opdef.fusion in INPLACE_KINDS
                    and node.outputs[0].type == graph.values[w].type)
    nodes = graph.nodes
    producer = {v.name: i for i, n in enumerate(nodes) for v in n.outputs}
    succ: list[set[int]] = [set() for _ in nodes]
    for j, n in enumerate(nodes):
        for v in n.inputs:
            if v is not None and v.name in producer:
                succ[producer[v.name]].add(j)
    outputs = {v.name for v in graph.outputs}
    chosen: dict[str, str] = {}
    for w, new in state.items():
        i = producer.get(new)
        if new == w or i is None:
            continue
        writer = nodes[i]
        buf = buffer_views(graph, w)
        if writer.opdef.view or buf & outputs:
            continue
        if any(v is not None and v.name in buf and v.name != w for v in writer.inputs):
            continue
        readers = {j for j, n in enumerate(nodes) if j != i
                   and any(v is not None and v.name in buf for v in n.inputs)}
        if _reaches(succ, i, readers) or not can_write(writer, w):
            continue
        for j in readers:
            succ[j].add(i)
        chosen[w] = new
    if not chosen:
        return graph, chosen
    order = _stable_topological(succ)
    return Graph(graph.name, graph.inputs, graph.outputs, [nodes[j] for j in order],
                 graph.data), chosen


def _reaches(succ: list[set[int]], start: int, targets: set[int]) -> bool:
    """Whether a path leads from node ``start`` to any of ``targets``."""
    seen, stack = {start}, [start]
    while stack:
        for j in succ[stack.pop()]:
            if j in targets:
                return True
            if j not in seen:
                seen.add(j)
                stack.append(j)
    return False


def _stable_topological(succ: list[set[int]]) -> list[int]:
    """A topological order of the DAG ``succ`` that takes the lowest-numbered ready node
    first (so it is the identity order whenever that order is valid)."""
    indegree = [0] * len(succ)
    for targets in succ:
        for j in targets:
            indegree[j] += 1
    ready = [i for i, d in enumerate(indegree) if d == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in succ[i]:
            indegree[j] -= 1
            if indegree[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(succ):   # _reaches keeps the constraints acyclic
        raise GraphError("memory plan: the state ordering constraints form a cycle")
    return order


def _align(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


def _assign(buffers: list[tuple[str, int, int, int]], alignment: int, order: str
            ) -> dict[str, int]:
    """Best-fit placement: each buffer goes into the tightest gap left by the placed
    buffers whose lifetimes overlap its own (lowest such gap on ties), else on top."""
    if order == "size":
        queue = sorted(buffers, key=lambda b: (-b[1], b[2], b[3]))
    else:
        queue = sorted(buffers, key=lambda b: (b[2], -b[1], b[3]))
    placed: list[tuple[int, int, int, int]] = []  # (offset, size, start, stop)
    offsets: dict[str, int] = {}
    for name, size, start, stop in queue:
        if size == 0:
            offsets[name] = 0
            continue
        busy = sorted((o, s) for o, s, a, b in placed if a <= stop and start <= b)
        best: tuple[int, int] | None = None  # (gap, offset)
        cursor = 0
        for o, s in busy:
            gap = o - cursor
            if gap >= size and (best is None or gap < best[0]):
                best = (gap, cursor)
            cursor = max(cursor, _align(o + s, alignment))
        offset = best[1] if best is not None else cursor
        offsets[name] = offset
        placed.append((offset, size, start, stop))
    return offsets


# ---------------------------------------------------------------------------- checker
def check_plan(graph: Graph, plan: MemoryPlan) -> None:
    """Replay ``graph``'s schedule against ``plan``; raise :class:`GraphError` naming the
    offending value(s) when a buffer is missing, too small or misaligned, an alias is not a
    legal view or in-place write, a value is read after its bytes were overwritten, or two
    simultaneously live values that are not aliases of each other overlap in the arena.

    Written apart from the planner: it recomputes liveness from the graph and trusts only
    the plan's offsets, sizes and aliases."""
    n = len(graph.nodes)
    acts: dict[str, Value] = {v.name: v for v in graph.inputs}
    inputs = set(acts)
    born: dict[str, int] = {v.name: 0 for v in graph.inputs}
    reads: dict[str, int] = {}
    for i, node in enumerate(graph.nodes):
        for v in node.inputs:
            if v is not None and not v.is_stored:
                reads[v.name] = i
        for v in node.outputs:
            acts[v.name] = v
            born[v.name] = i
    for v in graph.outputs:
        reads[v.name] = n
    for name in plan.state:
        if name not in plan.state_in_place:   # a state input's bytes outlive the call
            reads[name] = n
    dies = {name: max(born[name], reads.get(name, born[name])) for name in acts}
    state_writes = {plan.state[w]: w for w in plan.state_in_place}

    def region(name: str) -> tuple[int, int]:
        return plan.offsets[name], plan.offsets[name] + plan.sizes[name]

    def overlap(a: str, b: str) -> bool:
        (a0, a1), (b0, b1) = region(a), region(b)
        return a0 < b1 and b0 < a1

    # every activation has a big enough, aligned place inside the arena
    for name, v in acts.items():
        if name not in plan.offsets or name not in plan.sizes:
            raise GraphError(f"memory plan: value {name!r} has no buffer")
        need = v.type.nbytes(default=plan.batch)
        lo, hi = region(name)
        if plan.sizes[name] < need:
            raise GraphError(f"memory plan: value {name!r} needs {need} bytes, "
                             f"its buffer has {plan.sizes[name]}")
        if lo < 0 or hi > plan.arena_bytes or (need and lo % plan.alignment):
            raise GraphError(f"memory plan: value {name!r} at [{lo}, {hi}) is misaligned or "
                             f"outside the {plan.arena_bytes}-byte arena")
        if name in plan.lifetimes:
            s, e = plan.lifetimes[name]
            if s > born[name] or e < dies[name]:
                raise GraphError(f"memory plan: value {name!r} is live over steps "
                                 f"[{born[name]}, {dies[name]}], the plan says [{s}, {e}]")

    # aliases: a view of the node's first input, or an in-place elementwise write
    producer = {v.name: node for node in graph.nodes for v in node.outputs}
    for name, src in plan.aliases.items():
        node = producer.get(name)
        if node is None or src not in acts:
            raise GraphError(f"memory plan: alias {name!r} -> {src!r} is not between "
                             "activations of one node")
        first_input = node.inputs[0] if node.inputs else None
        view = node.opdef.view and first_input is not None and first_input.name == src
        in_place = (node.opdef.fusion in INPLACE_KINDS and len(node.outputs) == 1
                    and any(x is not None and x.name == src for x in node.inputs)
                    and acts[src].type == acts[name].type)
        state_write = (state_writes.get(name) == src and not node.opdef.view
                       and acts[src].type == acts[name].type)
        if not (view or in_place or state_write) or region(name) != region(src):
            raise GraphError(f"memory plan: {name!r} ({node.op} {node.name!r}) cannot alias "
                             f"{src!r} at {region(src)}: placed at {region(name)}")
        root = src
        while root in plan.aliases:
            root = plan.aliases[root]
        if not view and not state_write and root in inputs:
            raise GraphError(f"memory plan: {name!r} ({node.op} {node.name!r}) is written in "
                             f"place over the caller's input {root!r}")

    def cls(name: str) -> str:
        while name in plan.aliases:
            name = plan.aliases[name]
        return name

    # replay: ``intact`` holds the values whose bytes are still theirs
    intact: set[str] = set()

    def write(name: str, step: int, node: Node | None) -> None:
        for other in sorted(intact):
            if other == name or not overlap(name, other):
                continue
            legal = (node is not None and name in plan.aliases and not node.opdef.view
                     and dies[other] == step and region(other) == region(name)
                     and any(x is not None and x.name == other for x in node.inputs))
            if not legal and dies[other] >= step:
                raise GraphError(f"memory plan: step {step} writes {name!r} over "
                                 f"{other!r}, which is still live (until step {dies[other]})")
            intact.discard(other)
        intact.add(name)

    for v in graph.inputs:
        write(v.name, 0, None)
    for i, node in enumerate(graph.nodes):
        for x in node.inputs:
            if x is not None and not x.is_stored and x.name not in intact:
                raise GraphError(f"memory plan: step {i} ({node.name!r}) reads {x.name!r}, "
                                 "whose buffer no longer holds it")
        for k, out in enumerate(node.outputs):
            if node.opdef.view and k == 0 and out.name in plan.aliases:
                intact.add(out.name)  # a view writes nothing
            else:
                write(out.name, i, node)
        live = sorted(name for name in intact if born[name] <= i <= dies[name])
        for a_i, a in enumerate(live):
            for b in live[a_i + 1:]:
                if cls(a) != cls(b) and overlap(a, b):
                    raise GraphError(f"memory plan: {a!r} at {region(a)} and {b!r} at "
                                     f"{region(b)} are both live at step {i} and overlap")
        intact -= {name for name in intact if dies[name] <= i}
    for v in graph.outputs:
        if v.name not in intact:
            raise GraphError(f"memory plan: graph output {v.name!r} was overwritten")
    for name in plan.state:
        if name not in plan.state_in_place and name not in intact:
            raise GraphError(f"memory plan: state input {name!r} was overwritten")
