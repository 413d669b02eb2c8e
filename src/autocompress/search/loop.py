"""The automatic loop: baseline -> sensitivity -> search over recipes -> best model, always on disk.

Every trial applies a recipe to a copy of the model, fine-tunes it (distilled from the original),
evaluates it on the *validation* split, exports it and measures it on the budget's deployment
target (ONNX Runtime by default, or ExecuTorch; see :mod:`autocompress.targets`). Optuna drives
the search; its study lives in SQLite under ``out_dir`` (or a shared PostgreSQL), so a crash or
Ctrl-C loses at most the running trial and ``resume=True`` continues the same study.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from autocompress.data import Splits
from autocompress import safefs, targets
from autocompress.search import space as space_mod
from autocompress.search.budget import Budget
from autocompress.search.deadline import Deadline
from autocompress.search.recipe import Recipe
from autocompress.search.options import STUDY, ResultOptions, SearchOptions, TrainingOptions
from autocompress.search.options import resolve as resolve_options
from autocompress.search.result import Result
from autocompress.search.steps import TrialContext, fine_tune_set
from autocompress.search.threads import ThreadChoice, restores_threads
from autocompress.search.trial import objective as _objective
from autocompress.train import evaluate as _evaluate

log = logging.getLogger(__name__)



def __getattr__(name: str):
    if name == "TECHNIQUES":   # the registry's names (techniques/), registered ones included
        from autocompress.techniques import names
        return names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")



def _val_evaluator(data: Splits, evaluate: Callable | None, limit: int | None) -> Callable[[nn.Module], float]:
    loader = data.loader("val", 1000, limit=limit)
    if evaluate is None:
        return lambda m: _evaluate(m, loader)
    return lambda m: float(evaluate(m, loader))


def _deployed_evaluator(target, data: Splits, evaluate: Callable | None, limit: int | None):
    """Top-1 on the validation split of a deployed file, run on ``target`` (None for a custom metric)."""
    if evaluate is not None:
        return None
    loader = data.loader("val", 1000, limit=limit)
    return lambda path: target.accuracy(path, loader)


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
    base_measurement: object = None  # baseline measured on val+test up front (times the final step)
    threads: object = None           # search/threads.ThreadChoice: timed again before every trial


def compress(model: nn.Module, data: Splits, budget: Budget | None = None, *,
             search: SearchOptions | dict | None = None, training: TrainingOptions | dict | None = None,
             results: ResultOptions | dict | None = None, **legacy) -> Result:
    """Find the best compressed version of ``model`` within ``budget``.

    The options come in three groups (search/options.py): ``search`` (which techniques, seed
    recipes, workers, the Optuna storage and study), ``training`` (``evaluate(model, loader) ->
    float`` in place of top-1 accuracy, ``finetune(model) -> model`` in place of our loop, the
    device, ``quick``) and ``results`` (``out_dir``, the report's title, the ``model_factory`` of
    the storage artifact). Each is its dataclass or a mapping of its fields; the flat keywords of
    earlier versions still work (``DeprecationWarning``)."""
    s, t, r = resolve_options(search, training, results, legacy)
    from autocompress.train import resolve_device
    device = str(resolve_device(t.device))     # a device this machine lacks fails before anything is written
    return _compress(model, data, budget, techniques=s.techniques, out_dir=r.out_dir, evaluate=t.evaluate,
                     finetune=t.finetune, storage=s.storage, seed=s.seed, workers=s.workers, resume=s.resume,
                     quick=t.quick, seeds=s.seeds, title=r.title, study_name=s.study_name,
                     model_factory=r.model_factory, device=device)


@safefs.holds_out_dir()   # one run per out_dir at a time
@restores_threads         # the search picks its own thread count (search/threads.py)
def _compress(model: nn.Module, data: Splits, budget: Budget | None = None, *,
             techniques: Sequence[str] | None = None, out_dir: str | Path = "runs/compress",
             evaluate: Callable | None = None, finetune: Callable | None = None,
             storage: str | None = None, seed: int = 0, workers: int = 1, resume: bool = False,
             quick: bool = False, seeds: Iterable[Recipe] | None = None, title: str | None = None,
             study_name: str = STUDY, model_factory: Callable[[], nn.Module] | None = None,
             device: str = "cpu") -> Result:
    """:func:`compress` with its options resolved. ``storage``: a ``postgresql://`` URL lets
    workers on many machines join one study; ``device`` (resolved by compress) is where fine-tunes of plain (pruned /
    factorized) models run, measurement stays on ``budget.runtime``."""
    import optuna

    budget = budget or Budget()
    from autocompress.techniques import names
    techniques = names() if techniques is None else techniques
    unknown = sorted(set(techniques) - set(names()))
    if unknown:
        raise ValueError(f"unknown technique(s) {unknown}; choose from {list(names())}")
    out = safefs.make_dir(out_dir)
    safefs.refuse_planted_links(out)      # an out_dir someone prepared cannot redirect our writes
    t_start = time.time()
    deadline = Deadline(budget.time_limit_s)
    from autocompress.search.progress import note
    note("measuring the baseline and per-layer sensitivity (cached in out_dir for later runs)")
    shared = _prepare(model, data, budget, tuple(techniques), out, evaluate, finetune, seed, quick,
                      model_factory, deadline, device)
    log.info("fine-tunes run on %s", torch.cuda.get_device_name(shared.ctx.device)
             if shared.ctx.device.startswith("cuda") else shared.ctx.device)
    url = _storage_url(out, storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    shared.study_name = study_name
    study = _study(url, seed, budget, shared, resume)
    if resume and url.startswith("sqlite:///"):   # the lock says nobody else runs its trials
        from autocompress.search.trial import fail_orphans
        fail_orphans(study)
    shared.ctx.epoch_s = _epoch_s(shared)
    if not resume or len(study.trials) == 0:
        useful = space_mod.useful(budget, shared.techniques)
        if seeds is None:
            seeds = space_mod.seed_recipes(budget, useful, quick, sensitivity=shared.ctx.sensitivity,
                                           epoch_s=shared.ctx.epoch_s, search_s=deadline.search_remaining())
        for r in seeds:
            study.enqueue_trial(space_mod.to_params(r, useful), skip_if_exists=True)
    # interrupted / failed trials do not use up the trial budget; finished ones do
    done = _counted(study)
    n_left = None if budget.max_trials is None else max(budget.max_trials - done, 0)
    interrupted = False
    try:
        if n_left != 0 and not deadline.expired():
            if workers > 1:
                _run_workers(shared, url, seed, n_left, deadline, workers)
            else:
                _optimize(study, shared, budget.max_trials, deadline)
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
    groups = [kwargs.pop(g, None) for g in ("search", "training", "results")]
    s, t, r = resolve_options(*groups, kwargs)
    return compress(model, data, budget, search=dataclasses.replace(s, resume=True), training=t,
                    results=dataclasses.replace(r, out_dir=out_dir))


# -- setup ---------------------------------------------------------------------------------

def _prepare(model, data, budget, techniques, out, evaluate, finetune, seed, quick,
             model_factory=None, deadline: Deadline | None = None, device: str = "cpu") -> _Shared:
    from autocompress.measure import measure
    from autocompress.search.finish import REMEASURE_S, final_reserve_s

    from autocompress.validate import check_run_inputs

    deadline = deadline or Deadline(None)
    model = model.eval()
    check_run_inputs(model, data, class_labels=evaluate is None or finetune is None)   # before long work
    threads = ThreadChoice()
    threads.pick(model, fine_tune_set(data, quick), device, steps=3)   # before the baseline and sensitivity run
    limit = 2000 if quick else None
    val = _val_evaluator(data, evaluate, limit)
    budget.to_yaml(out / "budget.yaml")
    target = targets.require(budget.runtime)
    base_onnx = out / f"baseline{target.suffix}"
    example = data.example_input(1)
    t0 = time.monotonic()
    target.export(model, example, base_onnx)
    t_export = time.monotonic() - t0
    # the final step measures the baseline and the winner on val + test (PyTorch and the runtime):
    # measuring the baseline now costs nothing extra and tells how much time the end must keep
    t0 = time.monotonic()
    base_m = measure(model, data, "baseline", splits=("val", "test"), deployed_path=base_onnx, runtime=target.name)
    t_measure = time.monotonic() - t0
    deadline.t_measure_base = t_measure
    deadline.reserve(final_reserve_s(t_measure, base_onnx, data, budget, quick))
    # until a trial has been scored, guess its scoring tail from the baseline's: one validation pass
    # (about a third of the measurement), an export, and the latency timing: no trial starts that
    # could not be scored in time
    deadline.saw_tail(t_export + 0.35 * t_measure + (REMEASURE_S[0 if quick else 1] if budget.needs_latency() else 0),
                      guess=True)
    # the same figure when our evaluation runs on the whole validation split: do not pay twice
    base_acc = base_m.accuracy["val"] if evaluate is None and limit is None else val(model)
    base = {"accuracy": base_acc, "fp32_bytes": 4 * sum(p.numel() for p in model.parameters()),
            "deployed_bytes": target.size(base_onnx)}
    log.info("baseline: val accuracy %.2f %%, %d fp32 bytes", 100 * base_acc, base["fp32_bytes"])
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    from autocompress.search.rungs import SUBSET
    ctx = TrialContext(data=data, teacher=teacher, example=example, evaluate=val, finetune=finetune,
                       seed=seed, quick=quick, work_dir=out / "work", budget=budget,
                       model_factory=model_factory or _copier(model), deadline=deadline,
                       rung_evaluate=_val_evaluator(data, evaluate, SUBSET),
                       deployed_evaluate=_deployed_evaluator(target, data, evaluate, limit), baseline_path=base_onnx,
                       device=device)
    # only the techniques this budget will search are worth measuring
    ctx.sensitivity = _sensitivity(model, ctx, space_mod.useful(budget, techniques), out / "sensitivity.json")
    shared = _Shared(model, data, budget, techniques, out, ctx, base, base_onnx, quick)
    shared.base_measurement, shared.threads = base_m, threads
    return shared


def _epoch_s(shared: _Shared) -> float | None:
    """One fine-tuning epoch's cost (seeds fit their fine-tunes to the time); unknown for the user's loop."""
    if shared.ctx.finetune is not None:
        return None
    timed = shared.threads.times.get(shared.threads.current) if shared.threads is not None else None
    if timed is not None:       # the thread choice has just timed this epoch at the count it kept
        return timed
    from autocompress.search.seeds import epoch_seconds
    try:
        return epoch_seconds(shared.model, shared.ctx.train_set, device=shared.ctx.device)
    except Exception as e:  # noqa: BLE001 - the seeds then keep their nominal fine-tunes
        log.info("could not time a fine-tuning step (%s: %s)", type(e).__name__, e)
        return None


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
    # a speed budget's structured costs are timed on its runtime at its batch: part of the key
    b = ctx.budget
    fp = _fingerprint(model, techniques) + (f"-{b.runtime}-b{b.latency_batch}-t{b.threads}" if b.needs_latency() else "")
    if path.exists():
        try:
            cached = json.loads(path.read_text())
            if cached.get("fingerprint") == fp:
                return cached["sensitivity"]
        except (json.JSONDecodeError, AttributeError, KeyError):
            log.warning("ignoring unreadable sensitivity cache %s", path)
    from autocompress.search.steps import measure_sensitivity
    sens = measure_sensitivity(model, ctx, techniques)
    safefs.write_text(path, json.dumps({"fingerprint": fp, "sensitivity": sens}, indent=1))
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


# -- workers ------------------------------------------------------------------------------

def _counted(study) -> int:
    """Trials that use up ``max_trials``: complete or pruned on accuracy. Failed ones do not, nor
    ones the deadline stopped (they say nothing about the recipe), nor ones the rung rule stopped
    early (they cost a fraction of a trial: that is the point of stopping them)."""
    from autocompress.search.rungs import EARLY
    from autocompress.search.trial import STOPPED
    return sum(t.state.name == "COMPLETE" or (t.state.name == "PRUNED"
                                              and not str(t.user_attrs.get("note", "")).startswith((STOPPED, EARLY)))
               for t in study.trials)


def _running(study) -> int:
    return sum(t.state.name == "RUNNING" for t in study.get_trials(deepcopy=False))


def _optimize(study, shared: _Shared, max_trials: int | None, deadline: Deadline) -> None:
    """Run trials until ``max_trials`` count (see :func:`_counted`) or the deadline. A search whose
    every trial fails still ends: at most three times ``max_trials`` attempts in all."""
    cap = None if max_trials is None else 3 * max_trials + len(study.trials)

    def enough(study, _trial) -> None:
        # Trials another worker is running still claim their place: without them two workers each
        # start "the last" trial and the study overshoots max_trials. Should such a trial fail, the
        # worker that ran it is still going and runs its replacement.
        claimed = (_counted(study) + _running(study)) if max_trials is not None else 0
        # a trial started now could not even be scored: stop
        if (max_trials is not None and claimed >= max_trials) or deadline.expired() \
                or (cap is not None and len(study.trials) >= cap):
            study.stop()

    timeout = deadline.search_remaining()
    from autocompress.search.followup import follow_up
    from autocompress.search.progress import TrialProgress, search_started
    from autocompress.search.trial import score
    search_started(max_trials, timeout)
    progress = TrialProgress(max_trials, _counted, lambda a: score(a, shared.budget), deadline.search_remaining)

    def near_miss(study, trial) -> None:
        if max_trials is not None and _counted(study) >= max_trials:
            return        # no trial runs after this one: nothing to follow up
        try:
            follow_up(study, trial, shared, deadline)
        except Exception as e:  # noqa: BLE001 - a proposal, never a reason to end the search
            log.warning("no follow-up for trial %d (%s: %s)", trial.number, type(e).__name__, e)

    study.optimize(lambda t: _objective(t, shared), n_trials=None if cap is None else cap - len(study.trials),
                   timeout=None if math.isinf(timeout) else max(timeout, 1e-3), catch=(Exception,),
                   gc_after_trial=True, callbacks=[progress, near_miss, enough])


def _run_workers(shared: _Shared, url: str, seed: int, n_trials: int | None, deadline: Deadline,
                 workers: int) -> None:
    """Several local processes join the same study (Optuna's distributed mode, as machines would)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")  # children inherit the prepared model, data and sensitivity
    per = None if n_trials is None else math.ceil(n_trials / workers)
    procs = [ctx.Process(target=_worker_main, args=(shared, url, seed + i, per, deadline))
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


def _worker_main(shared: _Shared, url: str, seed: int, n_trials: int | None, deadline: Deadline) -> None:
    import optuna

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _study(_storage_url(shared.out_dir, url), seed, shared.budget, shared, resume=True)
    # each worker counts the study's trials as a whole: the shared max_trials is what stops them
    _optimize(study, shared, shared.budget.max_trials, deadline)


@restores_threads
def join_study(model: nn.Module, data: Splits, out_dir: str | Path, storage: str, *,
               techniques: Sequence[str] | None = None, n_trials: int | None = None,
               timeout: float | None = None, seed: int = 0, **kwargs) -> None:
    """Run trials for a study that another machine created (same ``storage`` URL and
    ``study_name``); accepts compress()'s ``budget``, ``evaluate``, ``finetune``, ``quick``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    budget = kwargs.pop("budget", None) or Budget.from_yaml(out / "budget.yaml")
    deadline = Deadline(timeout)
    if techniques is None:
        from autocompress.techniques import names
        techniques = names()
    from autocompress.train import resolve_device
    shared = _prepare(model, data, budget, tuple(techniques), out, kwargs.get("evaluate"),
                      kwargs.get("finetune"), seed, kwargs.get("quick", False), kwargs.get("model_factory"),
                      deadline, str(resolve_device(kwargs.get("device", "auto"))))
    shared.study_name = kwargs.get("study_name", STUDY)
    if n_trials is not None:
        shared.budget = copy.copy(budget)
        shared.budget.max_trials = _counted(_study(_storage_url(out, storage), seed, budget, shared, True)) + n_trials
    _worker_main(shared, storage, seed, n_trials, deadline)


# -- the end --------------------------------------------------------------------------------

def _finish(study, shared: _Shared, title: str, elapsed: float) -> Result:
    from autocompress.search.finish import build_result
    return build_result(study, shared, title, elapsed)
