"""Runtime-specific code: ONNX export and ONNX Runtime (the deployment runtime)."""

from autocompress.export.onnx import (ExportError, LatencyStats, ParityError, ParityReport,
                                      check_parity, export_onnx, measure_latency, onnx_bytes,
                                      ort_accuracy, run, session)

__all__ = ["ExportError", "LatencyStats", "ParityError", "ParityReport", "check_parity",
           "export_onnx", "measure_latency", "onnx_bytes", "ort_accuracy", "run", "session"]
