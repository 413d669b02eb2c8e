"""ONNX Runtime target: a self-contained ``.onnx`` file run on ONNX Runtime's CPU provider.

The only module that imports ``onnxruntime``: sessions, running a file, its accuracy, parity with
PyTorch (plain and quantized exports), interleaved latency, ONNX Runtime's own graph rewrites and
quantizers (the peers benchmarks compare against). The graphs themselves are built in
:mod:`autocompress.export` (``onnx`` only); the search, ``check`` and the CLI reach ONNX Runtime
through :func:`autocompress.targets.get`.

Models take what they take: one tensor, a tuple of tensors, or a dict of keyword tensors (token ids +
attention mask); each input is fed with the dtype the graph declares (int64 token ids stay int64).
"""

from __future__ import annotations

import statistics
import time as _time
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from autocompress.export.inputs import Inputs, ort_feed, synthetic_feed
from autocompress.outputs import call_model, pick_output
from autocompress.targets.base import LatencyStats, ParityError, ParityReport, Runner, Target


class OnnxRuntimeTarget(Target):
    name = "onnxruntime"
    suffix = ".onnx"
    package = "onnxruntime"
    label = "ONNX Runtime"
    # the TorchScript exporter writes LeNet-5 in 0.02 s against dynamo's 1 s: the same kernels run
    probe_opts = {"exporter": "torchscript", "packed": False}

    def export(self, model: nn.Module, example: torch.Tensor, path: str | Path, *, quantized: bool = False,
               calibration: torch.Tensor | None = None, packed: bool = True, **opts: Any) -> Path:
        """fp32 through :func:`~autocompress.export.export_onnx`; ``quantized``: the model's own
        quantization wrappers written as a QDQ graph (their calibrated ranges, not new ones),
        verified against the simulation. ``packed``: sparse / shared / low-bit weights stored
        compactly, decoded by stock ONNX operators at load (:mod:`autocompress.export.packed`;
        exact, dense weights unchanged)."""
        if quantized:
            path = export_quantized(model, example, path, **opts)
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
        sess = session(path, threads)
        return lambda x: run(sess, x)

    def time(self, paths: Mapping[str, str | Path], input_shape: tuple[int, ...],
             batch_sizes: Iterable[int] = (1, 64), threads: int = 1, warmup: int = 10,
             runs: int = 100) -> dict[str, dict[int, LatencyStats]]:
        # the same interleaving, ORT sessions called directly with feeds of the graph's dtypes
        return measure_latency(paths, tuple(input_shape), tuple(batch_sizes), threads=threads,
                               warmup=warmup, runs=runs)


# -- sessions and runs -----------------------------------------------------------------------------

def session(path: str | Path | bytes, threads: int = 1) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), so,
                                providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, x: Inputs | np.ndarray) -> np.ndarray:
    """The graph's (first) output for ``x``: a tensor / array, a tuple, or a dict by input name;
    each input goes in with the dtype the graph declares (int64 token ids stay int64)."""
    return sess.run(None, ort_feed(sess, x))[0]


def ort_accuracy(path: str | Path, loader: Iterable, threads: int = 1) -> float:
    """Top-1 accuracy of the exported model on ONNX Runtime (the accuracy a deployment gets)."""
    sess = session(path, threads)
    correct = total = 0
    for x, y in loader:
        out = run(sess, x)
        correct += int((out.argmax(-1) == y.numpy()).sum())
        total += len(y)
    return correct / max(total, 1)


def optimize_basic(src: str | Path, dst: str | Path) -> Path:
    """Write ``src`` after ONNX Runtime's semantics-preserving rewrites (level "basic": constant
    folding, redundant-node removal, transposes pushed through element-wise ops and cancelled,
    Conv+Add/Mul and MatMul+Add fusions) as a standard-operator ONNX file ``dst``."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(dst)
    so.log_severity_level = 3
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    return Path(dst)


# -- parity --------------------------------------------------------------------------------------

def check_parity(model: nn.Module, path: str | Path, inputs: Inputs, *, atol: float = 1e-3,
                 min_agreement: float = 1.0) -> ParityReport:
    """Compare PyTorch and ONNX Runtime outputs on real ``inputs``; raise :class:`ParityError`
    if the largest absolute difference exceeds ``atol`` or top-1 agreement is below ``min_agreement``
    (the target's own comparison: one rule and one message for every runtime)."""
    return OnnxRuntimeTarget().parity(model, path, inputs, atol=atol, min_agreement=min_agreement)


def export_quantized(model: nn.Module, example: Inputs, path: str | Path, *, verify: bool = True,
                     verify_inputs: Inputs | None = None, **opts: Any) -> Path:
    """:func:`autocompress.export.qdq.export_quantized` (the QDQ graph with our calibrated scales),
    then, with ``verify``, its ONNX Runtime output on ``verify_inputs`` (default ``example``)
    compared with the PyTorch simulation (:func:`verify_quantized`)."""
    from autocompress.export.qdq import export_quantized as build
    path = Path(build(model, example, path, **opts))
    if verify:
        verify_quantized(model, path, example if verify_inputs is None else verify_inputs)
    return path


def verify_quantized(model: nn.Module, path: str | Path, inputs: Inputs) -> dict[str, float]:
    """Simulation vs runtime on ``inputs``: a wrong mapping shows up as large, widespread drift;
    rare one-step rounding differences (integer vs float accumulation) are tolerated."""
    with torch.no_grad():
        ref = pick_output(call_model(model, inputs)).numpy()     # tensor, tuple or ModelOutput: its logits
    got = run(session(path), inputs)
    if got.shape != ref.shape:
        raise ParityError(f"{path}: ONNX output shape {got.shape} != PyTorch {ref.shape}")
    diff = np.abs(got - ref)
    span = float(np.abs(ref).max()) + 1e-6
    rel = float(diff.max()) / span
    agree = float((got.argmax(-1) == ref.argmax(-1)).mean()) if ref.ndim > 1 else 1.0
    if not np.isfinite(rel) or rel > 0.05 or (ref.shape[0] >= 20 and agree < 0.95):
        raise ParityError(f"{path}: ONNX Runtime disagrees with the quantized PyTorch model: "
                          f"max |diff| {diff.max():.3g} ({rel:.1%} of the output range), top-1 agreement "
                          f"{agree:.1%} on {ref.shape[0]} inputs")
    return {"max_abs_diff": float(diff.max()), "relative": rel, "top1_agreement": agree}


# -- latency -------------------------------------------------------------------------------------

def measure_latency(models: Mapping[str, str | Path], input_shape: tuple[int, ...],
                    batch_sizes: Iterable[int] = (1, 64), threads: int = 1, warmup: int = 10,
                    runs: int = 100, min_time_s: float = 0.0) -> dict[str, dict[int, LatencyStats]]:
    """Median latency of each ONNX model on ONNX Runtime's CPU provider.

    Runs of the models *interleave* (A, B, A, B, ...) in one process, so a burst of load on a shared
    machine hits all of them alike and their ratio stays trustworthy.
    ``input_shape`` excludes the batch dimension.
    """
    sessions = {k: session(p, threads) for k, p in models.items()}
    out: dict[str, dict[int, LatencyStats]] = {k: {} for k in models}
    rng = np.random.default_rng(0)
    for b in batch_sizes:
        feeds = {k: synthetic_feed(s, b, input_shape, rng) for k, s in sessions.items()}
        for k, s in sessions.items():
            for _ in range(warmup):
                s.run(None, feeds[k])
        times: dict[str, list[float]] = {k: [] for k in sessions}
        t_start = _time.perf_counter()
        i = 0
        while i < runs or _time.perf_counter() - t_start < min_time_s:
            for k, s in sessions.items():
                t0 = _time.perf_counter()
                s.run(None, feeds[k])
                times[k].append((_time.perf_counter() - t0) * 1e3)
            i += 1
        for k, ts in times.items():
            ts.sort()
            out[k][b] = LatencyStats(statistics.median(ts), ts[int(0.9 * (len(ts) - 1))], len(ts))
    return out


# -- ONNX Runtime's own quantizers (the peers benchmarks compare against) -------------------------

def ort_quantize_static(src: str | Path, dst: str | Path, calibration: torch.Tensor | np.ndarray,
                        batch_size: int = 64, **kwargs: Any) -> Path:
    """``onnxruntime.quantization.quantize_static`` with its defaults (QDQ, MinMax, per-tensor int8),
    calibrated on the same samples we use; ``kwargs`` override its options."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    x = calibration.numpy() if isinstance(calibration, torch.Tensor) else np.asarray(calibration)
    name = onnx.load(str(src), load_external_data=False).graph.input[0].name

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{name: x[i:i + batch_size].astype(np.float32)} for i in range(0, len(x), batch_size)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(src), str(dst), _Reader(), **kwargs)
    return Path(dst)


def ort_quantize_dynamic(src: str | Path, dst: str | Path, **kwargs: Any) -> Path:
    """``onnxruntime.quantization.quantize_dynamic`` with its defaults."""
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(src), str(dst), **kwargs)
    return Path(dst)

