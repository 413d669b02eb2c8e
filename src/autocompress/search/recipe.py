"""A recipe: one replayable combination of techniques, as found by the search.

A recipe is a plain config; ``apply_recipe`` replays it on a retrained model of the same
architecture (the next sprint's model) without searching again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from autocompress.config import Config, ConfigError

Quant = Literal["none", "int8", "mixed", "qat"]


@dataclass
class Recipe(Config):
    """What to do, in the order it is done.

    1. ``structured_ratio``: fraction of channels/neurons physically removed (global target by
       parameters, spread over layers by sensitivity unless ``layer_ratios`` pins some).
    2. ``rank_energy``: low-rank factorization keeping this fraction of each layer's spectral energy.
    3. ``sparsity``: fraction of weights zeroed (unstructured), reached gradually while fine-tuning.
    4. ``cluster_bits``: weight sharing with 2**bits centroids per layer (storage artifact).
    5. ``quant``: ``int8`` post-training static quantization; ``mixed``: per-layer precision
       (``weight_bits`` where the layer tolerates it, else int8 or fp32, chosen on validation);
       or ``qat``: quantization-aware training at ``weight_bits``.
    Fine-tuning (``finetune_epochs``) follows each lossy step, distilled from the original model
    when ``distill`` is set.
    """

    structured_ratio: float = 0.0
    layer_ratios: dict[str, float] = field(default_factory=dict)
    round_to: int = 8        # kept channel counts are multiples of this (runtimes' kernels favour them)
    rank_energy: float | None = None
    sparsity: float = 0.0
    cluster_bits: int | None = None
    quant: Quant = "none"
    weight_bits: int = 8
    act_bits: int = 8
    distill: bool = True
    finetune_epochs: float = 1.0
    lr: float = 1e-3
    # parameters of techniques registered outside this package (techniques/), by name
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if not 0.0 <= self.structured_ratio < 1.0:
            raise ConfigError(f"Recipe.structured_ratio must be in [0, 1), got {self.structured_ratio}")
        if self.round_to < 1:
            raise ConfigError(f"Recipe.round_to must be >= 1, got {self.round_to}")
        if not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(f"Recipe.sparsity must be in [0, 1), got {self.sparsity}")
        if self.rank_energy is not None and not 0.0 < self.rank_energy <= 1.0:
            raise ConfigError(f"Recipe.rank_energy must be in (0, 1], got {self.rank_energy}")
        if self.cluster_bits is not None and not 1 <= self.cluster_bits <= 8:
            raise ConfigError(f"Recipe.cluster_bits must be in 1..8, got {self.cluster_bits}")
        if not 2 <= self.weight_bits <= 8:
            raise ConfigError(f"Recipe.weight_bits must be in 2..8, got {self.weight_bits}")
        if not 2 <= self.act_bits <= 8:
            raise ConfigError(f"Recipe.act_bits must be in 2..8, got {self.act_bits}")
        if self.finetune_epochs < 0:
            raise ConfigError(f"Recipe.finetune_epochs must be >= 0, got {self.finetune_epochs}")
        for k, v in self.layer_ratios.items():
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"Recipe.layer_ratios[{k!r}] must be in [0, 1), got {v}")

    @property
    def is_post_training(self) -> bool:
        """Cheap recipes: nothing that needs fine-tuning to be usable."""
        return self.structured_ratio == 0 and self.sparsity == 0 and self.quant != "qat" \
            and self.rank_energy is None

    def describe(self) -> str:
        parts = []
        if self.structured_ratio:
            parts.append(f"channels -{self.structured_ratio:.0%}")
        if self.rank_energy is not None:
            parts.append(f"low-rank {self.rank_energy:.0%} energy")
        if self.sparsity:
            parts.append(f"sparsity {self.sparsity:.0%}")
        if self.cluster_bits:
            parts.append(f"cluster {self.cluster_bits}b")
        if self.quant == "int8":
            parts.append("int8 PTQ")
        elif self.quant == "qat":
            parts.append(f"QAT w{self.weight_bits}a{self.act_bits}")
        elif self.quant == "mixed":
            parts.append(f"mixed precision (w{self.weight_bits}/w8/fp32)")
        parts += [f"{k}={v}" for k, v in self.options.items() if v]
        if self.distill and (parts and not self.is_post_training):
            parts.append("distilled")
        return ", ".join(parts) or "fp32 (no change)"
