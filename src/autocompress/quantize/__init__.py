"""Quantization: calibrated static int8, dynamic int8, int4 weight-only, fp16, QAT down to 2 bits,
and automatic mixed precision (its latency guard, which runs ONNX Runtime, is
:mod:`autocompress.targets.ort_guard`). Every result exports to ONNX Runtime through
:func:`autocompress.targets.onnxruntime.export_quantized` (parity-checked) and the PyTorch model simulates what it computes.

``torch.ao.quantization`` is not used (deprecated upstream)."""

from autocompress.quantize.fake_quant import (ActQuantizer, QuantWrapper, WeightQuantizer, fake_quant,
                                              round_ste)
from autocompress.quantize.graph import fold_batchnorm
from autocompress.quantize.observers import RANGE_ESTIMATORS, CalibrationError, Observer
from autocompress.quantize.mixed import MixedPrecisionConfig, MixedResult, Precision, mixed_precision_
from autocompress.quantize.qat import QATConfig, qat_
from autocompress.quantize.ptq import (DynamicInt8Config, Fp16Config, Int4WeightOnlyConfig, PTQConfig,
                                       float_view, quantize_)
from autocompress.quantize.report import LayerReport, QuantReport, quant_report

__all__ = ["ActQuantizer", "CalibrationError", "DynamicInt8Config", "Fp16Config", "Int4WeightOnlyConfig",
           "LayerReport", "MixedPrecisionConfig", "MixedResult", "Observer", "PTQConfig",
           "Precision", "QATConfig", "QuantReport", "QuantWrapper", "RANGE_ESTIMATORS", "WeightQuantizer",
           "fake_quant", "float_view", "fold_batchnorm",
           "mixed_precision_", "qat_", "quant_report", "quantize_", "round_ste"]
