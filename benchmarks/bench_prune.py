"""Pruning on MNIST, against peers measured in the same run.

    python benchmarks/bench_prune.py                      # full (~10 min on 2 cores)
    python benchmarks/bench_prune.py --quick              # smoke run (< 60 s), same code path
    python benchmarks/bench_prune.py --model lenet5       # lenet5 | lenet300 | all

Unstructured (LeNet-300-100 and LeNet-5, 92 % of the weights removed): ours = per-layer sparsities
allocated from a sensitivity analysis on the validation split + gradual (polynomial) pruning with
short fine-tuning between rounds, then the rest of the budget at the final sparsity;
peer = ``torch.nn.utils.prune.global_unstructured`` L1 at the same sparsity, one-shot, then the
same number of fine-tuning epochs.

Structured (LeNet-5): ours = channel ratios allocated from a structured sensitivity analysis for a
MAC target, physically removed in two steps (a short fine-tune between them); peer =
torch-pruning's uniform L1 pruner (``MagnitudePruner``, classifier ignored) at the uniform ratio
whose MACs are closest to ours, one-shot, same total fine-tuning. Latency
of fp32 baseline and both pruned models: ONNX Runtime, 1 thread, runs interleaved in this process.

Choices (allocations) use the validation split; the table reports the test split.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.utils.prune as torch_prune
import torch_pruning as tp
from torch import nn

from autocompress.data import Splits, load_mnist
from autocompress.export import export_onnx
from autocompress.targets.onnxruntime import check_parity, measure_latency, ort_accuracy
from autocompress.measure.core import count_macs, count_nonzero, count_params
from autocompress.baselines import load_baseline
from autocompress.models import MODELS, build_model
from autocompress.prune import (PruneConfig, StructuredPruneConfig, allocate_ratios, channel_counts, finetune,
                                global_sparsity, make_permanent, prune_, prune_channels_, removal_fn,
                                sensitivity)
from autocompress.train import TrainConfig, evaluate, fit

log = logging.getLogger("bench_prune")

SPARSITY = 0.92          # Deep Compression keeps 8 % of LeNet's weights
MAC_TARGET = 0.90        # structured: fraction of LeNet-5's MACs removed (10x fewer)
STRUCTURED_STEPS = 2     # ours prunes in two steps, 1 epoch of fine-tuning after the first


@dataclass
class Budget:
    train_limit: int | None       # training samples used for fine-tuning (None = all 50k)
    val_limit: int                # validation samples for sensitivity
    test_limit: int | None
    unstructured_epochs: dict[str, float]   # total fine-tuning per model (the same for the peer)
    unstructured_steps: int       # our gradual rounds ...
    round_epochs: float           # ... of this many epochs each; the rest of the budget follows them
    structured_epochs: float
    lr: float
    latency_runs: int


BUDGETS = {
    "quick": Budget(train_limit=3000, val_limit=500, test_limit=2000,
                    unstructured_epochs={"lenet300": 1.0, "lenet5": 1.0},
                    unstructured_steps=2, round_epochs=0.25, structured_epochs=1.0, lr=1e-3, latency_runs=20),
    "full": Budget(train_limit=None, val_limit=3000, test_limit=None,
                   unstructured_epochs={"lenet300": 8, "lenet5": 4},
                   unstructured_steps=4, round_epochs=0.25, structured_epochs=10, lr=1e-3, latency_runs=200),
}


def _train_cfg(epochs: float, lr: float) -> TrainConfig:
    return TrainConfig(epochs=epochs, lr=lr, batch_size=128, seed=0, progress=False)


def _train_loader(data: Splits, bud: Budget):
    return data.loader("train", 128, shuffle=True, limit=bud.train_limit)


def _baseline(name: str, data: Splits, bud: Budget) -> nn.Module:
    try:
        return load_baseline(name, train_if_missing=False)
    except Exception as e:  # noqa: BLE001 - quick mode must run even before the baselines exist
        if bud is not BUDGETS["quick"]:
            raise
        log.warning("no bundled %s baseline (%s): training a stand-in for the smoke run", name, e)
        m = build_model(name)
        return fit(m, _train_loader(data, bud), _train_cfg(1.0, 1e-3)).eval()


def _weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _test(model: nn.Module, data: Splits, bud: Budget) -> float:
    return evaluate(model, data.loader("test", 1000, limit=bud.test_limit))


# -- unstructured ------------------------------------------------------------------------------

def unstructured(name: str, data: Splits, bud: Budget) -> list[dict]:
    base = _baseline(name, data, bud)
    val = data.loader("val", 500, limit=bud.val_limit)
    base_acc = _test(base, data, bud)
    rows = [dict(model=name, method="baseline (fp32)", sparsity=global_sparsity(base), test=base_acc,
                 params=count_params(base), nonzero=count_nonzero(base), seconds=0.0)]

    t = time.time()
    ours = copy.deepcopy(base)
    sens = sensitivity(ours, val, ratios=(0.5, 0.7, 0.8, 0.9, 0.95, 0.98), kind="unstructured")
    per_layer = allocate_ratios(sens, SPARSITY)
    steps = bud.unstructured_steps
    cfg = PruneConfig(per_layer=per_layer, schedule="polynomial", steps=steps, permanent=False,
                      finetune=_train_cfg(bud.round_epochs, bud.lr))
    prune_(ours, cfg, _train_loader(data, bud))
    # the rest of the same budget at the final sparsity, masks still enforced
    epochs = bud.unstructured_epochs[name]
    finetune(ours, _train_loader(data, bud), _train_cfg(epochs - steps * bud.round_epochs, bud.lr))
    make_permanent(ours)
    rows.append(dict(model=name, method=f"ours: sensitivity ratios + gradual ({steps} rounds)",
                     sparsity=global_sparsity(ours), test=_test(ours, data, bud), params=count_params(ours),
                     nonzero=count_nonzero(ours), seconds=time.time() - t,
                     per_layer={k: round(v, 3) for k, v in per_layer.items()}))

    t = time.time()
    peer = copy.deepcopy(base)
    torch_prune.global_unstructured(_weights(peer), pruning_method=torch_prune.L1Unstructured, amount=SPARSITY)
    fit(peer, _train_loader(data, bud), _train_cfg(epochs, bud.lr))  # torch's own masks stay on
    for m, p in _weights(peer):
        torch_prune.remove(m, p)
    rows.append(dict(model=name, method="torch.nn.utils.prune global L1, one-shot", sparsity=global_sparsity(peer),
                     test=_test(peer, data, bud), params=count_params(peer), nonzero=count_nonzero(peer),
                     seconds=time.time() - t))
    for r in rows:
        r["delta_pts"] = 100 * (r["test"] - base_acc)
    return rows


# -- structured --------------------------------------------------------------------------------

def _tp_uniform(model: nn.Module, example: torch.Tensor, ratio: float) -> nn.Module:
    m = copy.deepcopy(model)
    head = [mod for mod in m.modules() if isinstance(mod, nn.Linear)][-1]
    tp.pruner.MagnitudePruner(m, example, importance=tp.importance.MagnitudeImportance(p=1),
                              pruning_ratio=ratio, ignored_layers=[head]).step()
    return m


def _tp_matching(model: nn.Module, example: torch.Tensor, macs: int) -> tuple[nn.Module, float]:
    """torch-pruning's uniform ratio whose MACs are closest to ``macs`` (bisection; MACs fall as
    the ratio grows)."""
    lo, hi, tried = 0.05, 0.97, []
    for _ in range(12):
        mid = (lo + hi) / 2
        m = _tp_uniform(model, example, mid)
        got = count_macs(m, example[:1])
        tried.append((abs(got - macs), mid, m))
        lo, hi = (mid, hi) if got > macs else (lo, mid)
    _, ratio, best = min(tried, key=lambda t: t[0])
    return best, ratio


def structured(data: Splits, bud: Budget, out_dir: Path) -> list[dict]:
    base = _baseline("lenet5", data, bud)
    example = data.example_input(2)
    val = data.loader("val", 500, limit=bud.val_limit)
    base_acc = _test(base, data, bud)
    base_macs = count_macs(base, example[:1])

    t = time.time()
    ours = copy.deepcopy(base)
    sens = sensitivity(ours, val, ratios=(0.5, 0.7, 0.8, 0.9, 0.95), kind="structured", example_input=example)
    sens.plot(out_dir / "lenet5_structured_sensitivity.png")
    per_layer = allocate_ratios(sens, MAC_TARGET, cost=removal_fn(ours, example, "macs"), iters=16)
    first = min(1.0, bud.structured_epochs / 4)
    budget = iter([first, bud.structured_epochs - first])   # same total as the peer's one fine-tune

    def recover(m: nn.Module) -> nn.Module:
        return fit(m, _train_loader(data, bud), _train_cfg(next(budget), bud.lr))

    prune_channels_(ours, StructuredPruneConfig(ratio=0.0, per_layer=per_layer, steps=STRUCTURED_STEPS), example,
                    finetune=recover)
    seconds = {"baseline": 0.0, "ours": time.time() - t}

    t = time.time()
    peer, peer_ratio = _tp_matching(base, example, count_macs(ours, example[:1]))
    fit(peer, _train_loader(data, bud), _train_cfg(bud.structured_epochs, bud.lr))
    seconds["tp"] = time.time() - t
    models = {"baseline": base, "ours": ours, "tp": peer}

    paths = {}
    for k, m in models.items():
        paths[k] = export_onnx(m, example, out_dir / f"lenet5_{k}.onnx")
        check_parity(m, paths[k], data.calibration_batch(256), atol=1e-3)
    lat = measure_latency(paths, (1, 28, 28), batch_sizes=(1, 64), threads=1, runs=bud.latency_runs)
    names = {"baseline": "baseline (fp32)",
             "ours": f"ours: sensitivity-allocated channels, {STRUCTURED_STEPS} steps",
             "tp": f"torch-pruning uniform L1 ({peer_ratio:.3f})"}
    rows = []
    for k, m in models.items():
        test = _test(m, data, bud)
        rows.append(dict(model="lenet5", method=names[k], channels=channel_counts(m), params=count_params(m),
                         macs=count_macs(m, example[:1]), mac_reduction=base_macs / count_macs(m, example[:1]),
                         test=test, ort_test=ort_accuracy(paths[k], data.loader("test", 1000, limit=bud.test_limit)),
                         delta_pts=100 * (test - base_acc), onnx_kb=paths[k].stat().st_size / 1000,
                         b1_ms=lat[k][1].median_ms, b64_ms=lat[k][64].median_ms,
                         x_b1=lat["baseline"][1].median_ms / lat[k][1].median_ms,
                         x_b64=lat["baseline"][64].median_ms / lat[k][64].median_ms, seconds=seconds[k]))
    return rows


# -- report ------------------------------------------------------------------------------------

def table_unstructured(rows: list[dict]) -> str:
    out = ["| model | method | sparsity | non-zero | test acc | Δ pts | time s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['model']} | {r['method']} | {r['sparsity']:.1%} | {r['nonzero']:,} | {r['test']:.2%} "
                   f"| {r['delta_pts']:+.2f} | {r['seconds']:.0f} |")
    return "\n".join(out)


def table_structured(rows: list[dict]) -> str:
    out = ["| method | channels | params | MACs (x less) | test acc | ORT acc | Δ pts | ONNX KB "
           "| b1 ms (x) | b64 ms (x) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ch = "/".join(str(v) for v in r["channels"].values())
        out.append(f"| {r['method']} | {ch} | {r['params']:,} | {r['macs']:,} ({r['mac_reduction']:.1f}x) "
                   f"| {r['test']:.2%} | {r['ort_test']:.2%} | {r['delta_pts']:+.2f} | {r['onnx_kb']:.0f} "
                   f"| {r['b1_ms']:.3f} ({r['x_b1']:.1f}x) | {r['b64_ms']:.3f} ({r['x_b64']:.1f}x) |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny budgets (< 60 s), same code path")
    ap.add_argument("--model", choices=["lenet5", "lenet300", "all"], default="all")
    ap.add_argument("--out", type=Path, default=None, help="folder for JSON, ONNX files and the plot")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    bud = BUDGETS["quick" if args.quick else "full"]
    out_dir = args.out or Path(tempfile.mkdtemp(prefix="bench_prune-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    names = ["lenet300", "lenet5"] if args.model == "all" else [args.model]
    result: dict = {"mode": "quick" if args.quick else "full", "unstructured": [], "structured": []}
    for name in names:
        result["unstructured"] += unstructured(name, load_mnist(flat=MODELS[name][1]), bud)
    if "lenet5" in names:
        result["structured"] = structured(load_mnist(), bud, out_dir)
    result["seconds"] = time.time() - t0
    (out_dir / "bench_prune.json").write_text(json.dumps(result, indent=1, default=str))
    print(f"## Unstructured pruning to {SPARSITY:.0%} sparsity (MNIST test, {result['mode']} mode)\n")
    print(table_unstructured(result["unstructured"]))
    if result["structured"]:
        print(f"\n## Structured pruning of LeNet-5, {MAC_TARGET:.0%} of MACs targeted "
              f"(ONNX Runtime, 1 thread, interleaved; x = speed-up vs fp32)\n")
        print(table_structured(result["structured"]))
    print(f"\ntotal {result['seconds']:.0f} s; artifacts in {out_dir}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
