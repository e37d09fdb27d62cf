"""A compiled model on the LLVM backend: every kernel of the optimised graph in one LLVM
module, called in order by one native entry point, with activations at the memory plan's
offsets inside one arena. Shapes are specialised per batch size (compiled on first use)."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import numpy as np

from cnncompiler.ir.graph import Graph
from cnncompiler.ir.specialize import bind_symbols
from cnncompiler.kernel.lower import lower_node
from cnncompiler.passes.memory import plan_memory
from cnncompiler.runtime.backend import Executable

ALIGN = 64


class CompiledGraph:
    """One static-shape graph: its native entry point, arena and weights."""

    def __init__(self, graph: Graph, engine_factory):
        from cnncompiler.backends.llvm.render import add_entry, render_module

        self.graph = graph
        # no in-place reuse: kernels declare their buffers noalias
        self.plan = plan_memory(graph, batch=1, alignment=ALIGN, inplace=False)
        stored = [v for v in graph.values.values() if v.is_stored]
        self.weights = [np.ascontiguousarray(graph.data[v.name]) for v in stored]
        weight_arg = {v.name: 1 + i for i, v in enumerate(stored)}
        kernels, calls = [], []
        for i, node in enumerate(graph.nodes):
            out = node.outputs[0]
            if node.opdef.view and self.plan.offsets.get(out.name) == self.plan.offsets.get(
                    node.inputs[0].name):
                continue  # the output aliases the input buffer: nothing to do
            kernel = lower_node(node, f"k{i}_{_ident(node.name)}")
            kernels.append(kernel)
            if node.op == "Fused":
                body = node.attrs["body"]
                outer = dict(zip((v.name for v in body.inputs), node.inputs))
                values = [outer[v.name] for v in body.inputs]
            else:
                values = [v for v in node.inputs if v is not None]
            seen: list[str] = []
            args = []
            for v in values:
                if v.name in seen:
                    continue
                seen.append(v.name)
                args.append((weight_arg[v.name], 0) if v.is_stored else (0, self.plan.offsets[
                    v.name]))
            args.append((0, self.plan.offsets[out.name]))
            calls.append((kernel.name, args))
        module = render_module(kernels, _ident(graph.name))
        add_entry(module, "run_model", calls, 1 + len(self.weights))
        self.engine = engine_factory()
        self.engine.compile(module)
        self._entry = self.engine.entry("run_model")
        self.arena = np.zeros(self.plan.arena_bytes + ALIGN, np.uint8)
        base = self.arena.ctypes.data
        self._base = base + (-base) % ALIGN
        pointers = [self._base] + [w.ctypes.data for w in self.weights]
        self._args = (ctypes.c_void_p * len(pointers))(*pointers)

    def _view(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        offset = self._base - self.arena.ctypes.data + self.plan.offsets[name]
        count = int(np.prod(shape))
        return self.arena[offset: offset + count * dtype.itemsize].view(dtype).reshape(shape)

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        for v, x in zip(self.graph.inputs, inputs):
            self._view(v.name, x.shape, x.dtype)[...] = x
        self._entry(self._args)
        return [self._view(v.name, v.type.shape, v.type.dtype.numpy).copy()
                for v in self.graph.outputs]


def _ident(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


class LLVMExecutable(Executable):
    def __init__(self, graph: Graph, engine_factory):
        self.graph = graph
        self.engine_factory = engine_factory
        self.specialised: dict[tuple, CompiledGraph] = {}
        if graph.inputs and all(v.type.is_static for v in graph.inputs):
            self.specialised[()] = CompiledGraph(graph, engine_factory)

    def for_shapes(self, inputs: Sequence[np.ndarray]) -> CompiledGraph:
        bindings: dict[str, int] = {}
        for v, x in zip(self.graph.inputs, inputs):
            for d, size in zip(v.type.shape, x.shape):
                if isinstance(d, str):
                    bindings[d] = size
        key = tuple(sorted(bindings.items()))
        compiled = self.specialised.get(key)
        if compiled is None:
            graph = bind_symbols(self.graph, bindings) if bindings else self.graph
            compiled = self.specialised[key] = CompiledGraph(graph, self.engine_factory)
        return compiled

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.for_shapes(inputs).run(inputs)
