"""Quantization: int8 post-training (``quantize_``), per-layer mixed precision
(``mixed_precision_``) or quantization-aware training (``qat_``). Serves size and speed budgets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from autocompress.config import Config, ConfigError
from autocompress.techniques._common import calibration
from autocompress.techniques.registry import Choice, Step, Technique, register, share

if TYPE_CHECKING:   # torch is imported where a step runs: the registry stays light
    from torch import nn


@dataclass
class Quantize(Config):
    """``int8`` post-training static quantization; ``mixed``: per-layer precision (``weight_bits``
    where the layer tolerates it, else int8 or fp32, chosen on validation); ``qat``:
    quantization-aware training at ``weight_bits`` / ``act_bits``."""
    quant: Literal["none", "int8", "mixed", "qat"] = "none"
    weight_bits: int = 8
    act_bits: int = 8

    def validate(self) -> None:
        for name in ("weight_bits", "act_bits"):
            if not 2 <= getattr(self, name) <= 8:
                raise ConfigError(f"quantize.{name} must be in 2..8, got {getattr(self, name)}")


def _describe(r) -> str:
    return {"int8": "int8 PTQ", "qat": f"QAT w{r.weight_bits}a{r.act_bits}",
            "mixed": f"mixed precision (w{r.weight_bits}/w8/fp32)"}[r.quant]


def run(model: nn.Module, recipe, ctx) -> nn.Module:
    calib = calibration(ctx)
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
                finetune=lambda m: ctx.train(m, recipe, share(recipe, run), desc="QAT", accelerate=True))


def _layer(m: nn.Module) -> dict:
    """A quantized layer's weight bit width, and why mixed precision chose it."""
    wq = getattr(m, "w_q", None)
    bits = int(wq.bits) if wq is not None and getattr(m, "mode", "fp32") != "fp32" else None
    return {"bits": bits, "precision_reason": getattr(m, "reason", None)}


TECHNIQUE = register(Technique(
    "quantize", fields=("quant", "weight_bits", "act_bits"),
    # mixed precision and 2-4-bit weights make a file smaller, never faster (the runtimes run
    # int8 kernels at best): a speed budget searches int8 PTQ and 8-bit QAT only (SmallResNet's
    # "fastest" search spent 4m48s of 15 minutes on a 2-bit mixed-precision trial, scored 22 %)
    choices=(Choice("quant", ("none", "int8", "mixed", "qat"), "none", speed_values=("none", "int8", "qat")),
             Choice("weight_bits", (2, 4, 8), 8, speed_values=(8,))),
    steps=(Step(lambda r: r.quant == "qat", run, 0.4),
           Step(lambda r: r.quant in ("int8", "mixed"), run, 0.0)),   # PTQ trains nothing
    config=Quantize, describe=_describe, post_training=lambda r: r.quant != "qat",
    post_training_seed={"quant": "int8"},
    layer_report=lambda m: _layer(m),
    to_recipe=lambda p: dict(quant=p.get("quant", "none"),
                             weight_bits=int(p.get("weight_bits", 8)) if p.get("quant") in ("qat", "mixed") else 8),
    from_recipe=lambda r: dict(quant=r.quant, weight_bits=r.weight_bits)))
