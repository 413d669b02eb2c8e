"""Calibration data for static quantization: batches as the model takes them.

Only activations are calibrated (the observers sit on the wrapped layers' inputs and outputs), so
a batch reaches the model as it is: float tensors, integer token ids, or a dict of keyword inputs
(``input_ids`` + ``attention_mask``). Integer tensors keep their dtype and are never observed;
floating tensors are checked for NaN/Inf and cast to float32.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
from torch import nn

from autocompress.quantize.observers import CalibrationError

Batch = Any   # a tensor, a tuple of tensors or a dict name -> tensor, all with the batch first


def _tensors(x: Batch) -> dict[str, torch.Tensor]:
    """The batch's tensors by name (``input``, ``input_1``, ... for positional ones)."""
    if isinstance(x, Mapping):
        items = [(str(k), v) for k, v in x.items()]
    elif isinstance(x, (tuple, list)):
        items = [("input" if i == 0 else f"input_{i}", v) for i, v in enumerate(x)]
    else:
        items = [("input", x)]
    for k, v in items:
        if not isinstance(v, torch.Tensor):
            raise CalibrationError(f"calibration input {k!r} must be a tensor, got {type(v).__name__}")
    return dict(items)


def _check(x: Batch) -> int:
    """Validate one batch; returns its batch size."""
    ts = _tensors(x)
    sizes = {k: (v.shape[0] if v.dim() else None) for k, v in ts.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise CalibrationError(f"calibration inputs disagree on the batch size: {sizes}")
    for k, v in ts.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CalibrationError(f"calibration input {k!r} contains NaN or Inf")
    return next(iter(sizes.values()))


def _take(x: Batch, n: int) -> Batch:
    """The first ``n`` samples; floating tensors as float32, integer ones (token ids) untouched."""
    def cut(v: torch.Tensor) -> torch.Tensor:
        v = v[:n]
        return v.float() if v.is_floating_point() else v
    if isinstance(x, Mapping):
        return {k: cut(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return tuple(cut(v) for v in x)
    return cut(x)


def _split(x: Batch, size: int) -> list[Batch]:
    n = _check(x)
    ts = _tensors(x)
    out = []
    for i in range(0, n, size):
        part = {k: v[i:i + size] for k, v in ts.items()}
        out.append(part if isinstance(x, Mapping) else
                   tuple(part.values()) if isinstance(x, (tuple, list)) else part["input"])
    return out


def _signature(x: Batch) -> dict[str, tuple]:
    return {k: tuple(v.shape[1:]) for k, v in _tensors(x).items()}


def calibration_batches(data: Any, limit: int, batch_size: int) -> list[Batch]:
    """Accept a tensor (N, ...), a dict of tensors (N, ...), a Dataset / DataLoader / iterable of
    batches or of (x, y) pairs; return at most ``limit`` samples as batches the model takes, with
    clear errors for bad data."""
    if data is None:
        raise CalibrationError("calibration data is required (a few hundred real samples)")
    if isinstance(data, (torch.Tensor, Mapping)):
        items: Iterable = _split(data, batch_size)
    elif isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        items = torch.utils.data.DataLoader(data, batch_size=batch_size)
    else:
        items = data
    out: list[Batch] = []
    n = 0
    for b in items:
        # a pair (inputs, labels) from a loader; a dict or a lone tensor is the inputs itself
        x = b[0] if isinstance(b, (tuple, list)) and len(b) == 2 and not isinstance(b[1], Mapping) else b
        size = _check(x)
        if out and _signature(x) != _signature(out[0]):
            raise CalibrationError(f"calibration batches disagree on shape: {_signature(out[0])} "
                                   f"then {_signature(x)}")
        x = _take(x, limit - n)
        out.append(x)
        n += min(size, limit - n)
        if n >= limit:
            break
    if n == 0:
        raise CalibrationError("the calibration set is empty: quantization needs real samples")
    return out


def has_integer_inputs(batch: Batch) -> bool:
    return any(not v.is_floating_point() for v in _tensors(batch).values())


def check_shape(model: nn.Module, x: Batch) -> None:
    """A model that declares ``input_shape`` (the zoo's models) must get that shape."""
    want = getattr(model, "input_shape", None)
    if want is None or not isinstance(x, torch.Tensor):
        return
    if tuple(x.shape[1:]) != tuple(want):
        raise CalibrationError(f"calibration inputs have shape {tuple(x.shape)}, but "
                               f"{type(model).__name__} expects (N, {', '.join(map(str, want))})")


def describe(x: Batch) -> str:
    """Shapes and dtypes of a batch, for error messages."""
    if isinstance(x, torch.Tensor):
        return f"of shape {tuple(x.shape)} (dtype {x.dtype})"
    return ", ".join(f"{k} {tuple(v.shape)} {str(v.dtype).replace('torch.', '')}"
                     for k, v in _tensors(x).items())
