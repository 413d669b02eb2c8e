"""How a recipe is applied: each technique is one step ``(model, recipe, ctx) -> model``.

The steps live with their techniques (techniques/, in the registry's order); this module holds
the trial's context, its fine-tuning (``TrialContext.train``), deployment and sensitivity.
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
from autocompress.techniques._common import follow_renames  # noqa: F401  (re-exported)
from autocompress.train import TrainConfig, TrainingStopped, fit

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
    # the validation accuracy of a deployed file on the budget's runtime (None: the user's own metric,
    # which only PyTorch can compute); used where the runtime re-quantizes (its file is not our simulation)
    deployed_evaluate: Callable[[Path], float] | None = None
    rungs: object | None = None   # the running trial's rungs.RungWatch (None: no early stop)
    baseline_path: Path | None = None   # the original model's deployed file (speed probes time against it)
    speed_probe: Callable[[nn.Module], float | None] | None = None   # set while sensitivity runs
    epoch_s: float | None = None   # one fine-tuning epoch of the original, timed (None: unknown)
    cut_short: str | None = None   # the running trial's fine-tune the deadline cut (scored anyway)

    def __post_init__(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)

    def train(self, model: nn.Module, recipe: Recipe, epochs: float, **kw) -> nn.Module:
        """The trial's fine-tune, as the techniques' steps call it (see :func:`train`)."""
        return train(model, recipe, self, epochs, **kw)

    @property
    def train_set(self):
        return fine_tune_set(self.data, self.quick)


def fine_tune_set(data: Splits, quick: bool):
    """What the search fine-tunes on: the train split, or in quick mode (tests) a fixed few
    thousand samples of it, which are enough to exercise every path."""
    return Subset(data.train, range(min(3000, len(data.train)))) if quick else data.train


# -- fine-tuning ------------------------------------------------------------------------------

def loss_for(recipe: Recipe, ctx: TrialContext):
    if not recipe.distill:
        return None
    from autocompress.distill import DistillConfig, distillation_loss
    # the distill technique's own settings (techniques/distill.py: its defaults and why)
    return distillation_loss(_cached_teacher(ctx), DistillConfig(temperature=recipe.temperature,
                                                                  alpha=recipe.alpha))


def _cached_teacher(ctx: TrialContext) -> nn.Module:
    """The teacher's logits on the training inputs, computed once per search: every distilled
    fine-tune then skips the teacher's forward pass (unseen inputs still go through it)."""
    if ctx.teacher_cache is None:
        from torch.utils.data import DataLoader
        from autocompress.distill.api import CachedTeacher
        xs = [x for x, _ in DataLoader(ctx.train_set, batch_size=2048)]
        # keyword inputs (token ids + attention mask) are not looked up by one tensor's values:
        # the teacher itself answers (its forward is cheap next to the student's step there)
        ctx.teacher_cache = ctx.teacher.eval() if isinstance(xs[0], dict) else \
            CachedTeacher(ctx.teacher, torch.cat(xs))
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
    # steps opt in: pruning masks and fake quantizers are buffers (they follow the model), and
    # clustering state follows the weights it belongs to (encode/cluster._on)
    device = ctx.device if accelerate else None
    watch = ctx.rungs
    settled = desc not in ("prune round", "recover sparse")   # mid-schedule scores dip (rungs.py)
    stop = ctx.deadline.expired if watch is None else (lambda: ctx.deadline.expired() or watch.step(model, settled))
    try:
        return fit(model, ctx.train_set, cfg, loss_fn=loss_for(recipe, ctx), hooks=hooks, desc=desc,
                   stop=stop, device=device)
    except TrainingStopped as e:
        if e.total and e.step >= CUT_OK * e.total:
            # most of it ran (the cosine schedule's last steps barely move the weights): the
            # candidate is scored in the time kept back for that, rather than thrown away
            log.info("%s: the search's time ran out after %d of %d steps; scored as it stands",
                     desc, e.step, e.total)
            ctx.cut_short = f"{desc} cut at {e.step} of {e.total} steps by the deadline"
            return model
        raise


CUT_OK = 0.75    # share of a fine-tune's steps after which a deadline stop still scores the candidate


# -- the steps (one per technique, in techniques/) ----------------------------------------------

def _steps() -> list[tuple[Callable[[Recipe], bool], Callable, float]]:
    """(recipe switches the step on, step, its weight in the fine-tuning budget), in the order
    they run: from the technique registry (techniques/), whose modules hold the steps."""
    from autocompress.techniques import all_steps
    return [(s.on, s.run, s.share) for s in all_steps()]


def __getattr__(name: str):
    if name == "STEPS":   # computed on each access: techniques may be registered after import
        return _steps()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def apply_recipe_steps(model: nn.Module, recipe: Recipe, ctx: TrialContext) -> nn.Module:
    from autocompress.techniques import check_options
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
            # its own activation ranges, not our simulation's: outputs differ more, in scale (XNNPACK
            # int8 of LeNet-5: per-sample logit error 0.8 % median, 4.8 % at the 99th percentile, one
            # sample in 256 at 14 % of the batch's largest logit, top-1 all agreeing); top-1 is the
            # gate, and the search scores such a file by its own accuracy (trial._deployed_accuracy)
            target.parity(model, path, inputs, atol=0.5, rtol=0.2, min_agreement=0.98)
        else:                    # it writes our own quantizers (their calibrated ranges)
            target.export(model, ctx.example, path, quantized=True)
            # the runtime's int8 kernels round where the simulation rounds, but ties and fused
            # requantization differ a little per layer and add up with depth: MobileNetV3-small
            # (channels -60 %, low-rank, int8) was 0.574 off in its logits with every top-1 agreeing
            target.parity(model, path, inputs, atol=0.5, rtol=0.05, min_agreement=0.98)
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
# more for a speed budget's structured analysis: each pruned copy timed on the runtime (speed_probe.py)
PROBE_SHARE = (0.02, 0.1)


def measure_sensitivity(model: nn.Module, ctx: TrialContext, techniques) -> dict:
    """Per-layer validation accuracy under each technique, one layer at a time, within
    ``SENSITIVITY_SHARE`` of the time limit (a small one for quick runs): the validation subset
    and the number of ratios shrink to fit a first timed evaluation; an analysis that still runs over is abandoned (the search
    then allocates uniformly) rather than eating the trials' time."""
    import time

    from autocompress.techniques import get
    from autocompress.train import evaluate

    # each technique that can be measured layer by layer declares how (techniques/, its hook)
    plans = {t: get(t).sensitivity(ctx) for t in techniques if get(t).sensitivity is not None}
    if not plans:
        return {}
    allowed = ctx.deadline.share(SENSITIVITY_SHARE[0 if ctx.quick else 1])
    ctx.speed_probe = _speed_probe(ctx) if "structured" in plans else None
    phase = ctx.deadline.sub(allowed + (ctx.speed_probe.allowed_s if ctx.speed_probe else 0.0))
    limit = 500 if ctx.quick else 3000
    t0 = time.monotonic()
    evaluate(model, ctx.data.loader("val", 1000, limit=limit))
    t_eval = max(time.monotonic() - t0, 1e-4)
    layers = sum(1 for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)))
    # what each evaluated copy costs besides its evaluation (copying, pruning, re-estimating
    # BatchNorm: about 1 s a copy on MobileNetV3, more than evaluating 256 samples), as the
    # technique declares it; left out, MobileNetV3's analysis was planned to fit and abandoned
    overhead = {t: float(kw["overhead"](model)) if "overhead" in kw else 0.0 for t, kw in plans.items()}
    limit0 = limit

    def cost(n_samples: int) -> float:
        return sum((layers * len(kw["ratios"]) + 1) * (t_eval * n_samples / limit0 + overhead[t])
                   for t, kw in plans.items())
    if cost(limit) > allowed:
        # fewer ratios first (3 still give the allocation a curve), then fewer samples (>= 256),
        # then the 2 smallest ratios (a coarse curve still guides the milder cuts; none does not)
        for kw in plans.values():
            r = kw["ratios"]
            kw["ratios"] = (r[0], r[len(r) // 2], r[-1])
        fixed, per_sample = cost(0), (cost(limit0) - cost(0)) / limit0
        limit = max(256, min(limit, int((allowed - fixed) / max(per_sample, 1e-12))))
        if cost(limit) > allowed:
            for kw in plans.values():
                kw["ratios"] = kw["ratios"][:2]
        log.info("sensitivity: %d layers, an evaluation %.2f s plus %s s a copy, %.0f s allowed: ratios %s on %d "
                 "samples", layers, t_eval, {t: round(v, 2) for t, v in overhead.items()}, allowed,
                 [kw["ratios"] for kw in plans.values()], limit)
    loader = ctx.data.loader("val", 1000, limit=limit)

    def ev(m):
        return evaluate(m, loader)
    out: dict[str, dict] = {}
    for tech, kw in plans.items():
        try:
            out[tech] = kw["measure"](model, ev, kw["ratios"], phase.expired)
        except TimeoutError as e:
            # a smoke run expects to run out of its small share; a real run has lost its guide
            (log.info if ctx.quick else log.warning)("%s sensitivity abandoned for %s: %s; the search "
                                                      "allocates uniformly", tech, type(model).__name__, e)
        except Exception as e:  # noqa: BLE001 - sensitivity guides the search; without it we search blind
            log.warning("%s sensitivity unavailable for %s: %s", tech, type(model).__name__, e)
    ctx.speed_probe = None
    return out


def _speed_probe(ctx: TrialContext):
    if ctx.baseline_path is None:
        return None
    from autocompress import targets
    from autocompress.search.speed_probe import make_probe
    return make_probe(targets.require(ctx.budget.runtime), ctx.baseline_path, ctx.example, ctx.data, ctx.budget,
                      ctx.work_dir, ctx.deadline.share(PROBE_SHARE[0 if ctx.quick else 1]))


def sensitivity_curves(sens: dict) -> dict[str, dict[str, dict[str, float]]]:
    """``{technique: {layer: {ratio: accuracy}}}`` from the cached sensitivity results."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for tech, res in sens.items():
        if isinstance(res, dict) and "scores" in res:
            # unstructured results are keyed by parameter ("fc1.weight"); reports speak of layers
            out[tech] = {layer.removesuffix(".weight"): {str(r): float(a) for r, a in zip(res["ratios"], accs)}
                         for layer, accs in res["scores"].items()}
    return out
