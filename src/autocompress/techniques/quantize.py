"""Quantization: int8 post-training (``quantize_``), per-layer mixed precision
(``mixed_precision_``) or quantization-aware training (``qat_``). Serves size and speed budgets."""

from __future__ import annotations

from torch import nn

from autocompress.techniques._common import calibration
from autocompress.techniques.registry import Choice, Step, Technique, register, share


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
                finetune=lambda m: ctx.train(m, recipe, share(recipe, run), desc="QAT"))


def _layer(m: nn.Module) -> dict:
    """A quantized layer's weight bit width, and why mixed precision chose it."""
    wq = getattr(m, "w_q", None)
    bits = int(wq.bits) if wq is not None and getattr(m, "mode", "fp32") != "fp32" else None
    return {"bits": bits, "precision_reason": getattr(m, "reason", None)}


TECHNIQUE = register(Technique(
    "quantize", fields=("quant", "weight_bits", "act_bits"),
    choices=(Choice("quant", ("none", "int8", "mixed", "qat"), "none"),
             Choice("weight_bits", (2, 4, 8), 8)),
    steps=(Step(lambda r: r.quant == "qat", run, 0.4),
           Step(lambda r: r.quant in ("int8", "mixed"), run, 0.0)),   # PTQ trains nothing
    post_training_seed={"quant": "int8"},
    layer_report=lambda m: _layer(m),
    to_recipe=lambda p: dict(quant=p.get("quant", "none"),
                             weight_bits=int(p.get("weight_bits", 8)) if p.get("quant") in ("qat", "mixed") else 8),
    from_recipe=lambda r: dict(quant=r.quant, weight_bits=r.weight_bits)))
