"""Compiled training: losses, the training-step graph and the trainer (see ``trainer``)."""

from cnncompiler.training.losses import LOSSES
from cnncompiler.training.trainer import Trainer, compile_training

__all__ = ["LOSSES", "Trainer", "compile_training"]
