"""Unstructured pruning (``prune_``): weights zeroed. ONNX Runtime runs sparse weights densely,
so this makes a model small (packed / entropy-coded), not fast: it serves size budgets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from autocompress.config import Config, ConfigError
from autocompress.techniques._common import allocate, follow_renames
from autocompress.techniques.registry import Choice, Step, Technique, register, share

if TYPE_CHECKING:   # torch is imported where a step runs: the registry stays light
    from torch import nn


@dataclass
class Sparsify(Config):
    """``sparsity`` of the weights zeroed, reached gradually while fine-tuning."""
    sparsity: float = 0.0

    def validate(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(f"prune.sparsity must be in [0, 1), got {self.sparsity}")


def run(model: nn.Module, recipe, ctx) -> nn.Module:
    """Reach ``sparsity`` gradually (polynomial schedule over 3 rounds with fine-tuning between),
    then a longer, gentler fine-tune with the masks enforced before the zeros become permanent
    (Han et al.'s iterative prune/retrain). Per-layer sparsities follow the sensitivity curves,
    else one global magnitude threshold."""
    from autocompress.prune import PruneConfig, make_permanent, prune_
    epochs = share(recipe, run)
    steps = 1 if epochs <= 0 else 3
    per_layer = follow_renames(model, allocate(ctx.sensitivity.get("prune"), recipe.sparsity))
    cfg = PruneConfig(sparsity=recipe.sparsity, scope="layer" if per_layer else "global", per_layer=per_layer,
                      schedule="polynomial" if steps > 1 else "oneshot", steps=steps, permanent=False)
    tune = (lambda m: ctx.train(m, recipe, 0.4 * epochs / steps, desc="prune round", accelerate=True)) \
        if epochs > 0 else None
    model = prune_(model, cfg, ctx.train_set, finetune=tune)
    model = ctx.train(model, recipe, 0.6 * epochs, desc="recover sparse", lr_scale=0.3, accelerate=True)
    return make_permanent(model)


def _sensitivity(model: nn.Module, evaluate, ratios, stop) -> dict:
    from autocompress.prune import sensitivity
    return sensitivity(model, evaluate, ratios=ratios, kind="unstructured", stop=stop).to_dict()


TECHNIQUE = register(Technique(
    "prune", serves=frozenset({"size"}), fields=("sparsity",),
    choices=(Choice("sparsity", (0.0, 0.5, 0.7, 0.8, 0.9, 0.92, 0.94, 0.96, 0.97), 0.0),),
    steps=(Step(lambda r: r.sparsity > 0, run, 0.6),),
    config=Sparsify, describe=lambda r: f"sparsity {r.sparsity:.0%}",
    seed_levels=tuple({"sparsity": s} for s in (0.8, 0.9, 0.94, 0.96)),
    layer_report=lambda m: {"sparsity": float((m.weight == 0).float().mean())},
    sensitivity=lambda ctx: {"ratios": (0.5, 0.8, 0.9, 0.95, 0.98), "measure": _sensitivity},
    to_recipe=lambda p: dict(sparsity=float(p.get("sparsity", 0.0))),
    from_recipe=lambda r: dict(sparsity=r.sparsity)))
