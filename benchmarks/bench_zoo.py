"""Real architectures through the pipeline's stages: which verbs and exports work, model by model.

    python benchmarks/bench_zoo.py --quick                 # every model, every stage, no timing
    python benchmarks/bench_zoo.py --models resnet18 bert_tiny --latency

Models come from ``tests/realzoo.py`` (torchvision, timm and Hugging Face code in tiny configs,
random init, nothing downloaded; LSTM / GRU speech-style classifiers). Stages, each on a fresh copy:
fp32 export + parity on ONNX Runtime (batch 8, dynamic batch), structured pruning at ratio 0.5
(channels rounded to 8) with the kept share of MACs, its export + parity and, with ``--latency``,
its ONNX Runtime latency over fp32 at batch 8 (interleaved runs, 1 thread); static int8, dynamic
int8 and int4 weight-only quantization with export (ORT parity with the simulation). A cell shows
✓ or the first words of the error.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from realzoo import REAL_ZOO_NAMES, batch_of, build_real  # noqa: E402

from autocompress.export import check_parity, export_onnx, measure_latency  # noqa: E402
from autocompress.export.qdq import export_quantized  # noqa: E402
from autocompress.measure.core import count_macs  # noqa: E402
from autocompress.prune import StructuredPruneConfig, prune_channels_  # noqa: E402
from autocompress.quantize import DynamicInt8Config, Int4WeightOnlyConfig, PTQConfig, quantize_  # noqa: E402

QUANT = {"static int8": PTQConfig, "dynamic int8": DynamicInt8Config, "int4": Int4WeightOnlyConfig}


def _cell(fn) -> str:
    try:
        out = fn()
        return "✓" if out is None else out
    except Exception as e:  # noqa: BLE001 - the matrix shows what broke
        return f"✗ {type(e).__name__}: {str(e).splitlines()[0][:70]}" if str(e) else f"✗ {type(e).__name__}"


def row(name: str, tmp: Path, latency: bool) -> dict[str, str]:
    model, x = build_real(name)
    x8 = batch_of(name, 8, 5)
    res: dict[str, str] = {}
    fp = tmp / f"{name}.onnx"
    res["export+parity"] = _cell(lambda: check_parity(model, export_onnx(model, x, fp), x8) and None)

    def structured() -> str:
        m = copy.deepcopy(model)
        macs = count_macs(m, x)
        prune_channels_(m, StructuredPruneConfig(ratio=0.5, round_to=8, head_ratio=0.5), x)
        kept = count_macs(m, x) / macs
        p = export_onnx(m, x, tmp / f"{name}_s.onnx")
        check_parity(m, p, x8)
        if not latency:
            return f"✓ MACs {kept:.0%}"
        shape = tuple(x.shape[1:])
        lat = measure_latency({"fp32": fp, "pruned": p}, shape, (8,), runs=30, warmup=5)
        return f"✓ MACs {kept:.0%}, ORT {lat['pruned'][8].median_ms / lat['fp32'][8].median_ms:.2f}x"
    res["structured"] = _cell(structured)
    for label, cfg in QUANT.items():
        def quant(cfg=cfg, label=label):
            q = quantize_(copy.deepcopy(model), cfg(), batch_of(name, 32, 3))
            export_quantized(q, x8, tmp / f"{name}_{label.replace(' ', '_')}.onnx")
        res[label] = _cell(quant)
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=list(REAL_ZOO_NAMES), choices=REAL_ZOO_NAMES)
    ap.add_argument("--quick", action="store_true", help="no latency (the default without --latency)")
    ap.add_argument("--latency", action="store_true", help="time pruned vs fp32 on ONNX Runtime, batch 8")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as d:
        rows = {}
        for n in a.models:
            t = time.time()
            rows[n] = row(n, Path(d), a.latency and not a.quick)
            print(f"{n}: done in {time.time() - t:.0f} s", file=sys.stderr, flush=True)
    cols = list(next(iter(rows.values())))
    print("| model | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for n, r in rows.items():
        print(f"| {n} | " + " | ".join(r[c] for c in cols) + " |")


if __name__ == "__main__":
    main()
