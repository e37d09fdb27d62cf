"""ONNX front end: import ONNX models as Graph IR (``load``) and export graphs (``save``,
``to_onnx``)."""

from cnncompiler.frontends.onnx.exporter import save, to_onnx
from cnncompiler.frontends.onnx.importer import load

__all__ = ["load", "save", "to_onnx"]
