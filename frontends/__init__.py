"""Front ends: outside model formats (ONNX) to Graph IR and back."""
