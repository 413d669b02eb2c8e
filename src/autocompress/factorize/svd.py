"""Low-rank factorization by truncated SVD.

A Linear ``W (m, n)`` becomes ``Linear(n, r, bias=False) -> Linear(r, m)`` with
``W ~ (U_r sqrt(S_r)) (sqrt(S_r) V_r^T)``; a k x k convolution ``W (m, c, k, k)`` seen as
``(m, c*k*k)`` becomes a k x k convolution to ``r`` channels (same stride / padding / dilation)
followed by a 1 x 1 convolution to ``m``. Both factors run at the output resolution, so parameters
and MACs shrink by the same ratio ``r (m + n) / (m n)``: a layer is only factorized when that ratio
is at most ``max_ratio`` (< 1 means ``r < m n / (m + n)``).

The rank of each layer is given (``rank`` / ``rank_ratio``), set by an energy threshold on the
singular values, or chosen from a sensitivity measurement: the smallest rank whose factorization,
alone, costs at most ``max_drop`` validation accuracy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import nn

from autocompress.config import Config, ConfigError
from autocompress.data import Splits

log = logging.getLogger(__name__)

Evaluate = Callable[[nn.Module], float]


@dataclass
class FactorizeConfig(Config):
    method: Literal["rank", "energy", "sensitivity"] = "energy"
    rank: int | None = None            # method "rank": this rank everywhere (or use rank_ratio)
    rank_ratio: float | None = None    # method "rank": fraction of min(m, n)
    energy: float = 0.95               # method "energy": keep this share of sum(sigma^2)
    max_drop: float = 0.002            # method "sensitivity": validation accuracy a layer may cost
    candidates: int = 10               # method "sensitivity": ranks tried per layer (geometric grid)
    eval_samples: int = 2000           # method "sensitivity" with Splits: validation samples used
    layers: list[str] | None = None    # module names; None = every Linear and (groups=1) Conv
    include_conv: bool = True
    max_ratio: float = 0.9             # factorize only if params(and MACs) shrink to <= this share

    def validate(self) -> None:
        if self.method == "rank" and (self.rank is None) == (self.rank_ratio is None):
            raise ConfigError("FactorizeConfig: method 'rank' needs exactly one of rank / rank_ratio")
        if self.rank is not None and self.rank < 1:
            raise ConfigError(f"FactorizeConfig.rank must be >= 1, got {self.rank}")
        if self.rank_ratio is not None and not 0 < self.rank_ratio <= 1:
            raise ConfigError(f"FactorizeConfig.rank_ratio must be in (0, 1], got {self.rank_ratio}")
        if not 0 < self.energy <= 1:
            raise ConfigError(f"FactorizeConfig.energy must be in (0, 1], got {self.energy}")
        if not 0 < self.max_ratio <= 1:
            raise ConfigError(f"FactorizeConfig.max_ratio must be in (0, 1], got {self.max_ratio}")
        if self.max_drop < 0:
            raise ConfigError(f"FactorizeConfig.max_drop must be >= 0, got {self.max_drop}")


# -- surgery -------------------------------------------------------------------------------

def _matrix(mod: nn.Module) -> torch.Tensor:
    return mod.weight.detach().reshape(mod.weight.shape[0], -1).double()    # (m, n)


def _svd(mod: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    u, s, vh = torch.linalg.svd(_matrix(mod), full_matrices=False)
    return u, s, vh


def _build(mod: nn.Module, svd: tuple[torch.Tensor, torch.Tensor, torch.Tensor], r: int) -> nn.Sequential:
    u, s, vh = svd
    root = s[:r].sqrt()
    a = (root[:, None] * vh[:r]).float()          # (r, n): first factor
    b = (u[:, :r] * root[None, :]).float()        # (m, r): second factor
    has_bias = mod.bias is not None
    if isinstance(mod, nn.Linear):
        first, second = nn.Linear(mod.in_features, r, bias=False), nn.Linear(r, mod.out_features, bias=has_bias)
        first.weight.data.copy_(a)
        second.weight.data.copy_(b)
    else:
        cls = type(mod)
        first = cls(mod.in_channels, r, mod.kernel_size, stride=mod.stride, padding=mod.padding,
                    dilation=mod.dilation, bias=False, padding_mode=mod.padding_mode)
        second = cls(r, mod.out_channels, 1, bias=has_bias)
        first.weight.data.copy_(a.reshape(first.weight.shape))
        second.weight.data.copy_(b.reshape(second.weight.shape))
    if has_bias:
        second.bias.data.copy_(mod.bias.detach())
    return nn.Sequential(first, second).to(mod.weight.device)


def _factorizable(mod: nn.Module, cfg: FactorizeConfig) -> bool:
    if isinstance(mod, nn.Linear):
        return True
    return (cfg.include_conv and isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and mod.groups == 1)


def break_even_rank(mod: nn.Module, max_ratio: float = 1.0) -> int:
    """Largest rank whose factorization has at most ``max_ratio`` of the layer's weights (0 = none)."""
    m, n = mod.weight.shape[0], mod.weight[0].numel()
    r = int(max_ratio * m * n / (m + n))
    if r * (m + n) >= m * n:              # must strictly shrink
        r -= 1
    return max(0, min(r, m, n))


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    *parents, leaf = name.split(".")
    parent = model
    for p in parents:
        parent = getattr(parent, p)
    setattr(parent, leaf, new)


def _targets(model: nn.Module, cfg: FactorizeConfig) -> list[tuple[str, nn.Module]]:
    mods = dict(model.named_modules())
    if cfg.layers is not None:
        missing = [n for n in cfg.layers if n not in mods]
        if missing:
            raise ConfigError(f"FactorizeConfig.layers: no module named {missing}; factorizable layers "
                              f"are {[n for n, m in mods.items() if _factorizable(m, cfg)]}")
        bad = [n for n in cfg.layers if not _factorizable(mods[n], cfg)]
        if bad:
            raise ConfigError(f"FactorizeConfig.layers: {bad} are not Linear or groups=1 Conv layers")
        return [(n, mods[n]) for n in cfg.layers]
    return [(n, m) for n, m in mods.items() if _factorizable(m, cfg)]


# -- rank choice ---------------------------------------------------------------------------

def _energy_rank(s: torch.Tensor, energy: float) -> int:
    e = torch.cumsum(s ** 2, 0) / (s ** 2).sum().clamp(min=1e-30)
    return int(torch.searchsorted(e, torch.tensor([energy], dtype=e.dtype)).item()) + 1


def _evaluator(data: Splits | Evaluate | None, cfg: FactorizeConfig) -> Evaluate:
    if callable(data):
        return data
    if isinstance(data, Splits):
        from autocompress.train import evaluate
        loader = data.loader("val", batch_size=1000, limit=cfg.eval_samples)
        return lambda m: evaluate(m, loader)
    raise ValueError("factorize_: method 'sensitivity' needs data= (Splits, whose val split is used, "
                     "or an evaluate(model) -> accuracy callable)")


def plan_ranks(model: nn.Module, config: FactorizeConfig | None = None,
               data: Splits | Evaluate | None = None) -> dict[str, int]:
    """The rank each layer would get (layers that would not shrink enough are left out)."""
    cfg = config or FactorizeConfig()
    evaluate = _evaluator(data, cfg) if cfg.method == "sensitivity" else None
    base = evaluate(model) if evaluate else 0.0
    plan: dict[str, int] = {}
    for name, mod in _targets(model, cfg):
        limit = break_even_rank(mod, cfg.max_ratio)
        if limit < 1:
            log.debug("factorize: %s too small to gain from factorization", name)
            continue
        svd = _svd(mod)
        if cfg.method == "rank":
            r = cfg.rank if cfg.rank is not None else max(1, round(cfg.rank_ratio * len(svd[1])))
        elif cfg.method == "energy":
            r = _energy_rank(svd[1], cfg.energy)
        else:
            r = _sensitive_rank(model, name, mod, svd, limit, base, evaluate, cfg)
        if r is None or r > limit:
            log.debug("factorize: %s needs rank %s > %d to stay within limits: left dense", name, r, limit)
            continue
        plan[name] = int(r)
    return plan


def _sensitive_rank(model: nn.Module, name: str, mod: nn.Module, svd, limit: int, base: float,
                    evaluate: Evaluate, cfg: FactorizeConfig) -> int | None:
    grid = sorted({max(1, round(limit ** (i / (cfg.candidates - 1)))) for i in range(cfg.candidates)}
                  if cfg.candidates > 1 else {limit})
    def ok(r: int) -> bool:
        _set(model, name, _build(mod, svd, r))
        acc = evaluate(model)
        log.debug("factorize: %s rank %d -> val %.4f (base %.4f)", name, r, acc, base)
        return base - acc <= cfg.max_drop

    try:
        lo = 0                            # largest rank known to fail
        for r in grid:                    # ascending geometric grid, then bisect the last gap
            if ok(r):
                hi = r
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    lo, hi = (lo, mid) if ok(mid) else (mid, hi)
                return hi
            lo = r
        return None
    finally:
        _set(model, name, mod)


def factorize_(model: nn.Module, config: FactorizeConfig | None = None,
               data: Splits | Evaluate | None = None) -> nn.Module:
    """Replace layers of ``model`` by low-rank pairs in place; returns it. Fine-tune afterwards
    (optionally with a teacher: :func:`autocompress.distill.distillation_loss`)."""
    cfg = config or FactorizeConfig()
    plan = plan_ranks(model, cfg, data)
    mods = dict(model.named_modules())
    for name, r in plan.items():
        mod = mods[name]
        _set(model, name, _build(mod, _svd(mod), r))
        m, n = _matrix(mod).shape
        log.debug("factorize: %s (%d x %d) -> rank %d, %.0f%% of its weights", name, m, n, r,
                 100 * r * (m + n) / (m * n))
    return model
