"""ExecuTorch target: a ``.pte`` program with the XNNPACK delegate, run by ExecuTorch's runtime.

This is how phones run PyTorch models. fp32: ``torch.export`` -> ``to_edge_transform_and_lower``
with the XNNPACK partitioner -> ``.pte``. int8: the PT2E flow of torchao (``prepare_pt2e`` with
ExecuTorch's ``XNNPACKQuantizer``, per-channel symmetric weights, calibrated on real inputs,
``convert_pt2e``) before lowering, so XNNPACK runs int8 kernels. ``executorch`` and ``torchao`` are
imported only here, when a method runs (``pip install 'autocompress[executorch]'``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from autocompress.targets.base import Runner, Target, _np

log = logging.getLogger(__name__)

# The largest batch a .pte accepts: ExecuTorch plans its memory for the upper bound of the batch
# dimension. Lowering to XNNPACK narrows the exported range around the traced batch (traced at 2,
# 1..1024 became 2..15 with torch 2.13 / executorch 1.5.1), so we trace at TRACE_BATCH, which keeps
# the full upper bound; smaller batches still run (checked in the tests).
MAX_BATCH = 1024
TRACE_BATCH = 64


class ExportError(RuntimeError):
    """The model could not be lowered to an ExecuTorch program; the message names the step."""


class ExecuTorchTarget(Target):
    name = "executorch"
    suffix = ".pte"
    package = "executorch"
    label = "ExecuTorch (XNNPACK)"
    requantizes = True

    def export(self, model: nn.Module, example: torch.Tensor, path: str | Path, *, quantized: bool = False,
               calibration: torch.Tensor | None = None, max_batch: int = MAX_BATCH,
               input_ranges: Mapping[str, tuple[float, float]] | None = None, **opts: Any) -> Path:
        """Write ``path`` (.pte). ``quantized``: int8 XNNPACK (activation ranges observed on
        ``calibration``, default ``example``). ``input_ranges``: the caller's own calibrated input
        range per layer (module name -> (lo, hi)); used instead of the observed ones when the result
        is closer to the float model on ``calibration``. Batch sizes 1..``max_batch`` run."""
        if opts:
            raise TypeError(f"ExecuTorch export: unknown option(s) {sorted(opts)}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        model = model.eval()
        trace = example[:1].expand(min(TRACE_BATCH, max_batch), *example.shape[1:]).contiguous()
        shapes = ({0: torch.export.Dim("batch", min=1, max=max_batch)},)
        sink = io.StringIO()
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            step = "torch.export"
            try:
                if quantized:
                    step = "int8 quantization (PT2E, XNNPACKQuantizer)"
                    model = _quantize_pt2e(model, trace, shapes, example if calibration is None else calibration,
                                           input_ranges)
                    step = "torch.export"
                ep = torch.export.export(model, (trace,), dynamic_shapes=shapes)
                step = "lowering to XNNPACK"
                buf = _lower(ep)
            except Exception as e:  # noqa: BLE001 - one clear error naming the step and the model
                msg = str(e).splitlines()[0][:300] if str(e) else ""
                raise ExportError(f"cannot export {type(model).__name__} to ExecuTorch ({step}): "
                                  f"{type(e).__name__}: {msg}") from e
        path.write_bytes(buf)
        return path

    def load(self, path: str | Path, threads: int = 1) -> Runner:
        from executorch.runtime import Runtime

        _set_threads(threads)
        method = Runtime.get().load_program(Path(path)).load_method("forward")
        if method is None:
            raise ValueError(f"{path}: the ExecuTorch program has no 'forward' method")

        def run(x):
            return method.execute((torch.from_numpy(_np(x)),))[0].numpy()
        return run


def _quantize_pt2e(model: nn.Module, trace: torch.Tensor, shapes, calibration: torch.Tensor,
                   input_ranges: Mapping[str, tuple[float, float]] | None = None) -> nn.Module:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    graph = torch.export.export(model, (trace,), dynamic_shapes=shapes).module()
    prepared = prepare_pt2e(graph, quantizer)
    for chunk in calibration.split(256):   # observers see every calibration input
        prepared(chunk)
    ours = _with_ranges(copy.deepcopy(prepared), input_ranges) if input_ranges else None
    observed = convert_pt2e(prepared)
    if ours is None:
        return observed
    ours = convert_pt2e(ours)
    # keep whichever quantized graph is closer to the float model (output MSE on the calibration set)
    ref = model(calibration)
    err = {k: float(((g(calibration) - ref) ** 2).mean()) for k, g in (("observed", observed), ("ours", ours))}
    log.debug("int8 .pte output MSE vs float: %s", err)
    return ours if err["ours"] < err["observed"] else observed


def _with_ranges(prepared, ranges: Mapping[str, tuple[float, float]]):
    """Set the observer in front of each named conv/linear to the caller's range (lo, hi)."""
    from torchao.quantization.pt2e.observer import MinMaxObserver

    for node in prepared.graph.nodes:
        if node.op != "call_function" or node.target not in (torch.ops.aten.conv2d.default,
                                                             torch.ops.aten.linear.default,
                                                             torch.ops.aten.conv1d.default):
            continue
        stack = list(node.meta.get("nn_module_stack", {}).values())
        src = node.args[0]
        if not stack or src.op != "call_module" or stack[-1][0] not in ranges:
            continue
        old = getattr(prepared, src.target)
        lo, hi = ranges[stack[-1][0]]
        new = MinMaxObserver(dtype=old.dtype, qscheme=old.qscheme, quant_min=old.quant_min,
                             quant_max=old.quant_max)
        new(torch.tensor([float(lo), float(hi)]))
        setattr(prepared, src.target, new)
    return prepared


def _lower(ep) -> bytes:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    prog = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
    return prog.buffer


def _set_threads(threads: int) -> None:
    # XNNPACK's thread pool is process-wide; set it only when it differs (resetting is not free)
    try:
        from executorch.extension.pybindings import portable_lib as pl
        if pl._threadpool_get_thread_count() != threads:
            pl._unsafe_reset_threadpool(threads)
    except (ImportError, AttributeError):   # older runtimes: keep their default pool
        log.debug("cannot set the ExecuTorch thread pool size", exc_info=True)
