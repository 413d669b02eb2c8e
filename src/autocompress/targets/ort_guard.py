"""The latency guard: a quantized model never ships slower than fp32 on ONNX Runtime.

``latency_guard_`` exports the quantized model and fp32, measures both interleaved on ONNX Runtime
and, when quantized is slower, returns layers to fp32 one at a time (keeping only changes that
measure faster), down to the whole model: a latency goal never ships a slower configuration.
It lives beside the ONNX Runtime target, not in ``quantize/``, because it runs the runtime: the
techniques stay runtime-free.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from autocompress.export.onnx import export_onnx
from autocompress.targets.onnxruntime import export_quantized, measure_latency
from autocompress.quantize.ptq import float_view, wrappers_of


@dataclass
class LatencyReport:
    fp32_ms: dict[int, float]
    quantized_ms: dict[int, float]     # before any fallback
    chosen_ms: dict[int, float]        # what ships
    fallbacks: list[str]               # layers returned to fp32 for speed
    whole_model_fp32: bool

    def ratio(self, b: int) -> float:
        return self.chosen_ms[b] / self.fp32_ms[b]


def compare_latency(model: nn.Module, example: torch.Tensor, batch_sizes: tuple[int, ...] = (1, 64),
                    runs: int = 100, fp32_path: str | Path | None = None) -> dict[str, dict[int, float]]:
    """Median ONNX Runtime latency (ms) of the exported quantized model and of fp32, interleaved.
    ``fp32_path`` reuses an fp32 export (the float view of ``model``) instead of exporting again."""
    with tempfile.TemporaryDirectory() as tmp:
        fp = fp32_path or export_onnx(float_view(model), example, Path(tmp) / "fp32.onnx")
        qp = export_quantized(model, example, Path(tmp) / "quant.onnx")
        lat = measure_latency({"fp32": fp, "quant": qp}, tuple(example.shape[1:]), batch_sizes, runs=runs)
    return {k: {b: s.median_ms for b, s in v.items()} for k, v in lat.items()}


def latency_guard_(model: nn.Module, example: torch.Tensor, batch_sizes: tuple[int, ...] = (1, 64),
                   runs: int = 100, margin: float = 0.02) -> LatencyReport:
    """Never ship slower than fp32: if the exported quantized model is slower (mean latency ratio
    over ``batch_sizes``), return layers to fp32 one at a time, keeping only changes measured at
    least ``margin`` faster; if it is still slower, the whole model goes back to fp32."""

    def score(lat: dict[str, dict[int, float]]) -> float:   # mean quant/fp32 ratio (same run)
        return sum(lat["quant"][b] / lat["fp32"][b] for b in batch_sizes) / len(batch_sizes)

    ws = wrappers_of(model)
    with tempfile.TemporaryDirectory() as tmp:
        fp = export_onnx(float_view(model), example, Path(tmp) / "fp32.onnx")
        lat = compare_latency(model, example, batch_sizes, runs, fp)
        first, best, ref = lat["quant"], score(lat), lat["fp32"]
        chosen = dict(first)
        fallbacks: list[str] = []
        for name, w in ws.items():
            if best <= 1 - margin:
                break
            if w.mode == "fp32" or sum(x.mode != "fp32" for x in ws.values()) <= 1:
                continue
            saved = (w.mode, w.in_q.enabled, w.out_q.enabled)
            w.mode, w.in_q.enabled, w.out_q.enabled = "fp32", False, False
            trial = compare_latency(model, example, batch_sizes, runs, fp)
            if score(trial) < best * (1 - margin):
                best, chosen, ref = score(trial), dict(trial["quant"]), trial["fp32"]
                fallbacks.append(name)
                w.reason = "kept float32: quantized measured slower on ONNX Runtime"
            else:
                w.mode, w.in_q.enabled, w.out_q.enabled = saved
    whole = best > 1.0
    if whole:   # still slower than fp32: ship fp32
        for w in ws.values():
            w.mode, w.in_q.enabled, w.out_q.enabled = "fp32", False, False
            w.reason = "kept float32: the quantized model measured slower than fp32"
        chosen = dict(ref)
    return LatencyReport(ref, first, chosen, fallbacks, whole)
