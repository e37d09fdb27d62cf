"""ONNX front end: import ONNX models as Graph IR (``load``) and export graphs (``save``)."""

from cnncompiler.frontends.onnx.importer import load

__all__ = ["load"]
