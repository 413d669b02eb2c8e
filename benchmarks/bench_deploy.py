"""What a user deploys, per runtime: the compressed model's ``model.onnx`` on stock ONNX Runtime beside
the fp32 file and ONNX Runtime's own ``quantize_static`` (int8 QDQ) of it, and (``--executorch``) its
``model.pte`` on ExecuTorch (XNNPACK) beside the fp32 .pte and a plain XNNPACK int8 .pte of the
uncompressed model; MNIST, LeNet-5 and LeNet-300-100.

    python benchmarks/bench_deploy.py              # compress() per budget (~8 min each), full test split
    python benchmarks/bench_deploy.py --quick      # smoke run (< 2 min): fixed recipes replayed with
                                                   # short fine-tunes, 2,000 test images, 30 timing runs
    python benchmarks/bench_deploy.py --executorch # + the ExecuTorch rows: the same budgets searched
                                                   # with Budget(runtime="executorch") (~8 min each more)

Budgets: "smallest, <= 0.1 points" and "fastest, <= 0.3 points" (validation split decides, test is
reported). Per file: bytes on disk, bytes DEFLATE-zipped (what an app package ships), median latency
at batch 1 and 64 on its runtime (1 thread, every file of one model and runtime interleaved in one
process), and top-1 test accuracy on its runtime: for .onnx files measured by ``ort_plain.py``, a
separate process with only onnxruntime and numpy (autocompress and torch refused), default session
options; for .pte files on ExecuTorch's runtime. ``acz`` is the storage artifact.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from autocompress import targets
from autocompress.baselines import load_baseline
from autocompress.data import Splits, load_mnist
from autocompress.targets.onnxruntime import ort_quantize_static
from autocompress.measure import zipped_bytes
from autocompress.models import MODELS
from autocompress.search import Budget, Recipe, ResultOptions, apply_recipe, compress

HERE = Path(__file__).resolve().parent
BUDGETS = {"smallest": Budget(max_drop=0.1, objective="smallest", min_size_ratio=None, time_limit_s=480,
                              max_trials=8),
           "fastest": Budget(max_drop=0.3, objective="fastest", latency_batch=64, time_limit_s=480,
                             max_trials=8)}
# --quick: one recipe per budget, replayed (the deploy path of the search, without the search)
QUICK = {"smallest": Recipe(sparsity=0.9, cluster_bits=4, finetune_epochs=0.25),
         "fastest": Recipe(quant="int8", finetune_epochs=0.0)}
# --quick on ExecuTorch: its .pte stores weights densely (sparsity and shared values do not shrink
# it), so "smallest" is int8; "fastest" removes channels (counts rounded to multiples of 8) too
QUICK_PTE = {"smallest": Recipe(quant="int8", finetune_epochs=0.0),
             "fastest": Recipe(structured_ratio=0.3, round_to=8, quant="int8", finetune_epochs=0.5)}
GOAL_X = 20.0          # deployed ONNX at least this much smaller than fp32 (LeNet-5, smallest)


def _subset(data: Splits, n_train: int, n_eval: int) -> Splits:
    """--quick: fixed subsets (the same code path on less data)."""
    from torch.utils.data import Subset
    def cut(ds, n):   # the images Splits.loader(limit=n) picks, so other benchmarks' rows see the same
        return Subset(ds, torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:n].tolist())

    return Splits(cut(data.train, n_train), cut(data.val, n_eval), cut(data.test, n_eval),
                  data.input_shape, data.num_classes)


def _test_arrays(data: Splits, limit: int | None, work: Path) -> tuple[Path, Path]:
    xs, ys = zip(*data.loader("test", 1000, limit=limit))
    x, y = work / "test_x.npy", work / "test_y.npy"
    np.save(x, torch.cat(xs).numpy())
    np.save(y, torch.cat(ys).numpy())
    return x, y


def plain_ort_accuracy(onnx_path: Path, x: Path, y: Path) -> float:
    """Accuracy from a process that has onnxruntime + numpy only (see ort_plain.py)."""
    out = subprocess.run([sys.executable, "-I", str(HERE / "ort_plain.py"), str(onnx_path), str(x), str(y)],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"plain onnxruntime could not run {onnx_path}: {out.stderr.strip()[-800:]}")
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    if doc["blocked_imports"] or doc["loaded"]:
        raise RuntimeError(f"{onnx_path}: the plain process needed {doc['blocked_imports'] or doc['loaded']}")
    return doc["accuracy"]


def _compressed(name: str, kind: str, base, data: Splits, quick: bool, out: Path, runtime: str = "onnxruntime"):
    """(result, deployed file) for one budget on ``runtime``: the search, or in quick mode a fixed recipe."""
    budget = dataclasses.replace(BUDGETS[kind], runtime=runtime)
    if runtime != "onnxruntime":   # a .pte has no storage artifact beside it: its own bytes count
        budget = dataclasses.replace(budget, size_of="onnx")
    if quick:
        recipe = (QUICK_PTE if runtime == "executorch" else QUICK)[kind]
        res = apply_recipe(copy.deepcopy(base), recipe, data, out_dir=out, quick=True, budget=budget)
    else:
        res = compress(copy.deepcopy(base), data, budget,
                       results=ResultOptions(out_dir=out, title=f"bench_deploy: {name} {kind} ({runtime})"))
    return res, out / targets.get(runtime).filename


def executorch_rows(name: str, kinds: tuple[str, ...], base, data: Splits, quick: bool, work: Path) -> list[dict]:
    """The ExecuTorch (XNNPACK) rows: fp32 .pte and a plain XNNPACK int8 .pte of the uncompressed model
    (the peer: torchao's PT2E flow, XNNPACKQuantizer, 512 calibration images), beside each budget's
    result searched *on ExecuTorch* (``Budget(runtime="executorch")``: trials timed on its runtime),
    its ``model.pte``. All .pte files of one model are timed interleaved in one process; accuracy is
    measured on the ExecuTorch runtime on the same test images as the ONNX rows."""
    if "executorch" not in targets.available():
        return []
    et = targets.get("executorch")
    example = data.example_input(1)
    files = {"fp32 .pte": et.export(base, example, work / f"{name}-fp32.pte"),
             "XNNPACK int8 .pte": et.export(base, example, work / f"{name}-xnnpack-int8.pte", quantized=True,
                                            calibration=data.calibration_batch(512, seed=0))}
    results = {}
    for kind in kinds:
        res, _ = _compressed(name, kind, base, data, quick, work / f"{name}-{kind}-pte", runtime="executorch")
        results[kind] = res
        files[f"ours: {kind} .pte"] = work / f"{name}-{kind}-pte" / "model.pte"
    lat = et.time(files, tuple(data.input_shape), (1, 64), threads=1, runs=30 if quick else 200)
    rows = []
    for label, path in files.items():
        kind = label.split()[1] if label.startswith("ours") else None
        res = results.get(kind)
        rows.append({"model": name, "runtime": et.label, "file": label, "bytes": et.size(path),
                     "zipped": zipped_bytes(path), "b1_ms": lat[label][1].median_ms,
                     "b64_ms": lat[label][64].median_ms,
                     "accuracy": et.accuracy(path, data.loader("test", 1000)),
                     "acz": None, "plain_ort": None,
                     "reported": res.final.deployed_accuracy.get("test") if res else None,
                     "met": res.met if res else None, "recipe": res.recipe.describe() if res else None})
    return rows


def model_rows(name: str, quick: bool, work: Path, executorch: bool = False) -> dict:
    data = load_mnist(flat=MODELS[name][1])
    if quick:
        data = _subset(data, 3000, 2000)
    base = load_baseline(name)
    ort_t = targets.get("onnxruntime")
    example = data.example_input(1)
    files = {"fp32 .onnx": ort_t.export(base, example, work / f"{name}-fp32.onnx", packed=False)}
    files["ORT quantize_static int8"] = ort_quantize_static(files["fp32 .onnx"], work / f"{name}-ort-int8.onnx",
                                                            data.calibration_batch(512, seed=0))
    results = {}
    for kind in BUDGETS:
        res, path = _compressed(name, kind, base, data, quick, work / f"{name}-{kind}")
        results[kind] = res
        files[f"ours: {kind} .onnx"] = path
    lat = ort_t.time(files, tuple(data.input_shape), (1, 64), threads=1, runs=30 if quick else 200)
    x, y = _test_arrays(data, None, work)
    rows = []
    for label, path in files.items():
        kind = label.split()[1] if label.startswith("ours") else None
        res = results.get(kind)
        rows.append({"model": name, "runtime": "ONNX Runtime", "file": label, "bytes": ort_t.size(path),
                     "zipped": zipped_bytes(path), "b1_ms": lat[label][1].median_ms,
                     "b64_ms": lat[label][64].median_ms, "accuracy": plain_ort_accuracy(path, x, y),
                     "acz": res.final.storage_bytes if res else None,
                     # what the result reports for its deployed file (same test images)
                     "reported": res.final.deployed_accuracy.get("test") if res else None,
                     "met": res.met if res else None, "recipe": res.recipe.describe() if res else None})
    if executorch:
        rows += executorch_rows(name, tuple(BUDGETS), base, data, quick, work)
    for r in rows:        # against the fp32 file of the same runtime (its first row)
        ref = next(q for q in rows if q["runtime"] == r["runtime"])
        r["x_smaller"] = ref["bytes"] / r["bytes"]
        r["drop_points"] = 100 * (ref["accuracy"] - r["accuracy"])
    return {"rows": rows, "test_images": int(np.load(y).shape[0])}


def report(per_model: dict[str, dict]) -> str:
    lines = ["| model | runtime | file | bytes | zipped | x smaller | acz | b1 ms | b64 ms | test acc (its runtime) "
             "| drop | = reported |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, doc in per_model.items():
        for r in doc["rows"]:
            acz = f"{r['acz']:,}" if r.get("acz") else "-"
            xs = f"{r['x_smaller']:.1f}x" if r.get("x_smaller") else "-"
            drop = f"{r['drop_points']:+.2f}" if r.get("drop_points") is not None else "-"
            same = "-" if r.get("reported") is None else ("yes" if abs(r["reported"] - r["accuracy"]) < 1e-9
                                                          else f"NO ({100 * r['reported']:.2f} %)")
            lines.append(f"| {name} | {r['runtime']} | {r['file']} | {r['bytes']:,} | {r['zipped']:,} | {xs} | {acz} | "
                         f"{r['b1_ms']:.3f} | {r['b64_ms']:.3f} | {100 * r['accuracy']:.2f} % | {drop} | {same} |")
    lines.append("")
    for name, doc in per_model.items():
        small = next(r for r in doc["rows"] if r["file"] == "ours: smallest .onnx")
        lines.append(f"{name}: smallest ({small['recipe']}): model.onnx {small['bytes']:,} B = "
                     f"{small['x_smaller']:.1f}x smaller than fp32 (goal >= {GOAL_X:.0f}x at <= 0.1 points: "
                     f"{'met' if small['x_smaller'] >= GOAL_X and small['drop_points'] <= 0.1 else 'NOT met'}), "
                     f"{small['bytes'] / small['acz']:.2f}x the .acz artifact (limit 2x), "
                     f"zipped {small['zipped']:,} B; test images: {doc['test_images']:,}")
        rows = {r["file"]: r for r in doc["rows"]}
        fast, peer = rows.get("ours: fastest .pte"), rows.get("XNNPACK int8 .pte")
        if fast and peer:
            within = fast["drop_points"] <= 0.3
            lines.append(f"{name}: ExecuTorch fastest ({fast['recipe']}): {peer['b1_ms'] / fast['b1_ms']:.2f}x (b1), "
                         f"{peer['b64_ms'] / fast['b64_ms']:.2f}x (b64) the speed of the plain XNNPACK int8 .pte, "
                         f"{fast['drop_points']:+.2f} points vs the fp32 .pte (goal: faster within 0.3 points: "
                         f"{'met' if within and fast['b64_ms'] < peer['b64_ms'] and fast['b1_ms'] < peer['b1_ms'] else 'NOT met'})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fixed recipes, short fine-tunes (< 2 min)")
    ap.add_argument("--model", choices=("lenet5", "lenet300"), action="append")
    ap.add_argument("--executorch", action="store_true", help="add the ExecuTorch rows")
    ap.add_argument("--out", default=None, help="directory for results.json and the files (default: temporary)")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.out or tmp)
        work.mkdir(parents=True, exist_ok=True)
        per = {}
        for name in a.model or ("lenet5", "lenet300"):
            per[name] = model_rows(name, a.quick, work, a.executorch)
        print(report(per), flush=True)
        doc = {"quick": a.quick, "models": per}
        if a.out:
            (work / "results.json").write_text(json.dumps(doc, indent=1, default=str))
    return doc


if __name__ == "__main__":
    main()
