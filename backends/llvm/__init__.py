"""The LLVM CPU backend: kernel IR rendered to LLVM IR through llvmlite, optimised for the
host CPU (vectorised, FMA), JIT-compiled, and run as one native call per model.

Pieces: ``schedule`` (the CPU's layout choice: NCHW8c convs), the kernel-IR schedules in
:mod:`cnncompiler.kernel` (register-blocked direct conv, generic lowering of every other op),
``render`` (kernel IR -> LLVM IR), ``mathlib`` (vectorisable exp/log/tanh), ``engine`` (the
JIT), ``executable`` (arena, weights, thread team, profile), ``cache`` (object code on disk),
``aot`` (shared library export). Options: ``threads`` (default 1), ``cache`` (default True),
``cache_dir``.
"""

from __future__ import annotations

from typing import Any

from cnncompiler.errors import UnsupportedError
from cnncompiler.ir.graph import Graph, Node
from cnncompiler.runtime.backend import Backend


class LLVMBackend(Backend):
    name = "llvm"
    has_compile_cache = True  # object code under $CNNC_CACHE_DIR (see .cache)

    def unavailable_reason(self) -> str | None:
        try:
            import llvmlite.binding  # noqa: F401
        except ImportError as e:
            return f"llvmlite is not installed ({e}); pip install llvmlite"
        return None

    def describe(self) -> str:
        from cnncompiler.backends.llvm.engine import host_description

        return f"LLVM JIT for this CPU: {host_description()}"

    def passes(self, **options: Any) -> list:
        from cnncompiler.backends.llvm.schedule import choose_layout
        from cnncompiler.passes.layout import layout_pass

        return [layout_pass(choose_layout)]

    def supports(self, node: Node) -> str | None:
        from cnncompiler.kernel.lower import unsupported_reason

        return unsupported_reason(node)

    def compile(self, graph: Graph, **options: Any):
        from cnncompiler.backends.llvm.cache import CompileCache
        from cnncompiler.backends.llvm.engine import JitEngine
        from cnncompiler.backends.llvm.executable import LLVMExecutable

        threads = options.pop("threads", 1)
        cache = options.pop("cache", True)
        cache_dir = options.pop("cache_dir", None)
        if options:
            raise UnsupportedError(f"unknown llvm-backend option(s): {sorted(options)}")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise UnsupportedError(f"threads must be a positive int, got {threads!r}")
        return LLVMExecutable(graph, JitEngine, threads,
                              CompileCache(cache_dir) if cache else None)


__all__ = ["LLVMBackend"]
