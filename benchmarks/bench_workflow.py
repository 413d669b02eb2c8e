"""Fast feedback in the agile loop: how long `apply` (recipe replay) and `check` (CI gate) take.

Both run through the command line exactly as a user or CI would (``autocompress.cli.main``), on
LeNet-5 / MNIST with the bundled baseline, on this machine's CPU with one thread.

Peers measured in the same run:
- ``apply`` vs ``run`` (the search that finds a recipe; full mode only): what replaying saves;
- the verdict's stability: the speed-up ``check`` reports (a ratio to the fp32 model timed
  interleaved) vs the candidate's absolute milliseconds, over repeated measurements — the spread
  of each says which one a noisy CI runner would flip.

    python benchmarks/bench_workflow.py --quick     # < 60 s
    python benchmarks/bench_workflow.py             # the figures of the issue (a few minutes)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

RECIPE = {"sparsity": 0.9, "cluster_bits": 4, "distill": True, "finetune_epochs": 1.0}


def _timed(argv: list[str]) -> tuple[int, float]:
    from autocompress.cli import main

    t0 = time.perf_counter()
    rc = main(["-q", *argv])
    return rc, time.perf_counter() - t0


def _stability(ref: Path, cand: Path, input_shape: tuple[int, ...], repeats: int, batch: int) -> dict:
    from autocompress.targets.onnxruntime import measure_latency

    ratios, abs_ms = [], []
    for _ in range(repeats):
        lat = measure_latency({"fp32": ref, "cand": cand}, input_shape, (batch,), runs=40)
        r, c = lat["fp32"][batch].median_ms, lat["cand"][batch].median_ms
        ratios.append(r / c)
        abs_ms.append(c)
    cv = lambda xs: statistics.pstdev(xs) / statistics.mean(xs)  # noqa: E731
    return {"ratio_cv": cv(ratios), "abs_cv": cv(abs_ms), "ratios": ratios, "abs_ms": abs_ms}


def run(quick: bool, out: Path) -> list[list[str]]:
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    # quick: a milder recipe with a token fine-tune (a smoke run); full: a typical found recipe
    recipe = dict(RECIPE, sparsity=0.8, finetune_epochs=0.1) if quick else dict(RECIPE)
    (out / "recipe.yaml").write_text(json.dumps(recipe))      # JSON is YAML
    cfg = out / "lenet5.yaml"
    budget = {"max_drop": 1.5 if quick else 0.5, "min_size_ratio": 10, "max_trials": 2 if quick else 6, "time_limit_s": 600}
    cfg.write_text(json.dumps({"model": "lenet5", "data": "mnist", "budget": budget,
                               "techniques": ["prune", "cluster", "quantize", "distill"],
                               "out_dir": str(out / "run")}))
    rows = []
    rc, t_apply = _timed(["apply", str(out / "recipe.yaml"), "--config", str(cfg), "--out", str(out / "apply")])
    rows.append(["apply (recipe replay, LeNet-5)", f"{t_apply:.1f} s",
                 f"exit {rc}; sparsity {recipe['sparsity']:.0%}, cluster {recipe['cluster_bits']} bits, "
                 f"fine-tune {recipe['finetune_epochs']} epoch"])
    if not quick:
        rc_run, t_run = _timed(["run", str(cfg)])
        rows.append([f"peer: run (search, {budget['max_trials']} trials)", f"{t_run:.1f} s",
                     f"exit {rc_run}; apply is {t_run / t_apply:.1f}x faster"])
    report = out / "apply" / "report.json"
    art, onnx = out / "apply" / "model.acz", out / "apply" / "model.onnx"
    cand = ["--artifact", str(art)] if art.exists() else ["--onnx", str(onnx)]
    rc, t_check = _timed(["check", "--config", str(cfg), *cand, "--baseline", str(report),
                          "--summary", str(out / "check.md"), "--junit", str(out / "check.xml")])
    rows.append(["check (artifact vs fp32, 10k test images, latency ratio)", f"{t_check:.1f} s", f"exit {rc}"])

    from autocompress.export import export_onnx
    from autocompress.baselines import load_baseline

    ref = export_onnx(load_baseline("lenet5", train_if_missing=False), torch.zeros(1, 1, 28, 28), out / "ref.onnx")
    if onnx.exists():
        s = _stability(ref, onnx, (1, 28, 28), 3 if quick else 8, 64)
        rows.append(["verdict stability: speed-up ratio (what check uses)", f"CV {100 * s['ratio_cv']:.1f} %",
                     "ratios " + ", ".join(f"{r:.2f}" for r in s["ratios"])])
        rows.append(["peer: absolute latency of the candidate", f"CV {100 * s['abs_cv']:.1f} %",
                     "ms " + ", ".join(f"{m:.3f}" for m in s["abs_ms"])])
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short fine-tune, no search peer (< 60 s)")
    p.add_argument("--out", help="working folder (default: a temporary one)")
    a = p.parse_args(argv)
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="bench-workflow-"))
    rows = run(a.quick, out)
    from autocompress.report.tables import md_table

    print(f"\n## workflow timings ({'quick' if a.quick else 'full'} mode, 1 thread)\n")
    print(md_table(["step", "time", "notes"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
