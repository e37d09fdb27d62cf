"""Graph IR: typed values, nodes and graphs (see DESIGN.md, "Graph IR")."""

from cnncompiler.ir.builder import GraphBuilder
from cnncompiler.ir.graph import Graph, Node, Value, ValueKind
from cnncompiler.ir.types import Dim, DType, TensorType

__all__ = ["Dim", "DType", "Graph", "GraphBuilder", "Node", "TensorType", "Value", "ValueKind"]
