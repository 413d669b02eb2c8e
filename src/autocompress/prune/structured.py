"""Structured pruning with physical removal: ``prune_channels_(model, config, example_input)``.

Whole output channels / neurons / attention heads are removed and every dependent layer is rebuilt
(BatchNorm, the next layer's input channels, residual partners, concatenation consumers,
depthwise groups), so parameters, MACs, ONNX size and ONNX Runtime latency all drop.

The dependency graph and the per-layer surgery come from torch-pruning (pinned 1.6.1); everything
that touches it lives in :mod:`autocompress.prune.tp_adapter`, :mod:`autocompress.prune.families`
and ``tp_criteria.py`` (criteria as its group importances), so the rest of the package never sees
its internals.
Layers it cannot rebuild (recurrent layers, unknown modules owning weight matrices) are kept
intact: every group of channels that reaches them is skipped, with a log message naming the layer.
Parameters a model owns itself along the channel axis (ViT's class token and position embedding,
ConvNeXt's layer-scale gamma) are pruned with their channels; Hugging Face attention loses whole
heads only (see :mod:`autocompress.prune.families`). Models may return tensors, tuples, dicts or
ModelOutputs (:func:`autocompress.outputs.pick_output` chooses the logits).
"""

from __future__ import annotations

import copy
import functools
import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal

import torch
from torch import nn

from autocompress.config import Config, ConfigError
from autocompress.measure.core import count_macs, count_params
from autocompress.prune.families import hf_attention, shuffle_tolerant, sync_head_counts
from autocompress.prune.heads import prune_heads_
from autocompress.prune.importance import Criterion, Importance, ImportanceName, get_criterion
from autocompress.prune.recover import Finetune, as_loader, make_finetune
from autocompress.prune.targets import check_names_exist, matches
from autocompress.prune.tp_criteria import group_importance
from autocompress.prune.tp_adapter import (StructuredPruneError, _failing_layer, _forward, _pass,
                                           frozen_layers)
from autocompress.train import LossFn, TrainConfig, cross_entropy

log = logging.getLogger(__name__)


@dataclass
class StructuredPruneConfig(Config):
    ratio: float = 0.5                                       # fraction of channels removed per layer
    per_layer: dict[str, float] = field(default_factory=dict)  # module name (wildcards ok) -> ratio
    target: Literal["ratio", "params", "macs"] = "ratio"     # what `amount` is measured in
    amount: float = 0.5                                      # fraction of params/MACs to remove
    importance: ImportanceName = "l1"
    global_ranking: bool = False                             # rank channels across layers
    round_to: int | None = None                              # keep channel counts multiples of this
    exclude: list[str] = field(default_factory=list)         # module names never pruned
    keep_classifier: bool = True                             # never prune the final layer's outputs
    head_ratio: float = 0.0                                  # fraction of attention heads removed (MHA)
    max_layer_ratio: float = 0.95                            # no layer loses more than this
    steps: int = 1                                           # iterative rounds (fine-tune between)
    finetune: TrainConfig | None = None
    taylor_batches: int = 4

    def validate(self) -> None:
        for name, v in [("ratio", self.ratio), ("head_ratio", self.head_ratio)] + \
                [(f"per_layer[{k!r}]", v) for k, v in self.per_layer.items()]:
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"StructuredPruneConfig.{name} must be in [0, 1), got {v}")
        if not 0.0 < self.amount < 1.0:
            raise ConfigError(f"StructuredPruneConfig.amount must be in (0, 1), got {self.amount}")
        if not 0.0 < self.max_layer_ratio < 1.0:
            raise ConfigError(f"StructuredPruneConfig.max_layer_ratio must be in (0, 1), got {self.max_layer_ratio}")
        if self.round_to is not None and self.round_to < 1:
            raise ConfigError(f"StructuredPruneConfig.round_to must be >= 1, got {self.round_to}")
        if self.steps < 1:
            raise ConfigError(f"StructuredPruneConfig.steps must be >= 1, got {self.steps}")
        try:   # a registered criterion with a structured form
            crit = get_criterion(self.importance)
        except ValueError as e:
            raise ConfigError(f"StructuredPruneConfig.importance: {e}") from None
        if not crit.structured:
            raise ConfigError(f"StructuredPruneConfig.importance: criterion {self.importance!r} scores single "
                              f"weights only (no structured form)")


def prunable_layers(model: nn.Module, example: torch.Tensor, cfg: StructuredPruneConfig) -> dict[str, nn.Module]:
    """Conv / Linear layers whose output channels may be removed under ``cfg`` (by name)."""
    skip = set(_excluded(model, example, cfg)) | set(frozen_layers(model))
    mha_children = {id(c) for m in model.modules() if isinstance(m, nn.MultiheadAttention) for c in m.children()}
    return {n: m for n, m in model.named_modules()
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and n not in skip and id(m) not in mha_children}


def classifier_name(model: nn.Module, example: torch.Tensor) -> str | None:
    """The last Conv/Linear executed in a forward pass: its outputs are the model's outputs."""
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: order.append(n))
             for n, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    try:
        with torch.no_grad():
            _forward(model, example)
    finally:
        for h in hooks:
            h.remove()
    return order[-1] if order else None


def _excluded(model: nn.Module, example: torch.Tensor, cfg: StructuredPruneConfig) -> list[str]:
    names = [n for n, _ in model.named_modules() if n and matches(cfg.exclude, n)]
    if cfg.keep_classifier:
        head = classifier_name(model, example)
        if head is not None:
            names.append(head)
    return names


def model_cost(model: nn.Module, example: torch.Tensor, metric: Literal["params", "macs"]) -> int:
    # count_macs already counts attention through the unfused path
    return count_params(model) if metric == "params" else count_macs(model, example)


def _accumulate_grads(model: nn.Module, data: Iterable, loss_fn: LossFn | None, batches: int) -> None:
    """Sum gradients of a few real batches into ``.grad`` (torch-pruning's Taylor reads them)."""
    loss_fn = loss_fn or cross_entropy
    model.zero_grad(set_to_none=True)
    was = model.training
    model.eval()
    n = 0
    for x, y in data:
        if n >= batches:
            break
        loss_fn(model, x, y).backward()
        n += 1
    model.train(was)
    if n == 0:
        raise ValueError("Taylor importance needs data: the loader yielded no batches")


def _surgery(model: nn.Module, example: torch.Tensor, cfg: StructuredPruneConfig, default: float,
             ratios: dict[str, float], head_ratio: float, data: Iterable | None,
             loss_fn: LossFn | None, criterion=None) -> list[str]:
    """One pruning pass with torch-pruning; returns names of the layers whose groups were skipped.
    ``criterion`` (name, Criterion, callable or torch-pruning importance) overrides ``cfg.importance``."""
    modules = dict(model.named_modules())
    frozen = frozen_layers(model)
    ignored = [modules[n] for n in _excluded(model, example, cfg)] + list(frozen.values())
    mhas = {m: m.num_heads for n, m in modules.items()
            if isinstance(m, nn.MultiheadAttention) and n not in frozen}
    hf = [a for a in hf_attention(model) if not matches(cfg.exclude, a.name)]
    opaque: set = set()
    imp, needs_data, name = group_importance(cfg.importance if criterion is None else criterion)
    if needs_data:
        if data is None:
            raise ValueError(f"structured pruning criterion {name!r} needs data: pass real (x, y) batches")
        _accumulate_grads(model, data, loss_fn, cfg.taylor_batches)
    with shuffle_tolerant(opaque):     # torch-pruning re-maps indices while it makes each group
        skipped = _pass(model, example, cfg, default, ratios, head_ratio, modules, ignored, mhas, frozen, hf,
                        opaque, imp)
    model.zero_grad(set_to_none=True)
    if hf:
        log.debug("attention heads left: %s", sync_head_counts(hf))
    return skipped


def _restore(model: nn.Module, backup: nn.Module) -> None:
    # a module's whole state (parameters, buffers, children, hooks) lives in its __dict__
    model.__dict__.clear()
    model.__dict__.update(backup.__dict__)


def _step_ratio(final: float, k: int, steps: int) -> float:
    """Ratio of the *current* channels to remove at step k so that after ``steps`` steps the layer
    has lost ``final`` of its original channels (linear in original channels)."""
    before, after = final * (k - 1) / steps, final * k / steps
    return 1.0 - (1.0 - after) / (1.0 - before)


def _out_channels(m: nn.Module) -> int:
    return m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features


def _layer_ratios(model: nn.Module, example: torch.Tensor, cfg: StructuredPruneConfig,
                  scale: float = 1.0, pinned: dict[str, float] | None = None) -> dict[str, float]:
    """Ratio for every prunable layer: its ``per_layer`` entry (last match wins) or ``ratio``, times
    ``scale``, capped so at least one channel survives (torch-pruning silently skips a layer that
    would lose all of them, which would make the cost non-monotone in the ratio). ``pinned``: layers
    whose ratio the MAC solver fixed (not scaled)."""
    out = {}
    for n, m in prunable_layers(model, example, cfg).items():
        hit = [v for k, v in cfg.per_layer.items() if matches([k], n)]
        c = _out_channels(m)
        r = pinned[n] if pinned and n in pinned else (hit[-1] if hit else cfg.ratio) * scale
        out[n] = max(0.0, min(r, cfg.max_layer_ratio, (c - 1) / c - 1e-6))
    return out


def rounded_ratio(ratio: float, channels: int, round_to: int | None) -> float:
    """The ratio that keeps the multiple of ``round_to`` nearest to ``channels * (1 - ratio)``
    (at least ``round_to``); 0 when that is the whole layer (a layer of ``round_to`` channels or
    fewer cannot be rounded, so it is kept). torch-pruning's own ``round_to`` rounds the kept count
    *down*, to 0 on a layer smaller than ``round_to``, and then skips the layer: the cost became
    non-monotone in the ratio and a MAC target was out of reach (16.8 % at most on LeNet-5).
    The result is nudged half a channel so torch-pruning's ``int(c * (1 - r))`` gives the count."""
    if not round_to or round_to <= 1 or ratio <= 0:
        return ratio
    kept = max(round_to, round_to * math.floor(channels * (1.0 - ratio) / round_to + 0.5))
    return 0.0 if kept >= channels else 1.0 - (kept + 0.5) / channels


def _rounded_layer_ratios(model, example, cfg, scale, pinned=None) -> dict[str, float]:
    modules = dict(model.named_modules())
    return {n: rounded_ratio(r, _out_channels(modules[n]), cfg.round_to)
            for n, r in _layer_ratios(model, example, cfg, scale, pinned).items()}


def _prune_once(model, example, cfg, scale, data, loss_fn, step: int = 1, steps: int = 1,
                criterion=None, pinned: dict[str, float] | None = None) -> list[str]:
    ratios = {} if cfg.global_ranking else _layer_ratios(model, example, cfg, scale, pinned)
    default = min(cfg.ratio * scale, cfg.max_layer_ratio)
    if cfg.head_ratio > 0 and step == 1:
        # whole heads first (our surgery); torch-pruning then leaves the rebuilt attention alone
        left = prune_heads_(model, cfg.head_ratio, cfg.exclude)
        log.debug("attention heads left: %s", left)
    modules = dict(model.named_modules())
    per_layer = {n: rounded_ratio(_step_ratio(r, step, steps), _out_channels(modules[n]), cfg.round_to)
                 for n, r in ratios.items()}
    return _surgery(model, example, cfg, _step_ratio(default, step, steps), per_layer,
                    cfg.head_ratio if step == 1 else 0.0, data, loss_fn, criterion)


# a params / MACs target met within 2 points is met: rounded channel counts move in steps, and
# closing the last point would cost many more trial prunings
_TOLERANCE = 0.02


def _bisect(removed: Callable[[float], float], amount: float, lo: float, hi: float,
            at_hi: float) -> tuple[float, float, float]:
    """Smallest scale in (lo, hi] whose removal reaches ``amount``, to within ``_TOLERANCE`` or 14
    halvings; ``removed`` is non-decreasing in the scale. Returns (lo, hi, removed(hi))."""
    for _ in range(14):
        if at_hi - amount <= _TOLERANCE:
            break
        mid = (lo + hi) / 2
        r = removed(mid)
        if r >= amount:
            hi, at_hi = mid, r
        else:
            lo = mid
    return lo, hi, at_hi


def _solve_scale(model, example, cfg, data, loss_fn, criterion=None
                 ) -> tuple[float, StructuredPruneConfig, dict[str, float]]:
    """Scale of the ratios (uniform ``ratio``, or the ``per_layer`` profile) that removes
    ``amount`` of the params/MACs: bisection on copies of the model. With ``round_to`` the cost
    moves in steps and one layer's step can overshoot the target by tens of points (LeNet-5's
    conv1 going 16 -> 8 channels); then that layer is pinned at the count below the step and the
    other layers' scale is bisected again. Returns (scale, config, pinned layer ratios)."""
    base = model_cost(model, example, cfg.target)
    tmpl = StructuredPruneConfig.from_dict({**cfg.to_dict(), "target": "ratio"})
    if not cfg.per_layer and tmpl.ratio == 0:
        tmpl.ratio = 0.5  # the shape of a uniform profile; only the scale matters
    peak = max([tmpl.ratio, *cfg.per_layer.values()])
    hi_scale = cfg.max_layer_ratio / peak if peak > 0 else 1.0

    def removed(scale: float, pinned: dict[str, float] | None = None) -> float:
        trial = copy.deepcopy(model)
        _prune_once(trial, example, tmpl, scale, data, loss_fn, criterion=criterion, pinned=pinned)
        return 1.0 - model_cost(trial, example, cfg.target) / base

    most = removed(hi_scale)
    if most < cfg.amount:
        kept = sorted(set(_excluded(model, example, cfg)) | set(frozen_layers(model)))
        rounding = (f" with round_to={cfg.round_to} (layers of {cfg.round_to} channels or fewer stay whole)"
                    if cfg.round_to and cfg.round_to > 1 else "")
        raise StructuredPruneError(
            f"only {most:.1%} of the {cfg.target} can go, {cfg.amount:.0%} asked; layers kept intact: {kept} "
            f"(at max_layer_ratio={cfg.max_layer_ratio}{rounding})")
    lo, hi, at_hi = _bisect(removed, cfg.amount, 0.0, hi_scale, most)
    pinned: dict[str, float] = {}
    if not cfg.round_to or cfg.round_to <= 1 or cfg.global_ranking:
        return hi, tmpl, pinned
    for _ in range(3):       # each round pins one of the layers that step between lo and hi
        if at_hi - cfg.amount <= _TOLERANCE:
            break
        below, above = (_rounded_layer_ratios(model, example, tmpl, s, pinned) for s in (lo, hi))
        unscaled = _layer_ratios(model, example, tmpl, lo, pinned)
        best = None
        for n in [n for n in below if below[n] != above[n] and n not in pinned][:3]:
            more = {**pinned, n: unscaled[n]}
            again = functools.partial(removed, pinned=more)
            top = again(hi_scale)
            if top >= cfg.amount:
                found = _bisect(again, cfg.amount, lo, hi_scale, top)
                if found[2] < (best[0][2] if best else at_hi):
                    best = (found, more)
        if best is None:
            break
        log.debug("structured target %.0f%%: %.1f%% -> %.1f%% with %s pinned", 100 * cfg.amount,
                  100 * at_hi, 100 * best[0][2], sorted(best[1]))
        (lo, hi, at_hi), pinned = best
    return hi, tmpl, pinned


def prune_channels_(model: nn.Module, config: StructuredPruneConfig | None = None,
                    example_input: torch.Tensor | None = None, data: Iterable | None = None, *,
                    finetune: Finetune | None = None, loss_fn: LossFn | None = None,
                    importance: "str | Criterion | Importance | None" = None) -> nn.Module:
    """Remove channels in place (physically); returns ``model``.

    ``example_input``: one real-shaped input (traced to find dependencies; its output shape is
    checked after surgery). ``data``: real ``(x, y)`` batches for Taylor importance and, with
    ``config.finetune``, recovery between iterative steps; ``finetune(model) -> model`` (the user's
    loop) takes precedence. ``importance`` overrides ``config.importance``: a registered criterion's
    name, a :class:`~autocompress.prune.importance.Criterion`, a per-weight callable
    ``(weight, taylor) -> scores`` (channels ranked by their summed scores) or a torch-pruning
    importance. On failure the model is restored and :class:`StructuredPruneError` names the layers.
    """
    cfg = config or StructuredPruneConfig()
    if not (isinstance(example_input, torch.Tensor) or (isinstance(example_input, (dict, tuple)) and example_input)):
        raise ValueError("prune_channels_ needs example_input: a tensor shaped like a real input batch "
                         "(or a tuple / dict of them, e.g. {'input_ids': ..., 'attention_mask': ...})")
    check_names_exist(model, cfg.exclude, "StructuredPruneConfig.exclude")
    check_names_exist(model, cfg.per_layer, "StructuredPruneConfig.per_layer")
    loader = as_loader(data, cfg.finetune.batch_size if cfg.finetune else 128) if data is not None else None
    _, needs_data, crit_name = group_importance(cfg.importance if importance is None else importance)
    if needs_data and loader is None:
        raise ValueError(f"prune_channels_: criterion {crit_name!r} needs data: pass real (x, y) batches")
    if finetune is None and cfg.finetune is not None:
        if loader is None:
            raise ValueError("prune_channels_: StructuredPruneConfig.finetune is set but no data was given")
        finetune = make_finetune(loader, cfg.finetune, loss_fn=loss_fn)
    frozen = frozen_layers(model)
    if frozen:
        log.debug("structured pruning keeps %s intact (%s: not rebuildable)", sorted(frozen),
                 ", ".join(sorted({type(m).__name__ for m in frozen.values()})))
    ref = _forward(model, example_input)
    before = {m: model_cost(model, example_input, m) for m in ("params", "macs")}
    scale, run_cfg, pinned = 1.0, cfg, {}
    if cfg.target != "ratio":
        scale, run_cfg, pinned = _solve_scale(model, example_input, cfg, loader, loss_fn, importance)
    for step in range(1, cfg.steps + 1):
        backup = copy.deepcopy(model)
        try:
            _prune_once(model, example_input, run_cfg, scale, loader, loss_fn, step, cfg.steps, importance,
                        pinned)
            out = _forward(model, example_input)
        except StructuredPruneError as e:
            _restore(model, backup)
            raise StructuredPruneError(f"structured pruning of {type(model).__name__} failed and was undone: "
                                       f"{e}") from e
        except Exception as e:  # noqa: BLE001 - restore, then report with the layer that broke
            where = _failing_layer(model, example_input)
            _restore(model, backup)
            at = f" in layer {where!r} ({type(backup.get_submodule(where)).__name__})" if where else ""
            raise StructuredPruneError(f"structured pruning of {type(model).__name__} failed and was undone: the "
                                       f"pruned model no longer runs{at}: {type(e).__name__}: {e}") from e
        if out.shape != ref.shape:
            changed = [n for (n, a), (_, b) in zip(backup.named_parameters(), model.named_parameters())
                       if a.shape != b.shape]
            _restore(model, backup)
            raise StructuredPruneError(f"output shape changed {tuple(ref.shape)} -> {tuple(out.shape)} after "
                                       f"pruning {changed[:8]}; model restored. Exclude the layer that "
                                       f"produces the output (keep_classifier=True or exclude=[...])")
        if finetune is not None:
            model = finetune(model) or model
    after = {m: model_cost(model, example_input, m) for m in ("params", "macs")}
    log.debug("structured pruning: params %d -> %d (%.2fx), MACs %d -> %d (%.2fx)", before["params"],
             after["params"], before["params"] / max(after["params"], 1), before["macs"], after["macs"],
             before["macs"] / max(after["macs"], 1))
    return model


def channel_counts(model: nn.Module) -> dict[str, int]:
    """Output channels / features of each Conv / Linear (handy to show what pruning left)."""
    return {n: (m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features)
            for n, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))}


def removal_fn(model: nn.Module, example: torch.Tensor, metric: Literal["params", "macs"] = "macs",
               config: StructuredPruneConfig | None = None) -> Callable[[dict[str, float]], float]:
    """``cost(per_layer_ratios) -> fraction of params/MACs removed``, measured by pruning a copy.
    Pass it to :func:`allocate_ratios` so a structured target is met exactly."""
    base_cfg = config or StructuredPruneConfig()
    base = model_cost(model, example, metric)

    def cost(ratios: dict[str, float]) -> float:
        trial = copy.deepcopy(model)
        cfg = StructuredPruneConfig.from_dict({**base_cfg.to_dict(), "target": "ratio", "ratio": 0.0,
                                               "per_layer": dict(ratios), "steps": 1, "finetune": None})
        _prune_once(trial, example, cfg, 1.0, None, None)
        return 1.0 - model_cost(trial, example, metric) / base

    return cost
