"""Distillation from the original model: no step of its own; when the recipe sets ``distill``,
every step's fine-tune is distilled (the trial's ``ctx.train``, search/steps.loss_for) with this
technique's ``temperature`` and ``alpha``, so a replayed recipe distils exactly as its trial did."""

from __future__ import annotations

from dataclasses import dataclass

from autocompress.config import Config, ConfigError
from autocompress.techniques.registry import Choice, Technique, register

# T=2, alpha=0.5: the original is nearly one-hot on its own training images, so a hotter
# temperature or a heavier soft weight recovered less in short fine-tunes (bench_storage)
TEMPERATURE, ALPHA = 2.0, 0.5


@dataclass
class Distill(Config):
    """Fine-tunes distilled from the original model (listed in a recipe: on). ``temperature``
    softens both models' logits; ``alpha`` weighs the soft-target loss (1 - alpha: the labels)."""
    distill: bool = True
    temperature: float = TEMPERATURE
    alpha: float = ALPHA

    def validate(self) -> None:
        if self.temperature <= 0:
            raise ConfigError(f"distill.temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"distill.alpha must be in [0, 1], got {self.alpha}")


def _describe(r) -> str:
    if r.is_post_training:          # a recipe that fine-tunes nothing distils nothing
        return ""
    if (r.temperature, r.alpha) == (TEMPERATURE, ALPHA):
        return "distilled"
    return f"distilled (T={r.temperature:g}, alpha={r.alpha:g})"


TECHNIQUE = register(Technique(
    "distill", fields=("distill", "temperature", "alpha"), config=Distill, active=lambda r: r.distill,
    describe=_describe, post_training=lambda r: True,
    choices=(Choice("distill", (True, False), False),),
    to_recipe=lambda p: dict(distill=bool(p.get("distill", False))),
    from_recipe=lambda r: dict(distill=r.distill)))
