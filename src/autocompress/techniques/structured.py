"""Structured pruning: channels / neurons physically removed (``prune_channels_``), so the model
is faster on any runtime. Serves speed budgets."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from autocompress.config import Config, ConfigError
from autocompress.techniques._common import allocate, reestimate_bn
from autocompress.techniques.registry import Choice, Step, Technique, register, share

if TYPE_CHECKING:   # torch is imported where a step runs: the registry stays light
    from torch import nn

log = logging.getLogger(__name__)


@dataclass
class Structured(Config):
    """``structured_ratio`` of the MACs removed (spread over layers by sensitivity unless
    ``layer_ratios`` pins some); kept channel counts multiples of ``round_to``."""
    structured_ratio: float = 0.0
    layer_ratios: dict[str, float] = field(default_factory=dict)
    round_to: int = 8        # runtimes' kernels favour multiples of 8

    def validate(self) -> None:
        if not 0.0 <= self.structured_ratio < 1.0:
            raise ConfigError(f"structured.structured_ratio must be in [0, 1), got {self.structured_ratio}")
        if self.round_to < 1:
            raise ConfigError(f"structured.round_to must be >= 1, got {self.round_to}")
        for k, v in self.layer_ratios.items():
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"structured.layer_ratios[{k!r}] must be in [0, 1), got {v}")


def run(model: nn.Module, recipe, ctx) -> nn.Module:
    """Remove ``structured_ratio`` of the MACs; the per-layer profile comes from the structured
    sensitivity (sensitive layers lose fewer channels) unless the recipe pins ``layer_ratios``.
    A speed budget's sensitivity carries a latency path timed on its runtime
    (prune/latency_path.py): there ``structured_ratio`` is the share of the runtime's time to
    save, and the path's point is pruned as it stands; shares beyond the path fall back on MACs."""
    from autocompress.prune import StructuredPruneConfig, StructuredPruneError, prune_channels_
    from autocompress.prune.latency_path import point_for
    sens = ctx.sensitivity.get("structured")
    profile = dict(recipe.layer_ratios) or allocate(sens, recipe.structured_ratio)
    rt = recipe.round_to if recipe.round_to > 1 else None
    mac = lambda prof, r: StructuredPruneConfig(target="macs", amount=recipe.structured_ratio,  # noqa: E731
                                                per_layer=prof, round_to=r)
    attempts = [mac(profile, rt)] + ([mac({}, rt)] if profile and not recipe.layer_ratios else [])
    point = None if recipe.layer_ratios else point_for((sens or {}).get("latency_path") or [], recipe.structured_ratio)
    if point is not None:
        # a speed budget's path, timed on its runtime: ``structured_ratio`` is the share of the
        # runtime's time to save, and the point's ratios are pruned as they are (rescaling them to
        # a MAC count would undo what the timing found)
        attempts.insert(0, StructuredPruneConfig(ratio=0.0, per_layer=point["ratios"], round_to=rt))
    if rt is not None:
        # a small layer cannot keep a multiple of round_to and still lose its share: unrounded then
        attempts += [dataclasses.replace(c, round_to=None) for c in attempts]
    for i, cfg in enumerate(attempts):
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
                     100 * recipe.structured_ratio, "a profile" if cfg.per_layer else "uniform ratios",
                     cfg.round_to, e)
    reestimate_bn(model, ctx)
    return ctx.train(model, recipe, share(recipe, run), desc="recover channels", accelerate=True)


def _sensitivity(model: nn.Module, evaluate, ratios, stop, ctx) -> dict:
    from autocompress.prune import sensitivity
    from autocompress.train import batchnorms
    from autocompress.train import reestimate_bn as _reestimate
    calib = None
    if batchnorms(model):
        # the trials re-estimate BatchNorm after pruning: so must the copies that predict them
        calib = _calibration(ctx)
    res = sensitivity(model, evaluate, ratios=ratios, kind="structured", example_input=ctx.example, stop=stop,
                      after_prune=None if calib is None else (lambda m: _reestimate(m, calib)))
    speed = getattr(ctx, "speed_probe", None)
    out = res.to_dict()
    if speed is not None:     # a speed budget: the order in which layers thin, timed on its runtime
        from autocompress.prune.latency_path import latency_path
        path = latency_path(model, ctx.example, res, speed)
        if path:
            out["latency_path"] = path
    return out


def _calibration(ctx):
    """The images each pruned copy of the analysis re-estimates its BatchNorm statistics on."""
    return ctx.data.calibration_batch(128 if ctx.quick else 256, seed=ctx.seed)


def _copy_seconds(model: nn.Module, ctx) -> float:
    """Seconds one pruned copy of the analysis costs besides its evaluation: copy, prune one layer
    at half its channels, count its MACs, re-estimate BatchNorm (timed once, on the first layer)."""
    import copy
    import time

    from autocompress.prune import StructuredPruneConfig, StructuredPruneError, prune_channels_
    from autocompress.prune.structured import model_cost, prunable_layers
    from autocompress.train import batchnorms
    from autocompress.train import reestimate_bn as _reestimate
    names = list(prunable_layers(model, ctx.example, StructuredPruneConfig(ratio=0.0)))
    if not names:
        return 0.0
    t0 = time.monotonic()
    m = copy.deepcopy(model)
    try:
        prune_channels_(m, StructuredPruneConfig(ratio=0.0, per_layer={names[0]: 0.5}), ctx.example)
    except StructuredPruneError:
        pass
    model_cost(m, ctx.example, "macs")
    if batchnorms(m):
        _reestimate(m, _calibration(ctx))
    return time.monotonic() - t0


TECHNIQUE = register(Technique(
    "structured", serves=frozenset({"speed"}), fields=("structured_ratio", "layer_ratios", "round_to"),
    # the low end matters for speed budgets, where the ratio is the share of the runtime's time
    # to save: 0.15-0.2 (1.2-1.25x) is what a small, fragile model (16-channel SmallResNet) can
    # win back within 0.3 points; its next step, 0.3, cost it 2-3 points after a short fine-tune
    choices=(Choice("structured_ratio", (0.0, 0.15, 0.2, 0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9), 0.0),
             Choice("round_to", (1, 8, 16), 8)),
    steps=(Step(lambda r: r.structured_ratio > 0 or bool(r.layer_ratios), run, 0.5),),
    config=Structured, describe=lambda r: f"channels -{r.structured_ratio:.0%}" if r.structured_ratio else
    "channels per layer",
    seed_levels=tuple({"structured_ratio": s} for s in (0.5, 0.8, 0.9, 0.9)),
    sensitivity_seeds="structured_ratio",
    sensitivity=lambda ctx: {"ratios": (0.25, 0.5, 0.75, 0.9),
                             "measure": lambda m, ev, ratios, stop: _sensitivity(m, ev, ratios, stop, ctx),
                             "overhead": lambda m: _copy_seconds(m, ctx)},
    to_recipe=lambda p: dict(structured_ratio=float(p.get("structured_ratio", 0.0)),
                             round_to=int(p.get("round_to", 8))),
    from_recipe=lambda r: dict(structured_ratio=r.structured_ratio, round_to=r.round_to)))
