"""Real architectures through the pipeline's stages: which verbs and exports work, model by model.

    python benchmarks/bench_zoo.py --quick                 # every model, every stage, no timing
    python benchmarks/bench_zoo.py --models resnet18 bert_tiny --latency

Models come from ``tests/realzoo.py`` (torchvision, timm and Hugging Face code in tiny configs,
random init, nothing downloaded; LSTM / GRU speech-style classifiers). Stages, each on a fresh copy:
fp32 export + parity on ONNX Runtime (batch 8, dynamic batch); structured pruning to half the MACs
(``target="macs"``, half the attention heads, channel counts rounded to each ``--round-to``), its
export + parity and, with ``--latency``, its ONNX Runtime speed-up over fp32 at batch 8 (1 thread,
interleaved rounds, median of per-round ratios, ~95 % interval): the cell shows the kept MACs and
the speed-up of the fastest rounding, then the others'; static int8, dynamic int8 and int4
weight-only quantization with export (ORT parity with the simulation). A cell shows ✓ or the first
words of the error.
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

from autocompress.export import export_onnx  # noqa: E402
from autocompress.export.inputs import ort_feed  # noqa: E402
from autocompress.targets.onnxruntime import check_parity, export_quantized, session  # noqa: E402
from autocompress.measure.core import count_macs  # noqa: E402
from autocompress.measure.timing import interleaved_speedup  # noqa: E402
from autocompress.prune import StructuredPruneConfig, prune_channels_  # noqa: E402
from autocompress.quantize import DynamicInt8Config, Int4WeightOnlyConfig, PTQConfig, quantize_  # noqa: E402

QUANT = {"static int8": PTQConfig, "dynamic int8": DynamicInt8Config, "int4": Int4WeightOnlyConfig}


def _cell(fn) -> str:
    try:
        out = fn()
        return "✓" if out is None else out
    except Exception as e:  # noqa: BLE001 - the matrix shows what broke
        # a structured cell may be out of reach on a recurrent model: its message names the layers kept
        return f"✗ {type(e).__name__}: {str(e).splitlines()[0][:110]}" if str(e) else f"✗ {type(e).__name__}"


def speedup(ref: Path, cand: Path, x) -> str:
    """Interleaved ORT speed-up of ``cand`` over ``ref`` on ``x`` (> 1: faster), with its interval."""
    runs = []
    for p in (ref, cand):
        sess = session(p)
        feed = ort_feed(sess, x)
        runs.append(lambda s=sess, f=feed: s.run(None, f))
    t = interleaved_speedup(*runs, warmup=10, min_rounds=40, max_rounds=600, rel_tol=0.02, max_time_s=20)
    return f"{t.speedup:.2f}x [{t.low:.2f}-{t.high:.2f}]"


def row(name: str, tmp: Path, latency: bool, round_tos: tuple[int, ...]) -> dict[str, str]:
    model, x = build_real(name)
    x8 = batch_of(name, 8, 5)
    res: dict[str, str] = {}
    fp = tmp / f"{name}.onnx"
    res["export+parity"] = _cell(lambda: check_parity(model, export_onnx(model, x, fp), x8) and None)

    def structured() -> str:
        macs = count_macs(model, x)
        cells = []
        for rt in round_tos:
            m = copy.deepcopy(model)
            cfg = StructuredPruneConfig(target="macs", amount=0.5, round_to=rt if rt > 1 else None, head_ratio=0.5)
            prune_channels_(m, cfg, x)
            kept = count_macs(m, x) / macs
            p = export_onnx(m, x, tmp / f"{name}_s{rt}.onnx")
            check_parity(m, p, x8)
            fast = speedup(fp, p, x8) if latency else ""
            cells.append((float(fast.split("x")[0]) if fast else 0.0, f"MACs {kept:.0%}", rt, fast))
        cells.sort(key=lambda c: -c[0])
        head, *rest = cells
        out = f"✓ {head[1]}" + (f", {head[3]} at round_to {head[2]}" if latency else "")
        more = [f"{rt}: {macs_}{', ' + fast if fast else ''}" for _, macs_, rt, fast in rest]
        return out + (f" ({'; '.join(more)})" if more else "")
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
    ap.add_argument("--round-to", nargs="*", type=int, default=[8, 16],
                    help="channel roundings tried for structured pruning (1: none)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as d:
        rows = {}
        for n in a.models:
            t = time.time()
            timed = a.latency and not a.quick
            rows[n] = row(n, Path(d), timed, tuple(a.round_to if timed else a.round_to[:1]) or (8,))
            print(f"{n}: done in {time.time() - t:.0f} s", file=sys.stderr, flush=True)
    cols = list(next(iter(rows.values())))
    print("| model | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for n, r in rows.items():
        print(f"| {n} | " + " | ".join(r[c] for c in cols) + " |")


if __name__ == "__main__":
    main()
