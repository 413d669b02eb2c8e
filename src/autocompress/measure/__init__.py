"""Measurement used by every feature: accuracy, counts, sizes, MACs, ONNX Runtime latency."""

from autocompress.measure.core import (Measurement, compare, count_macs, count_nonzero,
                                       count_params, fp32_bytes, measure, zipped_bytes)

__all__ = ["Measurement", "compare", "count_macs", "count_nonzero", "count_params", "fp32_bytes",
           "measure", "zipped_bytes"]
