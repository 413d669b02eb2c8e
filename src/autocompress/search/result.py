"""What a search hands back: the model, its recipe, the measured figures and the trade-offs."""

from __future__ import annotations

import datetime as _dt
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from autocompress import safefs
from autocompress.measure import Measurement
from autocompress.search.budget import Budget
from autocompress.search.recipe import Recipe

log = logging.getLogger(__name__)


@dataclass
class TrialRecord:
    number: int
    state: str                      # complete | pruned | pruned early | failed | running
    recipe: dict
    val_accuracy: float | None = None
    size_bytes: int | None = None   # what the budget counts (storage artifact or ONNX file)
    deployed_bytes: int | None = None   # the deployed file (.onnx, .pte)
    storage_bytes: int | None = None
    latency_ms: float | None = None       # candidate, at budget.latency_batch
    base_latency_ms: float | None = None  # fp32 baseline, measured interleaved in the same trial
    feasible: bool = False
    duration_s: float = 0.0
    note: str = ""

    @property
    def speedup(self) -> float | None:
        if self.latency_ms and self.base_latency_ms:
            return self.base_latency_ms / self.latency_ms
        return None

    @property
    def description(self) -> str | None:
        """The search's one-line description of the recipe; the report shows it as given, so the
        report needs no knowledge of recipes."""
        try:
            return Recipe.from_dict(self.recipe).describe()
        except Exception:  # noqa: BLE001 - not a Recipe (seed from another tool): report's generic form
            return None

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__} | {
            "speedup": self.speedup, "description": self.description}


@dataclass
class Result:
    """``model`` is the best compressed model (``None`` only if no trial completed)."""

    model: nn.Module | None
    recipe: Recipe | None
    budget: Budget
    baseline: Measurement
    final: Measurement | None
    met: bool
    message: str
    trials: list[TrialRecord] = field(default_factory=list)
    pareto: list[int] = field(default_factory=list)
    layers: dict[str, dict] = field(default_factory=dict)
    blocking_layers: list[str] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)
    title: str = "autocompress"

    def to_dict(self) -> dict[str, Any]:
        """The report.json document (schema shared with :mod:`autocompress.report`)."""
        return {
            "title": self.title,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "met": self.met,
            "message": self.message,
            "budget": self.budget.to_dict(),
            "baseline": self.baseline.to_dict(),
            "final": self.final.to_dict() if self.final else None,
            "trials": [t.to_dict() for t in self.trials],
            "pareto": list(self.pareto),
            "layers": self.layers,
            "recipe": self.recipe.to_dict() if self.recipe else None,
            "blocking_layers": list(self.blocking_layers),
            "artifacts": dict(self.artifacts),
        }

    def export(self, out_dir: str | Path) -> dict[str, Path]:
        """Write the deployable model (``model.onnx``, or ``model.pte`` for ExecuTorch), the
        compressed storage artifact, the recipe and the reports into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths: dict[str, Path] = {}
        for key, src in self.artifacts.items():   # deployed file(s) by suffix, "storage"
            if key != "recipe" and src and Path(src).exists():
                dst = out / Path(src).name
                if Path(src).resolve() != dst.resolve():
                    safefs.copy_file(src, dst)
                paths[key] = dst
        if self.recipe is not None:
            paths["recipe"] = out / "recipe.yaml"
            self.recipe.to_yaml(paths["recipe"])
        doc = self.to_dict()
        doc["artifacts"] = {k: str(v) for k, v in paths.items()}
        try:
            from autocompress.report import write_reports
            paths.update(write_reports(doc, out))
        except ImportError:  # report module absent: still leave the machine-readable document
            safefs.write_text(out / "report.json", json.dumps(doc, indent=2))
            paths["json"] = out / "report.json"
        return paths
