"""The project's error types.

Every error a user can trigger is a subclass of :class:`CnnCompilerError` and names
what is wrong in user terms (the node, the op, the attribute, expected vs got), never
an internal invariant. Catch ``CnnCompilerError`` to catch them all.
"""

from __future__ import annotations


class CnnCompilerError(Exception):
    """Base class of every error cnncompiler raises on bad input."""


class NodeError(CnnCompilerError):
    """An error attached to one node of a graph: the message names the node and its op."""

    def __init__(self, message: str, node: str | None = None, op: str | None = None):
        self.node = node
        self.op = op
        self.detail = message
        where = ""
        if node is not None or op is not None:
            where = f"node '{node}' ({op}): " if node is not None else f"({op}): "
        super().__init__(where + message)


class ShapeError(NodeError):
    """Shapes that cannot work: impossible conv output size, rank or channel mismatch."""


class AttributeValueError(NodeError):
    """A missing, unknown or out-of-range op attribute."""


class GraphError(CnnCompilerError):
    """A graph that breaks an IR invariant (reported by ``Graph.verify``)."""


class InputError(CnnCompilerError):
    """Arrays passed to a compiled model that do not match its inputs."""


class UnsupportedError(CnnCompilerError):
    """Something cnncompiler cannot compile (an op a backend lacks, an unknown op)."""


class BackendUnavailableError(CnnCompilerError):
    """A backend that cannot run on this machine; the message says why."""


class ModelError(CnnCompilerError):
    """A model description that cannot be turned into a graph (DSL misuse, bad weights file)."""


class FrontendError(ModelError):
    """A model file that cannot be imported: malformed, invalid, unsafe or inconsistent."""
