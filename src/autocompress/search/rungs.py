"""Rung-based early stopping of hopeless trials (multi-fidelity search, our own successive halving).

Optuna's pruners refuse multi-objective studies (``trial.report`` raises), so the rule is here:
at fixed rungs of a trial's fine-tuning (a quarter and half of its steps) the model is scored on
a small fixed validation subset, and the score is kept with the trial (a user attribute, so it
works with SQLite and PostgreSQL storages and survives ``resume``). A trial is stopped when its
rung score is *clearly* below the budget's accuracy floor, by more than the subset's noise, even
after the largest recovery an earlier trial made from that rung to its end (a sparsity schedule
dips mid-way and climbs back), and below the median of what earlier trials scored at the same
rung. Margins are generous on
purpose: a stop must only ever hit recipes that cannot meet the budget, since a stopped trial
is never seen again.
"""

from __future__ import annotations

import logging
import math
import statistics
from typing import Callable, Iterable

log = logging.getLogger(__name__)

RUNGS = (0.25, 0.5)       # fractions of the trial's fine-tune steps at which it is scored
SUBSET = 300              # validation samples scored at a rung (the same ones every time)
MIN_MARGIN = 0.03         # 3 points: never stop a trial closer than this to the floor
N_SE = 3.0                # ... nor one within 3 binomial standard errors of the subset
SCHEDULE_DIP = 0.20       # a rung reached inside a sparsity schedule may still climb this much
ATTR = "rungs"            # user attribute: {"0.25": score, ...}
EARLY = "pruned early"    # note prefix of a trial the rule stopped
ENABLED = True            # off: no trial is scored at rungs (benchmarks measure what the stop saves)


class PrunedEarly(Exception):
    """Raised at a fine-tune step boundary when the rule stops the trial."""

    def __init__(self, message: str, score: float) -> None:
        super().__init__(message)
        self.score = score


def margin(floor: float, n: int) -> float:
    """How far below ``floor`` a score on ``n`` samples must be before it says anything."""
    p = min(max(floor, 0.0), 1.0)
    se = math.sqrt(max(p * (1 - p), 0.25 / n) / max(n, 1))   # never 0 at a floor of 100 %
    return max(MIN_MARGIN, N_SE * se)


def decide(score: float, floor: float, n: int, previous: Iterable[float],
           recoveries: Iterable[float] = ()) -> tuple[bool, str]:
    """(stop?, why) for a rung ``score`` on ``n`` samples, given earlier trials' scores at the
    same rung and how much earlier trials gained from that rung to their final validation score.
    With no earlier score there is nothing to compare with: go on."""
    prev = [float(v) for v in previous]
    m = margin(floor, n)
    gain = max([0.0, *(float(r) for r in recoveries)])
    if score + gain >= floor - m:
        extra = f" (plus {100 * gain:.1f} points it may still recover)" if gain > 0 else ""
        return False, f"{100 * score:.1f} %{extra} is within {100 * m:.1f} points of the floor"
    if not prev:
        return False, "no earlier trial reached this rung"
    med = statistics.median(prev)
    if score >= med:
        return False, f"{100 * score:.1f} % is not below the median {100 * med:.1f} % of earlier trials"
    gained = f" even with the best recovery seen ({100 * gain:.1f} points)" if gain > 0 else ""
    return True, (f"{100 * score:.1f} % on {n} validation samples, more than {100 * m:.1f} points below "
                  f"the floor {100 * floor:.1f} %{gained} and below the median {100 * med:.1f} % of "
                  f"{len(prev)} earlier trial(s)")


def previous_scores(trial, rung: float) -> tuple[list[float], list[float]]:
    """What the study's other trials scored at ``rung`` (any state: a stopped trial counts too),
    and, for those that were scored at the end, how much they gained from that rung on."""
    key = f"{rung:g}"
    scores, gains = [], []
    for t in trial.study.get_trials(deepcopy=False):
        if t.number != trial.number:
            v = (t.user_attrs.get(ATTR) or {}).get(key)
            if v is not None:
                scores.append(float(v))
                if t.user_attrs.get("val_accuracy") is not None:
                    gains.append(float(t.user_attrs["val_accuracy"]) - float(v))
    return scores, gains


class RungWatch:
    """One trial's rung bookkeeping. ``step(model)`` is asked before every fine-tune step (all of
    the trial's fine-tunes count as one run of ``total_steps``); at a rung it scores ``model``
    and raises :class:`PrunedEarly` when :func:`decide` says stop."""

    def __init__(self, trial, total_steps: int, score: Callable, floor: float, n: int,
                 rungs: tuple[float, ...] = RUNGS) -> None:
        self.trial, self.total, self.score, self.floor, self.n = trial, max(int(total_steps), 1), score, floor, n
        self.todo = sorted(rungs)
        self.done = 0
        self.scores: dict[str, float] = {}

    def step(self, model, settled: bool = True) -> bool:
        """``settled=False`` inside a gradual sparsity schedule: a model just pruned further dips
        and climbs back (one LeNet-sized trial went from 57 % to 76 % after the rung), and a trial
        stopped there never shows its recovery to later ones: allow ``SCHEDULE_DIP`` on top."""
        while self.todo and self.done >= self.todo[0] * self.total:
            self._rung(self.todo.pop(0), model, settled)
        self.done += 1
        return False

    def _rung(self, rung: float, model, settled: bool = True) -> None:
        acc = float(_score_in_place(self.score, model))
        self.scores[f"{rung:g}"] = acc
        self.trial.set_user_attr(ATTR, dict(self.scores))
        prev, gains = previous_scores(self.trial, rung)
        stop, why = decide(acc, self.floor, self.n, prev, gains if settled else [*gains, SCHEDULE_DIP])
        log.info("trial %d at rung %g (step %d of %d): %s", self.trial.number, rung, self.done, self.total, why)
        if stop:
            raise PrunedEarly(f"{EARLY} at {100 * rung:.0f} % of its fine-tune: {why}", acc)


def _score_in_place(score: Callable, model) -> float:
    """Score a model in the middle of a fine-tune: on the CPU (where the evaluation's data is)
    and in eval mode, then back as it was (parameters keep their identity for the optimizer)."""
    was = model.training
    home = next((p.device for p in model.parameters()), None)
    moved = home is not None and home.type != "cpu"
    try:
        if moved:
            model.to("cpu")
        model.eval()
        return score(model)
    finally:
        if moved:
            model.to(home)
        model.train(was)


def total_steps(epochs: float, n_train: int, batch_size: int) -> int:
    """Optimizer steps of ``epochs`` over ``n_train`` samples (what the trial's fine-tunes add up to)."""
    return max(1, math.ceil(epochs * math.ceil(n_train / batch_size)))
