"""Object code for a whole model, built in parallel and served from the compile cache.

Rendering kernel IR to LLVM IR (Python) and optimising/compiling it (LLVM) are both
single-threaded: llvmlite serialises every call into LLVM behind one lock. A big model is
therefore split into *parts*, each rendered and compiled to a position-independent object
either in this process or in a worker process (``python -P -m`` this module: a fresh
interpreter, which never re-runs the user's script the way a multiprocessing "spawn" does),
plus a small entry object (``run_model``, declaring the kernels it calls). The JIT links
them. There are ``PARTS_PER_LANE`` parts per lane (this process, and each worker slot), of
about equal kernel-IR text, claimed largest first by whichever lane is free: text size
predicts LLVM's time poorly (two equal halves of ResNet-50 took 6.5 s here and 10.8 s in
the worker), and claiming smaller parts evens that out. Each part is a compile-cache entry
of its own, keyed by its kernels' IR, so editing one layer of a model recompiles one part.

Small models (below ``PARALLEL_MIN_CHARS`` of kernel IR) are built in this process: a
worker process costs ~0.5 s to start. Any failure to use a worker (no process support,
a sandbox) falls back to building in this process.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Sequence

from cnncompiler.kernel import ir as K

#: kernel-IR text (fingerprint characters) above which a model is split across processes
PARALLEL_MIN_CHARS = 400_000
#: parts per lane of a parallel build (see the module docstring)
PARTS_PER_LANE = 3

def build_part(kernels: Sequence[K.Kernel], module_name: str, threaded: bool, cpu: str,
               features: str, opt: int) -> bytes:
    """Render kernels and compile them to a position-independent object."""
    from cnncompiler.backends.llvm.engine import JitEngine
    from cnncompiler.backends.llvm.render import render_module

    with K.deep_recursion():
        module = render_module(kernels, module_name, threaded=threaded)
    return JitEngine(opt_level=opt, cpu=cpu, features=features).emit_object(module)


def _run_worker(job: bytes) -> bytes | None:
    """Build one part in a fresh interpreter; None if that is not possible here."""
    try:
        done = subprocess.run([sys.executable, "-P", "-m", __name__], input=job,
                              capture_output=True, timeout=600, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 and done.stdout else None


def kernel_text(kernel: K.Kernel) -> str:
    """What a kernel's function depends on: its name and code (:func:`K.code_text`)."""
    return f"{kernel.name}\n{K.code_text(kernel)}"


def split(texts: Sequence[str], parts: int) -> list[list[int]]:
    """Kernel indices in ``parts`` groups of about equal text size (greedy, largest first)."""
    groups: list[list[int]] = [[] for _ in range(parts)]
    sizes = [0] * parts
    for i in sorted(range(len(texts)), key=lambda i: -len(texts[i])):
        g = sizes.index(min(sizes))
        groups[g].append(i)
        sizes[g] += len(texts[i])
    return [sorted(g) for g in groups if g]


def model_objects(engine, kernels: Sequence[K.Kernel], calls, num_args: int, threaded: bool,
                  name: str, cache) -> tuple[list[bytes], list[str]]:
    """Objects defining every kernel and ``run_model`` (see the module docstring), and their
    compile-cache keys."""
    texts = [kernel_text(k) for k in kernels]
    workers = _workers() if sum(map(len, texts)) >= PARALLEL_MIN_CHARS else 0
    groups = split(texts, (1 + workers) * PARTS_PER_LANE if workers else 1)
    keys = [engine.object_key("\n".join([name, str(threaded)] + [texts[i] for i in g]))
            for g in groups]
    objects: list[bytes | None] = [cache.get(k) if cache is not None else None for k in keys]
    missing = [j for j, obj in enumerate(objects) if obj is None]
    # largest first (split's groups are about equal, but the last ones may be smaller)
    missing.sort(key=lambda j: -sum(len(texts[i]) for i in groups[j]))
    jobs = {}
    if workers and len(missing) > 1:
        with K.deep_recursion():   # here, once: the recursion limit is process-wide
            jobs = {j: pickle.dumps(([_without_tables(kernels[i]) for i in groups[j]],
                                     f"{name}_part{j}", threaded, engine.cpu_name,
                                     engine.cpu_features, engine.opt_level))
                    for j in missing}
    queue = list(missing)
    lock = threading.Lock()
    failed: list[int] = []

    def claim() -> int | None:
        with lock:
            return queue.pop(0) if queue else None

    def worker_lane() -> None:   # runs worker processes only: LLVM stays in this thread
        while (j := claim()) is not None:
            obj = _run_worker(jobs[j])
            if obj is None:   # the worker failed: build it here
                with lock:
                    failed.append(j)
            objects[j] = obj

    lanes = [threading.Thread(target=worker_lane, daemon=True)
             for _ in range(min(workers, len(missing) - 1) if jobs else 0)]
    for lane in lanes:
        lane.start()
    while (j := claim()) is not None:
        objects[j] = _build_here(engine, [kernels[i] for i in groups[j]], f"{name}_part{j}",
                                 threaded)
    for lane in lanes:
        lane.join()
    for j in failed:
        objects[j] = _build_here(engine, [kernels[i] for i in groups[j]], f"{name}_part{j}",
                                 threaded)
    if cache is not None:
        for j in missing:
            cache.put(keys[j], objects[j])
    entry_key = engine.object_key("\n".join([name, "entry", str(threaded), str(num_args),
                                             repr(calls)]))
    entry = cache.get(entry_key) if cache is not None else None
    if entry is None:
        entry = _build_entry(engine, calls, num_args, threaded, f"{name}_entry")
        if cache is not None:
            cache.put(entry_key, entry)
    return [*objects, entry], [*keys, entry_key]


def _build_here(engine, kernels: Sequence[K.Kernel], module_name: str, threaded: bool
                ) -> bytes:
    """Render and compile kernels in this process."""
    from cnncompiler.backends.llvm.render import render_module

    with K.deep_recursion():
        module = render_module(kernels, module_name, threaded=threaded)
    obj = engine.emit_object(module)
    _release(module)
    return obj


def _build_entry(engine, calls, num_args: int, threaded: bool, module_name: str) -> bytes:
    """The object of ``run_model``, which calls every kernel in order."""
    from cnncompiler.backends.llvm.render import add_entry, render_module

    module = render_module([], module_name, threaded=threaded)
    add_entry(module, "run_model", calls, num_args, threaded=threaded)
    obj = engine.emit_object(module)
    _release(module)
    return obj


def _release(module) -> None:
    """Cut the reference cycles of a compiled llvmlite module (instructions and blocks,
    blocks and functions, globals and metadata and the module point at each other), so
    that reference counting frees it now. Left cyclic, ResNet-50's ~360k IR objects waited
    for a full garbage collection, which then fell inside the process's next compile (a
    cached one: +0.3 s); collecting them here instead cost a cold compile up to 1 s.
    These are llvmlite's internals: where another version lacks one, the collector frees
    the module later, as before."""
    try:
        for function in module.functions:
            for block in function.blocks:
                block.instructions.clear()
            function.blocks.clear()
        module.globals.clear()
        module.metadata.clear()
        module.namedmetadata.clear()
    except AttributeError:
        pass


def _without_tables(kernel: K.Kernel) -> K.Kernel:
    """The kernel without its tables' arrays (megabytes of packed weights a worker does
    not need to render code)."""
    from dataclasses import replace

    return replace(kernel, tables={})


def _workers() -> int:
    """Worker processes to use besides this one: one per further core, at most 3."""
    if os.environ.get("CNNC_COMPILE_WORKERS") is not None:
        return max(0, int(os.environ["CNNC_COMPILE_WORKERS"]))
    return max(0, min(3, (os.cpu_count() or 1) - 1))


def _main() -> None:
    """Worker: a pickled (kernels, module name, threaded, cpu, features, opt) on stdin, the
    object code on stdout."""
    with K.deep_recursion():
        kernels, module_name, threaded, cpu, features, opt = pickle.loads(sys.stdin.buffer.read())
    sys.stdout.buffer.write(build_part(kernels, module_name, threaded, cpu, features, opt))


if __name__ == "__main__":
    _main()
