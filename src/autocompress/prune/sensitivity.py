"""Sensitivity analysis: how much each layer can be pruned alone, and per-layer ratios from it.

``sensitivity`` prunes one layer at a time at several ratios and records the validation metric
(use a subset: it runs ``layers x ratios`` evaluations). ``allocate_ratios`` turns the curves into
per-layer ratios for a global target: every layer is pruned up to the same tolerated metric drop,
so sensitive layers are pruned less (Han et al. 2015, sec. 3.2; Distiller's sensitivity analysis).
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from autocompress.prune.importance import ImportanceName, get_criterion
from autocompress.prune.structured import (StructuredPruneConfig, StructuredPruneError, model_cost,
                                           prunable_layers, prune_channels_)
from autocompress.prune.targets import ALL_KINDS, LayerKind, find_targets, matches
from autocompress.prune.unstructured import _lowest
from autocompress.train import evaluate as _evaluate

log = logging.getLogger(__name__)

EvaluateFn = Callable[[nn.Module], float]
DEFAULT_RATIOS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)


@dataclass
class SensitivityResult:
    """``scores[layer][i]`` is the metric with only ``layer`` pruned at ``ratios[i]``."""

    kind: Literal["unstructured", "structured"]
    ratios: list[float]
    baseline: float
    scores: dict[str, list[float]]
    sizes: dict[str, int] = field(default_factory=dict)   # weights (unstructured) / params of the layer
    # costs[layer][i]: fraction of the model's cost (weights, or MACs for structured) that pruning
    # only this layer at ratios[i] removes; derived from sizes when empty
    costs: dict[str, list[float]] = field(default_factory=dict)

    def drops(self, layer: str) -> list[float]:
        return [self.baseline - s for s in self.scores[layer]]

    def cost_curve(self, layer: str) -> list[float]:
        if layer in self.costs:
            return self.costs[layer]
        total = sum(self.sizes.get(n, 1) for n in self.scores)
        return [self.sizes.get(layer, 1) * r / total for r in self.ratios]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SensitivityResult":
        missing = {"kind", "ratios", "baseline", "scores"} - set(d)
        if missing:
            raise ValueError(f"SensitivityResult.from_dict: missing keys {sorted(missing)}")
        return cls(d["kind"], [float(r) for r in d["ratios"]], float(d["baseline"]),
                   {k: [float(x) for x in v] for k, v in d["scores"].items()},
                   {k: int(v) for k, v in d.get("sizes", {}).items()},
                   {k: [float(x) for x in v] for k, v in d.get("costs", {}).items()})

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> "SensitivityResult":
        p = Path(text_or_path)
        text = p.read_text() if not str(text_or_path).lstrip().startswith("{") and p.exists() else str(text_or_path)
        return cls.from_dict(json.loads(text))

    def plot(self, path: str | Path) -> Path:
        """Metric vs ratio, one line per layer (matplotlib, Agg backend: no display needed)."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for layer, ys in self.scores.items():
            ax.plot([0.0, *self.ratios], [self.baseline, *ys], marker="o", label=layer)
        ax.set_xlabel(f"{self.kind} pruning ratio (this layer only)")
        ax.set_ylabel("validation metric")
        ax.set_title("Per-layer pruning sensitivity")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def _as_evaluate(evaluate: EvaluateFn | Iterable) -> EvaluateFn:
    if callable(evaluate) and not hasattr(evaluate, "__iter__"):
        return evaluate
    loader = evaluate
    return lambda m: _evaluate(m, loader)


@torch.no_grad()
def _unstructured(model, evaluate, ratios, layers, exclude, kinds, importance, bar, stop):
    crit = get_criterion(importance)
    criterion = crit.scorer()
    if crit.needs_data:
        raise ValueError(f"sensitivity: criterion {crit.name!r} needs data; use a data-free one ('l1', 'l2', "
                         f"'random' or one registered without needs_data) for the analysis")
    scores, sizes = {}, {}
    for t in find_targets(model, kinds, layers, exclude):
        _check(stop, scores)
        w = t.param
        saved = w.detach().clone()
        s = criterion(w, None).float()
        curve = []
        for r in ratios:
            w.mul_(_lowest(s, round(r * w.numel())).view_as(w).to(w.dtype))
            curve.append(float(evaluate(model)))
            w.copy_(saved)
            bar.update(1)
        scores[t.name], sizes[t.name] = curve, w.numel()
    return scores, sizes, {}


def _structured(model, evaluate, baseline, ratios, layers, exclude, example, importance, bar, stop, after_prune):
    base_cfg = StructuredPruneConfig(ratio=0.0, importance=importance, exclude=list(exclude))
    names = [n for n in prunable_layers(model, example, base_cfg)
             if not layers or matches(layers, n)]
    scores, sizes, costs = {}, {}, {}
    base_macs = model_cost(model, example, "macs")
    for n in names:
        _check(stop, scores)
        curve, cost = [], []
        for r in ratios:
            trial = copy.deepcopy(model)
            try:
                prune_channels_(trial, StructuredPruneConfig(ratio=0.0, per_layer={n: r}, importance=importance,
                                                             exclude=list(exclude)), example)
            except StructuredPruneError as e:
                log.debug("sensitivity: layer %r cannot be pruned at %.2f (%s); skipped", n, r, e)
                curve = None
                break
            cost.append(1.0 - model_cost(trial, example, "macs") / base_macs)
            if cost[-1] <= 1e-9:         # nothing removed: the model as it is
                curve.append(baseline)
            else:
                if after_prune is not None:
                    after_prune(trial)
                curve.append(float(evaluate(trial)))
            bar.update(1)
        if curve is not None and max(cost) <= 1e-9:
            # its channels belong to a coupled group led by another layer (a residual add's
            # inputs): pruning it alone removes nothing, and timing a no-op only measures noise
            log.debug("sensitivity: pruning %r alone removes no MACs; skipped", n)
        elif curve is not None:
            scores[n], costs[n] = curve, cost
            sizes[n] = sum(p.numel() for p in dict(model.named_modules())[n].parameters())
    return scores, sizes, costs


def _check(stop, scores) -> None:
    if stop is not None and stop():
        raise TimeoutError(f"sensitivity: time allowed ran out after {len(scores)} layer(s)")


def sensitivity(model: nn.Module, evaluate: EvaluateFn | Iterable, ratios: Iterable[float] = DEFAULT_RATIOS,
                kind: Literal["unstructured", "structured"] = "unstructured", *,
                example_input: torch.Tensor | None = None, layers: Iterable[str] = (),
                exclude: Iterable[str] = (), kinds: Iterable[LayerKind] = ALL_KINDS,
                importance: ImportanceName = "l1", progress: bool = False,
                stop: Callable[[], bool] | None = None,
                after_prune: Callable[[nn.Module], object] | None = None) -> SensitivityResult:
    """Prune each layer alone at each ratio and record ``evaluate(model)`` (or accuracy on a loader).

    ``model`` is left unchanged. ``kind='structured'`` needs ``example_input``. ``stop()`` is asked
    before each layer; when it answers True the analysis raises :class:`TimeoutError` (a partial
    analysis would mislead the allocation: unmeasured layers would look free to prune).
    ``after_prune(copy)`` is called on each channel-pruned copy before it is scored: the search
    re-estimates BatchNorm statistics there, as its trials do, or the stale statistics make every
    layer of a BN network look hopeless (SmallResNet: predicted drops of 36-84 points).
    """
    ratios = sorted(float(r) for r in ratios)
    if not ratios or not all(0.0 < r < 1.0 for r in ratios):
        raise ValueError(f"sensitivity: ratios must be in (0, 1), got {ratios}")
    if kind not in ("unstructured", "structured"):
        raise ValueError(f"sensitivity: kind must be 'unstructured' or 'structured', got {kind!r}")
    if kind == "structured" and example_input is None:
        raise ValueError("sensitivity(kind='structured') needs example_input")
    evaluate = _as_evaluate(evaluate)
    was = model.training
    model.eval()
    baseline = float(evaluate(model))
    layers, exclude = list(layers), list(exclude)
    with tqdm(desc=f"{kind} sensitivity", disable=not progress, leave=False) as bar:
        if kind == "unstructured":
            scores, sizes, costs = _unstructured(model, evaluate, ratios, layers, exclude, list(kinds), importance, bar, stop)
        else:
            scores, sizes, costs = _structured(model, evaluate, baseline, ratios, layers, exclude, example_input,
                                               importance, bar, stop, after_prune)
    model.train(was)
    if not scores:
        raise ValueError(f"sensitivity: no prunable layer in {type(model).__name__} (layers={layers}, "
                         f"exclude={exclude})")
    return SensitivityResult(kind, ratios, baseline, scores, sizes, costs)


# -- allocation ------------------------------------------------------------------------------

def _ratio_at(ratios: list[float], drops: list[float], tol: float) -> float:
    """Largest ratio whose (monotone envelope of) drop stays <= tol, interpolating linearly."""
    xs, ys, env = [0.0], [0.0], 0.0
    for r, d in zip(ratios, drops):
        env = max(env, d)               # a noisy dip must not allow a larger ratio than a smaller one
        xs.append(r)
        ys.append(env)
    best = 0.0
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if y1 <= tol:
            best = x1
            continue
        if y0 <= tol < y1:
            best = x0 + (x1 - x0) * (tol - y0) / (y1 - y0)
        break
    return best


def _envelope(drops: list[float]) -> list[float]:
    """Running max: a noisy dip must not make a larger ratio look safer than a smaller one."""
    out, env = [], 0.0
    for d in drops:
        env = max(env, d)
        out.append(env)
    return out


def _interp(xs: list[float], ys: list[float], x: float) -> float:
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1
    return ys[-1]


def allocate_ratios(sens: SensitivityResult, target: float, *,
                    cost: Callable[[dict[str, float]], float] | None = None,
                    method: Literal["marginal", "equal_drop"] = "marginal", iters: int = 40) -> dict[str, float]:
    """Per-layer ratios that remove ``target`` of the cost while losing the least metric.

    ``method="marginal"`` (default) equalises the metric lost *per unit of cost removed* across
    layers (a Lagrangian relaxation over the measured curves): a sensitive layer, or one whose
    pruning saves little (a small output layer; a cheap conv), is pruned less.
    ``method="equal_drop"`` prunes every layer up to the same tolerated drop (Han et al. 2015).
    ``target`` is measured by ``cost(ratios) -> fraction removed``; by default the sum of the
    per-layer cost curves (exact for unstructured sparsity over the analysed layers). For
    structured pruning pass :func:`removal_fn` so a MAC target is met exactly.
    Ratios never exceed the largest ratio that was analysed (no extrapolation).
    """
    if not 0.0 < target < 1.0:
        raise ValueError(f"allocate_ratios: target must be in (0, 1), got {target}")
    if method not in ("marginal", "equal_drop"):
        raise ValueError(f"allocate_ratios: method must be 'marginal' or 'equal_drop', got {method!r}")
    layers = list(sens.scores)
    xs = [0.0, *sens.ratios]
    env = {n: [0.0, *_envelope(sens.drops(n))] for n in layers}
    cst = {n: [0.0, *sens.cost_curve(n)] for n in layers}
    if cost is None:
        cost = lambda rs: sum(_interp(xs, cst[n], rs[n]) for n in layers)  # noqa: E731

    if method == "equal_drop":
        def at(knob: float) -> dict[str, float]:      # knob = tolerated drop
            return {n: _ratio_at(sens.ratios, sens.drops(n), knob) for n in layers}
        lo = min(0.0, min(min(sens.drops(n)) for n in layers)) - 1e-9
        hi = max(max(sens.drops(n)) for n in layers) + 1e-9
    else:
        def at(knob: float) -> dict[str, float]:      # knob = log10 of the price of cost in metric
            mu = 10.0 ** knob
            # lowest drop - mu * cost over the measured points; ties go to the smaller ratio
            return {n: xs[min(range(len(xs)), key=lambda i: (env[n][i] - mu * cst[n][i], xs[i]))]
                    for n in layers}
        lo, hi = -8.0, 8.0
    if cost(at(hi)) < target:
        raise ValueError(f"allocate_ratios: even at the largest analysed ratio ({max(sens.ratios)}) only "
                         f"{cost(at(hi)):.1%} is removed < target {target:.1%}; analyse larger ratios")
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if cost(at(mid)) >= target else (mid, hi)
    # between two neighbouring solutions the cost jumps: blend them to hit the target
    a, b = at(lo), at(hi)
    lo_w, hi_w = 0.0, 1.0
    for _ in range(iters):
        w = (lo_w + hi_w) / 2
        lo_w, hi_w = (lo_w, w) if cost({n: a[n] + w * (b[n] - a[n]) for n in layers}) >= target else (w, hi_w)
    out = {n: a[n] + hi_w * (b[n] - a[n]) for n in layers}
    log.debug("allocated ratios (%s): %s", method, {n: round(r, 3) for n, r in out.items()})
    return out
