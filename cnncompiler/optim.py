"""Optimisers as ops in the training-step graph (the lecture's update rules).

Each optimiser writes its update with the graph builder: the new parameter and new slot
values (momentum, squared-gradient averages) are outputs of the step graph, which the fusion
pass turns into one elementwise kernel per parameter. Hyper-parameters that change during
training (the learning rate, Adam's bias corrections) are scalar *inputs* of the step
graph, so a learning-rate schedule never recompiles. Updates follow PyTorch's conventions
(L2 weight decay added to the gradient; momentum buffer v = mu v + g; Adam's bias
corrections), so results compare one to one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from cnncompiler.errors import ModelError
from cnncompiler.ir.builder import GraphBuilder
from cnncompiler.ir.graph import Value


def _check(name: str, value: float, low: float, high: float = math.inf) -> None:
    if not (low <= value < high) or math.isnan(value):
        raise ModelError(f"{name} = {value} is outside [{low}, {high})")


@dataclass
class Optimizer:
    lr: float = 0.01
    weight_decay: float = 0.0
    #: per-parameter state tensors, zero at the start
    slots: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        _check("lr", self.lr, 0.0)
        _check("weight_decay", self.weight_decay, 0.0)

    def hyper(self, step: int) -> dict[str, float]:
        """Scalar inputs of the step graph for optimiser step ``step`` (1-based)."""
        return {"lr": self.lr}

    def slot_names(self) -> tuple[str, ...]:
        return self.slots

    def update(self, b: GraphBuilder, w: Value, g: Value, slots: dict[str, Value],
               hyper: dict[str, Value]) -> tuple[Value, dict[str, Value]]:
        """(new parameter, new slots) for parameter ``w`` with gradient ``g``."""
        raise NotImplementedError

    def _decayed(self, b: GraphBuilder, w: Value, g: Value) -> Value:
        if not self.weight_decay:
            return g
        return b.op("Add", g, b.op("Mul", w, _const(b, self.weight_decay, w)))


def _const(b: GraphBuilder, value: float, like: Value) -> Value:
    from cnncompiler.ops.gradients import scalar

    return scalar(b, value, like, "opt")


@dataclass
class SGD(Optimizer):
    """w -= lr (g + wd w); with momentum mu: v = mu v + g, w -= lr v (Nesterov:
    w -= lr (g + mu v))."""

    momentum: float = 0.0
    nesterov: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _check("momentum", self.momentum, 0.0, 1.0)
        if self.nesterov and not self.momentum:
            raise ModelError("Nesterov momentum needs momentum > 0")

    def slot_names(self) -> tuple[str, ...]:
        return ("velocity",) if self.momentum else ()

    def update(self, b, w, g, slots, hyper):
        g = self._decayed(b, w, g)
        new = {}
        step = g
        if self.momentum:
            v = b.op("Add", b.op("Mul", slots["velocity"], _const(b, self.momentum, w)), g)
            new["velocity"] = v
            step = (b.op("Add", g, b.op("Mul", v, _const(b, self.momentum, w)))
                    if self.nesterov else v)
        return b.op("Sub", w, b.op("Mul", step, hyper["lr"])), new


@dataclass
class RMSProp(Optimizer):
    """s = alpha s + (1 - alpha) g^2; w -= lr g / (sqrt(s) + eps)."""

    alpha: float = 0.99
    eps: float = 1e-8
    slots: ClassVar[tuple[str, ...]] = ("square_avg",)

    def update(self, b, w, g, slots, hyper):
        g = self._decayed(b, w, g)
        s = b.op("Add", b.op("Mul", slots["square_avg"], _const(b, self.alpha, w)),
                 b.op("Mul", b.op("Mul", g, g), _const(b, 1 - self.alpha, w)))
        denom = b.op("Add", b.op("Sqrt", s), _const(b, self.eps, w))
        return b.op("Sub", w, b.op("Mul", b.op("Div", g, denom), hyper["lr"])), \
            {"square_avg": s}


@dataclass
class Adagrad(Optimizer):
    """s += g^2; w -= lr g / (sqrt(s) + eps)."""

    eps: float = 1e-10
    slots: ClassVar[tuple[str, ...]] = ("sum_sq",)

    def update(self, b, w, g, slots, hyper):
        g = self._decayed(b, w, g)
        s = b.op("Add", slots["sum_sq"], b.op("Mul", g, g))
        denom = b.op("Add", b.op("Sqrt", s), _const(b, self.eps, w))
        return b.op("Sub", w, b.op("Mul", b.op("Div", g, denom), hyper["lr"])), {"sum_sq": s}


@dataclass
class Adam(Optimizer):
    """m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    w -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    slots: ClassVar[tuple[str, ...]] = ("exp_avg", "exp_avg_sq")

    def __post_init__(self) -> None:
        super().__post_init__()
        for beta in self.betas:
            _check("beta", beta, 0.0, 1.0)

    def hyper(self, step: int) -> dict[str, float]:
        b1, b2 = self.betas
        return {"lr": self.lr / (1 - b1 ** step), "rsqrt_c2": 1 / math.sqrt(1 - b2 ** step)}

    def update(self, b, w, g, slots, hyper):
        b1, b2 = self.betas
        g = self._decayed(b, w, g)
        m = b.op("Add", b.op("Mul", slots["exp_avg"], _const(b, b1, w)),
                 b.op("Mul", g, _const(b, 1 - b1, w)))
        v = b.op("Add", b.op("Mul", slots["exp_avg_sq"], _const(b, b2, w)),
                 b.op("Mul", b.op("Mul", g, g), _const(b, 1 - b2, w)))
        denom = b.op("Add", b.op("Mul", b.op("Sqrt", v), hyper["rsqrt_c2"]),
                     _const(b, self.eps, w))
        new_w = b.op("Sub", w, b.op("Mul", b.op("Div", m, denom), hyper["lr"]))
        return new_w, {"exp_avg": m, "exp_avg_sq": v}


OPTIMIZERS = {"sgd": SGD, "rmsprop": RMSProp, "adagrad": Adagrad, "adam": Adam}


# ---------------------------------------------------------------------- schedules
class StepLR:
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs (call
    :meth:`step` once per epoch)."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1):
        if step_size < 1:
            raise ModelError(f"step_size must be >= 1, got {step_size}")
        self.optimizer, self.step_size, self.gamma = optimizer, step_size, gamma
        self.epoch = 0

    def step(self, metric: float | None = None) -> float:
        self.epoch += 1
        if self.epoch % self.step_size == 0:
            self.optimizer.lr *= self.gamma
        return self.optimizer.lr


class ReduceLROnPlateau:
    """AlexNet's recipe: divide the learning rate by 10 (``factor``) when the watched metric
    (validation accuracy, ``mode="max"``; a loss, ``mode="min"``) has not improved for
    ``patience`` epochs."""

    def __init__(self, optimizer: Optimizer, mode: str = "max", factor: float = 0.1,
                 patience: int = 2, min_lr: float = 0.0):
        if mode not in ("max", "min"):
            raise ModelError(f"mode must be 'max' or 'min', got {mode!r}")
        self.optimizer, self.mode, self.factor = optimizer, mode, factor
        self.patience, self.min_lr = patience, min_lr
        self.best: float | None = None
        self.stale = 0

    def step(self, metric: float) -> float:
        better = (self.best is None or (metric > self.best if self.mode == "max"
                                        else metric < self.best))
        if better:
            self.best, self.stale = metric, 0
        else:
            self.stale += 1
            if self.stale > self.patience:
                self.optimizer.lr = max(self.min_lr, self.optimizer.lr * self.factor)
                self.stale = 0
        return self.optimizer.lr
