"""The main job on the bundled default: compress a reference LeNet on MNIST automatically and show
the before/after table (size, latency at batch 1 and 64, test accuracy) of the original description.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import torch

from autocompress.data import load_mnist
from autocompress.baselines import load_baseline
from autocompress.models import MODELS
from autocompress.search import Budget, ResultOptions, TrainingOptions, compress

log = logging.getLogger(__name__)

# The demo's budget: the Deep Compression setting (no meaningful accuracy loss), smallest model.
DEMO_BUDGET = Budget(max_drop=0.1, objective="smallest", min_size_ratio=None, time_limit_s=480,
                     max_trials=8)
QUICK_BUDGET = Budget(max_drop=1.0, objective="smallest", time_limit_s=120, max_trials=2)


def run_demo(model: str = "lenet5", out_dir: str | Path = "out/demo", quick: bool = False,
             budget: Budget | None = None) -> int:
    """Returns a process exit code: 0 when the budget is met, 1 when it is not (the table is
    printed either way; a result worse than the baseline is shown, not hidden)."""
    if model not in MODELS:
        log.error("unknown model %r; choose from %s", model, sorted(MODELS))
        return 2
    torch.manual_seed(0)
    t0 = time.time()
    out = Path(out_dir)
    data = load_mnist(flat=MODELS[model][1])
    net = load_baseline(model)
    budget = budget or (QUICK_BUDGET if quick else DEMO_BUDGET)
    result = compress(net, data, budget, training=TrainingOptions(quick=quick),
                      results=ResultOptions(out_dir=out, title=f"autocompress demo: {model} on MNIST"))
    from autocompress.report import before_after_table, headline
    doc = result.to_dict()
    head = headline(doc)   # the deployed result first: size, speed, accuracy, and any warning
    written = sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.startswith("."))
    lines = [f"\n{doc['title']}", "", *head, *([""] if head else []), before_after_table(doc), "", result.message,
             f"recipe: {result.recipe.describe() if result.recipe else '-'}",
             f"files in {out}/ : {', '.join(written)}",
             f"({time.time() - t0:.0f} s)"]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0 if result.met else 1
