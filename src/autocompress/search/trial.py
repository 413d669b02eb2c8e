"""One trial of the search: apply a recipe to a copy, score it on validation, deploy, measure.

A trial ends in one of three ways: complete (scored, maybe the new best), pruned (hopeless on
accuracy, or stopped by the search's deadline at a fine-tune step boundary: recorded, not a
failure) or failed (the reason is kept with the trial for the report).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import numpy as np

from autocompress import safefs
from autocompress.search import budget_rules
from autocompress.search import rungs as rungs_mod
from autocompress.search import space as space_mod
from autocompress.search.steps import apply_recipe_steps, deploy
from autocompress.train import TrainingStopped

log = logging.getLogger(__name__)

STOPPED = "stopped by the deadline"


def objective(trial, shared):
    import optuna
    try:
        return _trial(trial, shared)
    except (optuna.TrialPruned, KeyboardInterrupt):
        raise
    except rungs_mod.PrunedEarly as e:
        # hopeless at a rung of its fine-tune: recorded apart (not a failure, not a finished trial)
        trial.set_user_attr("val_accuracy_rung", e.score)
        floor = shared.budget.allowed_accuracy(shared.base["accuracy"])
        set_constraints(trial, {r.name: (floor - e.score if r.name == "accuracy" else 0.0)
                                for r in budget_rules.active(shared.budget)})
        trial.set_user_attr("note", str(e)[:500])
        raise optuna.TrialPruned(trial.user_attrs["note"]) from None
    except TrainingStopped as e:
        # the budget ran out mid fine-tune: a stop, not a crash (and not counted as a failure)
        trial.set_user_attr("note", f"{STOPPED}: {e}"[:500])
        raise optuna.TrialPruned(trial.user_attrs["note"]) from None
    except Exception as e:
        # keep the reason with the trial: the report shows why it failed, the search goes on
        trial.set_user_attr("note", f"failed: {type(e).__name__}: {e}"[:500])
        log.warning("trial %d failed: %s: %s", trial.number, type(e).__name__, e)
        raise


def _trial(trial, shared):
    import optuna

    if shared.threads is not None:      # the machine's load changes: the thread count follows it
        epoch_s = shared.threads.pick(shared.model, shared.ctx.train_set, shared.ctx.device)
        if epoch_s is not None and shared.ctx.epoch_s is not None:
            shared.ctx.epoch_s = epoch_s
    recipe = space_mod.sample(trial, shared.budget, shared.techniques)
    recipe = _fit_to_time(_without_slow_int8(recipe, shared, trial), shared.ctx, trial)
    trial.set_user_attr("recipe", recipe.to_dict())
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    t0 = time.time()
    log.info("trial %d: %s", trial.number, recipe.describe())
    model = copy.deepcopy(shared.model)
    shared.ctx.rungs = _rung_watch(trial, shared, recipe)
    shared.ctx.cut_short = None
    try:
        model = apply_recipe_steps(model, recipe, shared.ctx)
    finally:
        shared.ctx.rungs = None
    if shared.ctx.cut_short:
        trial.set_user_attr("note", shared.ctx.cut_short)
    if shared.ctx.deadline.search_remaining() <= 0:
        raise TrainingStopped("the search's time ran out before the candidate was scored")
    t_tail = time.monotonic()
    acc = shared.ctx.evaluate(model)
    t_val = time.monotonic() - t_tail
    floor = shared.budget.allowed_accuracy(shared.base["accuracy"])
    trial.set_user_attr("val_accuracy", acc)
    if acc < floor - 0.05:
        # hopeless on accuracy: skip the expensive export/measurement, tell the sampler why
        # same constraint names as a measured trial (the sampler compares them); others unmeasured
        set_constraints(trial, {r.name: (floor - acc if r.name == "accuracy" else 0.0)
                                for r in budget_rules.active(shared.budget)})
        trial.set_user_attr("note", f"val accuracy {100 * acc:.2f} % far below floor {100 * floor:.2f} %")
        raise optuna.TrialPruned(trial.user_attrs["note"])
    tdir = Path(tempfile.mkdtemp(prefix=f"trial{trial.number}-", dir=shared.ctx.work_dir))
    try:
        # a speed budget decides nothing on the storage artifact: only a new best writes one
        art = deploy(model, recipe, shared.ctx, tdir, store=shared.budget.needs_storage())
        acc = _deployed_accuracy(shared, recipe, art["deployed"], acc, trial)
        size = art["storage_bytes"] if "storage" in art else art["deployed_bytes"]
        lat = base_lat = None
        if shared.budget.needs_latency():
            t = speedup(shared, art["deployed"], max_time_s=3.0 if shared.quick else 10.0)
            lat, base_lat = t.cand_ms, t.ref_ms
            trial.set_user_attr("speedup", t.speedup)
            trial.set_user_attr("speedup_ci", [t.low, t.high])
        cand = {"accuracy": acc, "size_bytes": size, "latency_ms": lat}
        base = dict(shared.base, latency_ms=base_lat)
        viol = shared.budget.violations(base, cand)
        trial.set_user_attr("size_bytes", int(size))
        trial.set_user_attr("deployed_bytes", int(art["deployed_bytes"]))   # the deployed file, any runtime
        trial.set_user_attr("storage_bytes", int(art["storage_bytes"]) if "storage" in art else None)
        trial.set_user_attr("latency_ms", lat)
        trial.set_user_attr("base_latency_ms", base_lat)
        trial.set_user_attr("violations", viol)
        set_constraints(trial, constraint_values(shared, cand, base))
        trial.set_user_attr("duration_s", time.time() - t0)
        shared.ctx.deadline.saw_tail(time.monotonic() - t_tail)
        if shared.best_model is not None and shared.best_model[0] == trial.number:
            # the final step evaluates the winner on val + test (3x a validation pass) where the
            # baseline's took about a fifth of its measurement: keep the difference back too
            d = shared.ctx.deadline
            d.reserve_for_winner(3 * (t_val - 0.2 * d.t_measure_base))
        keep_if_best(trial, shared, model, recipe, art, not viol)
    finally:
        shutil.rmtree(tdir, ignore_errors=True)   # the best trial's files were copied to best/
    lat_ratio = (lat / base_lat) if (lat and base_lat) else 1.0
    return acc, float(size), float(lat_ratio)


def slow_int8(study) -> tuple[int, float] | None:
    """(trial number, speed-up) of a finished int8-only trial (post-training int8 of the original,
    nothing else) that ran slower than the fp32 reference here, or None."""
    from optuna.trial import TrialState

    from autocompress.search.recipe import Recipe
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        r, s = t.user_attrs.get("recipe"), t.user_attrs.get("speedup")
        if r is None or s is None or s >= 1.0:
            continue
        rec = Recipe.from_dict(r)
        if (rec.quant == "int8" and not rec.structured_ratio and not rec.layer_ratios and rec.rank_energy is None
                and not rec.sparsity and rec.cluster_bits is None):
            return t.number, float(s)
    return None


def _without_slow_int8(recipe, shared, trial):
    """For a budget that asks for speed alone, on a runtime where int8 of the original measured
    slower than fp32 (ONNX Runtime on x86 without VNNI: 0.9x), the sampled recipe runs without its
    int8 step (PTQ or 8-bit QAT, deployed alike): quantizing cannot make it faster there. SmallResNet,
    quiet: channels -50 % + low-rank at 98.53 % val, inside the budget, ran 0.96x with int8 and
    spent 8 of its 15 minutes on two such trials. The recipe kept with the trial says what ran."""
    if recipe.quant not in ("int8", "qat") or space_mod.kind(shared.budget) != "speed":
        return recipe
    slow = slow_int8(trial.study)
    if slow is None:
        return recipe
    log.info("trial %d: int8 left out (the int8-only trial #%d ran %.2fx the fp32 speed here)",
             trial.number, *slow)
    trial.set_user_attr("note", f"int8 left out: trial #{slow[0]} measured int8 at {slow[1]:.2f}x here")
    return dataclasses.replace(recipe, quant="none", weight_bits=8, act_bits=8)


FIT_MARGIN = 0.8     # of the time left: the epoch was timed on the unpruned model, plain loss


def _fit_to_time(recipe, ctx, trial):
    """The recipe with a fine-tune the search's time left can pay for (from the timed epoch): a
    trial whose planned fine-tune would overrun runs a shorter one to its end and is scored, where
    the deadline would otherwise stop it unscored (SmallResNet, 300 s: stopped at 346 of 391
    steps). The recipe kept with the trial says what ran, so a replay does the same."""
    e = ctx.epoch_s
    left = ctx.deadline.search_remaining() - ctx.deadline.tail_s
    if recipe.distill and getattr(ctx, "teacher_cache", None) is None:
        left -= (e or 0.0) / 3      # the teacher's logits over the training set, once per search
    if not e or recipe.finetune_epochs <= 0 or ctx.finetune is not None or math.isinf(left):
        return recipe
    affordable = FIT_MARGIN * max(left, 0.0) / e
    if affordable >= recipe.finetune_epochs:
        return recipe
    fitted = max(round(affordable, 2), 0.01)
    log.info("trial %d: fine-tune of %.2f epochs shortened to %.2f to fit the %.0f s left",
             trial.number, recipe.finetune_epochs, fitted, left)
    trial.set_user_attr("finetune_planned", recipe.finetune_epochs)
    from autocompress.search.recipe import Recipe
    return Recipe.from_dict({**recipe.to_dict(), "finetune_epochs": fitted})


def _deployed_accuracy(shared, recipe, path, acc: float, trial) -> float:
    """The accuracy that decides: where the runtime quantizes the model itself (ExecuTorch's
    XNNPACKQuantizer), its file is not our simulation, so the validation accuracy is measured on
    the deployed file (the PyTorch figure is kept as ``val_accuracy_pytorch``)."""
    from autocompress import targets
    ev = shared.ctx.deployed_evaluate
    if ev is None or recipe.quant == "none" or not targets.get(shared.budget.runtime).requantizes:
        return acc
    deployed = float(ev(path))
    trial.set_user_attr("val_accuracy_pytorch", acc)
    trial.set_user_attr("val_accuracy", deployed)
    return deployed


def _rung_watch(trial, shared, recipe):
    """Early stop at rungs of our own fine-tunes (the user's loop has no steps we can see)."""
    ctx = shared.ctx
    if not rungs_mod.ENABLED or ctx.rung_evaluate is None or ctx.finetune is not None or recipe.finetune_epochs <= 0:
        return None
    from autocompress.search.steps import FINETUNE_BATCH
    steps = rungs_mod.total_steps(recipe.finetune_epochs, len(ctx.train_set), FINETUNE_BATCH)
    floor = shared.budget.allowed_accuracy(shared.base["accuracy"])
    return rungs_mod.RungWatch(trial, steps, ctx.rung_evaluate, floor, min(rungs_mod.SUBSET, len(ctx.data.val)))


def speedup(shared, cand_path, max_time_s: float = 10.0, batch: int | None = None):
    """Candidate vs the fp32 baseline on the budget's runtime, interleaved rounds (median of ratios).
    ``latency_ms`` figures are the ratio applied to the baseline's median, so that what the
    sampler and the report see is the robust ratio, not two independently noisy medians."""
    from autocompress import targets
    from autocompress.measure.timing import interleaved_speedup

    b = batch or shared.budget.latency_batch
    x = np.random.default_rng(0).random((b, *shared.data.input_shape), dtype=np.float32)
    target = targets.require(shared.budget.runtime)
    runs = [(lambda r=target.load(p, shared.budget.threads): r(x)) for p in (shared.base_onnx, cand_path)]
    t = interleaved_speedup(runs[0], runs[1], max_time_s=max_time_s)
    t.cand_ms = t.ref_ms / t.speedup
    return t


def set_constraints(trial, values: dict[str, float]) -> None:
    for k, v in values.items():
        trial.set_constraint(k, float(v))
    trial.set_user_attr("constraints", list(values.values()))   # kept for ranking "best so far"


def constraint_values(shared, cand: dict, base: dict) -> dict[str, float]:
    """Optuna constraint form: each value <= 0 means satisfied (the budget's rules, scaled to compare)."""
    return budget_rules.constraints(shared.budget, base, cand)


def score(attrs: dict, budget) -> tuple:
    """Order for 'best so far': feasible first, then the objective, then accuracy."""
    feasible = not attrs.get("violations", ["?"])
    acc = attrs.get("val_accuracy", 0.0)
    size = attrs.get("size_bytes", math.inf)
    lat = attrs.get("latency_ms") or math.inf
    base_lat = attrs.get("base_latency_ms") or 1.0
    if budget.objective == "fastest":
        key = (lat / base_lat, -acc)
    elif budget.objective == "most_accurate":
        key = (-acc, size)
    else:  # smallest, and pareto (reported as the whole front; "best" = smallest)
        key = (size, -acc)
    # infeasible trials rank by how far they miss (sum of positive constraint values)
    miss = sum(max(c, 0.0) for c in attrs.get("constraints", [1.0]))
    return (0, *key) if feasible else (1, miss, *key)


def keep_if_best(trial, shared, model, recipe, art, feasible: bool) -> None:
    """After every trial the best model so far and its recipe are on disk: written into a new folder,
    then swapped in for ``best/`` in one step, so best/ always holds one trial's files."""
    best_dir = shared.out_dir / "best"
    safefs.recover_dir(best_dir)
    meta_path = best_dir / "best.json"
    attrs = dict(trial.user_attrs)
    if meta_path.exists():
        try:
            prev = json.loads(meta_path.read_text())
            if score(prev["attrs"], shared.budget) <= score(attrs, shared.budget):
                return
        except (json.JSONDecodeError, KeyError):
            pass
    shared.best_model = (trial.number, model)   # this process's copy, exactly as deployed
    if "storage" not in art:
        from autocompress.search.steps import store_artifact
        art.update(store_artifact(model, recipe, shared.ctx, Path(art["deployed"]).parent))
        attrs["storage_bytes"] = int(art["storage_bytes"])
    stage = safefs.staging_dir(best_dir)
    for key in ("deployed", "storage"):
        safefs.copy_file(art[key], stage / Path(art[key]).name)   # model.onnx / model.pte, model.acz
    recipe.to_yaml(stage / "recipe.yaml")
    safefs.write_text(stage / "best.json",
                      json.dumps({"trial": trial.number, "attrs": attrs, "feasible": feasible}, indent=1))
    safefs.swap_in_dir(stage, best_dir)
    log.info("trial %d is the best so far (%s)", trial.number, "meets budget" if feasible else "budget not met yet")


def fail_orphans(study) -> int:
    """Trials left RUNNING by a run that was killed (its process is gone: this one holds the folder's
    lock) are marked FAIL, so they neither hang in the study nor count as done."""
    from optuna.trial import TrialState

    orphans = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    for t in orphans:
        study._storage.set_trial_user_attr(t._trial_id, "note", "orphaned: its run was killed")
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    if orphans:
        log.warning("marked %d trial(s) left running by a killed run as failed: %s", len(orphans),
                    [t.number for t in orphans])
    return len(orphans)

