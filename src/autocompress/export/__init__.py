"""ONNX graphs built from PyTorch models (``onnx`` only): plain export, quantized QDQ export and
packed weights. Running them is the ONNX Runtime target's (:mod:`autocompress.targets.onnxruntime`)."""

from autocompress.export.onnx import ExportError, ParityError, export_onnx, onnx_bytes
from autocompress.runtime_results import LatencyStats, ParityReport

__all__ = ["ExportError", "LatencyStats", "ParityError", "ParityReport", "export_onnx", "onnx_bytes"]
