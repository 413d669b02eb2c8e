"""ONNX export: a PyTorch model written as one self-contained ``.onnx`` file.

This package (``autocompress.export``) builds ONNX graphs with ``onnx`` only; running them (sessions,
parity, latency) is the ONNX Runtime target's (:mod:`autocompress.targets.onnxruntime`), the only
module that imports ``onnxruntime``.

Models take what they take: one tensor, a tuple of tensors, or a dict of keyword tensors (token ids +
attention mask); integer inputs stay int64. Whatever they return (tensor, tuple, dict, ModelOutput)
the exported graph has one output, the logits chosen by :func:`autocompress.outputs.pick_output`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from autocompress.export.inputs import Inputs, as_args, fixed_batch_io, input_names, with_picked_output
from autocompress.runtime_results import ParityError  # noqa: F401 - re-exported

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
