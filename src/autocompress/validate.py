"""Checks of the user's model and data that run before any long work, with bounds taken from the data
itself: every weight finite, the model runs on the data's input shape, and class labels lie within the
model's output width. Each failure names the tensor, the shape or the split and the bad values."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from autocompress.data import DataError, Splits
from autocompress.models.weights_io import WeightsError
from autocompress.outputs import OutputError, call_model, pick_output

_SCAN_GENERIC = 20000          # labels read from a Dataset that is not tensor-backed (it may be slow)


def check_finite_weights(model: nn.Module, what: str = "the model") -> None:
    bad = [(n, int((~torch.isfinite(t)).sum())) for n, t in model.state_dict().items()
           if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        listed = ", ".join(f"{n} ({k} values)" for n, k in bad[:5])
        raise WeightsError(f"{what} has NaN or Inf weights in {len(bad)} tensor(s): {listed}"
                           + (" ..." if len(bad) > 5 else ""))


def _first_tensor(out: Any) -> torch.Tensor | None:
    try:
        return pick_output(out)
    except OutputError:
        return None


def _shape_of(x: Any) -> str:
    """``(2, 16)``, or for keyword inputs ``input_ids (2, 16), attention_mask (2, 16)``."""
    if isinstance(x, dict):
        return ", ".join(f"{k} {tuple(v.shape)}" for k, v in x.items())
    return str(tuple(x.shape))


def probe(model: nn.Module, x: Any, where: str) -> torch.Tensor | None:
    """Run ``model`` on ``x`` (a tensor, or a dict of keyword inputs); a failure is bad input naming
    the shape (not a traceback later)."""
    was = model.training
    try:
        with torch.no_grad():
            out = call_model(model.eval(), x)
    except Exception as e:       # any failure of a forward on the data's shape means it does not fit
        raise DataError(f"the model cannot run on inputs of shape {_shape_of(x)} ({where}): "
                        f"{type(e).__name__}: {str(e)[:300]}") from None
    finally:
        model.train(was)
    return _first_tensor(out)


def _labels(ds: Dataset) -> torch.Tensor | None:
    """The split's labels as one tensor, or None when they are not integer class indices."""
    idx = None
    while isinstance(ds, Subset):
        idx = torch.as_tensor(ds.indices) if idx is None else torch.as_tensor(ds.indices)[idx]
        ds = ds.dataset
    if isinstance(ds, TensorDataset) and len(ds.tensors) >= 2:
        y = ds.tensors[1]
        y = y if idx is None else y[idx]
    else:
        n = min(len(ds), _SCAN_GENERIC)  # type: ignore[arg-type]
        ys = []
        for _, yb in DataLoader(Subset(ds, range(n)) if idx is None else Subset(ds, idx[:n].tolist()),
                                batch_size=512):
            if not isinstance(yb, torch.Tensor):
                return None
            ys.append(yb)
        y = torch.cat(ys) if ys else torch.zeros(0, dtype=torch.long)
    if y.is_floating_point() or y.dtype == torch.bool or y.ndim != 1:
        return None
    return y


def check_labels(data: Splits, n_outputs: int) -> None:
    problems = []
    for split in ("train", "val", "test"):
        y = _labels(getattr(data, split))
        if y is None:
            continue
        bad = y[(y < 0) | (y >= n_outputs)]
        if len(bad):
            vals = sorted({int(v) for v in bad.unique()[:10]})
            problems.append(f"{split}: {len(bad)} of {len(y)} labels (values {vals})")
    if problems:
        raise DataError(f"labels must lie in [0, {n_outputs}) for a model with {n_outputs} outputs; "
                        f"outside it: " + "; ".join(problems))


def check_run_inputs(model: nn.Module, data: Splits, *, class_labels: bool = True) -> None:
    """All checks, cheap (two forward samples, one pass over tensor-backed labels). ``class_labels``:
    the labels are class indices (the default metric or fine-tune uses them so)."""
    check_finite_weights(model)
    out = probe(model, data.example_input(2), f"one sample of the data is {tuple(data.input_shape)}")
    if class_labels and out is not None and out.ndim == 2:
        check_labels(data, int(out.shape[1]))


__all__ = ["check_finite_weights", "check_labels", "check_run_inputs", "probe"]
