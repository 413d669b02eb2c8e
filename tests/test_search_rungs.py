"""Issue 16, item 2: hopeless trials stop early at rungs of their fine-tune (search/rungs.py)."""

from __future__ import annotations

import optuna
import pytest
import torch
from torch import nn
from torch.utils.data import Subset

from autocompress.data import Splits, load_mnist
from autocompress.search import Budget, Recipe, compress
from autocompress.search.rungs import EARLY, PrunedEarly, RungWatch, decide, margin
from autocompress.train import TrainConfig, fit


def test_margin_is_generous_and_grows_on_small_subsets():
    assert margin(0.99, 300) == pytest.approx(0.03)          # floor of 3 points
    assert margin(0.9, 300) > 0.05                            # 3 SE of 300 samples at 90 %
    assert margin(0.9, 50) > margin(0.9, 300)
    assert margin(1.0, 300) >= 0.03                           # no zero SE at a 100 % floor


@pytest.mark.parametrize("score, previous, stop", [
    (0.975, [0.99, 0.99], False),    # 1.5 points under a 99 % floor: within the margin
    (0.50, [], False),               # hopeless, but nothing to compare with yet
    (0.50, [0.98, 0.97, 0.40], True),   # below the median (0.97), one hopeless earlier trial or not
    (0.50, [0.30, 0.40, 0.98], False),  # not below the median (0.40) of earlier trials
    (0.50, [0.98], True),            # far below the floor and below the median
    (0.90, [0.985, 0.99, 0.97], True),
])
def test_rule_stops_only_clearly_hopeless_trials(score, previous, stop):
    got, why = decide(score, floor=0.99, n=300, previous=previous)
    assert got is stop, why


def test_an_earlier_trials_recovery_from_the_rung_is_allowed_for():
    """A sparsity schedule dips mid-way: a trial that climbed 8 points from this rung to its end
    means a score 8 points lower than the stop line may still get there."""
    assert decide(0.90, floor=0.99, n=300, previous=[0.98])[0]
    assert not decide(0.90, floor=0.99, n=300, previous=[0.98], recoveries=[0.08, -0.01])[0]
    stop, why = decide(0.80, floor=0.99, n=300, previous=[0.98], recoveries=[0.08])
    assert stop and "best recovery seen (8.0 points)" in why


def test_watch_scores_at_rungs_stores_them_and_stops():
    study = optuna.create_study(directions=["maximize", "minimize"])
    earlier = study.ask()
    earlier.set_user_attr("rungs", {"0.25": 0.97, "0.5": 0.98})
    earlier.set_user_attr("val_accuracy", 0.985)       # it gained half a point from rung 0.5 on
    study.tell(earlier, [0.98, 1.0])
    trial = study.ask()
    scores = iter([0.96, 0.4])        # rung 0.25: close to the floor (go on); rung 0.5: hopeless
    watch = RungWatch(trial, total_steps=8, score=lambda m: next(scores), floor=0.985, n=300)
    model = nn.Linear(2, 2).train()
    inside = RungWatch(trial, total_steps=8, score=lambda m: 0.8, floor=0.985, n=300)
    for _ in range(8):     # inside a sparsity schedule: 80 % may still climb back
        inside.step(model, settled=False)
    with pytest.raises(PrunedEarly, match=f"{EARLY} at 50 %") as e:
        for _ in range(8):
            watch.step(model)
    assert watch.done == 4 and e.value.score == 0.4
    assert trial.user_attrs["rungs"] == {"0.25": 0.96, "0.5": 0.4}   # kept in the study
    assert model.training                                            # scored, then back to training


def test_hopeless_recipe_is_stopped_early_and_not_counted(tmp_path, monkeypatch):
    # the channel counts here come from MACs: a latency path timed on a loaded machine would make
    # which recipe is hopeless depend on the load (tests/test_latency_path.py covers the path)
    from autocompress.search import steps
    monkeypatch.setattr(steps, "_speed_probe", lambda ctx: None)
    full = load_mnist(flat=True)
    data = Splits(Subset(full.train, range(3000)), Subset(full.val, range(500)),
                  Subset(full.test, range(500)), full.input_shape, 10)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    fit(model, data.train, TrainConfig(epochs=3, lr=2e-3, progress=False))
    budget = Budget(max_drop=1.0, objective="fastest", max_trials=2, time_limit_s=300)
    # the search space's most extreme channel removal (90 % of the MACs: 3 of 32 hidden units)
    seeds = [Recipe(structured_ratio=0.3, distill=False, finetune_epochs=0.5),
             Recipe(structured_ratio=0.9, distill=False, finetune_epochs=1.0),
             Recipe(structured_ratio=0.5, distill=False, finetune_epochs=0.5)]
    res = compress(model.eval(), data, budget, techniques=("structured",), out_dir=tmp_path, quick=True, seeds=seeds)
    states = [t.state for t in res.trials if t.state != "waiting"]
    # the stopped trial does not use up max_trials: the third seed still runs
    assert states == ["complete", EARLY, "complete"], [(t.state, t.note) for t in res.trials]
    # the first seed's near miss (0.4 points below the floor) was enqueued again with a longer
    # fine-tune, after the third seed; max_trials was reached before it ran (resume runs it)
    import optuna
    url = f"sqlite:///{tmp_path}/study.db"
    (name,) = optuna.get_all_study_names(url)
    study = optuna.load_study(study_name=name, storage=url)
    waiting = [t.system_attrs["fixed_params"] for t in study.trials if t.state.name == "WAITING"]
    assert [(w["structured_ratio"], w["finetune_epochs"]) for w in waiting] == [(0.3, 1.0)]
    assert res.trials[1].note.startswith(EARLY) and "below the median" in res.trials[1].note
    assert f"1 {EARLY}" in res.message
    assert Recipe.from_dict(res.trials[1].recipe).structured_ratio == 0.9
    # the good recipes ran to the end and were scored on the whole validation split
    assert all(t.val_accuracy is not None for t in (res.trials[0], res.trials[2]))
