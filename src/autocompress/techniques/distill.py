"""Distillation from the original model: no step of its own; when the recipe sets ``distill``,
every step's fine-tune is distilled (the trial's ``ctx.train``, search/steps.loss_for)."""

from __future__ import annotations

from dataclasses import dataclass

from autocompress.config import Config
from autocompress.techniques.registry import Choice, Technique, register


@dataclass
class Distill(Config):
    """Fine-tunes distilled from the original model (listed in a recipe: on)."""
    distill: bool = True

TECHNIQUE = register(Technique(
    "distill", fields=("distill",), config=Distill, active=lambda r: r.distill,
    # a recipe that fine-tunes nothing distils nothing
    describe=lambda r: "" if r.is_post_training else "distilled", post_training=lambda r: True,
    choices=(Choice("distill", (True, False), False),),
    to_recipe=lambda p: dict(distill=bool(p.get("distill", False))),
    from_recipe=lambda r: dict(distill=r.distill)))
