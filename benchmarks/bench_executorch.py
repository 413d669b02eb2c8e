"""The ExecuTorch target on MNIST (LeNet-5, LeNet-300-100): fp32 .pte vs XNNPACK int8 .pte, beside
ONNX Runtime's fp32 .onnx.

    python benchmarks/bench_executorch.py            # full test split, 200 timing runs
    python benchmarks/bench_executorch.py --quick    # 2,000 test images, 30 runs (< 1 min)
    python benchmarks/bench_executorch.py --search   # + the search's "fastest <= 0.3 points" result
                                                     #   found *on ExecuTorch* (LeNet-5; with --quick ~2 min)

Per model: file bytes, zipped bytes (what an app package ships), median latency at batch 1 and 64
(1 thread; the files of one runtime interleaved in one process), top-1 test accuracy *on that
runtime*. int8 .pte: torchao's PT2E flow with ExecuTorch's XNNPACKQuantizer (per-channel symmetric
weights), calibrated on 512 training images. Everything goes through ``autocompress.targets``.
``bench_deploy.py --executorch`` has the same peers beside the compressed .pte of each budget.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import zipfile
from pathlib import Path

from autocompress import targets
from autocompress.data import load_mnist
from autocompress.models import build_model
from autocompress.models.weights_io import baseline_path, load_weights


def zipped_bytes(path: Path) -> int:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(path, path.name)
    return len(buf.getvalue())


def rows(name: str, quick: bool, work: Path, search: bool = False) -> list[dict]:
    flat = name == "lenet300"
    data = load_mnist(flat=flat)
    model = load_weights(build_model(name), baseline_path(name)).eval()
    limit = 2000 if quick else None
    example, calib = data.example_input(1), data.calibration_batch(512, seed=0)
    runs = 30 if quick else 200
    files = {"onnxruntime": {"fp32 .onnx": targets.get("onnxruntime").export(model, example, work / f"{name}.onnx")}}
    if "executorch" in targets.available():
        et = targets.get("executorch")
        files["executorch"] = {
            "fp32 .pte": et.export(model, example, work / f"{name}.pte"),
            "int8 .pte (XNNPACK)": et.export(model, example, work / f"{name}-int8.pte", quantized=True,
                                             calibration=calib)}
        if search:
            files["executorch"]["ours: fastest <= 0.3 pt .pte"] = _search(model, data, quick, work / f"{name}-search")
    out = []
    for runtime, per in files.items():
        t = targets.get(runtime)
        lat = t.time(per, tuple(data.input_shape), (1, 64), threads=1, runs=runs)
        for label, path in per.items():
            out.append({"model": name, "runtime": t.label, "file": label, "bytes": t.size(path),
                        "zipped": zipped_bytes(Path(path)), "b1_ms": lat[label][1].median_ms,
                        "b64_ms": lat[label][64].median_ms, "accuracy": t.accuracy(path, data.loader("test", 1000, limit=limit))})
    return out


def _search(model, data, quick: bool, out: Path) -> Path:
    """The automatic loop with latency measured on ExecuTorch (batch 64): its deployed model.pte."""
    from autocompress.search import Budget, Recipe, ResultOptions, SearchOptions, TrainingOptions, compress
    budget = Budget(max_drop=0.3, objective="fastest", latency_batch=64, runtime="executorch",
                    time_limit_s=90 if quick else 480, max_trials=2 if quick else 10)
    seeds = [Recipe(structured_ratio=0.5, quant="int8", distill=True, finetune_epochs=1.0),
             Recipe(structured_ratio=0.7, quant="int8", distill=True, finetune_epochs=2.0)] if quick else None
    res = compress(model, data, budget,
                   search=SearchOptions(techniques=("structured", "quantize", "distill"), seeds=seeds),
                   training=TrainingOptions(quick=quick), results=ResultOptions(out_dir=out))
    print(f"search: {res.message}", file=sys.stderr)
    return out / "model.pte"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", choices=("lenet5", "lenet300"), action="append")
    ap.add_argument("--search", action="store_true", help="add the search's ExecuTorch 'fastest' result (LeNet-5)")
    a = ap.parse_args(argv)
    if "executorch" not in targets.available():
        print("executorch is not installed: pip install 'autocompress[executorch]'", file=sys.stderr)
    print("| model | runtime | file | bytes | zipped | b1 ms | b64 ms | test acc |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.model or ("lenet5", "lenet300"):
            for r in rows(name, a.quick, Path(tmp), search=a.search and name == "lenet5"):
                print(f"| {r['model']} | {r['runtime']} | {r['file']} | {r['bytes']:,} | {r['zipped']:,} | "
                      f"{r['b1_ms']:.3f} | {r['b64_ms']:.3f} | {100 * r['accuracy']:.2f} % |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
