"""Symbolic tensors and the tracer that records DSL calls into a GraphBuilder.

A DSL model's ``forward`` runs once on :class:`Tensor` objects; every layer or functional
call appends typed nodes through the builder, so shape errors surface at the line that
caused them, with the layer's name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from cnncompiler.ir.builder import GraphBuilder
from cnncompiler.ir.graph import Value

if TYPE_CHECKING:
    from cnncompiler.nn.module import Parameter


class Tracer:
    """Holds the builder, the stored-tensor values made so far and the module-name stack."""

    def __init__(self, name: str, with_weights: bool):
        self.builder = GraphBuilder(name)
        self.with_weights = with_weights
        self._stored: dict[int, Value] = {}
        self.scope: list[str] = []

    @property
    def path(self) -> str:
        """Dotted name of the module being traced (``features.conv1``); "" at top level."""
        return ".".join(s for s in self.scope if s)

    def layer_name(self, default: str) -> str:
        """Name for a layer's own node: the module path, or ``default`` outside modules."""
        return self.path or default

    def scoped(self, suffix: str) -> str:
        """Name for a helper node inside the current module: ``path.suffix``."""
        return f"{self.path}.{suffix}" if self.path else suffix

    def stored(self, p: Parameter) -> Value:
        """The graph value of a Parameter (created once, even if the module is reused)."""
        v = self._stored.get(id(p))
        if v is None:
            data = p.data if self.with_weights else None
            v = self.builder.param(p.name, data, shape=p.shape, dtype=p.dtype,
                                   trainable=p.trainable)
            self._stored[id(p)] = v
        return v

    def op(self, op: str, *inputs: Any, name: str | None = None, **attrs: Any) -> Tensor:
        values = [None if x is None else self.value(x) for x in inputs]
        return Tensor(self, self.builder.op(op, *values, name=name or self.scoped(op.lower()),
                                            **attrs))

    def ops(self, op: str, inputs: list[Any], num_outputs: int | None = None,
            name: str | None = None, **attrs: Any) -> list[Tensor]:
        values = [self.value(x) for x in inputs]
        outs = self.builder.add_node(op, values, attrs, name or self.scoped(op.lower()),
                                     num_outputs)
        return [Tensor(self, v) for v in outs]

    def value(self, x: Any) -> Value:
        from cnncompiler.nn.module import Parameter

        if isinstance(x, Tensor):
            return x.value
        if isinstance(x, Parameter):
            return self.stored(x)
        arr = np.asarray(x)
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float32)
        return self.builder.const(arr, name=self.scoped("const"))


class Tensor:
    """A value being traced. Supports arithmetic with tensors and Python numbers."""

    __array_priority__ = 1000  # so numpy scalars defer to our operators

    def __init__(self, tracer: Tracer, value: Value):
        self.tracer = tracer
        self.value = value

    @property
    def shape(self) -> tuple:
        return self.value.type.shape

    @property
    def dtype(self):
        return self.value.type.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _const(self, other: Any) -> Any:
        """Tensors and Parameters as they are; Python numbers as constants of our dtype."""
        from cnncompiler.nn.module import Parameter

        if isinstance(other, (Tensor, Parameter)):
            return other
        return np.asarray(other, dtype=self.dtype.numpy)

    def _binary(self, op: str, a: Any, b: Any) -> Tensor:
        return self.tracer.op(op, self._const(a), self._const(b))

    def __add__(self, other): return self._binary("Add", self, other)
    def __radd__(self, other): return self._binary("Add", other, self)
    def __sub__(self, other): return self._binary("Sub", self, other)
    def __rsub__(self, other): return self._binary("Sub", other, self)
    def __mul__(self, other): return self._binary("Mul", self, other)
    def __rmul__(self, other): return self._binary("Mul", other, self)
    def __truediv__(self, other): return self._binary("Div", self, other)
    def __rtruediv__(self, other): return self._binary("Div", other, self)
    def __matmul__(self, other): return self._binary("MatMul", self, other)

    def flatten(self, axis: int = 1) -> Tensor:
        return self.tracer.op("Flatten", self, axis=axis)

    def reshape(self, *shape: int) -> Tensor:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return self.tracer.op("Reshape", self, shape=shape)

    def transpose(self, *perm: int) -> Tensor:
        return self.tracer.op("Transpose", self, perm=perm)

    def __repr__(self) -> str:
        return f"Tensor({self.value.name}: {self.value.type})"
