"""Unstructured (per-weight) pruning: ``prune_(model, PruneConfig(...), data) -> model``.

Scores every weight of the selected layers with an importance criterion, zeroes the lowest
fraction (per layer or under one global threshold), optionally over several rounds of a gradual
schedule with fine-tuning in between, and finally makes the zeros permanent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable, Literal

import torch
from torch import nn

from autocompress.config import Config, ConfigError
from autocompress.prune.importance import (Criterion, Importance, ImportanceName, get_criterion, get_importance,
                                           taylor_stats)
from autocompress.prune.masks import apply_masks, get_mask, global_sparsity, make_permanent, set_mask
from autocompress.prune.recover import Finetune, as_loader, make_finetune
from autocompress.prune.schedule import SCHEDULES
from autocompress.prune.targets import ALL_KINDS, LayerKind, Target, check_names_exist, find_targets, matches
from autocompress.train import LossFn, TrainConfig

log = logging.getLogger(__name__)


@dataclass
class PruneConfig(Config):
    sparsity: float = 0.9                                   # fraction of weights zeroed at the end
    per_layer: dict[str, float] = field(default_factory=dict)  # module/param name (wildcards ok) -> sparsity
    scope: Literal["layer", "global"] = "layer"             # one threshold per layer, or one for all
    importance: ImportanceName = "l1"
    kinds: list[LayerKind] = field(default_factory=lambda: list(ALL_KINDS))
    include: list[str] = field(default_factory=list)        # empty = every layer of `kinds`
    exclude: list[str] = field(default_factory=list)
    schedule: Literal["oneshot", "polynomial", "linear"] = "oneshot"
    steps: int = 1                                          # pruning rounds of a gradual schedule
    initial_sparsity: float = 0.0
    finetune: TrainConfig | None = None                     # per-round recovery when data is given
    taylor_batches: int = 4
    permanent: bool = True                                  # False: keep masks for the user's training

    def validate(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(f"PruneConfig.sparsity must be in [0, 1), got {self.sparsity}")
        for k, v in self.per_layer.items():
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"PruneConfig.per_layer[{k!r}] must be in [0, 1), got {v}")
        bad = set(self.kinds) - set(ALL_KINDS)
        if bad:
            raise ConfigError(f"PruneConfig.kinds: unknown {sorted(bad)}; expected a subset of {list(ALL_KINDS)}")
        if self.steps < 1:
            raise ConfigError(f"PruneConfig.steps must be >= 1, got {self.steps}")
        if self.schedule == "oneshot" and self.steps != 1:
            raise ConfigError("PruneConfig.steps > 1 needs schedule='polynomial' or 'linear'")
        if not 0.0 <= self.initial_sparsity <= min([self.sparsity, *self.per_layer.values()]):
            raise ConfigError(f"PruneConfig.initial_sparsity must be in [0, every target sparsity], "
                              f"got {self.initial_sparsity}")
        try:   # a registered criterion with per-weight scores
            get_importance(self.importance)
        except ValueError as e:
            raise ConfigError(f"PruneConfig.importance: {e}") from None
        if self.taylor_batches < 1:
            raise ConfigError(f"PruneConfig.taylor_batches must be >= 1, got {self.taylor_batches}")


def _final_sparsity(t: Target, cfg: PruneConfig) -> tuple[float, bool]:
    """(sparsity, has its own override). The last matching ``per_layer`` entry wins."""
    hit = [v for k, v in cfg.per_layer.items() if matches([k], t.module_name, t.name)]
    return (hit[-1], True) if hit else (cfg.sparsity, False)


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Flat keep-mask (1 = keep) zeroing exactly the ``k`` lowest scores."""
    keep = torch.ones(scores.numel())
    if k > 0:
        keep[torch.topk(scores.flatten(), k, largest=False, sorted=False).indices] = 0.0
    return keep


@torch.no_grad()
def compute_masks(targets: list[Target], sparsity: dict[str, float], criterion: Importance,
                  stats: dict[str, torch.Tensor] | None, pooled: set[str]) -> dict[str, torch.Tensor]:
    """Keep-masks per target. Targets in ``pooled`` share one threshold at their common sparsity;
    the others are thresholded alone. Already-pruned weights score -inf, so they stay pruned."""
    scores = {}
    for t in targets:
        s = criterion(t.param, stats.get(t.name) if stats else None).float().clone()
        old = get_mask(t.module, t.param_name)
        if old is not None:
            s[old == 0] = float("-inf")
        scores[t.name] = s
    masks = {}
    for t in targets:
        if t.name not in pooled:
            k = round(sparsity[t.name] * t.param.numel())
            masks[t.name] = _lowest(scores[t.name], k).view_as(t.param)
    if pooled:
        names = [t.name for t in targets if t.name in pooled]
        flat = torch.cat([scores[n].flatten() for n in names])
        k = round(sparsity[names[0]] * flat.numel())
        keep = _lowest(flat, k)
        for n, chunk in zip(names, keep.split([scores[n].numel() for n in names])):
            masks[n] = chunk.view_as(scores[n])
    return masks


def prune_(model: nn.Module, config: PruneConfig | None = None, data: Iterable | None = None, *,
           finetune: Finetune | None = None, loss_fn: LossFn | None = None,
           importance: "str | Criterion | Importance | None" = None) -> nn.Module:
    """Unstructured pruning in place; returns ``model``.

    ``data``: real ``(x, y)`` batches (a Splits, Dataset or loader) for Taylor importance and, with
    ``config.finetune``, for recovery between rounds. ``finetune(model) -> model`` (the user's own
    loop) takes precedence over ``config.finetune``; masks are enforced while it runs.
    ``importance`` overrides ``config.importance``: a registered criterion's name, a
    :class:`~autocompress.prune.importance.Criterion` or any per-weight callable.
    """
    cfg = config or PruneConfig()
    for fld in ("include", "exclude"):
        check_names_exist(model, getattr(cfg, fld), f"PruneConfig.{fld}")
    check_names_exist(model, cfg.per_layer, "PruneConfig.per_layer")
    targets = find_targets(model, cfg.kinds, cfg.include, cfg.exclude)
    if not targets:
        raise ValueError(f"prune_: no prunable weights in {type(model).__name__} for kinds={cfg.kinds}, "
                         f"include={cfg.include}, exclude={cfg.exclude}")
    crit = get_criterion(cfg.importance if importance is None else importance)
    criterion, needs_data = crit.scorer(), crit.needs_data
    loader = as_loader(data, cfg.finetune.batch_size if cfg.finetune else 128) if data is not None else None
    if needs_data and loader is None:
        raise ValueError(f"prune_: importance {crit.name!r} needs data: pass real (x, y) batches")
    if finetune is None and cfg.finetune is not None:
        if loader is None:
            raise ValueError("prune_: PruneConfig.finetune is set but no data was given to fine-tune on")
        finetune = make_finetune(loader, cfg.finetune, loss_fn=loss_fn)

    finals = {t.name: _final_sparsity(t, cfg) for t in targets}
    pooled = {n for n, (_, own) in finals.items() if cfg.scope == "global" and not own}
    plans = {n: ([s] if cfg.schedule == "oneshot"
                 else SCHEDULES[cfg.schedule](s, cfg.steps, min(cfg.initial_sparsity, s)))
             for n, (s, _) in finals.items()}
    rounds = len(next(iter(plans.values())))
    if finetune is None and rounds > 1:
        log.warning("prune_: %d gradual rounds without fine-tuning behave like one-shot pruning", rounds)

    for r in range(rounds):
        stats = None
        if needs_data:
            params = {t.name: t.param for t in targets}
            stats = taylor_stats(model, params, loader, loss_fn, cfg.taylor_batches)
        step_sparsity = {n: plan[r] for n, plan in plans.items()}
        masks = compute_masks(targets, step_sparsity, criterion, stats, pooled)
        for t in targets:
            if step_sparsity[t.name] > 0 or get_mask(t.module, t.param_name) is not None:
                set_mask(model, t.module, t.param_name, masks[t.name])
        log.debug("prune round %d/%d: sparsity %.2f%% over %d weights", r + 1, rounds,
                 100 * global_sparsity(model, tuple(cfg.kinds)), len(targets))
        if finetune is not None:
            model = finetune(model) or model
            apply_masks(model)
    if cfg.permanent:
        make_permanent(model)
    return model
