"""The automatic loop: baseline -> sensitivity -> search over recipes -> best model, always on disk.

Every trial applies a recipe to a copy of the model, fine-tunes it (distilled from the original),
evaluates it on the *validation* split, exports it and measures it on the budget's deployment
target (ONNX Runtime by default, or ExecuTorch; see :mod:`autocompress.targets`). Optuna drives
the search; its study lives in SQLite under ``out_dir`` (or a shared PostgreSQL), so a crash or
Ctrl-C loses at most the running trial and ``resume=True`` continues the same study.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from autocompress.data import Splits
from autocompress import targets
from autocompress.search import space as space_mod
from autocompress.search.budget import Budget
from autocompress.search.recipe import Recipe
from autocompress.search.result import Result
from autocompress.search.steps import TrialContext, apply_recipe_steps, deploy
from autocompress.train import evaluate as _evaluate

log = logging.getLogger(__name__)

TECHNIQUES = ("prune", "structured", "quantize", "cluster", "factorize", "distill")
STUDY = "autocompress"


def _val_evaluator(data: Splits, evaluate: Callable | None, limit: int | None) -> Callable[[nn.Module], float]:
    loader = data.loader("val", 1000, limit=limit)
    if evaluate is None:
        return lambda m: _evaluate(m, loader)
    return lambda m: float(evaluate(m, loader))


def _storage_url(out_dir: Path, storage: str | None) -> str:
    if not storage:
        return f"sqlite:///{(out_dir / 'study.db').resolve()}"
    if storage.startswith(("postgresql://", "postgres://")):
        # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; we ship the psycopg2 driver
        import importlib.util
        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2"):
            return "postgresql+psycopg2://" + storage.split("://", 1)[1]
    return storage


@dataclass
class _Shared:
    """Everything a trial needs, built once per process."""

    model: nn.Module
    data: Splits
    budget: Budget
    techniques: tuple[str, ...]
    out_dir: Path
    ctx: TrialContext
    base: dict                      # baseline figures for Budget.violations
    base_onnx: Path                 # the baseline's deployed file (on budget.runtime)
    quick: bool
    study_name: str = STUDY
    best_model: tuple[int, nn.Module] | None = None


def compress(model: nn.Module, data: Splits, budget: Budget | None = None, *,
             techniques: Sequence[str] = TECHNIQUES, out_dir: str | Path = "runs/compress",
             evaluate: Callable | None = None, finetune: Callable | None = None,
             storage: str | None = None, seed: int = 0, workers: int = 1, resume: bool = False,
             quick: bool = False, seeds: Iterable[Recipe] | None = None, title: str | None = None,
             study_name: str = STUDY, model_factory: Callable[[], nn.Module] | None = None) -> Result:
    """Find the best compressed version of ``model`` within ``budget``.

    ``evaluate(model, loader) -> float`` replaces top-1 accuracy; ``finetune(model) -> model``
    replaces our fine-tuning loop. ``storage`` is an Optuna storage URL (default SQLite in
    ``out_dir``; a ``postgresql://`` URL lets workers on many machines join one study).
    ``quick`` shrinks data subsets and fine-tuning for tests. ``workers`` local processes share
    the study; ``study_name`` tells studies apart in a shared storage. ``model_factory()`` builds
    the (uncompressed) architecture for the storage artifact when it is not made of common layers;
    by default a copy of ``model``.
    """
    import optuna

    budget = budget or Budget()
    unknown = sorted(set(techniques) - set(TECHNIQUES))
    if unknown:
        raise ValueError(f"unknown technique(s) {unknown}; choose from {list(TECHNIQUES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    shared = _prepare(model, data, budget, tuple(techniques), out, evaluate, finetune, seed, quick,
                      model_factory)
    url = _storage_url(out, storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    shared.study_name = study_name
    study = _study(url, seed, budget, shared, resume)
    if not resume or len(study.trials) == 0:
        useful = space_mod.useful(budget, shared.techniques)
        for r in (seeds if seeds is not None else space_mod.seed_recipes(budget, useful, quick)):
            study.enqueue_trial(space_mod.to_params(r, useful), skip_if_exists=True)
    # interrupted / crashed trials do not use up the trial budget; finished ones do
    done = sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    n_left = None if budget.max_trials is None else max(budget.max_trials - done, 0)
    timeout = budget.time_limit_s
    interrupted = False
    try:
        if n_left != 0:
            if workers > 1:
                _run_workers(shared, url, seed, n_left, timeout, workers)
            else:
                study.optimize(lambda t: _objective(t, shared), n_trials=n_left, timeout=timeout,
                               catch=(Exception,), gc_after_trial=True)
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted: the best result so far is in %s; `resume` continues the study", out)
    result = _finish(study, shared, title or type(model).__name__, time.time() - t_start)
    if interrupted:
        result.message = "interrupted; " + result.message
        raise KeyboardInterrupt(result.message)
    return result


def resume(model: nn.Module, data: Splits, out_dir: str | Path, **kwargs) -> Result:
    """Continue the study in ``out_dir`` with the budget saved there."""
    saved = Path(out_dir) / "budget.yaml"
    budget = kwargs.pop("budget", None) or Budget.from_yaml(saved)
    return compress(model, data, budget, out_dir=out_dir, resume=True, **kwargs)


# -- setup ---------------------------------------------------------------------------------

def _prepare(model, data, budget, techniques, out, evaluate, finetune, seed, quick,
             model_factory=None) -> _Shared:
    model = model.eval()
    limit = 2000 if quick else None
    val = _val_evaluator(data, evaluate, limit)
    budget.to_yaml(out / "budget.yaml")
    target = targets.require(budget.runtime)
    base_onnx = out / f"baseline{target.suffix}"
    example = data.example_input(1)
    target.export(model, example, base_onnx)
    base_acc = val(model)
    base = {"accuracy": base_acc, "fp32_bytes": 4 * sum(p.numel() for p in model.parameters()),
            "onnx_bytes": target.size(base_onnx)}
    log.info("baseline: val accuracy %.2f %%, %d fp32 bytes", 100 * base_acc, base["fp32_bytes"])
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    ctx = TrialContext(data=data, teacher=teacher, example=example, evaluate=val, finetune=finetune,
                       seed=seed, quick=quick, work_dir=out / "work", budget=budget,
                       model_factory=model_factory or _copier(model))
    # only the techniques this budget will search are worth measuring
    ctx.sensitivity = _sensitivity(model, ctx, space_mod.useful(budget, techniques), out / "sensitivity.json")
    return _Shared(model, data, budget, techniques, out, ctx, base, base_onnx, quick)


def _copier(model: nn.Module) -> Callable[[], nn.Module]:
    template = copy.deepcopy(model).eval()
    return lambda: copy.deepcopy(template)


def _fingerprint(model: nn.Module, techniques) -> str:
    import hashlib
    h = hashlib.sha256(repr(sorted(techniques)).encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _sensitivity(model, ctx: TrialContext, techniques, path: Path) -> dict:
    """Per-layer sensitivity, cached on disk for this exact model (weights fingerprint): a resumed
    or repeated run does not pay for it again, a retrained model does not reuse stale curves."""
    fp = _fingerprint(model, techniques)
    if path.exists():
        try:
            cached = json.loads(path.read_text())
            if cached.get("fingerprint") == fp:
                return cached["sensitivity"]
        except (json.JSONDecodeError, AttributeError, KeyError):
            log.warning("ignoring unreadable sensitivity cache %s", path)
    from autocompress.search.steps import measure_sensitivity
    sens = measure_sensitivity(model, ctx, techniques)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"fingerprint": fp, "sensitivity": sens}, indent=1))
    os.replace(tmp, path)
    return sens


def _study(url: str, seed: int, budget: Budget, shared: _Shared, resume: bool):
    import optuna

    # constraints reach the sampler through trial.set_constraint (see _set_constraints)
    # the seed recipes are the start-up trials: the model-based sampler takes over right after them
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=3)
    if not resume and url.startswith("sqlite:///"):
        db = Path(url[len("sqlite:///"):])
        if db.exists():
            # a new run in an old folder: start clean rather than silently mixing two searches,
            # but keep the old study and best model aside instead of deleting them
            stamp = time.strftime("%Y%m%d-%H%M%S")
            db.rename(db.with_name(f"study-{stamp}.db"))
            best = shared.out_dir / "best"
            if best.exists():
                best.rename(shared.out_dir / f"best-{stamp}")
    elif not resume:
        names = {st.study_name for st in optuna.get_all_study_summaries(url)}
        if shared.study_name in names:
            raise ValueError(f"study {shared.study_name!r} already exists in {url.split('@')[-1]}: pass "
                             f"resume=True to continue it, or another study_name for a new search")
    return optuna.create_study(study_name=shared.study_name, storage=url, load_if_exists=True, sampler=sampler,
                               directions=["maximize", "minimize", "minimize"])


# -- one trial ---------------------------------------------------------------------------

def _objective(trial, shared: _Shared):
    import optuna
    try:
        return _trial(trial, shared)
    except (optuna.TrialPruned, KeyboardInterrupt):
        raise
    except Exception as e:
        # keep the reason with the trial: the report shows why it failed, the search goes on
        trial.set_user_attr("note", f"failed: {type(e).__name__}: {e}"[:500])
        log.warning("trial %d failed: %s: %s", trial.number, type(e).__name__, e)
        raise


def _trial(trial, shared: _Shared):
    import optuna

    recipe = space_mod.sample(trial, shared.budget, shared.techniques)
    trial.set_user_attr("recipe", recipe.to_dict())
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    t0 = time.time()
    log.info("trial %d: %s", trial.number, recipe.describe())
    model = copy.deepcopy(shared.model)
    model = apply_recipe_steps(model, recipe, shared.ctx)
    acc = shared.ctx.evaluate(model)
    floor = shared.budget.allowed_accuracy(shared.base["accuracy"])
    trial.set_user_attr("val_accuracy", acc)
    if acc < floor - 0.05:
        # hopeless on accuracy: skip the expensive export/measurement, tell the sampler why
        # same constraint names as a measured trial (the sampler compares them); others unmeasured
        names = _constraint_values(shared, {"accuracy": acc, "size_bytes": 1, "latency_ms": 1.0},
                                   dict(shared.base, latency_ms=1.0))
        _set_constraints(trial, {k: (floor - acc if k == "accuracy" else 0.0) for k in names})
        trial.set_user_attr("note", f"val accuracy {100 * acc:.2f} % far below floor {100 * floor:.2f} %")
        raise optuna.TrialPruned(trial.user_attrs["note"])
    tdir = Path(tempfile.mkdtemp(prefix=f"trial{trial.number}-", dir=shared.ctx.work_dir))
    try:
        art = deploy(model, recipe, shared.ctx, tdir)
        size = art["storage_bytes"] if shared.budget.size_of == "storage" else art["deployed_bytes"]
        lat = base_lat = None
        if shared.budget.needs_latency():
            runs = 20 if shared.quick else 60
            target = targets.get(shared.budget.runtime)
            m = target.time({"base": shared.base_onnx, "cand": art["deployed"]}, tuple(shared.data.input_shape),
                            (shared.budget.latency_batch,), threads=shared.budget.threads, runs=runs)
            lat, base_lat = m["cand"][shared.budget.latency_batch].median_ms, m["base"][shared.budget.latency_batch].median_ms
        cand = {"accuracy": acc, "size_bytes": size, "latency_ms": lat}
        base = dict(shared.base, latency_ms=base_lat)
        viol = shared.budget.violations(base, cand)
        trial.set_user_attr("size_bytes", int(size))
        trial.set_user_attr("onnx_bytes", int(art["deployed_bytes"]))   # the deployed file, any runtime
        trial.set_user_attr("storage_bytes", int(art["storage_bytes"]))
        trial.set_user_attr("latency_ms", lat)
        trial.set_user_attr("base_latency_ms", base_lat)
        trial.set_user_attr("violations", viol)
        _set_constraints(trial, _constraint_values(shared, cand, base))
        trial.set_user_attr("duration_s", time.time() - t0)
        _keep_if_best(trial, shared, model, recipe, art, not viol)
    finally:
        shutil.rmtree(tdir, ignore_errors=True)   # the best trial's files were copied to best/
    lat_ratio = (lat / base_lat) if (lat and base_lat) else 1.0
    return acc, float(size), float(lat_ratio)


def _set_constraints(trial, values: dict[str, float]) -> None:
    for k, v in values.items():
        trial.set_constraint(k, float(v))
    trial.set_user_attr("constraints", list(values.values()))   # kept for ranking "best so far"


def _constraint_values(shared: _Shared, cand: dict, base: dict) -> dict[str, float]:
    """Optuna constraint form: each value <= 0 means satisfied (scaled to be comparable)."""
    b = shared.budget
    out = {"accuracy": shared.budget.allowed_accuracy(base["accuracy"]) - cand["accuracy"]}
    if b.min_size_ratio is not None:
        out["size_ratio"] = b.min_size_ratio / (base["fp32_bytes"] / cand["size_bytes"]) - 1.0
    if b.max_size_bytes is not None:
        out["size_bytes"] = cand["size_bytes"] / b.max_size_bytes - 1.0
    if b.min_speedup is not None and cand["latency_ms"] and base["latency_ms"]:
        out["speedup"] = b.min_speedup / (base["latency_ms"] / cand["latency_ms"]) - 1.0
    if b.max_latency_ms is not None and cand["latency_ms"]:
        out["latency_ms"] = cand["latency_ms"] / b.max_latency_ms - 1.0
    return out


def _score(attrs: dict, budget: Budget) -> tuple:
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


def _keep_if_best(trial, shared: _Shared, model, recipe, art, feasible: bool) -> None:
    """After every trial the best model so far and its recipe are on disk (atomic replace)."""
    best_dir = shared.out_dir / "best"
    best_dir.mkdir(exist_ok=True)
    meta_path = best_dir / "best.json"
    attrs = dict(trial.user_attrs)
    if meta_path.exists():
        try:
            prev = json.loads(meta_path.read_text())
            if _score(prev["attrs"], shared.budget) <= _score(attrs, shared.budget):
                return
        except (json.JSONDecodeError, KeyError):
            pass
    shared.best_model = (trial.number, model)   # this process's copy, exactly as deployed
    for key in ("deployed", "storage"):
        name = Path(art[key]).name           # model.onnx / model.pte, model.acz
        tmp = best_dir / (name + ".tmp")
        tmp.write_bytes(Path(art[key]).read_bytes())
        os.replace(tmp, best_dir / name)
    recipe.to_yaml(best_dir / "recipe.yaml.tmp")
    os.replace(best_dir / "recipe.yaml.tmp", best_dir / "recipe.yaml")
    tmp = best_dir / "best.json.tmp"
    tmp.write_text(json.dumps({"trial": trial.number, "attrs": attrs, "feasible": feasible}, indent=1))
    os.replace(tmp, meta_path)
    log.info("trial %d is the best so far (%s)", trial.number, "meets budget" if feasible else "budget not met yet")


# -- workers ------------------------------------------------------------------------------

def _run_workers(shared: _Shared, url: str, seed: int, n_trials: int | None, timeout: float | None,
                 workers: int) -> None:
    """Several local processes join the same study (Optuna's distributed mode, as machines would)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")  # children inherit the prepared model, data and sensitivity
    per = None if n_trials is None else math.ceil(n_trials / workers)
    procs = [ctx.Process(target=_worker_main, args=(shared, url, seed + i, per, timeout))
             for i in range(workers)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    bad = [p.exitcode for p in procs if p.exitcode not in (0, None)]
    if bad:
        log.warning("%d worker(s) exited with codes %s", len(bad), bad)


def _worker_main(shared: _Shared, url: str, seed: int, n_trials: int | None, timeout: float | None) -> None:
    import optuna

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _study(_storage_url(shared.out_dir, url), seed, shared.budget, shared, resume=True)
    study.optimize(lambda t: _objective(t, shared), n_trials=n_trials, timeout=timeout,
                   catch=(Exception,), gc_after_trial=True)


def join_study(model: nn.Module, data: Splits, out_dir: str | Path, storage: str, *,
               techniques: Sequence[str] = TECHNIQUES, n_trials: int | None = None,
               timeout: float | None = None, seed: int = 0, **kwargs) -> None:
    """Run trials for a study that another machine created (same ``storage`` URL and
    ``study_name``); accepts compress()'s ``budget``, ``evaluate``, ``finetune``, ``quick``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    budget = kwargs.pop("budget", None) or Budget.from_yaml(out / "budget.yaml")
    shared = _prepare(model, data, budget, tuple(techniques), out, kwargs.get("evaluate"),
                      kwargs.get("finetune"), seed, kwargs.get("quick", False), kwargs.get("model_factory"))
    shared.study_name = kwargs.get("study_name", STUDY)
    _worker_main(shared, storage, seed, n_trials, timeout)


# -- the end --------------------------------------------------------------------------------

def _finish(study, shared: _Shared, title: str, elapsed: float) -> Result:
    from autocompress.search.finish import build_result
    return build_result(study, shared, title, elapsed)
