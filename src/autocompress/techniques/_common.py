"""What the built-in techniques' steps share: per-layer settings from the sensitivity analysis,
names that follow a restructured model, BatchNorm re-estimation.

A step is ``(model, recipe, ctx) -> model``. ``ctx`` is the trial's context (built by the search,
``search/steps.TrialContext``); a step uses only these of its members: ``data``, ``example``,
``sensitivity``, ``budget``, ``evaluate``, ``train_set``, ``quick``, ``seed`` and
``ctx.train(model, recipe, epochs, hooks=(), desc=..., lr_scale=1.0, accelerate=False)``, the
trial's fine-tune (the user's loop or ours, distilled when the recipe says so, stopped at the
deadline). So this package knows nothing of the search's insides.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING



if TYPE_CHECKING:   # torch is imported where a step runs: the registry stays light
    from torch import nn


log = logging.getLogger(__name__)


def follow_renames(model: nn.Module, per_layer: dict[str, float]) -> dict[str, float]:
    """Per-layer settings keyed by the *original* model's names, for a model an earlier step
    restructured: low-rank factorization turns ``fc.weight`` into ``fc.0.weight`` and
    ``fc.1.weight`` (both factors get ``fc``'s setting). A name that vanished altogether is
    dropped (the global setting applies to what replaced it)."""
    params = dict(model.named_parameters())
    out: dict[str, float] = {}
    for name, v in per_layer.items():
        if name in params:
            out[name] = v
            continue
        owner, _, leaf = name.rpartition(".")
        factors = [p for p in params if p.startswith(owner + ".") and p.endswith("." + leaf)] if owner else []
        if factors:
            out.update({p: v for p in factors})
        else:
            log.info("per-layer setting for %r dropped: no such layer after the earlier steps", name)
    return out


def allocate(sens: dict | None, target: float) -> dict[str, float]:
    """Per-layer ratios reaching ``target`` from a sensitivity result (``{}``: uniform)."""
    if not sens or target <= 0:
        return {}
    from autocompress.prune import SensitivityResult, allocate_ratios
    try:
        return allocate_ratios(SensitivityResult.from_dict(sens), target)
    except ValueError as e:  # target beyond the analysed ratios: uniform is the honest fallback
        log.info("per-layer allocation not possible (%s); using a uniform ratio", e)
        return {}


def reestimate_bn(model: nn.Module, ctx) -> None:
    from autocompress.train import reestimate_bn as _re
    _re(model, ctx.data.calibration_batch(256 if ctx.quick else 1024, seed=ctx.seed))


def calibration(ctx, n_quick: int = 256, n: int = 512):
    return ctx.data.calibration_batch(n_quick if ctx.quick else n, seed=ctx.seed)
