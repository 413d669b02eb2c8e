"""Markdown tables from a report dict (the ``report.json`` schema); every key is optional.

Figures that are worse than the baseline are shown as such ("1.3x slower"), never hidden.
"""

from __future__ import annotations

import math
from typing import Any

from autocompress.runtime_results import upgraded

DASH = "—"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return DASH
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def fmt_ms(v: float | None) -> str:
    return DASH if v is None else f"{v:.3f} ms"


def fmt_pct(v: float | None) -> str:
    return DASH if v is None else f"{100 * v:.2f} %"


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


# how the report names a measurement's runtime and its deployed file: the document carries the
# target's label and the file's path; reports written before targets existed are ONNX Runtime's
_FILES = {".onnx": "ONNX file", ".pte": ".pte file"}


def runtime_of(m: dict | None) -> tuple[str, str]:
    """(runtime label, deployed file label) of a measurement dict."""
    m = upgraded(m)
    suffix = "." + str(m.get("deployed_path") or "model.onnx").rpartition(".")[2]
    label = m.get("runtime_label") or ("ONNX Runtime" if (m.get("runtime") or "onnxruntime") == "onnxruntime"
                                       else m["runtime"])
    return label, _FILES.get(suffix, f"{suffix} file")


def accuracy_of(m: dict | None, split: str = "test") -> tuple[float | None, str]:
    """Deployed accuracy (on its runtime) when measured, else PyTorch's; and which one it is."""
    m = upgraded(m)
    for key, label in (("deployed_accuracy", runtime_of(m)[0]), ("accuracy", "PyTorch")):
        v = _num((m.get(key) or {}).get(split))
        if v is not None:
            return v, label
    return None, ""


def latency_of(m: dict | None, batch: int) -> float | None:
    lat = (m or {}).get("latency_ms") or {}
    return _num(lat.get(str(batch), lat.get(batch)))


def _ratio(before: float | None, after: float | None, better: str, worse: str, digits: int) -> str:
    """``before/after`` as "3.2x smaller" or, when it got worse, "1.25x larger" (never hidden)."""
    if not before or not after:
        return DASH
    r = before / after
    if abs(r - 1) < 0.01:
        return "same (within 1 %)"
    return f"{r:.{digits}f}x {better}" if r >= 1 else f"{1 / r:.2f}x {worse}"


def _ratio_smaller(before: float | None, after: float | None) -> str:
    return _ratio(before, after, "smaller", "larger", 1)


def _ratio_faster(before: float | None, after: float | None) -> str:
    return _ratio(before, after, "faster", "slower", 2)


def md_table(header: list[str], rows: list[list[str]]) -> str:
    def clean(c: Any) -> str:
        return str(c).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(clean(h) for h in header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(clean(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def before_after_rows(report: dict) -> list[list[str]]:
    """Rows of (what, before, after, change): sizes, latency at batch 1 and 64, test accuracy."""
    b, f = upgraded(report.get("baseline")), upgraded(report.get("final"))
    rows = []
    # the deployed file first: it is what a user ships; the storage artifact needs autocompress to decode
    bo, fo = _num(b.get("deployed_bytes")), _num(f.get("deployed_bytes"))
    if bo is not None or fo is not None:
        rows.append([f"size (deployed {runtime_of(f or b)[1]})", fmt_bytes(bo), fmt_bytes(fo), _ratio_smaller(bo, fo)])
    before_size = _num(b.get("fp32_bytes"))
    storage = _num(f.get("storage_bytes"))
    if storage is not None or not f.get("deployed_bytes"):
        rows.append(["size (storage artifact vs fp32 parameters)", fmt_bytes(before_size),
                     fmt_bytes(storage), _ratio_smaller(before_size, storage)])
    for batch in (1, 64):
        lb, lf = latency_of(b, batch), latency_of(f, batch)
        rows.append([f"latency, batch {batch} ({runtime_of(f or b)[0]})", fmt_ms(lb), fmt_ms(lf),
                     _ratio_faster(lb, lf)])
    ab, lab = accuracy_of(b)
    af, laf = accuracy_of(f)
    change = DASH if ab is None or af is None else f"{100 * (af - ab):+.2f} points"
    label = f"accuracy (test, {laf or lab})" if (laf or lab) else "accuracy (test)"
    rows.append([label, fmt_pct(ab), fmt_pct(af), change])
    return rows


def before_after_table(report: dict) -> str:
    """The before/after table in markdown (the demo prints it too)."""
    return md_table(["", "before (fp32)", "after", "change"], before_after_rows(report))


TRIAL_HEADER = ["#", "state", "recipe", "val accuracy", "size", "latency", "feasible", "time", "note"]


def describe_recipe(recipe: Any) -> str:
    """One line for a recipe dict the search did not describe: its non-off settings joined."""
    if not isinstance(recipe, dict):
        return str(recipe) if recipe is not None else DASH
    if isinstance(recipe.get("techniques"), list):   # the list of {technique: its settings}
        flat: dict = {}
        for entry in recipe["techniques"]:
            for settings in (entry.values() if isinstance(entry, dict) else ()):
                flat |= settings if isinstance(settings, dict) else {}
        recipe = flat | {k: v for k, v in recipe.items() if k != "techniques"}
    parts = []
    for k, v in recipe.items():
        if v in (None, 0, 0.0, False, "none", {}, []):
            continue
        parts.append(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}")
    return ", ".join(parts) or "(nothing)"


def ran_trials(report: dict) -> list[dict]:
    """Trials that ran: seeds enqueued but never started ("waiting") are not trials of this search."""
    return [t for t in report.get("trials") or [] if t.get("state") != "waiting"]


def trial_rows(report: dict) -> list[list[str]]:
    pareto = set(report.get("pareto") or [])
    rows = []
    for t in ran_trials(report):
        n = t.get("number", DASH)
        rows.append([f"{n}{' ★' if n in pareto else ''}", t.get("state", DASH),
                     t.get("description") or describe_recipe(t.get("recipe")),
                     fmt_pct(_num(t.get("val_accuracy"))),
                     fmt_bytes(_num(t.get("size_bytes"))), fmt_ms(_num(t.get("latency_ms"))),
                     "yes" if t.get("feasible") else "no",
                     DASH if _num(t.get("duration_s")) is None else f"{t['duration_s']:.1f} s",
                     _short(t.get("note") or "")])
    return rows


def _short(text: str, n: int = 140) -> str:
    """Notes can hold whole error messages; the table shows the start (report.json has all)."""
    return text if len(text) <= n else text[: n - 1] + "…"


# the per-layer columns are what the techniques report (techniques/, ``layer_report``); these
# read better with a label or a format of their own, any other is shown as it comes
LAYER_LABELS = {"precision_reason": "why this precision"}
LAYER_FORMATS = {"sparsity": lambda v: f"{100 * v:.1f} %"}


def layer_columns(report: dict) -> list[str]:
    cols: dict[str, None] = {}
    for info in (report.get("layers") or {}).values():
        cols.update({k: None for k in (info or {}) if k != "sensitivity"})
    return list(cols)


def layer_header(report: dict) -> list[str]:
    return ["layer"] + [LAYER_LABELS.get(c, c) for c in layer_columns(report)]


def _cell(col: str, v) -> str:
    if v is None or v == "":
        return "" if col in LAYER_LABELS else DASH
    if isinstance(v, float) and _num(v) is not None:
        return LAYER_FORMATS.get(col, lambda x: f"{x:g}")(v)
    return str(v)


def layer_rows(report: dict) -> list[list[str]]:
    cols = layer_columns(report)
    return [[name] + [_cell(c, (info or {}).get(c)) for c in cols]
            for name, info in (report.get("layers") or {}).items()]
