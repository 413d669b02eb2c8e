"""Distillation from the original model: no step of its own; when the recipe sets ``distill``,
every step's fine-tune is distilled (the trial's ``ctx.train``, search/steps.loss_for)."""

from __future__ import annotations

from autocompress.techniques.registry import Choice, Technique, register

TECHNIQUE = register(Technique(
    "distill", fields=("distill",),
    choices=(Choice("distill", (True, False), False),),
    to_recipe=lambda p: dict(distill=bool(p.get("distill", False))),
    from_recipe=lambda r: dict(distill=r.distill)))
