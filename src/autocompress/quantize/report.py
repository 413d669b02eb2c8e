"""What each layer runs at, how the deployed file stores it, and why (``quant_report``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from autocompress.quantize.fake_quant import QuantWrapper


@dataclass
class LayerReport:
    mode: str                        # static / dynamic / weight_only / fp16 / fp32
    weight_bits: int | None
    act_bits: int | None
    storage: str                     # how the deployed file stores the weights
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class QuantReport:
    layers: dict[str, LayerReport]
    float_layers: dict[str, str]     # parameterised modules left in float32 -> why
    folded_bn: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"layers": {k: v.to_dict() for k, v in self.layers.items()},
                "float_layers": dict(self.float_layers), "folded_bn": list(self.folded_bn)}

    def __str__(self) -> str:
        rows = ["| layer | mode | bits (w/a) | storage | why |", "|---|---|---|---|---|"]
        for k, v in self.layers.items():
            rows.append(f"| {k} | {v.mode} | {v.weight_bits or '-'}/{v.act_bits or '-'} | "
                        f"{v.storage} | {v.reason} |")
        for k, why in self.float_layers.items():
            rows.append(f"| {k} | fp32 | - | float32 | {why} |")
        return "\n".join(rows)


def storage_of(w: QuantWrapper) -> str:
    if w.mode == "fp32":
        return "float32"
    if w.mode == "fp16":
        return "float16"
    if w.mode == "weight_only":
        return f"int4 packed (MatMulNBits, block {w.w_q.group_size})"
    levels = w.w_q.qmax - w.w_q.qmin + 1
    if w.mode == "static" and w.storage == "packed" and w.w_q.bits <= 4 and isinstance(w.module, nn.Linear):
        bits = 2 if w.w_q.bits <= 2 else 4
        return f"int{bits} packed (MatMulNBits, {levels} levels)"
    return "int8" if w.w_q.bits == 8 else f"int8 holding {levels} levels ({w.w_q.bits}-bit)"


def quant_report(model: nn.Module) -> QuantReport:
    """Which layer runs at which precision and why (also embedded in the exported ONNX)."""
    state = getattr(model, "_autocompress_quant", {})
    layers = {}
    for name, m in model.named_modules():
        if isinstance(m, QuantWrapper):
            static = m.mode == "static"
            layers[name] = LayerReport(
                m.mode, m.w_q.bits if m.mode in ("static", "dynamic", "weight_only") else None,
                m.in_q.bits if static else (8 if m.mode == "dynamic" else None), storage_of(m), m.reason)
    return QuantReport(layers, dict(state.get("float_layers", {})), list(state.get("folded_bn", [])))
