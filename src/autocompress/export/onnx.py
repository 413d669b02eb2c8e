"""ONNX export, ONNX Runtime sessions, parity checks and interleaved latency measurement.

This package (``autocompress.export``) is the only place that imports ``onnx`` / ``onnxruntime``:
everything runtime-specific lives here so the techniques stay framework-side.

Models take what they take: one tensor, a tuple of tensors, or a dict of keyword tensors (token ids +
attention mask); integer inputs stay int64. Whatever they return (tensor, tuple, dict, ModelOutput)
the exported graph has one output, the logits chosen by :func:`autocompress.outputs.pick_output`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import statistics
import time
import warnings
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from autocompress.export.inputs import (Inputs, as_args, fixed_batch_io, input_names, ort_feed,
                                        synthetic_feed, with_picked_output)
from autocompress.outputs import pick_output
from autocompress.runtime_results import LatencyStats, ParityError, ParityReport  # noqa: F401 - re-exported

log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """The model could not be exported to ONNX; the message names the exporter's complaint."""


def export_onnx(model: nn.Module, example: Inputs, path: str | Path, *,
                dynamic_batch: bool = True, opset: int = 18, exporter: str = "auto",
                output_key: str = "logits") -> Path:
    """Export ``model`` to a single self-contained ONNX file (weights embedded, no ``.onnx.data``).

    ``example``: a tensor, a tuple of tensors or a dict of keyword tensors (their names become the
    graph's input names). ``output_key``: which entry of a dict / ModelOutput is the output.
    ``exporter``: ``"dynamo"`` (torch's default since 2.9), ``"torchscript"`` (the legacy exporter,
    still the most robust on RNNs), or ``"auto"``: dynamo first, falling back on failure, including
    when ``dynamic_batch=True`` but the graph came out fixed at one batch size (recurrent layers).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    order = {"auto": ("dynamo", "torchscript"), "dynamo": ("dynamo",),
             "torchscript": ("torchscript",)}.get(exporter)
    if order is None:
        raise ValueError(f"exporter must be 'auto', 'dynamo' or 'torchscript', got {exporter!r}")
    errors = []
    declared = getattr(model, "output_names", None)     # a converted file's several outputs stay
    wrapped = model if isinstance(declared, list) and len(declared) > 1 else with_picked_output(model, example, output_key)
    args, names = as_args(example), input_names(example)
    for kind in order:
        try:
            _export(wrapped, args, names, path, kind, dynamic_batch, opset)
            onnx.checker.check_model(str(path))
            fixed = fixed_batch_io(onnx.load(str(path), load_external_data=False)) if dynamic_batch else []
            if fixed:
                raise ExportError(f"dynamic_batch=True but the graph's batch dimension is fixed for {fixed}")
            return path
        except Exception as e:  # noqa: BLE001 - try the next exporter, report all at the end
            errors.append(f"{kind}: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
            log.debug("%s exporter failed on %s", kind, type(model).__name__, exc_info=True)
    raise ExportError(f"cannot export {type(model).__name__} to ONNX: " + " | ".join(errors))


def _io_names(model: nn.Module) -> tuple[list[str], list[str]]:
    """A model converted from a file (``autocompress.frontends``) keeps the file's input/output
    names, so the compressed ONNX drops in where the original was; other models get input/output.
    torch's exporters refuse names that are not identifiers (Keras writes outputs such as '71')."""
    def names(attr: str, default: str) -> list[str]:
        v = getattr(model, attr, None)
        ok = isinstance(v, list) and v and all(isinstance(s, str) and s.isidentifier() for s in v)
        return list(v) if ok else [default]
    return names("input_names", "input")[:1], names("output_names", "output")


def _export(model: nn.Module, args: tuple, names: list[str], path: Path, kind: str, dynamic_batch: bool,
            opset: int) -> None:
    ins, outs = _io_names(model)
    if names == ["input"]:
        names = ins            # one tensor in: the name a converted model's file gave it
    sink = io.StringIO()
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(sink):
        warnings.simplefilter("ignore")
        if kind == "dynamo":
            if dynamic_batch:
                # torch.export specialises every size-1 dimension to the constant 1 (its "0/1
                # specialisation"), so a batch-1 example gives a graph fixed at batch 1 for models
                # whose batch dimension meets a reshape or attention; trace at batch 2 instead.
                args = tuple(_at_batch_two(a) for a in args)
            batch = torch.export.Dim("batch", min=1, max=1 << 16)
            shapes = tuple({0: batch} for _ in args) if dynamic_batch else None
            prog = torch.onnx.export(model, args, dynamo=True, dynamic_shapes=shapes,
                                     input_names=names, output_names=outs,
                                     opset_version=opset, verbose=False, optimize=True)
            # save() with external_data=False: one self-contained file (deployable as is)
            prog.save(str(path), external_data=False)
            extra = Path(str(path) + ".data")
            if extra.exists():
                extra.unlink()
        else:
            axes = {n: {0: "batch"} for n in [*names, *outs]} if dynamic_batch else None
            torch.onnx.export(model, args, str(path), dynamo=False, dynamic_axes=axes,
                              input_names=names, output_names=outs,
                              opset_version=opset)


def _at_batch_two(a):
    if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == 1:
        return a.expand(2, *a.shape[1:]).clone()
    return a


def onnx_bytes(path: str | Path) -> int:
    """Size of the deployable file (self-contained, so the file is the whole model)."""
    return Path(path).stat().st_size


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


def session(path: str | Path, threads: int = 1) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


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


def _call(model: nn.Module, x: Inputs):
    return model(**x) if isinstance(x, dict) else model(*as_args(x))


def check_parity(model: nn.Module, path: str | Path, inputs: Inputs, *, atol: float = 1e-3,
                 min_agreement: float = 1.0) -> ParityReport:
    """Compare PyTorch and ONNX Runtime outputs on real ``inputs``; raise :class:`ParityError`
    if the largest absolute difference exceeds ``atol`` or top-1 agreement is below ``min_agreement``."""
    model.eval()
    with torch.no_grad():
        ref = pick_output(_call(model, inputs)).numpy()
    got = run(session(path), inputs)
    if got.shape != ref.shape:
        raise ParityError(f"{path}: ONNX output shape {got.shape} != PyTorch {ref.shape}")
    diff = float(np.abs(got - ref).max())
    agree = float((got.argmax(-1) == ref.argmax(-1)).mean()) if ref.ndim > 1 else 1.0
    rep = ParityReport(diff, agree, int(ref.shape[0]))
    if not np.isfinite(diff) or diff > atol or agree < min_agreement:
        raise ParityError(f"{path}: ONNX Runtime disagrees with PyTorch: max |diff| {diff:.3g} "
                          f"(tolerance {atol:.3g}), top-1 agreement {agree:.2%} "
                          f"(required {min_agreement:.2%}) on {rep.samples} inputs")
    return rep


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
        t_start = time.perf_counter()
        i = 0
        while i < runs or time.perf_counter() - t_start < min_time_s:
            for k, s in sessions.items():
                t0 = time.perf_counter()
                s.run(None, feeds[k])
                times[k].append((time.perf_counter() - t0) * 1e3)
            i += 1
        for k, ts in times.items():
            ts.sort()
            out[k][b] = LatencyStats(statistics.median(ts), ts[int(0.9 * (len(ts) - 1))], len(ts))
    return out
