"""The lines a result leads with: the *deployed* file first (size, speed, accuracy side by side), then
the storage artifact, and a warning when the deployed file did not shrink.

A storage ratio alone ("40x smaller") reads as a claim about what runs; when the deployed ONNX
file still holds fp32 weights that claim is about the archive only, and the headline says so.
"""

from __future__ import annotations

import math
from pathlib import Path

from autocompress.runtime_results import upgraded
from autocompress.report.tables import (_num, _ratio_faster, _ratio_smaller, accuracy_of, fmt_bytes, fmt_pct,
                                        latency_of)

DEPLOYED_SUFFIXES = (".onnx", ".pte")
SHRUNK = 0.95     # the deployed file counts as smaller only below 95 % of the fp32 one


def _deployed_bytes(report: dict, m: dict) -> float | None:
    """Recorded size of the deployed file, else the size of the exported file the report lists."""
    n = _num(upgraded(m).get("deployed_bytes"))
    if n is not None:
        return n
    for path in (report.get("artifacts") or {}).values():
        p = Path(str(path))
        if p.suffix in DEPLOYED_SUFFIXES and p.is_file():
            return float(p.stat().st_size)
    return None


def _zipped(m: dict) -> str:
    """Whatever zipped size the measurement records (``*zip*_bytes``), as ", zipped X"."""
    for k, v in m.items():
        if "zip" in k and k.endswith("bytes") and _num(v) is not None:
            return f", zipped {fmt_bytes(v)}"
    return ""


def _latency_batch(report: dict, b: dict, f: dict) -> int | None:
    wanted = (report.get("budget") or {}).get("latency_batch")
    for batch in ([wanted] if wanted else []) + [64, 1]:
        if latency_of(b, batch) and latency_of(f, batch):
            return batch
    return None


def split_overlap_warning(report: dict) -> str | None:
    """A sentence when the baseline's validation accuracy is far above its test accuracy: a
    pretrained model whose training data overlap the validation split scores near-perfectly there,
    and every decision of the search (made on validation) rests on a split that cannot see a loss.
    Rule: more than 1 point apart and the validation error under half the test error."""
    acc = ((report or {}).get("baseline") or {}).get("accuracy") or {}
    val, test = acc.get("val"), acc.get("test")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (val, test)):
        return None
    gap, val_err, test_err = val - test, 1 - val, 1 - test
    if gap > 0.01 and val_err < 0.5 * test_err:
        return (f"the original model's validation accuracy {100 * val:.2f} % is far above its test accuracy "
                f"{100 * test:.2f} %: does its training data overlap the validation split? The search decides "
                f"on validation, which then cannot see a loss")
    return None


def headline(report: dict) -> list[str]:
    """Two or three plain lines (no markup) from a ``report.json`` dict; empty without a result."""
    b, f = report.get("baseline") or {}, report.get("final") or {}
    if not f:
        return []
    runtime = f.get("runtime_label") or b.get("runtime_label") or "ONNX Runtime"
    name = "model.pte" if f.get("runtime") == "executorch" else "model.onnx"
    before = _deployed_bytes({}, b) or _num(b.get("fp32_bytes"))
    after = _deployed_bytes(report, f)
    change = _ratio_smaller(before, after).replace("same (within 1 %)", "same size, within 1 %")
    parts = [f"deployed {name} ({runtime}): {fmt_bytes(before)} -> {fmt_bytes(after)}{_zipped(f)} ({change})"]
    batch = _latency_batch(report, b, f)
    if batch:
        parts.append(f"{_ratio_faster(latency_of(b, batch), latency_of(f, batch))} at batch {batch}")
    ab, label = accuracy_of(b)
    af, label_f = accuracy_of(f)
    if ab is not None and af is not None:
        parts.append(f"test accuracy {fmt_pct(ab)} -> {fmt_pct(af)} ({100 * (af - ab):+.2f} points, "
                     f"{label_f or label})")
    lines = [", ".join(parts)]
    storage, fp32 = _num(f.get("storage_bytes")), _num(b.get("fp32_bytes"))
    if storage is not None:
        lines.append(f"storage artifact model.acz: {fmt_bytes(storage)}, {_ratio_smaller(fp32, storage)} "
                     f"than the fp32 parameters ({fmt_bytes(fp32)}); it is for storing and shipping, "
                     f"load_compressed() rebuilds the model")
    if before and after and after >= SHRUNK * before:
        lines.append(f"warning: the deployed file did not shrink ({fmt_bytes(before)} -> {fmt_bytes(after)}): "
                     + ("the size gain is in the storage artifact only" if storage is not None
                        else "this result is not smaller where it runs"))
    overlap = split_overlap_warning(report)
    if overlap:
        lines.append(f"warning: {overlap}")
    return lines
