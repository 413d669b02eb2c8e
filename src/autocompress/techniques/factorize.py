"""Low-rank factorization (``factorize_``): each layer split into two keeping ``rank_energy`` of
its spectral energy, where that makes it smaller. Serves size and speed budgets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from autocompress.config import Config, ConfigError
from autocompress.techniques._common import reestimate_bn
from autocompress.techniques.registry import Choice, Step, Technique, register, share

if TYPE_CHECKING:   # torch is imported where a step runs: the registry stays light
    from torch import nn


@dataclass
class Factorize(Config):
    """Each layer keeps ``rank_energy`` of its spectral energy (None: not factorized)."""
    rank_energy: float | None = None

    def validate(self) -> None:
        if self.rank_energy is not None and not 0.0 < self.rank_energy <= 1.0:
            raise ConfigError(f"factorize.rank_energy must be in (0, 1], got {self.rank_energy}")


def run(model: nn.Module, recipe, ctx) -> nn.Module:
    from autocompress.factorize import FactorizeConfig, factorize_
    model = factorize_(model, FactorizeConfig(energy=recipe.rank_energy))
    reestimate_bn(model, ctx)
    return ctx.train(model, recipe, share(recipe, run), desc="recover low-rank", accelerate=True)


TECHNIQUE = register(Technique(
    "factorize", fields=("rank_energy",),
    choices=(Choice("rank_energy", (1.0, 0.99, 0.97, 0.95, 0.9), 1.0),),
    steps=(Step(lambda r: r.rank_energy is not None, run, 0.3),),
    config=Factorize, describe=lambda r: f"low-rank {r.rank_energy:.0%} energy",
    to_recipe=lambda p: dict(rank_energy=None if float(p.get("rank_energy", 1.0)) >= 1.0
                             else float(p["rank_energy"])),
    from_recipe=lambda r: dict(rank_energy=r.rank_energy or 1.0)))
