"""A near miss gets a longer fine-tune: the one follow-up the search itself proposes.

A fragile model tells "too much compression" from "too short a fine-tune" only by training
longer. SmallResNet (16 channels, 0.3 points allowed) lost 0.39 points with 20 % of its time cut
and two epochs of fine-tune, the sampler's next guesses were unrelated recipes, and the search
ended on the 15 % cut (1.18x). The same cut with four epochs is the obvious next trial: a
trial that completes, misses the budget on accuracy alone, by at most ``NEAR`` times the
allowed drop, and would beat the best feasible trial on the objective is enqueued again with
the next fine-tune length on the grid, when the time left pays for it. Each recipe is followed
up once at most (the longer one may itself be followed up, up to the grid's end).
"""

from __future__ import annotations

import logging

from autocompress.search import budget_rules, space as space_mod
from autocompress.search.recipe import Recipe

log = logging.getLogger(__name__)

NEAR = 3.0          # a miss of at most this many allowed drops is near (MobileNetV3: -50 % of
#                     its MACs after 1 epoch missed a 0.3-point budget by 0.46 points)
LONGER = 1.5        # the follow-up's fine-tune is at least this much longer than the miss's


def _key(attrs: dict, objective: str) -> float | None:
    """The objective's figure (smaller is better), or None when the objective has none here."""
    if objective == "fastest":
        lat, base = attrs.get("latency_ms"), attrs.get("base_latency_ms")
        return lat / base if lat and base else None
    if objective == "smallest":
        return attrs.get("size_bytes")
    return None


def follow_up(study, trial, shared, deadline) -> Recipe | None:
    """Enqueue the longer fine-tune of ``trial``'s recipe when it is a near miss (module doc);
    returns the recipe enqueued, or None."""
    budget = shared.budget
    a = trial.user_attrs
    if trial.state.name != "COMPLETE" or not a.get("violations") or shared.ctx.finetune is not None:
        return None      # met, failed, stopped; or the user's own loop, whose length is theirs
    names = [r.name for r in budget_rules.active(budget)]
    cons = dict(zip(names, a.get("constraints", [])))
    if any(v > 0 for k, v in cons.items() if k != "accuracy"):
        return None      # a longer fine-tune wins back accuracy, nothing else
    floor = budget.allowed_accuracy(shared.base["accuracy"])
    miss = floor - a.get("val_accuracy", 0.0)
    if not 0 < miss <= NEAR * (shared.base["accuracy"] - floor):
        return None
    mine = _key(a, budget.objective)
    feasible = [_key(t.user_attrs, budget.objective) for t in study.get_trials(deepcopy=False)
                if t.state.name == "COMPLETE" and not t.user_attrs.get("violations", ["?"])]
    feasible = [k for k in feasible if k is not None]
    if mine is None or (feasible and mine >= min(feasible)):
        return None      # even met, it would not be the best
    recipe = Recipe.from_dict(a["recipe"])
    if recipe.finetune_epochs <= 0:
        return None      # a post-training candidate: a fine-tuned one is another recipe
    grid = sorted(float(e) for e in space_mod.choices()["finetune_epochs"][1])
    longer = [e for e in grid if e >= LONGER * recipe.finetune_epochs]
    epoch_s = shared.ctx.epoch_s
    if not longer or not epoch_s:
        return None
    epochs = longer[0]
    from autocompress.search.trial import FIT_MARGIN
    if epochs * epoch_s > FIT_MARGIN * (deadline.search_remaining() - deadline.tail_s):
        log.info("trial %d missed by %.2f points; %g epochs would not fit the time left",
                 trial.number, 100 * miss, epochs)
        return None
    useful = space_mod.useful(budget, shared.techniques)
    params = space_mod.to_params(Recipe.from_dict({**recipe.to_dict(), "finetune_epochs": epochs}), useful)
    if any(t.params == params or t.system_attrs.get("fixed_params") == params   # run, or waiting to
           for t in study.get_trials(deepcopy=False)):
        return None
    study.enqueue_trial(params, skip_if_exists=True)
    log.info("trial %d missed the accuracy floor by %.2f points: enqueued again with %g epochs of fine-tune",
             trial.number, 100 * miss, epochs)
    return space_mod.from_params(params)
