"""The budget's rules, each written once: what the search's constraints, ``Budget.violations`` and
the CI gate (``check``) all read, so the three cannot disagree about a candidate.

A rule turns a baseline and a candidate measurement (plain dicts: ``accuracy`` as a fraction,
``fp32_bytes``, ``size_bytes``, optionally ``latency_ms`` at the budget's batch, and the candidate's
``speedup`` when it was timed as a ratio) into an *excess*:
``<= 0`` means the rule holds, ``> 0`` by how much (scaled so the rules compare) it is missed. That
one number is the Optuna constraint value and, by its sign, the verdict; a measurement the rule
needs and did not get (latency not timed) counts as missed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from autocompress.report.tables import fmt_bytes, fmt_pct

if TYPE_CHECKING:
    from autocompress.search.budget import Budget

# accuracies are fractions that went through float sums: a candidate this close to the floor meets it
ACC_EPS = 1e-12
# the constraint value given for a rule whose measurement is missing: infeasible, clearly
MISSING = 1.0


@dataclass(frozen=True)
class Rule:
    """One constraint of the budget.

    ``name``: the Optuna constraint name; ``label``: the CI check item's name; ``field``: the
    Budget field that switches it on (``None``: always on); ``value``: the candidate's figure the
    rule looks at (``None`` when it was not measured); ``excess``: ``<= 0`` met, from that figure;
    ``limit``: the figure's bound; ``show``: a figure as text; ``sentence``: why it is missed."""

    name: str
    label: str
    field: str | None
    value: Callable[[dict, dict], float | None]
    limit: Callable[["Budget", dict], float]
    excess: Callable[[float, float], float]
    show: Callable[[float], str]
    op: str                          # ">=" or "<=": how the figure must compare with the limit
    sentence: Callable[["Budget", dict, float, float], str]
    show_limit: Callable[[float], str] | None = None     # the bound as the user wrote it (default: show)

    def active(self, budget: "Budget") -> bool:
        return self.field is None or getattr(budget, self.field) is not None


@dataclass(frozen=True)
class Verdict:
    rule: Rule
    value: float | None         # the candidate's figure (None: not measured)
    limit: float
    excess: float               # the constraint value: <= 0 met

    @property
    def passed(self) -> bool:
        return self.excess <= 0

    @property
    def measured(self) -> str:
        return "not measured" if self.value is None else self.rule.show(self.value)

    @property
    def required(self) -> str:
        return f"{self.rule.op} {(self.rule.show_limit or self.rule.show)(self.limit)}"


def _ratio(base: dict, cand: dict) -> float:
    return base["fp32_bytes"] / max(cand["size_bytes"], 1)


def _speedup(base: dict, cand: dict) -> float | None:
    if cand.get("speedup") is not None:   # a ratio timed interleaved (median of ratios) comes first
        return cand["speedup"]
    lat, base_lat = cand.get("latency_ms"), base.get("latency_ms")
    return base_lat / lat if lat and base_lat else None


RULES: tuple[Rule, ...] = (
    Rule("accuracy", "accuracy", None,
         value=lambda base, cand: cand["accuracy"],
         limit=lambda b, base: b.allowed_accuracy(base["accuracy"]),
         excess=lambda v, lim: (lim - ACC_EPS) - v, show=fmt_pct, op=">=",
         sentence=lambda b, base, v, lim: (
             f"accuracy {fmt_pct(v)} is below the allowed {fmt_pct(lim)} (baseline "
             f"{fmt_pct(base['accuracy'])}, max drop {b.max_drop:g} {b.drop_mode})")),
    Rule("size_ratio", "size ratio", "min_size_ratio",
         value=_ratio, limit=lambda b, base: b.min_size_ratio,
         excess=lambda v, lim: lim / v - 1.0, show=lambda v: f"{v:.1f}x", op=">=",
         sentence=lambda b, base, v, lim: f"size ratio {v:.1f}x is below the required {lim:g}x",
         show_limit=lambda v: f"{v:g}x"),
    Rule("size_bytes", "size", "max_size_bytes",
         value=lambda base, cand: cand["size_bytes"], limit=lambda b, base: b.max_size_bytes,
         excess=lambda v, lim: v / lim - 1.0, show=fmt_bytes, op="<=",
         sentence=lambda b, base, v, lim: f"size {int(v)} B exceeds {int(lim)} B"),
    Rule("speedup", "speed-up", "min_speedup",
         value=_speedup, limit=lambda b, base: b.min_speedup,
         excess=lambda v, lim: lim / v - 1.0, show=lambda v: f"{v:.2f}x", op=">=",
         sentence=lambda b, base, v, lim: f"speed-up {v:.2f}x is below the required {lim:g}x",
         show_limit=lambda v: f"{v:g}x"),
    Rule("latency_ms", "latency", "max_latency_ms",
         value=lambda base, cand: cand.get("latency_ms") or None, limit=lambda b, base: b.max_latency_ms,
         excess=lambda v, lim: v / lim - 1.0, show=lambda v: f"{v:.3f} ms", op="<=",
         sentence=lambda b, base, v, lim: f"latency {v:.3f} ms exceeds {lim:g} ms",
         show_limit=lambda v: f"{v:g} ms"),
)


def active(budget: "Budget") -> list[Rule]:
    """The rules this budget switches on, in a fixed order (the constraint names the sampler sees)."""
    return [r for r in RULES if r.active(budget)]


def judge(budget: "Budget", base: dict, cand: dict) -> list[Verdict]:
    """Every active rule's verdict on ``cand`` against ``base``."""
    return [verdict(budget, r.name, base, cand) for r in active(budget)]


def message(budget: "Budget", base: dict, v: Verdict) -> str:
    """Why ``v`` is missed, as a sentence."""
    if v.value is None:
        return f"{v.rule.label}: latency was not measured"
    return v.rule.sentence(budget, base, v.value, v.limit)


def verdict(budget: "Budget", name: str, base: dict, cand: dict) -> Verdict:
    """One rule's verdict, whether or not the budget switches it on (e.g. the accuracy floor alone)."""
    r = next((r for r in RULES if r.name == name), None)
    if r is None:
        raise KeyError(f"no budget rule {name!r}; the rules are {[r.name for r in RULES]}")
    v, lim = r.value(base, cand), r.limit(budget, base)
    return Verdict(r, v, lim, MISSING if v is None else float(r.excess(v, lim)))


def violations(budget: "Budget", base: dict, cand: dict) -> list[str]:
    return [message(budget, base, v) for v in judge(budget, base, cand) if not v.passed]


def constraints(budget: "Budget", base: dict, cand: dict) -> dict[str, float]:
    """Optuna constraint form: rule name -> excess (each ``<= 0`` means satisfied)."""
    return {v.rule.name: v.excess for v in judge(budget, base, cand)}
