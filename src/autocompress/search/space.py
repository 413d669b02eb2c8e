"""The search space: recipes as Optuna parameters, and the cheap-first seed recipes.

The space is static (same parameters every trial) so Optuna's multivariate TPE can model it;
a technique the user did not allow is simply pinned to "off".
"""

from __future__ import annotations

from typing import Sequence

from autocompress.search.budget import Budget
from autocompress.search.recipe import Recipe

# parameter -> (technique that enables it, choices, value when the technique is off)
CHOICES: dict[str, tuple[str | None, list, object]] = {
    "structured_ratio": ("structured", [0.0, 0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9], 0.0),
    "round_to": ("structured", [1, 8, 16], 8),
    "rank_energy": ("factorize", [1.0, 0.99, 0.97, 0.95, 0.9], 1.0),
    "sparsity": ("prune", [0.0, 0.5, 0.7, 0.8, 0.9, 0.92, 0.94, 0.96, 0.97], 0.0),
    "cluster_bits": ("cluster", [0, 3, 4, 5, 6], 0),
    "quant": ("quantize", ["none", "int8", "mixed", "qat"], "none"),
    "weight_bits": ("quantize", [2, 4, 8], 8),
    "distill": ("distill", [True, False], False),
    "finetune_epochs": (None, [0.5, 1.0, 2.0, 4.0, 8.0], 1.0),
}


def useful(budget: Budget, techniques: Sequence[str]) -> tuple[str, ...]:
    """The techniques that can serve this budget. ONNX Runtime runs sparse and clustered weights
    densely, so they cannot make a model faster; physically removed channels are a poor way to
    make it small next to sparsity + clustering. A budget with both a size and a speed target
    keeps everything."""
    size = budget.min_size_ratio is not None or budget.max_size_bytes is not None or budget.objective == "smallest"
    speed = budget.min_speedup is not None or budget.max_latency_ms is not None or budget.objective == "fastest"
    drop = set()
    if speed and not size:
        drop |= {"prune", "cluster"}
    if size and not speed:
        drop |= {"structured"}
    return tuple(t for t in techniques if t not in drop)


def sample(trial, budget: Budget, techniques: Sequence[str]) -> Recipe:
    p = {}
    techniques = useful(budget, techniques)
    for name, (tech, choices, off) in CHOICES.items():
        if tech is None or tech in techniques:
            p[name] = trial.suggest_categorical(name, choices)
        else:
            p[name] = off
    return from_params(p)


def from_params(p: dict) -> Recipe:
    return Recipe(
        structured_ratio=float(p.get("structured_ratio", 0.0)),
        round_to=int(p.get("round_to", 8)),
        rank_energy=None if float(p.get("rank_energy", 1.0)) >= 1.0 else float(p["rank_energy"]),
        sparsity=float(p.get("sparsity", 0.0)),
        cluster_bits=int(p.get("cluster_bits", 0)) or None,
        quant=p.get("quant", "none"),
        weight_bits=int(p.get("weight_bits", 8)) if p.get("quant") in ("qat", "mixed") else 8,
        distill=bool(p.get("distill", False)),
        finetune_epochs=float(p.get("finetune_epochs", 1.0)),
    )


def to_params(r: Recipe, techniques: Sequence[str]) -> dict:
    """Inverse of :func:`from_params`, for enqueueing seed recipes (values snapped to the grid)."""
    raw = {
        "structured_ratio": r.structured_ratio, "round_to": r.round_to, "rank_energy": r.rank_energy or 1.0,
        "sparsity": r.sparsity, "cluster_bits": r.cluster_bits or 0, "quant": r.quant,
        "weight_bits": r.weight_bits, "distill": r.distill, "finetune_epochs": r.finetune_epochs,
    }
    out = {}
    for name, (tech, choices, _off) in CHOICES.items():
        if tech is None or tech in techniques:
            v = raw[name]
            out[name] = v if v in choices else min(
                choices, key=lambda c: abs(float(c) - float(v)) if not isinstance(c, str) else 1)
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
