"""Measurement used by every feature: accuracy, counts, sizes, MACs, deployed-file latency."""

from autocompress.measure.core import (Measurement, compare, count_macs, count_nonzero,
                                       count_params, fp32_bytes, measure, upgraded, zipped_bytes)

__all__ = ["Measurement", "compare", "count_macs", "count_nonzero", "count_params", "fp32_bytes",
           "measure", "upgraded", "zipped_bytes"]
