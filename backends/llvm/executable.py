"""A compiled model on the LLVM backend: every kernel of the optimised graph in one LLVM
module, called in order by one native entry point, with activations at the memory plan's
offsets inside one arena. Shapes are specialised per batch size (compiled on first use).

State (``compile(..., state=...)``) lives in the arena at its inputs' offsets from call to
call: a call copies in only the other inputs and out only the other outputs, and the native
call updates the state in place (or copies the next value over it at its end; see
:mod:`cnncompiler.kernel.program`).

A cached compile takes the program (schedule, memory plan, bindings, how each weight table
is made) from a program entry of the compile cache keyed by the graph's structure, and the
object code from the object entries it names (see :mod:`.cache`): no lowering. A call only
copies the inputs into their arena views made at compile time, makes the native call and
copies the outputs out (its inputs were checked by the runtime)."""

from __future__ import annotations

import ctypes
import functools
import os
import threading
import time
import weakref
from collections.abc import Mapping, Sequence

import numpy as np

from cnncompiler.backends.llvm.peak import peak_gflops
from cnncompiler.errors import UnsupportedError
from cnncompiler.ir.graph import Graph
from cnncompiler.ir.specialize import bind_symbols
from cnncompiler.kernel import ir as K
from cnncompiler.kernel.program import (
    NotCacheable,
    dump_layout,
    graph_signature,
    ident,
    load_layout,
    lower_graph,
    lowering_signature,
    program_layout,
    restore_program,
)
from cnncompiler.runtime.backend import PerShapeExecutable
from cnncompiler.runtime.profile import Profile, kernel_row

ALIGN = 64


#: below this much work per thread a model runs on one thread: waking a second thread and
#: meeting it between kernels costs more than it saves (LeNet-5, 0.6 MFLOP: 0.12 ms on one
#: thread, 0.32 ms on two)
MIN_FLOPS_PER_THREAD = 20_000_000


def _work_flops(graph: Graph) -> int:
    from cnncompiler.ops.registry import node_cost

    return sum(node_cost(n, batch=1).flops for n in graph.nodes)


class CompiledGraph:
    """One static-shape graph: its native entry point, arena and weights."""

    def __init__(self, graph: Graph, engine_factory, threads: int = 1, cache=None,
                 keep_kernels: bool = False, state: Mapping[str, str] | None = None):
        """``keep_kernels`` keeps the kernel IR in ``kernels`` (for AOT export, which renders
        it again); otherwise ``kernels`` is None once the code is loaded: ResNet-50's IR is
        ~100k Python objects that every later garbage collection of the process would walk
        (+0.1 s on the next compile). ``state`` maps state inputs to their next values."""
        from cnncompiler.backends.llvm.objects import model_objects

        self.graph = graph
        self.state = dict(state or {})
        updates = set(self.state.values())
        self.inputs = [v for v in graph.inputs if v.name not in self.state]
        self.outputs = [v for v in graph.outputs if v.name not in updates]
        self._state_types = {v.name: v.type for v in graph.inputs if v.name in self.state}
        self.threads = threads if _work_flops(graph) >= MIN_FLOPS_PER_THREAD * threads else 1
        threaded = self.threads > 1
        self.engine = engine_factory()
        # a program entry of the cache (keyed by the graph's structure, not its weights)
        # gives the program and the object code without lowering the graph; kernels that
        # are needed (keep_kernels: AOT export renders them) always come from a lowering
        key = _program_key(self.engine, graph, self.state, threaded) \
            if cache is not None and not keep_kernels else None
        found = _cached_program(cache, key, graph) if key is not None else None
        kernels: list[K.Kernel] | None = None
        if found is not None:
            program, objects = found
        else:
            # weights, then compile-time tables, are passed as args[1:] (binding slot k is
            # args[k]; slot 0 is the arena); a weight only a repacked table reads (conv
            # filters in a blocked layout) is not passed at all
            program = lower_graph(graph, ALIGN, state=self.state)
            kernels = program.kernels
        self.program_graph = program.graph   # the schedule (state writes may reorder it)
        self.state_copies = program.state_copies   # state updated by a copy, not in place
        self.plan, self.weights = program.plan, program.weights
        named = program.named_calls
        calls = [(name, [(b.slot, b.offset) for b in bindings])
                 for name, _, _, bindings in named]
        # (kernel name, its args, node, which output of the node it computes)
        self.kernel_nodes = [(name, args, node, k)
                             for (name, args), (_, node, k, _) in zip(calls, named)]
        self.calls = calls   # kept for AOT export
        if found is None:
            objects, keys = model_objects(self.engine, kernels, calls, 1 + len(self.weights),
                                          threaded, ident(graph.name), cache)
            if key is not None:
                _store_program(cache, key, program, graph, keys)
        self.engine.load_objects(objects, [name for name, _ in calls] + ["run_model"])
        self.kernels: list[K.Kernel] | None = kernels if keep_kernels else None
        if threaded:
            self._team = ThreadTeam(self.engine.address("run_model"), self.threads)
        else:
            self._entry = self.engine.entry("run_model")
        self.arena = np.zeros(self.plan.arena_bytes + ALIGN, np.uint8)
        base = self.arena.ctypes.data
        self._base = base + (-base) % ALIGN
        pointers = [self._base] + [w.ctypes.data for w in self.weights]
        self._args = (ctypes.c_void_p * len(pointers))(*pointers)
        # per call only copies: the inputs' and outputs' places in the arena, and the native
        # call with its arguments, are made once (a LeNet-5 call spent 20 us making views)
        self._input_views = [self._view(v.name, v.type.shape, v.type.dtype.numpy)
                             for v in self.inputs]
        self._output_views = [self._view(v.name, v.type.shape, v.type.dtype.numpy)
                              for v in self.outputs]
        self._native = functools.partial(self._team.run if threaded else self._entry.cfunc,
                                         self._args)

    def _feed(self, inputs: Sequence[np.ndarray]) -> None:
        """Copy the inputs (checked: this graph's shapes and dtypes) into the arena."""
        for view, x in zip(self._input_views, inputs):
            view[...] = x

    def read_state(self, name: str) -> np.ndarray:
        t = self._state_types[name]
        return self._view(name, t.shape, t.dtype.numpy).copy()

    def write_state(self, name: str, value: np.ndarray) -> None:
        t = self._state_types[name]
        self._view(name, t.shape, t.dtype.numpy)[...] = value

    def profile(self, inputs: Sequence[np.ndarray], repeats: int = 5) -> Profile:
        """Time every kernel on its own (best of ``repeats``), in schedule order."""
        from cnncompiler.ops.registry import node_cost

        self._feed(inputs)
        kernels = []
        for name, args, node, k in self.kernel_nodes:
            pointers = [self._args[arg] + offset for arg, offset in args]
            if self.threads > 1:   # threaded kernels take (tid, nthreads): time them alone
                fn = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * len(pointers), ctypes.c_int64,
                                      ctypes.c_int64)(self.engine.address(name))
                pointers = [*pointers, 0, 1]
            else:
                fn = self.engine.function(name, len(pointers))
            kernels.append((fn, pointers, node, k))
        best = [float("inf")] * len(kernels)
        for _ in range(repeats):
            for i, (fn, pointers, _, _) in enumerate(kernels):
                start = time.perf_counter()
                fn(*pointers)
                best[i] = min(best[i], time.perf_counter() - start)
        rows = [kernel_row(node, k, t, node_cost(node, batch=1).flops)
                for (_, _, node, k), t in zip(kernels, best)]
        return Profile(rows, peak_gflops(threads=1))

    def _view(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        offset = self._base - self.arena.ctypes.data + self.plan.offsets[name]
        count = int(np.prod(shape))
        return self.arena[offset: offset + count * dtype.itemsize].view(dtype).reshape(shape)

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        for view, x in zip(self._input_views, inputs):
            view[...] = x
        self._native()
        return [view.copy() for view in self._output_views]


def _program_key(engine, graph: Graph, state: Mapping[str, str], threaded: bool) -> str | None:
    """The compile-cache key of ``graph``'s program entry (see :mod:`.cache`): its structure
    and state, the lowering's sources and settings, the ``CNNC_`` environment (e.g.
    ``CNNC_WINOGRAD``), threading and the target (:meth:`JitEngine.object_key`). None if the
    graph has something a key cannot tell apart."""
    try:
        structure, lowering = graph_signature(graph, state), lowering_signature()
    except NotCacheable:
        return None
    environment = sorted((k, v) for k, v in os.environ.items()
                         if k.startswith("CNNC_") and k != "CNNC_CACHE_DIR")
    return engine.object_key("\n".join(["program", structure, lowering, repr(environment),
                                         str(ALIGN), str(threaded)]))


def _cached_program(cache, key: str, graph: Graph):
    """(program, objects) from the program entry ``key`` and the object entries it names,
    or None (a miss; an entry that does not load is deleted)."""
    from cnncompiler.backends.llvm.cache import PROGRAM

    def load(payload: bytes):
        head, _, body = payload.partition(b"\n")
        return head.decode().split(), restore_program(load_layout(body), graph)

    found = cache.get(key, PROGRAM, load)
    if found is None:
        return None
    keys, program = found
    objects = [cache.get(k) for k in keys]   # each checked; a bad one is deleted
    if any(obj is None for obj in objects):
        return None
    return program, objects


def _store_program(cache, key: str, program, graph: Graph, object_keys: list[str]) -> None:
    from cnncompiler.backends.llvm.cache import PROGRAM

    try:
        layout = dump_layout(program_layout(program, graph))
    except NotCacheable:
        return
    cache.put(key, " ".join(object_keys).encode() + b"\n" + layout, PROGRAM)


#: stack of each helper thread of a ThreadTeam
WORKER_STACK_BYTES = 16 << 20
#: how long a thread of the team polls (yielding the GIL) before it sleeps on an event:
#: waking a sleeping thread cost a small model (a 0.7 ms depthwise layer) 0.9 ms per call
SPIN_SECONDS = 0.001


def _poll(event: threading.Event, seconds: float) -> None:
    """Return when ``event`` is set or ``seconds`` have passed, without sleeping."""
    end = time.perf_counter() + seconds
    while not event.is_set() and time.perf_counter() < end:
        time.sleep(0)


def _pinning_cpus(threads: int) -> list[int] | None:
    """One allowed core per thread, or None (no pinning: turned off, not Linux, too few)."""
    if os.environ.get("CNNC_PIN_THREADS", "1") == "0" or not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[:threads] if len(cpus) >= threads else None


class ThreadTeam:
    """Persistent helper threads that enter the model's native entry point together with the
    caller, each with its thread index; the entry's barriers keep them in step. ctypes
    releases the GIL, so the threads really run at once.

    Each thread is pinned to its own core for the call (the caller only during the call, its
    affinity restored after): after an idle spell Linux wakes a helper on the caller's core,
    and two threads meeting at a barrier between every kernel on one core ran MobileNetV2
    at 10 ms instead of 5.5. ``CNNC_PIN_THREADS=0`` turns pinning off; so does having fewer
    allowed cores than threads."""

    def __init__(self, address: int, threads: int):
        self.threads = threads
        self._cpus = _pinning_cpus(threads)
        self._fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                    ctypes.c_void_p)(address)
        self._barrier = np.zeros(2, np.int64)
        self._go = [threading.Event() for _ in range(threads - 1)]
        self._done = [threading.Event() for _ in range(threads - 1)]
        self._args = None
        self._stop = False
        self._workers = [threading.Thread(target=self._work, args=(t,), daemon=True)
                         for t in range(1, threads)]
        # kernels keep per-call scratch on the stack (Winograd: ~1.3 MB): give the helpers
        # a stack that holds it whatever the platform's default thread stack is
        previous = threading.stack_size(WORKER_STACK_BYTES)
        try:
            for w in self._workers:
                w.start()
        finally:
            threading.stack_size(previous)
        weakref.finalize(self, ThreadTeam._shutdown, self._go, self._workers, self)

    def _work(self, tid: int) -> None:
        go, done = self._go[tid - 1], self._done[tid - 1]
        if self._cpus:
            os.sched_setaffinity(0, {self._cpus[tid]})
        while True:
            _poll(go, SPIN_SECONDS)   # a call right after this one finds the thread awake
            go.wait()
            go.clear()
            if self._stop:
                return
            self._fn(self._args, tid, self.threads, self._barrier.ctypes.data)
            done.set()

    def run(self, args) -> None:
        self._args = args
        mine = None
        if self._cpus:
            mine = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {self._cpus[0]})
        try:
            for go in self._go:
                go.set()
            self._fn(args, 0, self.threads, self._barrier.ctypes.data)
            for done in self._done:   # set microseconds after the entry's last barrier
                _poll(done, SPIN_SECONDS)
                done.wait()
                done.clear()
        finally:
            if mine is not None:
                os.sched_setaffinity(0, mine)

    @staticmethod
    def _shutdown(go, workers, team) -> None:  # pragma: no cover - at interpreter exit
        team._stop = True
        for event in go:
            event.set()


class LLVMExecutable(PerShapeExecutable):
    native_state = True   # in the arena (see the module docstring)

    def __init__(self, graph: Graph, engine_factory, threads: int = 1, cache=None):
        self.engine_factory = engine_factory
        self.threads = threads
        self.cache = cache
        super().__init__(graph)

    def build(self, graph: Graph) -> CompiledGraph:
        return CompiledGraph(graph, self.engine_factory, self.threads, self.cache,
                             state=self.state)

    def export(self, path, batch: int | None = None) -> dict[str, str]:
        """AOT: a shared library + C header + weights file (see :mod:`.aot`)."""
        from cnncompiler.backends.llvm.aot import export

        symbols = sorted({s for v in self.graph.inputs for s in v.type.symbols})
        if symbols and batch is None:
            raise UnsupportedError(f"the model has a symbolic batch {symbols[0]!r}: export "
                                   "it for one size with export(path, batch=1)")
        graph = bind_symbols(self.graph, {symbols[0]: batch}) if symbols else self.graph
        compiled = CompiledGraph(graph, self.engine_factory, threads=1, keep_kernels=True)
        return export(compiled, path, compiled.engine)
