"""Automatic mixed precision.

``mixed_precision_`` measures each layer's sensitivity (accuracy drop, or output error, with only
that layer quantized at the lowest level), quantizes everything at the lowest level, then raises
the most sensitive layers one level at a time (e.g. w4a8 -> w8a8 -> fp32) until the accuracy budget
holds. A step that makes accuracy worse is not kept: the levels above it are tried, and if all are
worse the layer is backed off to where it was. If the climb ends short of the budget (near chance
accuracy no single raise measures better), every layer goes up to the lowest level that holds it.
The result names every layer's precision, the reason and the full history of steps.

The latency guard, which measures on ONNX Runtime, lives in :mod:`autocompress.targets.ort_guard`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
from torch import nn

from autocompress.config import Config, ConfigError
from autocompress.outputs import call_model, pick_output
from autocompress.quantize.ptq import (PTQConfig, apply_static, calibration_batches, prepare,
                                       run_calibration, wrappers_of, _check_shape)

log = logging.getLogger(__name__)

Evaluate = Callable[[nn.Module], float]


@dataclass
class Precision(Config):
    """One precision level; ``weight_bits=None`` means the layer stays float32."""

    weight_bits: int | None = 8
    act_bits: int | None = 8

    def validate(self) -> None:
        if (self.weight_bits is None) != (self.act_bits is None):
            raise ConfigError("Precision: weight_bits and act_bits are both set or both None (fp32)")
        for f in ("weight_bits", "act_bits"):
            v = getattr(self, f)
            if v is not None and not 2 <= v <= 8:
                raise ConfigError(f"Precision.{f} must be in [2, 8] or None, got {v}")

    @property
    def label(self) -> str:
        return "fp32" if self.weight_bits is None else f"w{self.weight_bits}a{self.act_bits}"

    def pair(self) -> tuple[int, int] | None:
        return None if self.weight_bits is None else (self.weight_bits, self.act_bits)


@dataclass
class MixedPrecisionConfig(Config):
    """``levels`` from lowest to highest precision; every layer starts at ``levels[0]``."""

    levels: list[Precision] = field(default_factory=lambda: [Precision(8, 8), Precision(None, None)])
    max_drop: float = 0.001              # allowed accuracy drop vs float, as a fraction (0.001 = 0.1 pt)
    sensitivity: Literal["accuracy", "output_error"] = "accuracy"
    ptq: PTQConfig = field(default_factory=PTQConfig)   # calibration settings

    def validate(self) -> None:
        if len(self.levels) < 2:
            raise ConfigError("MixedPrecisionConfig.levels needs at least two levels (low, high)")
        if self.max_drop < 0:
            raise ConfigError(f"MixedPrecisionConfig.max_drop must be >= 0, got {self.max_drop}")


@dataclass
class MixedResult:
    precision: dict[str, str]            # layer -> level label
    reason: dict[str, str]
    sensitivity: dict[str, float]        # accuracy drop (or output MSE) with only this layer quantized
    reference: float                     # float accuracy
    accuracy: float                      # final accuracy
    budget_met: bool
    history: list[dict[str, Any]] = field(default_factory=list)

    def __str__(self) -> str:
        rows = [f"float {self.reference:.4f} -> mixed {self.accuracy:.4f} "
                f"(budget {'met' if self.budget_met else 'NOT met'})",
                "| layer | precision | sensitivity | why |", "|---|---|---|---|"]
        for k in self.precision:
            rows.append(f"| {k} | {self.precision[k]} | {self.sensitivity[k]:.4g} | {self.reason[k]} |")
        return "\n".join(rows)


def _set(model: nn.Module, cfg: MixedPrecisionConfig, levels: dict[str, int]) -> None:
    apply_static(model, cfg.ptq, {n: cfg.levels[i].pair() for n, i in levels.items()})


def _uniform_fallback(model, cfg, evaluate, names, levels, acc, reference, reason, history):
    """The lowest level that, raised to for every layer, holds the budget: used when the per-layer
    climb ends short of it.

    Near chance accuracy (every layer at 2 bits) raising one layer changes nothing measurable:
    each raise reads as noise, the layers are backed off one by one and the climb stops far below
    the budget (a SmallResNet trial read 96.7 % before quantizing, 22 % after). The top level
    (fp32 by default) holds by construction."""
    for up in range(1, len(cfg.levels)):
        trial = {n: max(levels[n], up) for n in names}
        if trial == levels:
            continue
        _set(model, cfg, trial)
        new = evaluate(model)
        lvl = cfg.levels[up].label
        history.append({"step": f"every layer at {lvl} or above", "accuracy": new, "kept": new > acc})
        if new > acc:
            for n in names:
                if trial[n] != levels[n]:
                    reason[n] = (f"raised to {lvl} with every layer: the per-layer climb ended at "
                                 f"accuracy {acc:.4f}, every layer at {lvl} or above measured {new:.4f}")
            levels, acc = trial, new
        if reference - acc <= cfg.max_drop:
            break
    return levels, acc


@torch.no_grad()
def _output_error(model: nn.Module, x: torch.Tensor, ref: torch.Tensor) -> float:
    return float(((pick_output(call_model(model, x)) - ref) ** 2).mean())


def mixed_precision_(model: nn.Module, config: MixedPrecisionConfig, calibration_data: Any,
                     evaluate: Evaluate) -> MixedResult:
    """Quantize in place at per-layer precisions chosen to keep ``evaluate(model)`` (validation
    accuracy, higher is better) within ``max_drop`` of float."""
    cfg = config
    batches = calibration_batches(calibration_data, cfg.ptq.num_calibration, cfg.ptq.batch_size)
    _check_shape(model, batches[0])
    prepare(model, cfg.ptq.skip_layers, on_unsupported=cfg.ptq.on_unsupported)
    run_calibration(model, batches)
    names = list(wrappers_of(model))
    top = len(cfg.levels) - 1
    low = cfg.levels[0].pair()
    apply_static(model, cfg.ptq, {n: None for n in names})
    reference = evaluate(model)
    x = batches[0]
    with torch.no_grad():
        ref_out = pick_output(call_model(model, x))
    sens: dict[str, float] = {}
    for n in names:     # only this layer quantized, everything else float
        apply_static(model, cfg.ptq, {m: (low if m == n else None) for m in names})
        sens[n] = (reference - evaluate(model) if cfg.sensitivity == "accuracy"
                   else _output_error(model, x, ref_out))
    order = sorted(names, key=lambda n: -sens[n])
    levels = {n: 0 for n in names}
    _set(model, cfg, levels)
    acc = evaluate(model)
    history = [{"step": "all at " + cfg.levels[0].label, "accuracy": acc, "kept": True}]
    reason = {n: f"budget held at {cfg.levels[0].label}" for n in names}
    stuck: set[str] = set()      # layers whose every higher level measured worse
    while reference - acc > cfg.max_drop:
        moved = False
        for n in order:
            if levels[n] >= top or n in stuck:
                continue
            # one level up; if that measures worse, try the levels above it before backing off
            for up in range(levels[n] + 1, top + 1):
                trial = {**levels, n: up}
                _set(model, cfg, trial)
                new = evaluate(model)
                lvl = cfg.levels[up].label
                history.append({"step": f"{n} -> {lvl}", "accuracy": new, "kept": new >= acc})
                if new >= acc:
                    reason[n] = (f"raised to {lvl}: sensitivity rank {order.index(n) + 1}/{len(order)}, "
                                 f"accuracy {acc:.4f} -> {new:.4f}")
                    if up > levels[n] + 1:
                        reason[n] += f" ({cfg.levels[levels[n] + 1].label} measured worse, skipped)"
                    levels, acc, moved = trial, new, True
                    break
            else:
                stuck.add(n)
                reason[n] += "; raising it made accuracy worse, backed off"
            if reference - acc <= cfg.max_drop:
                break
        if not moved:
            break
    if reference - acc > cfg.max_drop:
        levels, acc = _uniform_fallback(model, cfg, evaluate, names, levels, acc, reference, reason, history)
    _set(model, cfg, levels)
    for n in names:
        wrappers_of(model)[n].reason = f"mixed precision: {reason[n]}"
    met = reference - acc <= cfg.max_drop
    if not met:
        log.warning("mixed precision: budget %.4f not met (drop %.4f)", cfg.max_drop, reference - acc)
    return MixedResult({n: cfg.levels[levels[n]].label for n in names}, reason, sens, reference, acc,
                       met, history)
