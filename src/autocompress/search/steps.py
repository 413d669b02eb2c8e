"""How a recipe is applied: each technique is one step ``(model, recipe, ctx) -> model``.

The steps only call the techniques' public verbs (``prune_channels_``, ``factorize_``, ``prune_``,
``cluster_``, ``quantize_``/``qat_``); this module decides order and fine-tuning, nothing more.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import Subset

from autocompress.data import Splits
from autocompress.search.budget import Budget
from autocompress.search.deadline import Deadline
from autocompress.search.recipe import Recipe
from autocompress.train import TrainConfig, fit

log = logging.getLogger(__name__)


@dataclass
class TrialContext:
    data: Splits
    teacher: nn.Module
    example: torch.Tensor
    evaluate: Callable[[nn.Module], float]       # validation accuracy, in [0, 1]
    finetune: Callable[[nn.Module], nn.Module] | None
    seed: int
    quick: bool
    work_dir: Path
    budget: Budget
    sensitivity: dict = field(default_factory=dict)
    # builds the user's architecture (for the storage artifact of a model class it cannot describe)
    model_factory: Callable[[], nn.Module] | None = None
    teacher_cache: nn.Module | None = field(default=None, repr=False)
    deadline: Deadline = field(default_factory=lambda: Deadline(None))
    device: str = "cpu"        # where our fine-tunes run (compress(device="auto") picks CUDA when there is one)
    rung_evaluate: Callable[[nn.Module], float] | None = None   # the same metric on a small fixed val subset
    rungs: object | None = None   # the running trial's rungs.RungWatch (None: no early stop)

    def __post_init__(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)

    @property
    def train_set(self):
        if self.quick:  # tests: a fixed few thousand samples are enough to exercise every path
            return Subset(self.data.train, range(min(3000, len(self.data.train))))
        return self.data.train


# -- fine-tuning ------------------------------------------------------------------------------

def loss_for(recipe: Recipe, ctx: TrialContext):
    if not recipe.distill:
        return None
    from autocompress.distill import DistillConfig, distillation_loss
    # T=2, alpha=0.5: the original is nearly one-hot on its own training images, so a hotter
    # temperature or a heavier soft weight recovered less in short fine-tunes (bench_storage)
    return distillation_loss(_cached_teacher(ctx), DistillConfig(temperature=2.0, alpha=0.5))


def _cached_teacher(ctx: TrialContext) -> nn.Module:
    """The teacher's logits on the training inputs, computed once per search: every distilled
    fine-tune then skips the teacher's forward pass (unseen inputs still go through it)."""
    if ctx.teacher_cache is None:
        from torch.utils.data import DataLoader
        from autocompress.distill.api import CachedTeacher
        xs = torch.cat([x for x, _ in DataLoader(ctx.train_set, batch_size=2048)])
        ctx.teacher_cache = CachedTeacher(ctx.teacher, xs)
    return ctx.teacher_cache


FINETUNE_BATCH = 64


def train(model: nn.Module, recipe: Recipe, ctx: TrialContext, epochs: float, hooks=(),
          desc: str = "fine-tune", lr_scale: float = 1.0, accelerate: bool = False) -> nn.Module:
    """Fine-tune with the user's loop when given, else ours (distilled from the original)."""
    if epochs <= 0:
        return model
    if ctx.finetune is not None:
        model = ctx.finetune(model)
        for h in hooks:  # the user's loop knows nothing of masks / codebooks: re-impose them
            h(model)
        return model
    # batch 64: twice the optimizer steps per epoch of 128, which recovers pruned LeNets better
    cfg = TrainConfig(epochs=epochs, lr=recipe.lr * lr_scale, batch_size=FINETUNE_BATCH, seed=ctx.seed,
                      progress=False)
    # only plain models go to the accelerator: masks, codebooks and fake quantizers keep state
    # tensors of their own on the CPU (structured pruning and factorization leave plain layers)
    device = ctx.device if accelerate and not hooks else None
    watch = ctx.rungs
    settled = desc not in ("prune round", "recover sparse")   # mid-schedule scores dip (rungs.py)
    stop = ctx.deadline.expired if watch is None else (lambda: ctx.deadline.expired() or watch.step(model, settled))
    return fit(model, ctx.train_set, cfg, loss_fn=loss_for(recipe, ctx), hooks=hooks, desc=desc,
               stop=stop, device=device)


# -- the steps --------------------------------------------------------------------------------

def _structured(model: nn.Module, recipe: Recipe, ctx: TrialContext) -> nn.Module:
    """Remove ``structured_ratio`` of the MACs; the per-layer profile comes from the structured
    sensitivity (sensitive layers lose fewer channels) unless the recipe pins ``layer_ratios``."""
    from autocompress.prune import StructuredPruneConfig, StructuredPruneError, prune_channels_
    profile = dict(recipe.layer_ratios) or _allocate(ctx.sensitivity.get("structured"), recipe.structured_ratio)
    rt = recipe.round_to if recipe.round_to > 1 else None
    attempts = [(profile, rt)] + ([({}, rt)] if profile and not recipe.layer_ratios else [])
    if rt is not None:
        # a small layer cannot keep a multiple of round_to and still lose its share: unrounded then
        attempts += [(p, None) for p, _ in attempts]
    for i, (prof, r) in enumerate(attempts):
        cfg = StructuredPruneConfig(target="macs", amount=recipe.structured_ratio, per_layer=prof, round_to=r)
        try:
            model = prune_channels_(model, cfg, ctx.example)
            break
        except StructuredPruneError as e:
            if i == len(attempts) - 1:
                # nothing in reach (e.g. only recurrent layers carry the MACs, and they are kept):
                # the recipe's other steps still run; the trial's channel count says what happened
                log.warning("structured pruning not applicable here (%s); channels kept", e)
                return model
            # the sensitivity profile or the rounding spares some layers so much that the MAC
            # target is out of reach even at the largest ratio: try the next, looser setting
            log.info("%.0f%% of the MACs out of reach with %s, round_to=%s (%s); trying a looser setting",
                     100 * recipe.structured_ratio, "the sensitivity profile" if prof else "uniform ratios", r, e)
    _reestimate_bn(model, ctx)
    return train(model, recipe, ctx, _share(recipe, _structured), desc="recover channels", accelerate=True)


def _reestimate_bn(model: nn.Module, ctx: TrialContext) -> None:
    from autocompress.train import reestimate_bn
    reestimate_bn(model, ctx.data.calibration_batch(256 if ctx.quick else 1024, seed=ctx.seed))


def _factorize(model: nn.Module, recipe: Recipe, ctx: TrialContext) -> nn.Module:
    from autocompress.factorize import FactorizeConfig, factorize_
    model = factorize_(model, FactorizeConfig(energy=recipe.rank_energy))
    _reestimate_bn(model, ctx)
    return train(model, recipe, ctx, _share(recipe, _factorize), desc="recover low-rank", accelerate=True)


def _sparsify(model: nn.Module, recipe: Recipe, ctx: TrialContext) -> nn.Module:
    """Reach ``sparsity`` gradually (polynomial schedule over 3 rounds with fine-tuning between),
    then a longer, gentler fine-tune with the masks enforced before the zeros become permanent
    (Han et al.'s iterative prune/retrain). Per-layer sparsities follow the sensitivity curves,
    else one global magnitude threshold."""
    from autocompress.prune import PruneConfig, make_permanent, prune_
    epochs = _share(recipe, _sparsify)
    steps = 1 if epochs <= 0 else 3
    per_layer = follow_renames(model, _allocate(ctx.sensitivity.get("prune"), recipe.sparsity))
    cfg = PruneConfig(sparsity=recipe.sparsity, scope="layer" if per_layer else "global", per_layer=per_layer,
                      schedule="polynomial" if steps > 1 else "oneshot", steps=steps, permanent=False)
    tune = (lambda m: train(m, recipe, ctx, 0.4 * epochs / steps, desc="prune round")) if epochs > 0 else None
    model = prune_(model, cfg, ctx.train_set, finetune=tune)
    model = train(model, recipe, ctx, 0.6 * epochs, desc="recover sparse", lr_scale=0.3)
    return make_permanent(model)


def _cluster(model: nn.Module, recipe: Recipe, ctx: TrialContext) -> nn.Module:
    from autocompress.encode import ClusterConfig, cluster_, cluster_hooks, strip_clusters_
    # convolutions hold few weights but are sensitive: one bit more for them (the paper: 8 conv / 5 fc)
    cfg = ClusterConfig(bits=recipe.cluster_bits, conv_bits=min(8, recipe.cluster_bits + 1))
    model = cluster_(model, cfg)
    model = train(model, recipe, ctx, _share(recipe, _cluster), hooks=cluster_hooks(model), desc="tune centroids",
                  lr_scale=0.1)
    return strip_clusters_(model)


def _quantize(model: nn.Module, recipe: Recipe, ctx: TrialContext) -> nn.Module:
    calib = ctx.data.calibration_batch(256 if ctx.quick else 512, seed=ctx.seed)
    if recipe.quant == "int8":
        from autocompress.quantize import PTQConfig, quantize_
        return quantize_(model, PTQConfig(weight_bits=8, act_bits=8), calib)
    if recipe.quant == "mixed":
        # every layer starts at the low precision; the most sensitive go up (w8, then fp32) until
        # the validation accuracy holds within half the budget (the other half is for the rest)
        from autocompress.quantize import MixedPrecisionConfig, Precision, mixed_precision_
        levels = [Precision(recipe.weight_bits, recipe.act_bits), Precision(8, 8), Precision(None, None)]
        if recipe.weight_bits == 8:
            levels = levels[1:]
        mixed_precision_(model, MixedPrecisionConfig(levels=levels, max_drop=ctx.budget.max_drop / 200),
                         calib, ctx.evaluate)
        return model
    from autocompress.quantize import QATConfig, qat_
    cfg = QATConfig(weight_bits=recipe.weight_bits, act_bits=recipe.act_bits)
    return qat_(model, cfg, ctx.train_set, calibration_data=calib,
                finetune=lambda m: train(m, recipe, ctx, _share(recipe, _quantize), desc="QAT"))


def _steps() -> list[tuple[Callable[[Recipe], bool], Callable, float]]:
    """(recipe switches the step on, step, its weight in the fine-tuning budget), in the order
    they run: from the technique registry (search/techniques.py), which names this module's steps."""
    from autocompress.search.techniques import all_steps
    return [(s.on, s.run, s.share) for s in all_steps()]


def __getattr__(name: str):
    if name == "STEPS":   # computed on each access: techniques may be registered after import
        return _steps()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _share(recipe: Recipe, step: Callable) -> float:
    """This step's part of the recipe's fine-tuning epochs (shares of the active steps sum to 1)."""
    active = [(fn, w) for on, fn, w in _steps() if on(recipe)]
    total = sum(w for _, w in active)
    mine = sum(w for fn, w in active if fn is step)
    return recipe.finetune_epochs * mine / total if total > 0 else 0.0


def follow_renames(model: nn.Module, per_layer: dict[str, float]) -> dict[str, float]:
    """Per-layer settings keyed by the *original* model's names, for a model an earlier step
    restructured: low-rank factorization turns ``fc.weight`` into ``fc.0.weight`` and
    ``fc.1.weight`` (both factors get ``fc``'s setting). A name that vanished altogether is
    dropped (the global setting applies to what replaced it)."""
    params = dict(model.named_parameters())
    out: dict[str, float] = {}
    for name, v in per_layer.items():
        if name in params:
            out[name] = v
            continue
        owner, _, leaf = name.rpartition(".")
        factors = [p for p in params if p.startswith(owner + ".") and p.endswith("." + leaf)] if owner else []
        if factors:
            out.update({p: v for p in factors})
        else:
            log.info("per-layer setting for %r dropped: no such layer after the earlier steps", name)
    return out


def _allocate(sens: dict | None, target: float) -> dict[str, float]:
    if not sens or target <= 0:
        return {}
    from autocompress.prune import SensitivityResult, allocate_ratios
    try:
        return allocate_ratios(SensitivityResult.from_dict(sens), target)
    except ValueError as e:  # target beyond the analysed ratios: uniform is the honest fallback
        log.info("per-layer allocation not possible (%s); using a uniform ratio", e)
        return {}


def apply_recipe_steps(model: nn.Module, recipe: Recipe, ctx: TrialContext) -> nn.Module:
    from autocompress.search.techniques import check_options
    check_options(recipe)
    torch.manual_seed(ctx.seed)
    for on, step, _ in _steps():
        if on(recipe):
            model = step(model, recipe, ctx)
    return model.eval()


# -- deployment ----------------------------------------------------------------------------------

def deploy(model: nn.Module, recipe: Recipe, ctx: TrialContext, out_dir: Path, store: bool = True) -> dict:
    """Export the deployable file through the budget's target (parity-checked) and, when ``store``,
    the compressed storage artifact. Returns the paths and sizes under ``deployed`` / ``storage``."""
    from autocompress import targets

    target = targets.require(ctx.budget.runtime)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / target.filename
    inputs = ctx.data.calibration_batch(256, seed=ctx.seed + 1)
    if recipe.quant != "none":
        # quantized: rounding at a boundary may flip a rare argmax; accuracy parity is what matters
        if target.requantizes:   # it quantizes plain layers (which carry our rounded weights)
            target.export(_storable(model), ctx.example, path, quantized=True,
                          calibration=ctx.data.calibration_batch(512, seed=ctx.seed),
                          input_ranges=_input_ranges(model))
            # its own activation ranges, not our simulation's: outputs differ more, in scale
            target.parity(model, path, inputs, atol=0.5, rtol=0.1, min_agreement=0.98)
        else:                    # it writes our own quantizers (their calibrated ranges)
            target.export(model, ctx.example, path, quantized=True)
            target.parity(model, path, inputs, atol=0.5, min_agreement=0.98)
    else:
        target.export(model, ctx.example, path)
        target.parity(model, path, inputs, atol=1e-3)
    art = {"deployed": path, "deployed_bytes": target.size(path), "runtime": target.name}
    return art | (store_artifact(model, recipe, ctx, out_dir) if store else {})


def store_artifact(model: nn.Module, recipe: Recipe, ctx: TrialContext, out_dir: Path) -> dict:
    """The compressed storage artifact (entropy-coded; the slowest part of scoring a large model)."""
    from autocompress.encode import save_compressed
    storage = out_dir / "model.acz"
    save_compressed(_storable(model), storage, model_factory=ctx.model_factory,
                    metadata={"recipe": recipe.to_dict()})
    return {"storage": storage, "storage_bytes": storage.stat().st_size}


def _input_ranges(model: nn.Module) -> dict[str, tuple[float, float]]:
    """Our calibrated input range (lo, hi) of each statically quantized layer, by layer name: a
    runtime that quantizes by itself may use them where they fit better than its own."""
    from autocompress.quantize import QuantWrapper
    out = {}
    for name, w in model.named_modules():
        if isinstance(w, QuantWrapper) and w.mode == "static" and w.in_q.enabled:
            scale, zp, qmin, qmax = w.in_q.params()
            out[name] = (float((qmin - zp) * scale), float((qmax - zp) * scale))
    return out


def _storable(model: nn.Module) -> nn.Module:
    """What the storage artifact holds. A quantized model is stored as its plain layers carrying
    the quantized weights and biases (the values ONNX Runtime computes with); the activation
    quantization lives in the deployed ONNX graph, so the artifact's model is weight-quantized."""
    from autocompress.quantize import QuantWrapper, float_view
    if not any(isinstance(m, QuantWrapper) for m in model.modules()):
        return model
    view = copy.deepcopy(float_view(model))
    for name, w in [(n, m) for n, m in model.named_modules() if isinstance(m, QuantWrapper)]:
        inner = view.get_submodule(name)
        with torch.no_grad():
            inner.weight.copy_(w.quantized_weight())
            if inner.bias is not None:
                inner.bias.copy_(w.quantized_bias())
    return view.eval()


def rebuild_best(shared, recipe: Recipe, trial_number: int) -> nn.Module:
    """The best model: the very object when this process ran that trial, else from its storage
    artifact (weight-exact), else by replaying its recipe (deterministic)."""
    from autocompress.encode import load_compressed
    if shared.best_model is not None and shared.best_model[0] == trial_number:
        return shared.best_model[1]
    try:
        return load_compressed(shared.out_dir / "best" / "model.acz", shared.ctx.model_factory)
    except Exception as e:  # noqa: BLE001 - fall back to replaying the recipe
        log.info("rebuilding the best model by replaying its recipe (%s)", e)
        return apply_recipe_steps(copy.deepcopy(shared.model), recipe, shared.ctx)


# (quick, normal): of the whole time limit, at most, on any model size. A quick (smoke) run has
# two minutes for baseline, trials and the final measurement: on a loaded 2-core machine a fifth
# of that for sensitivity left no time for a single trial
SENSITIVITY_SHARE = (0.05, 0.2)


def measure_sensitivity(model: nn.Module, ctx: TrialContext, techniques) -> dict:
    """Per-layer validation accuracy under each technique, one layer at a time, within
    ``SENSITIVITY_SHARE`` of the time limit (a small one for quick runs): the validation subset
    and the number of ratios shrink to fit a first timed evaluation; an analysis that still runs over is abandoned (the search
    then allocates uniformly) rather than eating the trials' time."""
    import time

    from autocompress.prune import sensitivity
    from autocompress.train import evaluate

    plans = {"prune": dict(ratios=(0.5, 0.8, 0.9, 0.95, 0.98), kind="unstructured"),
             "structured": dict(ratios=(0.25, 0.5, 0.75, 0.9), kind="structured", example_input=ctx.example)}
    plans = {k: v for k, v in plans.items() if k in techniques}
    if not plans:
        return {}
    allowed = ctx.deadline.share(SENSITIVITY_SHARE[0 if ctx.quick else 1])
    phase = ctx.deadline.sub(allowed)
    limit = 500 if ctx.quick else 3000
    t0 = time.monotonic()
    evaluate(model, ctx.data.loader("val", 1000, limit=limit))
    t_eval = max(time.monotonic() - t0, 1e-4)
    layers = sum(1 for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)))
    n_evals = sum(layers * len(kw["ratios"]) + 1 for kw in plans.values())
    if n_evals * t_eval > allowed:
        # fewer ratios first (3 still give the allocation a curve), then fewer samples (>= 256)
        for kw in plans.values():
            r = kw["ratios"]
            kw["ratios"] = (r[0], r[len(r) // 2], r[-1])
        n_evals = sum(layers * 3 + 1 for _ in plans)
        limit = max(256, min(limit, int(limit * allowed / (n_evals * t_eval))))
        log.info("sensitivity: %d evaluations of %.2f s exceed %.0f s; 3 ratios on %d samples",
                 n_evals, t_eval, allowed, limit)
    loader = ctx.data.loader("val", 1000, limit=limit)

    def ev(m):
        return evaluate(m, loader)
    out: dict[str, dict] = {}
    for tech, kw in plans.items():
        try:
            out[tech] = sensitivity(model, ev, stop=phase.expired, **kw).to_dict()
        except TimeoutError as e:
            # a smoke run expects to run out of its small share; a real run has lost its guide
            (log.info if ctx.quick else log.warning)("%s sensitivity abandoned for %s: %s; the search "
                                                      "allocates uniformly", tech, type(model).__name__, e)
        except Exception as e:  # noqa: BLE001 - sensitivity guides the search; without it we search blind
            log.warning("%s sensitivity unavailable for %s: %s", tech, type(model).__name__, e)
    return out


def sensitivity_curves(sens: dict) -> dict[str, dict[str, dict[str, float]]]:
    """``{technique: {layer: {ratio: accuracy}}}`` from the cached sensitivity results."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for tech, res in sens.items():
        if isinstance(res, dict) and "scores" in res:
            # unstructured results are keyed by parameter ("fc1.weight"); reports speak of layers
            out[tech] = {layer.removesuffix(".weight"): {str(r): float(a) for r, a in zip(res["ratios"], accs)}
                         for layer, accs in res["scores"].items()}
    return out
