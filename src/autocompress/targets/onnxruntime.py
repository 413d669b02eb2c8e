"""ONNX Runtime target: a self-contained ``.onnx`` file run on ONNX Runtime's CPU provider.

The ONNX code itself stays in :mod:`autocompress.export` (export, QDQ, sessions, the interleaved
timer); this module is the target's face over it, so the search, ``check`` and the CLI reach ONNX
Runtime only through :func:`autocompress.targets.get`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from autocompress.targets.base import LatencyStats, Runner, Target


class OnnxRuntimeTarget(Target):
    name = "onnxruntime"
    suffix = ".onnx"
    package = "onnxruntime"
    label = "ONNX Runtime"

    def export(self, model: nn.Module, example: torch.Tensor, path: str | Path, *, quantized: bool = False,
               calibration: torch.Tensor | None = None, packed: bool = True, **opts: Any) -> Path:
        """fp32 through :func:`~autocompress.export.export_onnx`; ``quantized``: the model's own
        quantization wrappers written as a QDQ graph (their calibrated ranges, not new ones).
        ``packed``: sparse / shared / low-bit weights stored compactly, decoded by stock ONNX
        operators at load (:mod:`autocompress.export.packed`; exact, dense weights unchanged)."""
        if quantized:
            from autocompress.export.qdq import export_quantized
            path = Path(export_quantized(model, example, path, **opts))
        else:
            from autocompress.export import export_onnx
            path = Path(export_onnx(model, example, path, **opts))
        if packed:
            from autocompress.export.packed import pack_onnx
            pack_onnx(path)
        return path

    def load(self, path: str | Path, threads: int = 1) -> Runner:
        # each input cast to the dtype the graph declares: a language model's int64 token ids
        # given as float (the search's synthetic timing batch) would be refused by ONNX Runtime
        from autocompress.export import run, session
        sess = session(path, threads)
        return lambda x: run(sess, x)

    def time(self, paths: Mapping[str, str | Path], input_shape: tuple[int, ...],
             batch_sizes: Iterable[int] = (1, 64), threads: int = 1, warmup: int = 10,
             runs: int = 100) -> dict[str, dict[int, LatencyStats]]:
        # the project's ONNX Runtime timer (same interleaving, ORT sessions called directly)
        from autocompress.export import measure_latency
        lat = measure_latency(paths, tuple(input_shape), tuple(batch_sizes), threads=threads,
                              warmup=warmup, runs=runs)
        return {k: {b: LatencyStats(s.median_ms, s.p90_ms, s.runs) for b, s in v.items()}
                for k, v in lat.items()}
