"""A near miss on accuracy is tried again with a longer fine-tune (search/followup.py)."""

from types import SimpleNamespace

import optuna
import pytest

from autocompress.search import Budget, budget_rules
from autocompress.search.deadline import Deadline
from autocompress.search.followup import follow_up
from autocompress.search.recipe import Recipe
from autocompress.search.space import to_params, useful

BUDGET = Budget(max_drop=0.3, objective="fastest", latency_batch=64)
TECHS = ("structured", "quantize", "distill")
BASE = {"accuracy": 0.9861, "fp32_bytes": 100_000, "deployed_bytes": 100_000, "latency_ms": 10.0}


def _shared(epoch_s=45.0, finetune=None):
    return SimpleNamespace(budget=BUDGET, base=BASE, techniques=TECHS,
                           ctx=SimpleNamespace(finetune=finetune, epoch_s=epoch_s))


def _add(study, recipe: Recipe, acc: float, lat_ms: float):
    cand = {"accuracy": acc, "size_bytes": 50_000, "latency_ms": lat_ms}
    cons = budget_rules.constraints(BUDGET, BASE, cand)
    attrs = {"recipe": recipe.to_dict(), "val_accuracy": acc, "latency_ms": lat_ms, "base_latency_ms": 10.0,
             "size_bytes": 50_000, "violations": BUDGET.violations(BASE, cand), "constraints": list(cons.values())}
    dists = {k: optuna.distributions.CategoricalDistribution(
        list(dict.fromkeys([v, *([] if not isinstance(v, float) else [0.0])]))) for k, v in
        to_params(recipe, useful(BUDGET, TECHS)).items()}
    t = optuna.trial.create_trial(params=to_params(recipe, useful(BUDGET, TECHS)), distributions=dists,
                                  values=[acc, 50_000.0, lat_ms / 10.0], user_attrs=attrs)
    study.add_trial(t)
    return study.trials[-1]


@pytest.fixture
def study():
    s = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    _add(s, Recipe(structured_ratio=0.15, finetune_epochs=2.0, distill=True), 0.9846, 8.5)   # met, 1.18x
    return s


def _waiting(study):
    return [t for t in study.get_trials(deepcopy=False) if t.state.name == "WAITING"]


def test_a_near_miss_that_would_be_faster_gets_the_next_longer_fine_tune(study):
    miss = _add(study, Recipe(structured_ratio=0.2, finetune_epochs=2.0, distill=True), 0.9822, 7.8)  # -0.39
    r = follow_up(study, miss, _shared(), Deadline(900))
    assert r is not None and r.structured_ratio == 0.2 and r.finetune_epochs == 4.0 and r.distill
    assert len(_waiting(study)) == 1
    assert follow_up(study, miss, _shared(), Deadline(900)) is None      # once
    assert len(_waiting(study)) == 1


@pytest.mark.parametrize("acc, lat, why", [
    (0.9700, 7.8, "far below the floor: more fine-tuning is not the cure"),
    (0.9822, 9.0, "slower than the best that meets the budget"),
    (0.9850, 7.8, "meets the budget: nothing to follow up")])
def test_no_follow_up_when_it_could_not_become_the_best(study, acc, lat, why):
    t = _add(study, Recipe(structured_ratio=0.2, finetune_epochs=2.0, distill=True), acc, lat)
    assert follow_up(study, t, _shared(), Deadline(900)) is None, why
    assert not _waiting(study)


def test_no_follow_up_without_the_time_for_it_or_with_the_users_own_loop(study):
    miss = _add(study, Recipe(structured_ratio=0.2, finetune_epochs=2.0, distill=True), 0.9822, 7.8)
    assert follow_up(study, miss, _shared(), Deadline(100)) is None            # 4 x 45 s do not fit
    assert follow_up(study, miss, _shared(finetune=lambda m: m), Deadline(900)) is None
    assert follow_up(study, miss, _shared(epoch_s=None), Deadline(900)) is None
    assert not _waiting(study)
