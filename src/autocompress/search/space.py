"""The search space: recipes as Optuna parameters, and the cheap-first seed recipes.

The space is static (same parameters every trial) so Optuna's multivariate TPE can model it;
a technique the user did not allow is simply pinned to "off".
"""

from __future__ import annotations

import math
from typing import Sequence

from autocompress.search.budget import Budget
from autocompress.search.recipe import Recipe

from autocompress import techniques as _tech


def choices(kind: str | None = None) -> dict[str, tuple[str | None, list, object]]:
    """parameter -> (technique that enables it, choices, value when the technique is off), from
    the technique registry (then the parameters every recipe has); ``kind="speed"`` (a budget
    that asks for speed alone, :func:`kind`) takes the choices' ``speed_values`` where given."""
    def vals(c) -> list:
        return list(c.speed_values if kind == "speed" and c.speed_values is not None else c.values)
    out = {c.name: (t.name, vals(c), c.off) for t in _tech.all_techniques() for c in t.choices}
    return out | {c.name: (None, vals(c), c.off) for c in _tech.COMMON}


def kind(budget: Budget) -> str | None:
    """"size" or "speed" when the budget asks for one of them alone, else None (both, or neither)."""
    size = budget.min_size_ratio is not None or budget.max_size_bytes is not None or budget.objective == "smallest"
    speed = budget.min_speedup is not None or budget.max_latency_ms is not None or budget.objective == "fastest"
    return None if size == speed else ("size" if size else "speed")


def __getattr__(name: str):
    if name == "CHOICES":   # computed on each access: techniques may be registered after import
        return choices()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def useful(budget: Budget, techniques: Sequence[str]) -> tuple[str, ...]:
    """The techniques that can serve this budget (each declares the kinds it serves: ONNX Runtime
    runs sparse and clustered weights densely, so they cannot make a model faster; physically
    removed channels are a poor way to make it small next to sparsity + clustering). A budget
    with both a size and a speed target, or neither, keeps everything."""
    k = kind(budget)
    if k is None:
        return tuple(techniques)
    return tuple(t for t in techniques if k in _tech.get(t).serves)


def sample(trial, budget: Budget, techniques: Sequence[str]) -> Recipe:
    p = {}
    techniques = useful(budget, techniques)
    for name, (tech, values, off) in choices(kind(budget)).items():
        if tech is None or tech in techniques:
            p[name] = trial.suggest_categorical(name, values)
        else:
            p[name] = off
    return from_params(p)


def from_params(p: dict) -> Recipe:
    kwargs: dict = {"options": {}}
    for t in _tech.all_techniques():
        kw = t.recipe_kwargs(p)
        kwargs["options"].update(kw.pop("options", {}))
        kwargs.update(kw)
    kwargs["finetune_epochs"] = float(p.get("finetune_epochs", 1.0))
    return Recipe(**kwargs)


def to_params(r: Recipe, techniques: Sequence[str]) -> dict:
    """Inverse of :func:`from_params`, for enqueueing seed recipes (values snapped to the grid)."""
    raw = {"finetune_epochs": r.finetune_epochs}
    for t in _tech.all_techniques():
        raw |= t.raw_params(r)
    out = {}
    for name, (tech, values, _off) in choices().items():
        if tech is None or tech in techniques:
            v = raw[name]
            out[name] = v if v in values else min(
                values, key=lambda c: abs(float(c) - float(v)) if not isinstance(c, str) else 1)
    return out


SEED_EPOCHS = (1.0, 2.0, 4.0, 8.0)   # the fine-tune of seed level i: stronger settings need longer


def seed_recipes(budget: Budget, techniques: Sequence[str], quick: bool = False, *,
                 sensitivity: dict | None = None, epoch_s: float | None = None,
                 search_s: float = math.inf) -> list[Recipe]:
    """Known-good starting points, cheapest first, from what the techniques declare: their
    post-training settings (int8 PTQ; trained for 0 epochs), then for each kind of target the
    budget has, level i of every allowed technique serving it combined (mild settings with short
    fine-tunes first), then the strongest with the post-training settings on top. The sampler
    explores around them. A technique whose levels its measured ``sensitivity`` can place
    (``Technique.sensitivity_seeds``) gets them from the curves, plus a ratio they call free
    tried with no fine-tune; every fine-tune is capped to what the measured ``epoch_s`` lets
    ``search_s`` pay for (``search/seeds.py``)."""
    from autocompress.search import seeds as seeds_mod

    has = [_tech.get(t) for t in techniques]
    sens = sensitivity or {}
    base = {"distill": "distill" in techniques}
    seeds: list[dict] = [dict(t.post_training_seed, finetune_epochs=0.0) for t in has if t.post_training_seed]
    size = budget.objective in ("smallest", "pareto") or bool(budget.min_size_ratio or budget.max_size_bytes)
    speed = budget.objective == "fastest" or bool(budget.min_speedup)
    derived = {t.name: seeds_mod.derived_levels(t, sens.get(t.name), budget, choices()) for t in has}
    levels: dict[str, list[dict]] = {}
    for kind in [k for k, wanted in (("speed", speed), ("size", size)) if wanted]:
        serving = [t for t in has if kind in t.serves and t.seed_levels]
        seeds += [dict(d["free"], finetune_epochs=0.0) for t in serving
                  if (d := derived[t.name]) is not None and d["free"]]
        levels[kind] = _levels(serving, derived)
        seeds += levels[kind]
        post = {k: v for t in has if kind in t.serves and t.post_training_seed for k, v in t.post_training_seed.items()}
        # stacked on the strongest level for size (savings compound); not for speed: whether int8
        # is faster depends on the runtime's kernels (no VNNI here: structured 0.9 alone ran 6.45x,
        # with int8 on top 3.09x), and the post-training seed alone already measures that
        if levels[kind] and post and kind == "size":
            seeds.append(levels[kind][-1] | post)
    if budget.objective == "pareto":
        # a front wants a point that is both smaller and faster: the second level of everything
        both = _levels([t for t in has if t.seed_levels], derived)
        if len(both) > 1:
            seeds.append(both[1])
    if budget.objective == "most_accurate":
        seeds += _levels([t for t in has if "size" in t.serves and t.seed_levels], derived)[:1]
    recipes = [from_params(base | s) for s in seeds]
    recipes = recipes[:3] if quick else recipes
    return seeds_mod.cap_epochs(recipes, epoch_s, search_s, list(choices()["finetune_epochs"][1]))


def _levels(techs, derived: dict | None = None) -> list[dict]:
    """Level i of every technique combined (one with fewer levels keeps its last), with the
    fine-tune of that level; levels the sensitivity placed replace the declared ones."""
    derived = derived or {}
    lv = {t.name: (derived.get(t.name) or {}).get("levels") or t.seed_levels for t in techs}
    n = max((len(v) for v in lv.values()), default=0)
    return [{k: v for t in techs for k, v in lv[t.name][min(i, len(lv[t.name]) - 1)].items()}
            | {"finetune_epochs": SEED_EPOCHS[min(i, len(SEED_EPOCHS) - 1)]} for i in range(n)]
