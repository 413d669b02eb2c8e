"""Weight sharing (``cluster_``): 2**bits centroids per layer, tuned, then stripped to plain
layers holding the shared values. Makes the stored model small, not fast: serves size budgets."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from autocompress.config import Config, ConfigError
from autocompress.techniques.registry import Choice, Step, Technique, register, share

if TYPE_CHECKING:   # torch is imported where a step runs: the registry stays light
    from torch import nn


@dataclass
class Cluster(Config):
    """2**``cluster_bits`` shared values per layer (convolutions one bit more)."""
    cluster_bits: int | None = None

    def validate(self) -> None:
        if self.cluster_bits is not None and not 1 <= self.cluster_bits <= 8:
            raise ConfigError(f"cluster.cluster_bits must be in 1..8, got {self.cluster_bits}")


def run(model: nn.Module, recipe, ctx) -> nn.Module:
    from autocompress.encode import ClusterConfig, cluster_, cluster_hooks, strip_clusters_
    # convolutions hold few weights but are sensitive: one bit more for them (the paper: 8 conv / 5 fc)
    cfg = ClusterConfig(bits=recipe.cluster_bits, conv_bits=min(8, recipe.cluster_bits + 1))
    model = cluster_(model, cfg)
    model = ctx.train(model, recipe, share(recipe, run), hooks=cluster_hooks(model), desc="tune centroids",
                      lr_scale=0.1, accelerate=True)
    return strip_clusters_(model)


def _stored_bits(m: nn.Module) -> int:
    """Bits per stored weight that the distinct values need (16 shared values: 4 bits), else 32."""
    import torch
    w = m.weight.detach()
    n = int(torch.unique(w[w != 0]).numel())
    return max(1, math.ceil(math.log2(n))) if 0 < n <= 256 else 32


TECHNIQUE = register(Technique(
    "cluster", serves=frozenset({"size"}), fields=("cluster_bits",),
    choices=(Choice("cluster_bits", (0, 3, 4, 5, 6), 0),),
    steps=(Step(lambda r: r.cluster_bits is not None, run, 0.15),),
    config=Cluster, describe=lambda r: f"cluster {r.cluster_bits}b", post_training=lambda r: True,
    seed_levels=tuple({"cluster_bits": b} for b in (5, 4, 4, 3)),
    layer_report=lambda m: {"bits": _stored_bits(m)},
    to_recipe=lambda p: dict(cluster_bits=int(p.get("cluster_bits", 0)) or None),
    from_recipe=lambda r: dict(cluster_bits=r.cluster_bits or 0)))
