"""The user-facing runtime API: ``compile(model, backend=...)`` -> :class:`CompiledModel`."""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from cnncompiler.errors import ModelError, UnsupportedError
from cnncompiler.ir.graph import Graph
from cnncompiler.ir.specialize import bind_symbols
from cnncompiler.passes.manager import PassManager
from cnncompiler.runtime.registry import get_backend
from cnncompiler.runtime.validate import bind_inputs


def as_graph(model: Any, input_shape: Sequence[int | str] | None = None,
             batch: int | None = None) -> Graph:
    """A Graph from a Graph, a DSL model, or (with the ONNX front end) an ONNX file/ModelProto.

    ``batch`` pins a symbolic batch dim to that size.
    """
    from cnncompiler.nn.module import Module

    if isinstance(model, Graph):
        graph = model
    elif isinstance(model, Module):
        graph = model.to_graph(input_shape)
    elif isinstance(model, (str, os.PathLike)) or type(model).__name__ == "ModelProto":
        try:
            onnx_frontend = importlib.import_module("cnncompiler.frontends.onnx")
        except ImportError as e:
            raise UnsupportedError(f"loading ONNX models needs the ONNX front end: {e}") from e
        graph = onnx_frontend.load(model)
    else:
        raise ModelError(f"cannot compile a {type(model).__name__}: pass a cnncompiler.nn model,"
                         " a Graph, an ONNX file path or an onnx.ModelProto")
    symbols = sorted({s for v in graph.inputs for s in v.type.symbols})
    if batch is not None and symbols:
        graph = bind_symbols(graph, {symbols[0]: batch})
    return graph


class CompiledModel:
    """A graph compiled for one backend. Call it with arrays in graph-input order or by name;
    it returns one array for a single-output model and a tuple otherwise."""

    def __init__(self, graph: Graph, backend: str, executable, compile_seconds: float,
                 passes: PassManager | None = None, source: Graph | None = None):
        self.graph = graph            # the optimised graph the backend compiled
        self.source = source or graph  # the graph before optimisation
        self.backend = backend
        self.executable = executable
        self.compile_seconds = compile_seconds
        self.passes = passes

    def explain(self) -> str:
        """What each optimisation pass did, in order."""
        return self.passes.explain() if self.passes else "no passes ran"

    @property
    def input_names(self) -> list[str]:
        return [v.name for v in self.graph.inputs]

    @property
    def output_names(self) -> list[str]:
        return [v.name for v in self.graph.outputs]

    def run(self, *args: Any, **kwargs: Any) -> np.ndarray | tuple[np.ndarray, ...]:
        arrays, _ = bind_inputs(self.graph.inputs, args, kwargs)
        outputs = self.executable.run(arrays)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    __call__ = run

    def profile(self, *args: Any, repeats: int = 5, **kwargs: Any):
        """Per-kernel time, GFLOP/s and % of this CPU's FMA peak on these inputs."""
        profile = getattr(self.executable, "profile", None)
        if profile is None:
            raise UnsupportedError(f"backend {self.backend!r} has no per-kernel profiler")
        arrays, _ = bind_inputs(self.graph.inputs, args, kwargs)
        return profile(arrays, repeats)

    def export(self, path: str, batch: int | None = None) -> dict[str, str]:
        """Ahead-of-time: a shared library, its C header and a weights file (llvm)."""
        export = getattr(self.executable, "export", None)
        if export is None:
            raise UnsupportedError(f"backend {self.backend!r} cannot export a library")
        return export(path, batch=batch)

    def summary(self, batch: int = 1):
        return self.graph.summary(batch=batch)

    def __repr__(self) -> str:
        return (f"CompiledModel({self.graph.name!r}, backend={self.backend!r}, "
                f"inputs={self.input_names}, outputs={self.output_names})")


def compile(model: Any, backend: str = "reference", *, input_shape: Sequence[int | str] | None
            = None, batch: int | None = None, opt_level: int = 2,
            disable_passes: Sequence[str] = (), verify_passes: bool = False,
            keep_snapshots: Sequence[str] = (), **options: Any) -> CompiledModel:
    """Compile ``model`` for ``backend``.

    ``input_shape`` overrides a DSL model's default input shape; ``batch`` pins a symbolic
    batch dim (otherwise it stays symbolic and any batch runs). ``opt_level`` selects the
    pass pipeline (0 = none, the bisection path; 1 = clean-ups; 2 = everything);
    ``disable_passes`` switches single passes off; ``verify_passes`` checks the IR after each
    pass. Backend-specific ``options`` go to the backend, which rejects ones it does not know.
    """
    start = time.perf_counter()
    source = as_graph(model, input_shape, batch)
    if not source.has_data:
        missing = [name for name, a in source.data.items() if a is None]
        raise ModelError(f"graph {source.name!r} has no data for {len(missing)} stored "
                         f"tensor(s) (e.g. {missing[:3]}); build it with weights to run it")
    impl = get_backend(backend)
    passes = PassManager(opt_level, disable_passes, verify_passes, impl.passes(**options))
    graph = passes.run(source, keep=keep_snapshots)
    impl.check_supported(graph)
    executable = impl.compile(graph, **options)
    return CompiledModel(graph, backend, executable, time.perf_counter() - start, passes, source)
