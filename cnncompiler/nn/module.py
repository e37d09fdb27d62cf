"""Module and Parameter: the PyTorch-like layer API of the DSL.

A Module holds Parameters and child Modules as attributes and defines ``forward`` on
symbolic Tensors. ``to_graph`` traces ``forward`` once into a typed Graph; parameters become
the graph's stored tensors under their dotted names (``features.0.weight``).
"""

from __future__ import annotations

import math
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from cnncompiler.errors import ModelError
from cnncompiler.ir.graph import Graph
from cnncompiler.nn.tensor import Tensor, Tracer

INITIALIZERS = ("he_normal", "he_uniform", "xavier_uniform", "xavier_normal", "normal",
                "zeros", "ones")


class Parameter:
    """A named weight. ``data`` stays None until :meth:`Module.init_parameters` (or load).

    ``init`` picks the scheme: He (Kaiming) for layers followed by ReLU, Xavier (Glorot) for
    tanh/sigmoid, zeros/ones for biases and BatchNorm. ``fan_in``/``fan_out`` are the
    receptive-field sizes those schemes scale by. ``trainable=False`` marks buffers such as
    BatchNorm's running statistics (stored, but not counted or trained).
    """

    def __init__(self, shape: Sequence[int], init: str = "he_normal", *, fan_in: int | None = None,
                 fan_out: int | None = None, trainable: bool = True, std: float = 0.01,
                 dtype: str = "float32"):
        if init not in INITIALIZERS:
            raise ModelError(f"unknown initializer {init!r}; use one of {INITIALIZERS}")
        self.shape = tuple(int(d) for d in shape)
        if any(d < 1 for d in self.shape):
            raise ModelError(f"parameter shape {list(self.shape)} must have every dimension >= 1")
        self.init = init
        self.fan_in = fan_in if fan_in is not None else math.prod(self.shape[1:]) or 1
        self.fan_out = fan_out if fan_out is not None else self.shape[0] if self.shape else 1
        self.trainable = trainable
        self.std = std
        self.dtype = dtype
        self.name = ""
        self.data: np.ndarray | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def initialize(self, rng: np.random.Generator) -> None:
        shape, dt = self.shape, np.dtype(self.dtype)
        if self.init == "zeros":
            self.data = np.zeros(shape, dt)
        elif self.init == "ones":
            self.data = np.ones(shape, dt)
        elif self.init == "he_normal":
            self.data = rng.standard_normal(shape, dtype=dt) * dt.type(math.sqrt(2.0 / self.fan_in))
        elif self.init == "he_uniform":
            bound = math.sqrt(6.0 / self.fan_in)
            self.data = rng.uniform(-bound, bound, shape).astype(dt)
        elif self.init == "xavier_uniform":
            bound = math.sqrt(6.0 / (self.fan_in + self.fan_out))
            self.data = rng.uniform(-bound, bound, shape).astype(dt)
        elif self.init == "xavier_normal":
            std = math.sqrt(2.0 / (self.fan_in + self.fan_out))
            self.data = rng.standard_normal(shape, dtype=dt) * dt.type(std)
        else:  # normal
            self.data = rng.standard_normal(shape, dtype=dt) * dt.type(self.std)

    def __repr__(self) -> str:
        return f"Parameter({self.name or '?'}, shape={list(self.shape)}, init={self.init})"


class Module:
    """Base class of DSL layers and models (subclass it and write ``forward``)."""

    #: default input shape of :meth:`to_graph`, batch dim first (may be the symbol "N")
    input_shape: tuple | None = None
    #: default graph name (else the class name, lower-cased)
    name: str | None = None

    def __init__(self) -> None:
        object.__setattr__(self, "_params", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())

    def __setattr__(self, name: str, value: Any) -> None:
        if "_params" not in self.__dict__:
            raise ModelError(f"{type(self).__name__}.__init__ must call super().__init__() "
                             "before assigning attributes")
        self._params.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._params[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def add_module(self, name: str, module: Module) -> None:
        if not name or "." in name:
            raise ModelError(f"module name {name!r} must be non-empty and contain no '.'")
        setattr(self, name, module)

    # ------------------------------------------------------------- walking
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """Every parameter and buffer by dotted name, each shared one once."""
        seen: set[int] = set()
        for path, m in self.named_modules(prefix):
            for name, p in m._params.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{path}.{name}" if path else name), p

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters() if p.trainable]

    def num_parameters(self) -> int:
        """Trainable scalars (BatchNorm running statistics excluded, as in the papers)."""
        return sum(p.numel for p in self.parameters())

    # --------------------------------------------------------------- weights
    def init_parameters(self, seed: int = 0) -> Module:
        """Initialise every parameter reproducibly: each gets its own stream derived from
        ``seed`` and its name, so adding a layer does not change the others' values."""
        for name, p in self.named_parameters():
            p.name = name
            p.initialize(np.random.default_rng([seed, zlib.crc32(name.encode())]))
        return self

    def state_dict(self) -> dict[str, np.ndarray]:
        out = {}
        for name, p in self.named_parameters():
            if p.data is None:
                raise ModelError(f"parameter {name!r} has no value yet; call init_parameters()")
            out[name] = p.data
        return out

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> Module:
        """Load weights by name; every name and shape must match exactly."""
        mine = dict(self.named_parameters())
        missing = sorted(set(mine) - set(state))
        unexpected = sorted(set(state) - set(mine))
        if missing or unexpected:
            raise ModelError(f"weights do not match the model: missing {missing[:5]}"
                             f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                             f"{'...' if len(unexpected) > 5 else ''}")
        for name, p in mine.items():
            arr = np.asarray(state[name])
            if arr.shape != p.shape:
                raise ModelError(f"weight {name!r} has shape {list(arr.shape)}, the model "
                                 f"expects {list(p.shape)}")
            p.data = np.require(arr, p.dtype, "C")
        return self

    def save(self, path: str) -> None:
        """Save weights to an ``.npz`` file keyed by parameter name."""
        np.savez(path, **self.state_dict())

    def load(self, path: str) -> Module:
        try:
            with np.load(path, allow_pickle=False) as f:
                state = {k: f[k] for k in f.files}
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot read weights from {path!r}: {e}") from e
        return self.load_state_dict(state)

    # --------------------------------------------------------------- tracing
    def forward(self, *inputs: Tensor) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *inputs: Any, **kwargs: Any) -> Any:
        tracer = _tracer_of(inputs, kwargs)
        if tracer is None:
            raise ModelError(f"{type(self).__name__} is called on symbolic tensors while "
                             "tracing; to run it on arrays use cnncompiler.compile(model)")
        tracer.scope.append(getattr(self, "_trace_name", ""))
        try:
            return self.forward(*inputs, **kwargs)
        finally:
            tracer.scope.pop()

    def to_graph(self, input_shape: Sequence[int | str] | Mapping[str, Sequence] | None = None,
                 *, name: str | None = None, with_weights: bool = True, seed: int = 0) -> Graph:
        """Trace ``forward`` into a typed, verified Graph.

        ``input_shape`` is the full input shape with the batch first (``("N", 3, 224, 224)``),
        or a dict ``{input_name: shape}`` for a multi-input ``forward(**inputs)``. Without
        weights (``with_weights=False``) the graph still has every shape: enough for
        ``summary``. Parameters without values are initialised from ``seed`` first.
        """
        shape = input_shape if input_shape is not None else self.input_shape
        if shape is None:
            raise ModelError(f"{type(self).__name__} has no input_shape; pass "
                             "to_graph(input_shape=(N, C, H, W))")
        params = list(self.named_parameters())
        if with_weights and any(p.data is None for _, p in params):
            self.init_parameters(seed)
        for pname, p in params:
            p.name = pname
        for path, m in self.named_modules():
            object.__setattr__(m, "_trace_name", path.rsplit(".", 1)[-1] if path else "")
        tracer = Tracer(name or self.name or type(self).__name__.lower(), with_weights)
        if isinstance(shape, Mapping):
            inputs = {k: Tensor(tracer, tracer.builder.input(k, tuple(s)))
                      for k, s in shape.items()}
            result = self(**inputs)
        else:
            result = self(Tensor(tracer, tracer.builder.input("x", tuple(shape))))
        outs = result if isinstance(result, (tuple, list)) else (result,)
        if not all(isinstance(o, Tensor) for o in outs):
            raise ModelError(f"{type(self).__name__}.forward must return Tensors")
        return tracer.builder.build([o.value for o in outs])

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        children = [f"  ({n}): " + repr(m).replace("\n", "\n  ") for n, m in self._modules.items()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        return head + ("\n" + "\n".join(children) + "\n)" if children else ")")


def _tracer_of(inputs: Sequence[Any], kwargs: Mapping[str, Any]) -> Tracer | None:
    for x in list(inputs) + list(kwargs.values()):
        if isinstance(x, Tensor):
            return x.tracer
        if isinstance(x, (list, tuple)):
            found = _tracer_of(x, {})
            if found:
                return found
    return None


class Sequential(Module):
    """Layers applied in order. ``Sequential(a, b)`` names them "0", "1"; pass a dict (or
    keyword arguments) to name them: ``Sequential(conv1=Conv2d(...), relu1=ReLU())``."""

    def __init__(self, *layers: Module | Mapping[str, Module], **named: Module):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], Mapping):
            items = list(layers[0].items())
        else:
            items = [(str(i), m) for i, m in enumerate(layers)]
        for name, m in items + list(named.items()):
            if not isinstance(m, Module):
                raise ModelError(f"Sequential item {name!r} is a {type(m).__name__}, "
                                 "not a Module")
            self.add_module(name, m)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __len__(self) -> int:
        return len(self._modules)

    def __getitem__(self, i: int | str) -> Module:
        if isinstance(i, str):
            return self._modules[i]
        return list(self._modules.values())[i]

    def forward(self, x: Tensor) -> Tensor:
        for m in self._modules.values():
            x = m(x)
        return x
