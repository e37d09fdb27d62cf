"""cnncompiler: a compiler for convolutional neural networks.

Describe a CNN in the DSL (:mod:`cnncompiler.nn`) or import it from ONNX, get a typed graph
IR with every shape inferred, and compile it for a backend::

    import cnncompiler
    cm = cnncompiler.compile(cnncompiler.zoo.get("resnet18"), backend="reference")
"""

from cnncompiler import errors, nn, optim, zoo
from cnncompiler.errors import CnnCompilerError
from cnncompiler.ir import DType, Graph, GraphBuilder, TensorType
from cnncompiler.runtime.api import CompiledModel, as_graph, compile
from cnncompiler.training import Trainer, compile_training

__version__ = "0.1.0"

__all__ = ["CnnCompilerError", "CompiledModel", "DType", "Graph", "GraphBuilder", "TensorType",
           "Trainer", "as_graph", "compile", "compile_training", "errors", "nn", "optim", "zoo"]
