"""Reverse-mode automatic differentiation over the Graph IR.

:func:`gradients` appends the backward pass of a graph to a :class:`GraphBuilder`, node by
node in reverse order, through each op's ``grad`` rule (defined with the op, see
:mod:`cnncompiler.ops.gradients`); where a value fans out, its gradients are summed. The
result is ordinary IR: the same passes fuse it and the same backends compile it.
"""

from cnncompiler.autodiff.backward import gradients, rebuild

__all__ = ["gradients", "rebuild"]
