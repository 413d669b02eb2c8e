"""A recipe: one replayable combination of techniques, as found by the search.

On disk a recipe is the ordered list of the techniques' own settings (each technique's config,
techniques/, in the order its steps run) and what the steps share (the fine-tuning epochs, the
learning rate)::

    techniques:
    - prune: {sparsity: 0.9}
    - cluster: {cluster_bits: 4}
    - distill: {distill: true, temperature: 2.0, alpha: 0.5}
    finetune_epochs: 2.0
    lr: 0.001

so replaying it (``apply_recipe``, on a retrained model of the same architecture) runs exactly
those settings. In Python the same recipe is built with keywords, ``Recipe(sparsity=0.9,
cluster_bits=4, finetune_epochs=2.0)``; the flat files that form writes (earlier versions'
``best/recipe.yaml``) are still read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from autocompress import techniques as _tech
from autocompress.config import Config, ConfigError, _closest
from autocompress.techniques.distill import ALPHA, TEMPERATURE

Quant = Literal["none", "int8", "mixed", "qat"]
SHARED = ("finetune_epochs", "lr")    # what every step of a recipe shares (not one technique's)


@dataclass
class Recipe(Config):
    """What to do, in the order it is done (the keyword form: one field per setting of a built-in
    technique; each technique's config in techniques/ checks its own fields).

    1. ``structured_ratio``: fraction of channels/neurons physically removed (global target by
       parameters, spread over layers by sensitivity unless ``layer_ratios`` pins some).
    2. ``rank_energy``: low-rank factorization keeping this fraction of each layer's spectral energy.
    3. ``sparsity``: fraction of weights zeroed (unstructured), reached gradually while fine-tuning.
    4. ``cluster_bits``: weight sharing with 2**bits centroids per layer (storage artifact).
    5. ``quant``: ``int8`` post-training static quantization; ``mixed``: per-layer precision
       (``weight_bits`` where the layer tolerates it, else int8 or fp32, chosen on validation);
       or ``qat``: quantization-aware training at ``weight_bits``.
    Fine-tuning (``finetune_epochs``) follows each lossy step, distilled from the original model
    when ``distill`` is set, at ``temperature`` with soft-target weight ``alpha`` (techniques/distill.py).
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
    temperature: float = TEMPERATURE   # distillation's (techniques/distill.py: why these, checks)
    alpha: float = ALPHA
    finetune_epochs: float = 1.0
    lr: float = 1e-3
    # parameters of techniques registered outside this package (techniques/), by name
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.finetune_epochs < 0:
            raise ConfigError(f"Recipe.finetune_epochs must be >= 0, got {self.finetune_epochs}")
        for t in _tech.all_techniques():   # each technique's config checks its own settings
            if t.config is not None and t.fields:
                t.settings(self)

    @property
    def is_post_training(self) -> bool:
        """Cheap recipes: nothing that needs fine-tuning to be usable."""
        return all(t.post_training is not None and t.post_training(self)
                   for t in _tech.all_techniques() if t.is_active(self))

    def describe(self) -> str:
        parts = []
        for t in _tech.all_techniques():
            if not t.is_active(self):
                continue
            if t.describe is not None:
                parts.append(t.describe(self))
            else:
                parts += [f"{k}={v}" for k, v in _as_dict(t.settings(self)).items() if v]
        return ", ".join(p for p in parts if p) or "fp32 (no change)"

    # -- on disk: the ordered list of the techniques' settings ------------------------------------
    def to_dict(self) -> dict[str, Any]:
        steps = [{t.name: _as_dict(t.settings(self))} for t in _tech.all_techniques() if t.is_active(self)]
        return {"techniques": steps} | {k: getattr(self, k) for k in SHARED}

    @classmethod
    def from_dict(cls, data: Any, _path: str = "") -> "Recipe":
        path = _path or "Recipe"
        if not (isinstance(data, dict) and "techniques" in data):
            # the flat record of earlier versions (best/recipe.yaml written before recipes were
            # lists of technique settings): its keys are this class's keyword arguments
            return super().from_dict(data, _path)
        unknown = sorted(set(data) - {"techniques", *SHARED})
        if unknown:
            raise ConfigError(f"{path}: unknown key(s) {unknown}; allowed keys are {['techniques', *SHARED]}")
        if not isinstance(data["techniques"], list):
            raise ConfigError(f"{path}.techniques: expected a list of {{technique: settings}}, "
                              f"got {type(data['techniques']).__name__}")
        order = list(_tech.names())
        kwargs: dict[str, Any] = {"distill": False, "options": {}}   # a technique not listed is off
        last = -1
        for i, entry in enumerate(data["techniques"]):
            p = f"{path}.techniques[{i}]"
            if not isinstance(entry, dict) or len(entry) != 1:
                raise ConfigError(f"{p}: expected one technique name mapped to its settings, got {entry!r}")
            (name, settings), = entry.items()
            if name not in order:
                raise ConfigError(f"{p}: unknown technique {name!r}{_closest(name, order)}; import the "
                                  f"module that registers it first (registered: {order})")
            if order.index(name) <= last:
                raise ConfigError(f"{p}: {name!r} listed after {order[last]!r}; techniques run in the "
                                  f"order {order}")
            last = order.index(name)
            kw = _tech.get(name).from_settings(settings if settings is not None else {}, f"{p}.{name}")
            kwargs["options"].update(kw.pop("options", {}))
            kwargs.update(kw)
        for k in SHARED:
            if k in data:
                v = data[k]
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise ConfigError(f"{path}.{k}: expected a number, got {type(v).__name__} {v!r}")
                kwargs[k] = float(v)
        return cls(**kwargs)


def _as_dict(settings) -> dict:
    return settings.to_dict() if isinstance(settings, Config) else dict(settings)
