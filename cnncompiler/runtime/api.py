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

    def __init__(self, graph: Graph, backend: str, executable, compile_seconds: float):
        self.graph = graph
        self.backend = backend
        self.executable = executable
        self.compile_seconds = compile_seconds

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

    def summary(self, batch: int = 1):
        return self.graph.summary(batch=batch)

    def __repr__(self) -> str:
        return (f"CompiledModel({self.graph.name!r}, backend={self.backend!r}, "
                f"inputs={self.input_names}, outputs={self.output_names})")


def compile(model: Any, backend: str = "reference", *, input_shape: Sequence[int | str] | None
            = None, batch: int | None = None, opt_level: int = 2, **options: Any
            ) -> CompiledModel:
    """Compile ``model`` for ``backend``.

    ``input_shape`` overrides a DSL model's default input shape; ``batch`` pins a symbolic
    batch dim (otherwise it stays symbolic and any batch runs). ``opt_level`` selects the
    pass pipeline (0 = none; passes arrive with the graph-optimisation work). Backend-specific
    ``options`` are passed to the backend, which rejects ones it does not know.
    """
    if opt_level not in (0, 1, 2):
        raise UnsupportedError(f"opt_level must be 0, 1 or 2, got {opt_level!r}")
    start = time.perf_counter()
    graph = as_graph(model, input_shape, batch)
    if not graph.has_data:
        missing = [name for name, a in graph.data.items() if a is None]
        raise ModelError(f"graph {graph.name!r} has no data for {len(missing)} stored tensor(s) "
                         f"(e.g. {missing[:3]}); build it with weights to run it")
    impl = get_backend(backend)
    impl.check_supported(graph)
    executable = impl.compile(graph, **options)
    return CompiledModel(graph, backend, executable, time.perf_counter() - start)
