"""Report plots as PNG bytes, drawn with matplotlib's object API on the Agg canvas.

No ``pyplot`` and no ``matplotlib.use``: the user's global backend is left alone, and nothing
needs a display. Each function returns ``None`` when the report has no data for its plot.
"""

from __future__ import annotations

import io
import math
from typing import Any

from autocompress.report.tables import latency_of

GREY, FRONT, BASE, FLOOR = "#b8b8b8", "#d62728", "#1f77b4", "#7f7f7f"


def _figure(w: float, h: float, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def pareto_plot(report: dict) -> bytes | None:
    """Size vs accuracy and latency vs accuracy: all trials grey, the Pareto front highlighted."""
    trials = [t for t in report.get("trials") or [] if _num(t.get("val_accuracy")) is not None]
    if not trials:
        return None
    front = set(report.get("pareto") or [])
    budget = report.get("budget") or {}
    base = report.get("baseline") or {}
    base_acc = _num((base.get("accuracy") or {}).get("val"))
    # (trial key, axis label, scale, baseline x, log axis): sizes span decades, latencies do not
    panels = [("size_bytes", "size (kB)", 1e-3, _num(base.get("fp32_bytes")), True),
              ("latency_ms", f"latency, batch {budget.get('latency_batch', 64)} (ms)", 1.0,
               latency_of(base, int(budget.get("latency_batch", 64))), False)]
    panels = [p for p in panels if any(_num(t.get(p[0])) is not None for t in trials)]
    if not panels:
        return None
    fig, axes = _figure(5.2 * len(panels), 3.8, len(panels))
    for ax, (key, label, scale, base_x, log_x) in zip(axes, panels):
        pts = [(t, _num(t.get(key))) for t in trials if _num(t.get(key)) is not None]
        rest = [(x * scale, 100 * t["val_accuracy"]) for t, x in pts if t.get("number") not in front]
        best = sorted((x * scale, 100 * t["val_accuracy"]) for t, x in pts if t.get("number") in front)
        if rest:
            ax.scatter(*zip(*rest), s=18, c=GREY, label="trials", zorder=2)
        if best:
            ax.plot(*zip(*best), "-o", c=FRONT, ms=5, lw=1.5, label="Pareto front", zorder=3)
            for t, x in pts:   # name the front's trials: the tables below refer to them by number
                if t.get("number") in front:
                    ax.annotate(f"#{t['number']}", (x * scale, 100 * t["val_accuracy"]), fontsize=7,
                                xytext=(3, 3), textcoords="offset points", color=FRONT)
        if base_x is not None and base_acc is not None:
            ax.scatter([base_x * scale], [100 * base_acc], marker="*", s=140, c=BASE,
                       label="baseline (fp32)", zorder=4)
        if base_acc is not None and _num(budget.get("max_drop")) is not None:
            drop = budget["max_drop"] / 100
            floor = base_acc * (1 - drop) if budget.get("drop_mode") == "relative" else base_acc - drop
            ax.axhline(100 * floor, ls="--", c=FLOOR, lw=1, label="allowed accuracy")
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("Trials and Pareto front (validation split, what the search decides on; tables show test)",
                 fontsize=9)
    return _png(fig)


def _layer_bars(report: dict, key: str, title: str, xlabel: str, scale: float,
                xmax: float | None = None) -> bytes | None:
    items = [(name, _num((info or {}).get(key))) for name, info in (report.get("layers") or {}).items()]
    items = [(n, v) for n, v in items if v is not None]
    if not items:
        return None
    fig, (ax,) = _figure(6.5, 0.9 + 0.32 * len(items))
    names = [n for n, _ in items][::-1]
    vals = [v * scale for _, v in items][::-1]
    ax.barh(names, vals, color=BASE)
    for y, v in enumerate(vals):
        ax.text(v, y, f" {v:.0f}" if float(v).is_integer() else f" {v:.1f}", va="center", fontsize=8)
    ax.set_xlim(0, xmax if xmax is not None else max(max(vals), 1) * 1.1)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(True, axis="x", alpha=0.3)
    return _png(fig)


def sparsity_plot(report: dict) -> bytes | None:
    return _layer_bars(report, "sparsity", "Per-layer sparsity", "weights set to zero (%)", 100.0, 105.0)


def bits_plot(report: dict) -> bytes | None:
    return _layer_bars(report, "bits", "Per-layer bit width", "bits per weight", 1.0)


def sensitivity_plot(report: dict) -> bytes | None:
    """One panel per technique: validation accuracy of each layer compressed alone, vs the setting."""
    curves: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for layer, info in (report.get("layers") or {}).items():
        for tech, points in ((info or {}).get("sensitivity") or {}).items():
            pts = []
            for k, acc in (points or {}).items():
                try:
                    x = float(k)
                except (TypeError, ValueError):
                    continue
                if _num(acc) is not None:
                    pts.append((x, 100 * acc))
            if pts:
                curves.setdefault(tech, {})[layer] = sorted(pts)
    if not curves:
        return None
    fig, axes = _figure(4.6 * len(curves), 3.6, len(curves))
    for ax, (tech, per_layer) in zip(axes, sorted(curves.items())):
        for layer, pts in per_layer.items():
            ax.plot(*zip(*pts), "-o", ms=3, lw=1.2, label=layer)
        ax.set_title(f"sensitivity: {tech}")
        ax.set_xlabel("bits" if "quant" in tech or "bit" in tech else "ratio")
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return _png(fig)


PLOTS = {"pareto": pareto_plot, "sparsity": sparsity_plot, "bits": bits_plot,
         "sensitivity": sensitivity_plot}


def all_plots(report: dict) -> dict[str, bytes]:
    """Every plot the report has data for, by name."""
    return {name: png for name, fn in PLOTS.items() if (png := fn(report)) is not None}
