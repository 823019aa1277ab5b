"""compressor: a model-compression toolchain for ONNX models (prune, share, quantize, pack)."""

__version__ = "0.1.0"
