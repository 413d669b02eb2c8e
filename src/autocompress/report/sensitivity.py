"""The ``inspect`` report: per-layer sensitivity per technique, as tables and one plot."""

from __future__ import annotations

import json
from pathlib import Path

from autocompress.report.plots import sensitivity_plot
from autocompress.report.tables import md_table


def _technique_names() -> set[str]:
    from autocompress.techniques import names
    return set(names())


SETTING_KEYS = ("ratios", "bits", "settings", "values")


def curves(per_tech: dict) -> dict[str, dict[str, float]]:
    """One technique's sensitivity as ``{layer: {str(setting): accuracy}}``.

    Accepts that form, or the sensitivity objects' ``to_dict()``: ``{"ratios": [r...],
    "scores": {layer: [acc per ratio]}, ...}`` (``bits`` etc. in place of ``ratios``)."""
    if isinstance(per_tech.get("scores"), dict):
        settings = next((per_tech[k] for k in SETTING_KEYS if isinstance(per_tech.get(k), list)), None)
        out = {}
        for layer, accs in per_tech["scores"].items():
            if isinstance(accs, dict):
                out[layer] = {str(k): v for k, v in accs.items()}
            elif isinstance(accs, list) and settings is not None and len(accs) == len(settings):
                out[layer] = {f"{x:g}" if isinstance(x, float) else str(x): a for x, a in zip(settings, accs)}
        return out
    return {layer: {str(k): v for k, v in pts.items()} for layer, pts in per_tech.items() if isinstance(pts, dict)}


def normalise(sens: dict) -> dict[str, dict[str, dict[str, float]]]:
    """Accept ``{technique: <curves>}`` (what ``search.inspect`` returns; see :func:`curves`),
    ``{layer: {technique: {setting: acc}}}``, ``{layer: {"sensitivity": {...}}}`` or ``{"layers": ...}``;
    return ``{layer: {technique: {str(setting): acc}}}``."""
    layers = sens.get("layers", sens) if isinstance(sens.get("layers"), dict) else sens
    if layers and set(layers) <= _technique_names():   # technique-first: transpose
        flipped: dict[str, dict] = {}
        for tech, per_tech in layers.items():
            for layer, pts in curves(per_tech or {}).items():
                flipped.setdefault(layer, {})[tech] = pts
        return flipped
    out = {}
    for layer, info in layers.items():
        if not isinstance(info, dict):
            continue
        per_tech = info.get("sensitivity", info)
        out[layer] = {t: {str(k): v for k, v in (pts or {}).items()}
                      for t, pts in per_tech.items() if isinstance(pts, dict)}
    return out


def _pct(v: object) -> str:
    return f"{100 * v:.2f} %" if isinstance(v, (int, float)) and not isinstance(v, bool) else "—"


def sensitivity_tables(sens: dict) -> str:
    """One markdown table per technique: a row per layer, a column per setting (validation accuracy)."""
    layers = normalise(sens)
    techs = sorted({t for per in layers.values() for t in per})
    out = []
    for t in techs:
        settings = sorted({k for per in layers.values() for k in per.get(t, {})},
                          key=lambda k: (float(k) if k.replace(".", "", 1).isdigit() else float("inf"), k))
        rows = [[layer] + [_pct(per[t].get(k)) for k in settings]
                for layer, per in layers.items() if t in per]
        out += [f"### {t}", "", md_table(["layer"] + settings, rows), ""]
    return "\n".join(out)


def write_inspect(sens: dict, out_dir: str | Path, title: str = "Per-layer sensitivity") -> dict[str, Path]:
    """``inspect.md`` (tables + plot), ``sensitivity.png`` and ``inspect.json`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layers = normalise(sens)
    paths = {"json": out / "inspect.json"}
    paths["json"].write_text(json.dumps(sens, indent=2, default=str))
    png = sensitivity_plot({"layers": {k: {"sensitivity": v} for k, v in layers.items()}})
    md = [f"# {title}", "", "Validation accuracy with one layer compressed at a time (higher = less sensitive).", ""]
    if png is not None:
        paths["plot"] = out / "sensitivity.png"
        paths["plot"].write_bytes(png)
        md += ["![sensitivity](sensitivity.png)", ""]
    md.append(sensitivity_tables(sens) or "No sensitivity data.")
    paths["md"] = out / "inspect.md"
    paths["md"].write_text("\n".join(md) + "\n")
    return paths
