"""Seed recipes for a speed budget come from the model's measured sensitivity and epoch cost."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from autocompress.search import Budget
from autocompress.search.seeds import cap_epochs, epoch_seconds, predicted_drop
from autocompress.search.recipe import Recipe
from autocompress.search.space import seed_recipes

GRID = [0.0, 0.15, 0.2, 0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9]
EPOCHS = [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
FASTEST = Budget(max_drop=0.3, objective="fastest", latency_batch=64)


def _sens(drop_per_ratio: float) -> dict:
    """Two equal layers whose accuracy falls ``drop_per_ratio`` per unit of ratio."""
    ratios = [0.25, 0.5, 0.75, 0.9]
    return {"kind": "structured", "ratios": ratios, "baseline": 0.99,
            "scores": {n: [0.99 - drop_per_ratio * r for r in ratios] for n in ("a", "b")},
            "sizes": {"a": 100, "b": 100},
            "costs": {n: [r / 2 for r in ratios] for n in ("a", "b")}}


def test_predicted_drop_grows_with_the_target_and_stops_at_what_was_analysed():
    s = _sens(0.5)
    d = [predicted_drop(s, t) for t in (0.3, 0.5, 0.8)]
    assert 0 < d[0] < d[1] < d[2]
    assert predicted_drop(s, 0.95) is None          # beyond the largest analysed ratio
    assert predicted_drop(None, 0.5) is None and predicted_drop({}, 0.0) == 0.0


SPEED = ("structured", "quantize", "distill")


def test_a_fragile_model_gets_gentler_seeds_than_a_robust_one():
    robust = seed_recipes(FASTEST, SPEED, sensitivity={"structured": _sens(0.002)})
    fragile = seed_recipes(FASTEST, SPEED, sensitivity={"structured": _sens(1.0)})
    assert robust[0].quant == "int8" and robust[0].finetune_epochs == 0.0     # post-training first
    top = lambda seeds: max(r.structured_ratio for r in seeds)  # noqa: E731
    assert top(fragile) < top(robust)
    # the robust model's almost free ratio is tried with no fine-tune at all, before any fine-tune
    assert robust[1].structured_ratio >= 0.3 and robust[1].finetune_epochs == 0 and robust[1].quant == "none"
    assert not any(r.structured_ratio > 0 and r.finetune_epochs == 0 for r in fragile)
    # the fine-tuned seeds bracket the edge with distinct ratios
    tuned = [r.structured_ratio for r in robust if r.finetune_epochs > 0 and r.quant == "none"]
    assert len(set(tuned)) >= 3


def test_without_sensitivity_the_declared_levels_are_kept():
    seeds = seed_recipes(FASTEST, ("structured",))
    assert [r.structured_ratio for r in seeds] == [0.5, 0.8, 0.9, 0.9]


def test_fine_tunes_are_capped_to_what_the_search_time_pays_for():
    seeds = [Recipe(quant="int8", finetune_epochs=0.0), Recipe(structured_ratio=0.5, finetune_epochs=1.0),
             Recipe(structured_ratio=0.9, finetune_epochs=8.0)]
    capped = cap_epochs(seeds, epoch_s=100.0, search_s=600.0, epoch_grid=EPOCHS)   # 1.5 epochs each
    assert [r.finetune_epochs for r in capped] == [0.0, 1.0, 1.0]
    assert cap_epochs(seeds, None, 600.0, EPOCHS) == seeds
    assert cap_epochs(seeds, 100.0, math.inf, EPOCHS) == seeds
    tiny = cap_epochs(seeds, epoch_s=1e6, search_s=60.0, epoch_grid=EPOCHS)
    # too little time for two: the milder one is kept, and never turned into "no fine-tune"
    assert [(r.structured_ratio, r.finetune_epochs) for r in tiny] == [(0.0, 0.0), (0.5, 0.25)]
    three = [seeds[1], Recipe(structured_ratio=0.7, finetune_epochs=2.0), seeds[2]]
    assert [r.finetune_epochs for r in cap_epochs(three, epoch_s=100.0, search_s=600.0, epoch_grid=EPOCHS)] == [1.0] * 3
    fewer = cap_epochs(three, epoch_s=200.0, search_s=600.0, epoch_grid=EPOCHS)         # 0.5 each at most for 3
    assert [r.structured_ratio for r in fewer] == [0.5, 0.7, 0.9] and fewer[0].finetune_epochs == 0.5
    two = cap_epochs(three, epoch_s=400.0, search_s=600.0, epoch_grid=EPOCHS)           # 0.25 each for 3: 1 kept
    assert [r.structured_ratio for r in two] == [0.5]
    # seed_recipes applies the cap to every objective's seeds
    small = seed_recipes(Budget(objective="smallest"), ("prune", "cluster", "quantize"), epoch_s=100.0, search_s=600.0)
    assert max(r.finetune_epochs for r in small) <= 1.0


def test_seeds_the_cap_makes_identical_run_once_and_leave_their_time_to_the_others():
    # a fragile model's sensitivity placed its levels on 15, 15, 20, 20 %; the cap (1 epoch each
    # for four) made the pairs identical: two trials would have repeated two others
    seeds = [Recipe(quant="int8", finetune_epochs=0.0)] + [
        Recipe(structured_ratio=r, finetune_epochs=e) for r, e in ((0.15, 1.0), (0.15, 2.0), (0.2, 2.0), (0.2, 4.0))]
    capped = cap_epochs(seeds, epoch_s=50.0, search_s=400.0, epoch_grid=EPOCHS)
    assert [(r.structured_ratio, r.finetune_epochs) for r in capped] == [(0.0, 0.0), (0.15, 1.0), (0.2, 2.0)]
    # with time for each, none is dropped: they differ in their fine-tunes
    roomy = cap_epochs(seeds, epoch_s=10.0, search_s=1000.0, epoch_grid=EPOCHS)
    assert len(roomy) == len(seeds)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device here"))])
def test_epoch_seconds_times_steps_without_touching_the_model(device):
    # timed where the fine-tunes run: on a GPU the CPU's figure would make every plan too cautious
    m = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    before = [p.clone() for p in m.parameters()]
    ds = TensorDataset(torch.randn(640, 1, 4, 4), torch.randint(0, 4, (640,)))
    s = epoch_seconds(m, ds, batch_size=64, device=device)
    assert 0 < s < 10
    assert all(torch.equal(a, b) and b.device.type == "cpu" for a, b in zip(before, m.parameters()))
    tiny = TensorDataset(torch.randn(64, 1, 4, 4), torch.randint(0, 4, (64,)))   # one batch, timed 4 times
    assert 0 < epoch_seconds(m, tiny, batch_size=64, device=device) < 10


def test_a_trial_fine_tune_is_shortened_to_the_time_left():
    # a planned fine-tune the time left cannot pay for runs shorter, to its end, and the trial's
    # recipe says what ran (a replay does the same); an affordable one is left alone
    from types import SimpleNamespace

    from autocompress.search.deadline import Deadline
    from autocompress.search.trial import FIT_MARGIN, _fit_to_time
    attrs = {}
    trial = SimpleNamespace(number=3, set_user_attr=attrs.__setitem__)
    ctx = SimpleNamespace(epoch_s=100.0, deadline=Deadline(300.0), finetune=None)
    ctx.deadline.reserve(40.0)
    ctx.deadline.saw_tail(10.0)
    r = Recipe(structured_ratio=0.5, distill=False, finetune_epochs=4.0)
    fitted = _fit_to_time(r, ctx, trial)
    left = 300.0 - 40.0 - 10.0
    assert fitted.finetune_epochs == pytest.approx(FIT_MARGIN * left / 100.0, abs=0.02)
    assert fitted.structured_ratio == 0.5 and attrs["finetune_planned"] == 4.0
    short = Recipe(structured_ratio=0.5, distill=False, finetune_epochs=1.0)
    assert _fit_to_time(short, ctx, trial).finetune_epochs == 1.0
    assert _fit_to_time(Recipe(quant="int8", finetune_epochs=0.0), ctx, trial).finetune_epochs == 0.0
    ctx.epoch_s = None                                         # the user's loop: nothing to time
    assert _fit_to_time(r, ctx, trial) is r


def test_a_fine_tune_the_deadline_cuts_late_is_scored_early_one_is_stopped():
    from types import SimpleNamespace

    from autocompress.search.steps import CUT_OK, train
    from autocompress.train import TrainingStopped
    ds = TensorDataset(torch.randn(640, 16), torch.randint(0, 4, (640,)))     # 10 steps of 64

    def ctx_expiring_after(n):
        calls = []

        def expired():
            calls.append(1)
            return len(calls) > n
        return SimpleNamespace(finetune=None, seed=0, device="cpu", rungs=None, train_set=ds, cut_short=None,
                               deadline=SimpleNamespace(expired=expired))
    r = Recipe(structured_ratio=0.5, distill=False, finetune_epochs=1.0)
    late = ctx_expiring_after(int(10 * CUT_OK) + 1)
    m = train(nn.Linear(16, 4), r, late, 1.0)
    assert isinstance(m, nn.Linear) and "cut at 8 of 10 steps" in late.cut_short
    with pytest.raises(TrainingStopped, match="stopped after 2 of 10 steps"):
        train(nn.Linear(16, 4), r, ctx_expiring_after(2), 1.0)


def test_a_speed_budget_leaves_int8_out_where_int8_alone_ran_slower():
    # ORT on x86 without VNNI: int8 of the original at 0.9x; a sampled "-50 % + low-rank + int8"
    # then runs without its int8 step (it can only be slower with it); a size budget keeps it
    import optuna
    from types import SimpleNamespace

    from autocompress.search.trial import _without_slow_int8, slow_int8
    study = optuna.create_study()

    def done(recipe: Recipe, speed: float) -> None:
        study.add_trial(optuna.trial.create_trial(value=0.0, user_attrs={"recipe": recipe.to_dict(), "speedup": speed}))
    done(Recipe(structured_ratio=0.5, quant="int8"), 0.8)            # not int8 alone: says nothing
    assert slow_int8(study) is None
    done(Recipe(quant="int8", distill=False, finetune_epochs=0.0), 1.3)
    assert slow_int8(study) is None                                   # int8 is faster here
    done(Recipe(quant="int8", distill=False, finetune_epochs=0.0), 0.92)
    assert slow_int8(study) == (2, 0.92)

    notes = {}
    trial = SimpleNamespace(study=study, number=7, set_user_attr=notes.__setitem__)
    sampled = Recipe(structured_ratio=0.5, rank_energy=0.95, quant="qat", weight_bits=8)
    fastest = SimpleNamespace(budget=Budget(max_drop=0.3, objective="fastest"))
    ran = _without_slow_int8(sampled, fastest, trial)
    assert ran.quant == "none" and ran.structured_ratio == 0.5 and ran.rank_energy == 0.95
    assert "trial #2" in notes["note"]
    smallest = SimpleNamespace(budget=Budget(max_drop=0.3, objective="smallest"))
    assert _without_slow_int8(sampled, smallest, trial) == sampled
    plain = Recipe(structured_ratio=0.5)
    assert _without_slow_int8(plain, fastest, trial) is plain
