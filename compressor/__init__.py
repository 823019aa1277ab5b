"""compressor: a model-compression toolchain for ONNX models (prune, share, quantize, pack).

The Python API (compressor/api.py): ``compressor.run``, ``compressor.pack``, ``compressor.unpack``,
``compressor.batch``; errors are compressor.errors' CompressorError and its subclasses.
"""

from .api import batch, pack, run, unpack
from .errors import CompressorError, GateFailed, UsageError
from .version import __version__

__all__ = ["CompressorError", "GateFailed", "UsageError", "__version__", "batch", "pack", "run", "unpack"]
