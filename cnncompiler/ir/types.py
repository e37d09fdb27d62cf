"""Tensor types: an element dtype and a shape whose dims are ints or one symbolic name."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

import numpy as np

Dim = int | str


class DType(Enum):
    """Element types. float32 is what compiled code runs; float64 is the reference's precision;
    int64 carries labels, shapes and indices; bool carries masks."""

    float32 = "float32"
    float64 = "float64"
    int64 = "int64"
    bool = "bool"

    @property
    def numpy(self) -> np.dtype:
        return np.dtype(self.value)

    @property
    def itemsize(self) -> int:
        return self.numpy.itemsize

    @property
    def is_float(self) -> bool:
        return self in (DType.float32, DType.float64)

    @classmethod
    def of(cls, x: DType | str | np.dtype | type) -> DType:
        """The DType of a numpy dtype, a name or a DType."""
        if isinstance(x, DType):
            return x
        name = np.dtype(x).name
        try:
            return cls(name)
        except ValueError:
            raise TypeError(f"unsupported element type {name!r}; "
                            f"use one of {[d.value for d in cls]}") from None

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class TensorType:
    """Shape and element type of a value. A str dim is symbolic (e.g. the batch "N")."""

    shape: tuple[Dim, ...]
    dtype: DType = DType.float32

    def __post_init__(self) -> None:
        shape = tuple(d if isinstance(d, str) else int(d) for d in self.shape)
        for d in shape:
            if isinstance(d, int) and d < 0:
                raise ValueError(f"negative dimension in shape {shape}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "dtype", DType.of(self.dtype))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(d for d in self.shape if isinstance(d, str))

    def concrete(self, bindings: Mapping[str, int] | None = None, default: int | None = None
                 ) -> tuple[int, ...]:
        """The shape with symbols replaced by ``bindings`` (or ``default`` for unbound ones)."""
        out = []
        for d in self.shape:
            if isinstance(d, str):
                if bindings is not None and d in bindings:
                    d = bindings[d]
                elif default is not None:
                    d = default
                else:
                    raise ValueError(f"symbolic dimension {d!r} of {self} has no value")
            out.append(int(d))
        return tuple(out)

    def numel(self, bindings: Mapping[str, int] | None = None, default: int | None = 1) -> int:
        return math.prod(self.concrete(bindings, default))

    def nbytes(self, bindings: Mapping[str, int] | None = None, default: int | None = 1) -> int:
        return self.numel(bindings, default) * self.dtype.itemsize

    @classmethod
    def of(cls, array: np.ndarray) -> TensorType:
        """The type of a numpy array."""
        return cls(tuple(array.shape), DType.of(array.dtype))

    def with_shape(self, shape: Iterable[Dim]) -> TensorType:
        return TensorType(tuple(shape), self.dtype)

    def with_dtype(self, dtype: DType | str) -> TensorType:
        return TensorType(self.shape, DType.of(dtype))

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"


def format_shape(shape: Iterable[Dim]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"
