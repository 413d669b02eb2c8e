"""The technique registry: the one list of what the search can combine.

Each technique is declared once, in its own module (this package's ``prune``, ``quantize``, ...,
or a caller's) and added with ``register``: its name, the recipe fields
it owns, its search choices (with their value when the technique is off), the budget kinds it
serves (a smaller and/or a faster model), and its steps (when the recipe switches each on, the
function that applies it, its weight in the fine-tuning epochs). The search space
(``space.CHOICES`` / ``useful``), the trial's steps (``steps.STEPS``), the search's allowed names
(``loop.TECHNIQUES``) and the run config's validation all read this registry.

A technique registered from outside owns no ``Recipe`` field: its parameters travel in
``Recipe.options`` under their own names, so adding one touches no other file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from autocompress.config import ConfigError


KINDS = ("size", "speed")


@dataclass(frozen=True)
class Choice:
    """One search parameter: its Optuna name, its values, and its value when not searched.
    ``speed_values``, when given, replace ``values`` for a budget that asks for speed alone:
    settings that only shrink the file (weights below 8 bits run as int8 kernels or slower) cost
    a speed search its trials and its accuracy for nothing."""
    name: str
    values: tuple
    off: Any
    speed_values: tuple | None = None


@dataclass(frozen=True)
class Step:
    """Applied in a trial when ``on(recipe)``; ``share`` is its weight in the fine-tuning epochs."""
    on: Callable[["Recipe"], bool]
    run: Callable      # (model, recipe, ctx) -> model
    share: float = 0.0


@dataclass(frozen=True)
class Technique:
    name: str
    choices: tuple[Choice, ...] = ()
    serves: frozenset[str] = frozenset(KINDS)
    steps: tuple[Step, ...] = ()
    fields: tuple[str, ...] = ()        # the Recipe fields it owns (none: it lives in Recipe.options)
    # sampled parameters -> Recipe keyword arguments, and back (for seeding); None: Recipe.options
    to_recipe: Callable[[dict], dict] | None = field(default=None, compare=False)
    from_recipe: Callable[["Recipe"], dict] | None = field(default=None, compare=False)
    # -- optional hooks (each read by one part; none names a technique) --
    # seeds (search/space.seed_recipes): this technique's own parameters from mild to strong, for
    # the budget kinds it serves; the seeds combine level i of every allowed technique
    seed_levels: tuple[dict, ...] = ()
    # a setting worth trying first, with no fine-tuning to speak of (int8 PTQ)
    post_training_seed: dict | None = None
    # the choice whose values the ``sensitivity`` result's targets are (a share of the cost
    # removed): the seed levels are then placed on the measured curves (search/seeds.py)
    sensitivity_seeds: str | None = None
    # per-layer report (search/finish.layer_table): module -> {column: value}; a later
    # technique's non-None value wins (quantize's bit width over the distinct values clustering left)
    layer_report: Callable[[Any], dict] | None = field(default=None, compare=False)
    # sensitivity (search/steps.measure_sensitivity): ctx -> {"ratios": (...), "measure":
    # (model, evaluate, ratios, stop) -> a JSON-able result with "ratios" and "scores"}
    sensitivity: Callable[[Any], dict] | None = field(default=None, compare=False)
    # -- what a recipe holds of it (search/recipe.py: an ordered list of these settings) --
    # its settings as a Config dataclass (fields: ``fields``, or its choices' names); None: a mapping
    config: type | None = None
    # whether a recipe uses it (default: one of its steps is on)
    active: Callable[["Recipe"], bool] | None = field(default=None, compare=False)
    # its part of the recipe's one-line description (default: name=value of its settings)
    describe: Callable[["Recipe"], str] | None = field(default=None, compare=False)
    # usable without fine-tuning (int8 PTQ, clustering's short centroid tune): tried first
    post_training: Callable[["Recipe"], bool] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.name or not self.name.isidentifier():
            raise ValueError(f"technique name must be an identifier, got {self.name!r}")
        bad = sorted(set(self.serves) - set(KINDS))
        if bad or not self.serves:
            raise ValueError(f"technique {self.name!r}: serves must be a non-empty subset of {KINDS}, got {bad}")
        for c in self.choices:
            if not c.values:
                raise ValueError(f"technique {self.name!r}: choice {c.name!r} has no values")

    def recipe_kwargs(self, p: dict) -> dict:
        if self.to_recipe is not None:
            return self.to_recipe(p)
        return {"options": {c.name: p.get(c.name, c.off) for c in self.choices}}

    def is_active(self, r: "Recipe") -> bool:
        return self.active(r) if self.active is not None else any(s.on(r) for s in self.steps)

    def settings(self, r: "Recipe"):
        """Its settings in ``r``: a ``config`` instance (validated when built), else a dict."""
        names = self.fields or tuple(c.name for c in self.choices)
        values = {n: getattr(r, n) for n in names} if self.fields else \
            {n: r.options[n] for n in names if n in r.options}
        return self.config(**values) if self.config is not None else values

    def from_settings(self, data: dict, path: str) -> dict:
        """Recipe keyword arguments from its entry in a recipe file (checked by its config)."""
        if self.config is not None:
            cfg = self.config.from_dict(data, path)
            values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
        else:
            known = {c.name for c in self.choices}
            if not isinstance(data, dict) or set(data) - known:
                raise ConfigError(f"{path}: expected a mapping with keys among {sorted(known)}, got {data!r}")
            values = dict(data)
        return values if self.fields else {"options": values}

    def raw_params(self, r: "Recipe") -> dict:
        if self.from_recipe is not None:
            return self.from_recipe(r)
        return {c.name: r.options.get(c.name, c.off) for c in self.choices}


_REGISTRY: dict[str, Technique] = {}


def register(t: Technique, replace: bool = False) -> Technique:
    """Add a technique; its steps run after those registered before it."""
    if t.name in _REGISTRY and not replace:
        raise ValueError(f"technique {t.name!r} is already registered")
    taken = {c.name: o.name for o in _REGISTRY.values() if o.name != t.name for c in o.choices}
    taken |= {c.name: "the search" for c in COMMON}
    for c in t.choices:
        if c.name in taken:
            raise ValueError(f"technique {t.name!r}: parameter {c.name!r} already belongs to {taken[c.name]}")
    _REGISTRY[t.name] = t
    return t


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def get(name: str) -> Technique:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown technique {name!r}; choose from {list(_REGISTRY)}") from None


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def all_techniques() -> tuple[Technique, ...]:
    return tuple(_REGISTRY.values())


def all_steps() -> list[Step]:
    return [s for t in _REGISTRY.values() for s in t.steps]


def check_options(r: "Recipe") -> None:
    """A recipe's ``options`` must belong to registered techniques: one whose module was not
    imported (and so not registered) would otherwise be skipped without a word on replay."""
    known = {c.name for t in _REGISTRY.values() if t.to_recipe is None for c in t.choices}
    unknown = sorted(set(r.options) - known)
    if unknown:
        raise ValueError(f"Recipe.options {unknown}: no registered technique owns them; import the "
                         f"module that registers it first (registered: {list(_REGISTRY)})")


# searched whatever the techniques: the fine-tuning epochs the active steps share
# 0: post-training candidates (scored in seconds); 0.25: what a large model's search can pay for
COMMON = (Choice("finetune_epochs", (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0), 1.0),)


def share(recipe: "Recipe", run: Callable) -> float:
    """Step ``run``'s part of the recipe's fine-tuning epochs (shares of the active steps sum to 1)."""
    active = [s for s in all_steps() if s.on(recipe)]
    total = sum(s.share for s in active)
    mine = sum(s.share for s in active if s.run is run)
    return recipe.finetune_epochs * mine / total if total > 0 else 0.0
