"""The user's budget: what may be lost, what must be gained, how long to search."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from autocompress.config import Config, ConfigError

Objective = Literal["smallest", "fastest", "most_accurate", "pareto"]


@dataclass
class Budget(Config):
    """Constraints (all optional but the accuracy drop) and what to optimise once they hold.

    Accuracy is in percentage points: ``max_drop=0.3`` allows 99.20 % -> 98.90 %.
    ``drop_mode='relative'`` reads ``max_drop`` as a percentage of the baseline accuracy instead.
    Size: ``min_size_ratio=20`` means at least 20x smaller than the fp32 parameters, measured on the
    compressed storage artifact (``size_of='storage'``) or the deployed file (``'onnx'``: the
    ``.onnx``, or the ``.pte`` when ``runtime='executorch'``).
    Latency: ``min_speedup=3`` means 3x faster than the fp32 ONNX model on ONNX Runtime, at
    ``latency_batch`` with ``threads`` intra-op threads, measured in the same process.
    ``runtime``: the deployment target the search exports to and measures on (``"onnxruntime"``,
    ``"executorch"``: a ``.pte`` with the XNNPACK delegate); see :mod:`autocompress.targets`.
    """

    max_drop: float = 0.3
    drop_mode: Literal["absolute", "relative"] = "absolute"
    min_size_ratio: float | None = None
    max_size_bytes: int | None = None
    size_of: Literal["storage", "onnx"] = "storage"
    min_speedup: float | None = None
    max_latency_ms: float | None = None
    latency_batch: int = 64
    threads: int = 1
    time_limit_s: float | None = 600.0
    max_trials: int | None = 40
    objective: Objective = "smallest"
    runtime: str = "onnxruntime"

    def validate(self) -> None:
        if self.max_drop < 0:
            raise ConfigError(f"Budget.max_drop must be >= 0 (percentage points), got {self.max_drop}")
        for name in ("min_size_ratio", "min_speedup"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ConfigError(f"Budget.{name} must be > 0, got {v}")
        for name in ("max_size_bytes", "max_latency_ms", "time_limit_s", "max_trials"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ConfigError(f"Budget.{name} must be > 0 when set, got {v}")
        if self.latency_batch < 1 or self.threads < 1:
            raise ConfigError("Budget.latency_batch and Budget.threads must be >= 1")
        from autocompress import targets
        if self.runtime not in targets.names():
            raise ConfigError(f"Budget.runtime: unknown runtime {self.runtime!r}; choose from "
                              f"{targets.names()} (installed here: {targets.available()})")

    def allowed_accuracy(self, baseline_acc: float) -> float:
        """Lowest acceptable accuracy (fraction in [0,1]) given the baseline's."""
        if self.drop_mode == "relative":
            return baseline_acc * (1 - self.max_drop / 100)
        return baseline_acc - self.max_drop / 100

    def needs_storage(self) -> bool:
        """Whether decisions need each candidate's storage artifact (else only the winner's is written)."""
        sized = self.min_size_ratio is not None or self.max_size_bytes is not None \
            or self.objective in ("smallest", "pareto", "most_accurate")
        return self.size_of == "storage" and sized

    def needs_latency(self) -> bool:
        return self.min_speedup is not None or self.max_latency_ms is not None or self.objective in ("fastest", "pareto")

    def violations(self, baseline: dict, candidate: dict) -> list[str]:
        """Which constraints ``candidate`` breaks, as readable sentences (empty = budget met).

        Both arguments are plain dicts with ``accuracy`` (fraction), ``size_bytes``,
        ``fp32_bytes`` and optionally ``latency_ms`` (at ``latency_batch``). The rules themselves
        are in :mod:`autocompress.search.budget_rules` (the search's constraints and ``check`` read
        them too)."""
        from autocompress.search import budget_rules
        return budget_rules.violations(self, baseline, candidate)
