"""Data pitfalls that produce plausible but wrong numbers, said out loud before a search is built on them.

* **Inputs scaled unlike the training data.** A model trained on normalised MNIST scores 94 % on
  the bundled (unnormalised) split, which looks merely mediocre. What the model was trained on is
  rarely recorded, so it is asked empirically: top-1 accuracy on a validation sample as given vs.
  standardised (per-channel mean 0, std 1) and, for 0..255 data, scaled to [0, 1]. A clearly better
  score on one of those means the inputs do not match what the model saw in training.
* **Validation far better than test** (training data overlapping the validation split) is read
  from the measured report: :func:`autocompress.report.headline.split_overlap_warning`.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from autocompress.data import Splits

log = logging.getLogger(__name__)

GAIN_POINTS = 5.0       # an alternative scaling must beat the inputs as given by this much


def _top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())


def input_scaling_warning(model: nn.Module, data: Splits, n: int = 512) -> str | None:
    """A sentence when the model scores clearly better on rescaled inputs (see module doc), else None.
    Models whose output is not class scores (a custom metric) are not judged: any error -> None."""
    try:
        xs, ys = zip(*[(x, y) for x, y in data.loader("val", n, limit=n)])
        x, y = torch.cat(xs).float(), torch.cat(ys)
        was = model.training
        model.eval()
        try:
            given = _top1(model, x, y)
            dims = [d for d in range(x.dim()) if d != 1] if x.dim() > 2 else [0]
            mean, std = x.mean(dim=dims, keepdim=True), x.std(dim=dims, keepdim=True).clamp_min(1e-6)
            options = {"standardised (mean 0, std 1)": (x - mean) / std}
            if float(x.max()) > 1.5:
                options["scaled to [0, 1]"] = x / 255.0
            scores = {name: _top1(model, v, y) for name, v in options.items()}
        finally:
            model.train(was)
    except Exception:  # noqa: BLE001 - a heuristic must never stop a run
        return None
    name, best = max(scores.items(), key=lambda kv: kv[1])
    if 100 * (best - given) < GAIN_POINTS:
        return None
    m, s = float(x.mean()), float(x.std())
    return (f"the model scores {100 * given:.1f} % on the validation inputs as given (mean {m:.3f}, std {s:.3f}) "
            f"but {100 * best:.1f} % on the same inputs {name}: it was probably trained on differently "
            f"scaled data; normalise the inputs the way it was trained (in your data function), or every "
            f"figure of this run is measured on the wrong inputs")


def warn_data_pitfalls(model: nn.Module, data: Splits) -> list[str]:
    """Log (WARNING) and return what :func:`input_scaling_warning` finds; used before a run."""
    out = [w for w in (input_scaling_warning(model, data),) if w]
    for w in out:
        log.warning("%s", w)
    return out
