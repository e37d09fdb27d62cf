"""The lecture's losses, written as ops on (model output, target) -> a one-element loss.

Targets arrive as float tensors of the output's shape: one-hot rows for the classification
losses (the trainer encodes class indices), values for the regression ones.
"""

from __future__ import annotations

from collections.abc import Callable

from cnncompiler.errors import ModelError
from cnncompiler.ir.builder import GraphBuilder
from cnncompiler.ir.graph import Value


def _mean_over_batch(b: GraphBuilder, per_example: Value) -> Value:
    return b.op("ReduceMean", per_example, keepdims=False, name="loss")


def cross_entropy(b: GraphBuilder, logits: Value, target: Value) -> Value:
    """Softmax log-loss, -mean(sum(t * log_softmax(z))): LogSoftmax keeps it stable for
    large logits (no exp overflow, no log(0))."""
    log_p = b.op("LogSoftmax", logits, axis=1)
    picked = b.op("ReduceSum", b.op("Mul", target, log_p), axes=(1,), keepdims=False)
    return _mean_over_batch(b, b.op("Neg", picked))


def nll(b: GraphBuilder, log_probs: Value, target: Value) -> Value:
    """Negative log-likelihood of a model that already outputs log-probabilities."""
    picked = b.op("ReduceSum", b.op("Mul", target, log_probs), axes=(1,), keepdims=False)
    return _mean_over_batch(b, b.op("Neg", picked))


def mse(b: GraphBuilder, y: Value, target: Value) -> Value:
    diff = b.op("Sub", y, target)
    return b.op("ReduceMean", b.op("Mul", diff, diff), keepdims=False, name="loss")


def rmse(b: GraphBuilder, y: Value, target: Value) -> Value:
    return b.op("Sqrt", mse(b, y, target), name="rmse")


LOSSES: dict[str, Callable[[GraphBuilder, Value, Value], Value]] = {
    "cross_entropy": cross_entropy, "nll": nll, "mse": mse, "rmse": rmse}
#: losses whose targets are class indices (one-hot encoded by the trainer)
CLASSIFICATION = ("cross_entropy", "nll")


def get_loss(name: str):
    try:
        return LOSSES[name]
    except KeyError:
        raise ModelError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}") from None
