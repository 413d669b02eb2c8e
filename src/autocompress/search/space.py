"""The search space: recipes as Optuna parameters, and the cheap-first seed recipes.

The space is static (same parameters every trial) so Optuna's multivariate TPE can model it;
a technique the user did not allow is simply pinned to "off".
"""

from __future__ import annotations

from typing import Sequence

from autocompress.search.budget import Budget
from autocompress.search.recipe import Recipe

from autocompress import techniques as _tech


def choices() -> dict[str, tuple[str | None, list, object]]:
    """parameter -> (technique that enables it, choices, value when the technique is off), from
    the technique registry (then the parameters every recipe has)."""
    out = {c.name: (t.name, list(c.values), c.off) for t in _tech.all_techniques() for c in t.choices}
    return out | {c.name: (None, list(c.values), c.off) for c in _tech.COMMON}


def __getattr__(name: str):
    if name == "CHOICES":   # computed on each access: techniques may be registered after import
        return choices()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def useful(budget: Budget, techniques: Sequence[str]) -> tuple[str, ...]:
    """The techniques that can serve this budget (each declares the kinds it serves: ONNX Runtime
    runs sparse and clustered weights densely, so they cannot make a model faster; physically
    removed channels are a poor way to make it small next to sparsity + clustering). A budget
    with both a size and a speed target, or neither, keeps everything."""
    size = budget.min_size_ratio is not None or budget.max_size_bytes is not None or budget.objective == "smallest"
    speed = budget.min_speedup is not None or budget.max_latency_ms is not None or budget.objective == "fastest"
    if size == speed:
        return tuple(techniques)
    kind = "size" if size else "speed"
    return tuple(t for t in techniques if kind in _tech.get(t).serves)


def sample(trial, budget: Budget, techniques: Sequence[str]) -> Recipe:
    p = {}
    techniques = useful(budget, techniques)
    for name, (tech, values, off) in choices().items():
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


def seed_recipes(budget: Budget, techniques: Sequence[str], quick: bool = False) -> list[Recipe]:
    """Known-good starting points, cheapest first (post-training only, then short fine-tunes,
    then the strong combinations). The sampler explores around them afterwards."""
    has = set(techniques)
    d = "distill" in has
    seeds: list[Recipe] = []
    if "quantize" in has:
        seeds.append(Recipe(quant="int8", finetune_epochs=0.5))
    if budget.objective in ("fastest",) or budget.min_speedup:
        if "structured" in has:
            # int8 kernels pay off on wide layers (measured ~4x at batch 64 on LeNet-5) but their
            # quantize/dequantize overhead can eat the gain on thin pruned ones: try both
            q = "int8" if "quantize" in has else "none"
            seeds += [Recipe(structured_ratio=0.5, quant=q, distill=d, finetune_epochs=1.0),
                      Recipe(structured_ratio=0.8, distill=d, finetune_epochs=4.0),
                      Recipe(structured_ratio=0.9, distill=d, finetune_epochs=8.0),
                      Recipe(structured_ratio=0.9, quant=q, distill=d, finetune_epochs=8.0)]
    if budget.objective in ("smallest", "pareto") or budget.min_size_ratio or budget.max_size_bytes:
        if "prune" in has and "cluster" in has:
            seeds += [Recipe(sparsity=0.8, cluster_bits=5, distill=d, finetune_epochs=1.0),
                      Recipe(sparsity=0.9, cluster_bits=4, distill=d, finetune_epochs=2.0),
                      Recipe(sparsity=0.94, cluster_bits=4, distill=d, finetune_epochs=4.0),
                      Recipe(sparsity=0.96, cluster_bits=3, distill=d, finetune_epochs=8.0)]
        elif "prune" in has:
            seeds += [Recipe(sparsity=0.9, distill=d, finetune_epochs=1.0),
                      Recipe(sparsity=0.94, distill=d, finetune_epochs=2.0)]
        elif "cluster" in has:
            seeds += [Recipe(cluster_bits=5, finetune_epochs=0.5)]
    if budget.objective == "pareto" and "structured" in has:
        seeds.append(Recipe(structured_ratio=0.6, sparsity=0.9 if "prune" in has else 0.0,
                            cluster_bits=5 if "cluster" in has else None, distill=d, finetune_epochs=2.0))
    if budget.objective == "most_accurate" and "prune" in has:
        seeds.append(Recipe(sparsity=0.8, distill=d, finetune_epochs=1.0))
    if quick:
        seeds = seeds[:3]
    return seeds
