"""Benchmark of the automatic loop (issue 6): one automatic run per budget and model, beside
single-technique baselines measured in the same process.

    python benchmarks/bench_search.py                 # LeNet-5, both budgets (~2 x 10 min on 2 cores)
    python benchmarks/bench_search.py --model all     # LeNet-5, LeNet-300-100, a residual CNN
    python benchmarks/bench_search.py --quick         # seconds-to-minutes smoke run (tests call it)

Budgets: "smallest": at most 0.1 points lost, smallest storage artifact; "fastest": at most 0.3
points lost, fastest at batch 64 on ONNX Runtime. Accuracy guiding the search is validation accuracy;
the table reports test accuracy of the deployed ONNX model.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from autocompress.data import Splits, load_mnist
from autocompress.baselines import load_baseline
from autocompress.models import MODELS
from autocompress.search import Budget, Recipe, ResultOptions, TrainingOptions, compress
from autocompress.search.replay import apply_recipe
from autocompress.train import TrainConfig, fit

BUDGETS = {
    "smallest": Budget(max_drop=0.1, objective="smallest", time_limit_s=480, max_trials=14),
    "fastest": Budget(max_drop=0.3, objective="fastest", latency_batch=64, time_limit_s=480, max_trials=10),
}
# single-technique peers, replayed with the same fine-tuning budget
PEERS = {
    "smallest": {"int8 PTQ alone": Recipe(quant="int8"),
                 "uniform pruning 90% alone": Recipe(sparsity=0.9, distill=False, finetune_epochs=2.0)},
    "fastest": {"int8 PTQ alone": Recipe(quant="int8"),
                "uniform channel pruning 50% alone": Recipe(structured_ratio=0.5, distill=False,
                                                            finetune_epochs=2.0)},
}


class SmallResNet(nn.Module):
    """A residual CNN with BatchNorm (the pruning zoo's ResNet-style model, sized for MNIST)."""

    input_shape = (1, 28, 28)

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.b1 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.down = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.b2 = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.b1(x))      # residual add
        x = self.down(x)
        x = torch.relu(x + self.b2(x))
        return self.head(x)


def _model(name: str, quick: bool) -> tuple[nn.Module, Splits]:
    if name == "resnet":
        data = load_mnist()
        torch.manual_seed(0)
        m = SmallResNet()
        fit(m, data.train, TrainConfig(epochs=0.2 if quick else 2, lr=2e-3, progress=False))
        return m.eval(), data
    return load_baseline(name), load_mnist(flat=MODELS[name][1])


def _row(model: str, budget: str, who: str, base, final, met: bool | None, secs: float) -> list[str]:
    acc0, acc1 = base.deployed_accuracy["test"], final.deployed_accuracy["test"]
    size = base.fp32_bytes / max(final.storage_bytes or final.deployed_bytes, 1)
    speed = base.latency_ms[64] / final.latency_ms[64] if final.latency_ms.get(64) else float("nan")
    return [model, budget, who, f"{100 * acc1:.2f} %", f"{100 * (acc1 - acc0):+.2f}", f"{size:.1f}x",
            f"{(final.storage_bytes or 0) / 1e3:.1f} kB", f"{speed:.2f}x",
            "-" if met is None else ("yes" if met else "NO"), f"{secs:.0f}"]


def run(models: list[str], budgets: list[str], quick: bool, out: Path) -> list[list[str]]:
    rows = []
    for name in models:
        model, data = _model(name, quick)
        for bname in budgets:
            b = BUDGETS[bname]
            if quick:
                b = Budget.from_dict({**b.to_dict(), "max_trials": 2, "time_limit_s": 120, "max_drop": 2.0})
            t0 = time.time()
            res = compress(model, data, b, training=TrainingOptions(quick=quick),
                           results=ResultOptions(out_dir=out / f"{name}-{bname}", title=f"{name}: {bname}"))
            rows.append(_row(name, bname, "autocompress (auto)", res.baseline, res.final, res.met,
                             time.time() - t0))
            for peer, recipe in PEERS[bname].items():
                if quick and "int8" not in peer:
                    continue
                t0 = time.time()
                pr = apply_recipe(model, recipe, data, out_dir=out / f"{name}-{bname}-{peer[:12].strip()}",
                                  budget=b, quick=quick)
                rows.append(_row(name, bname, peer, pr.baseline, pr.final, pr.met, time.time() - t0))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="lenet5", choices=["lenet5", "lenet300", "resnet", "all"])
    ap.add_argument("--budget", default="all", choices=["smallest", "fastest", "all"])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    models = ["lenet5", "lenet300", "resnet"] if a.model == "all" else [a.model]
    budgets = list(BUDGETS) if a.budget == "all" else [a.budget]
    out = a.out or Path(tempfile.mkdtemp(prefix="bench-search-"))
    rows = run(models, budgets, a.quick, out)
    head = ["model", "budget", "method", "test acc (ORT)", "Δ points", "storage ratio", "storage",
            "speed-up b64", "budget met", "time s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
