"""The pass manager: named passes, pipelines per opt_level, statistics for ``--explain``.

A pass is a function ``Graph -> (Graph, list[str])``: the new graph and one line per change it
made (what it folded, fused or removed). Passes never mutate their input graph.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cnncompiler.errors import CnnCompilerError, UnsupportedError
from cnncompiler.ir.graph import Graph

PassFn = Callable[[Graph], tuple[Graph, list[str]]]


@dataclass(frozen=True)
class Pass:
    name: str
    fn: PassFn
    min_level: int  # runs at opt_level >= min_level
    before: str | None = None  # a backend pass runs right before this pass (else at the end)

    @property
    def doc(self) -> str:
        return (self.fn.__doc__ or "").strip().splitlines()[0] if self.fn.__doc__ else ""


@dataclass
class PassRecord:
    """What one pass did: for ``cnnc compile --explain``."""

    name: str
    nodes_before: int
    nodes_after: int
    seconds: float
    changes: list[str] = field(default_factory=list)


_PASSES: dict[str, Pass] = {}
_ORDER: list[str] = []


def register_pass(name: str, min_level: int = 1, after: str | None = None
                  ) -> Callable[[PassFn], PassFn]:
    """Add a pass to the pipeline (at the end, or right after ``after``)."""

    def register(fn: PassFn) -> PassFn:
        if name in _PASSES:
            raise ValueError(f"pass {name!r} is registered twice")
        _PASSES[name] = Pass(name, fn, min_level)
        _ORDER.insert(_ORDER.index(after) + 1 if after else len(_ORDER), name)
        return fn

    return register


def all_passes() -> list[Pass]:
    _load_builtin_passes()
    return [_PASSES[n] for n in _ORDER]


def _load_builtin_passes() -> None:
    import cnncompiler.passes  # noqa: F401  (importing the package registers the passes)


class PassManager:
    """Runs the pipeline for ``opt_level`` (0: nothing, the bisection path; 1: clean-ups;
    2: everything), minus ``disable``, plus backend passes, verifying between passes when
    ``verify`` is set (tests and debug mode)."""

    def __init__(self, opt_level: int = 2, disable: Iterable[str] = (), verify: bool = False,
                 extra: Iterable[Pass] = ()):
        if opt_level not in (0, 1, 2):
            raise UnsupportedError(f"opt_level must be 0, 1 or 2, got {opt_level!r}")
        known = {p.name for p in all_passes()} | {p.name for p in extra}
        unknown = sorted(set(disable) - known)
        if unknown:
            raise UnsupportedError(f"unknown pass(es) {unknown}; passes: {sorted(known)}")
        self.opt_level = opt_level
        self.disable = set(disable)
        self.verify = verify
        self.extra = list(extra)
        self.records: list[PassRecord] = []
        self.snapshots: dict[str, Graph] = {}

    @property
    def pipeline(self) -> list[Pass]:
        order = list(all_passes())
        for p in self.extra:
            names = [q.name for q in order]
            order.insert(names.index(p.before) if p.before in names else len(order), p)
        return [p for p in order if p.min_level <= self.opt_level and p.name not in self.disable]

    def run(self, graph: Graph, keep: Iterable[str] = ()) -> Graph:
        """Run the pipeline; ``keep`` names passes whose output graph is kept in
        ``snapshots`` (for ``--dump-ir after:NAME``)."""
        keep = set(keep)
        for p in self.pipeline:
            start = time.perf_counter()
            before = len(graph.nodes)
            try:
                graph, changes = p.fn(graph)
            except CnnCompilerError:
                raise
            if self.verify:
                graph.verify()
            self.records.append(PassRecord(p.name, before, len(graph.nodes),
                                           time.perf_counter() - start, changes))
            if p.name in keep:
                self.snapshots[p.name] = graph
        return graph

    def explain(self) -> str:
        lines = []
        for r in self.records:
            lines.append(f"{r.name}: {r.nodes_before} -> {r.nodes_after} nodes "
                         f"({r.seconds * 1e3:.1f} ms)")
            lines += [f"    {c}" for c in r.changes]
        return "\n".join(lines)
