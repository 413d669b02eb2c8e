"""``report.md``, ``report.html`` (one self-contained file) and ``report.json`` from a report dict.

The dict follows the ``report.json`` schema that ``Result.to_dict()`` returns; any optional key
may be missing, and its section then says so instead of failing.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import logging
import re
from pathlib import Path

import yaml

from autocompress import safefs
from autocompress.report.headline import headline
from autocompress.report.plots import all_plots
from autocompress.report.tables import (TRIAL_HEADER, before_after_rows, layer_header, layer_rows,
                                        md_table, ran_trials, trial_rows)

log = logging.getLogger(__name__)

PLOT_TITLES = {"pareto": "Pareto front", "sparsity": "Per-layer sparsity", "bits": "Per-layer bit width",
               "sensitivity": "Per-layer sensitivity"}
PLOT_DIR = "report_plots"


def _verdict(report: dict) -> str:
    if "met" not in report:
        return "Budget: not evaluated"
    return ("Budget met" if report["met"] else "Budget NOT met") + (
        f": {report['message']}" if report.get("message") else "")


def _yaml(obj: object) -> str:
    return yaml.safe_dump(obj, sort_keys=False).rstrip() if obj else ""


def _counts(report: dict) -> str:
    trials = ran_trials(report)
    by_state: dict[str, int] = {}
    for t in trials:
        by_state[t.get("state", "?")] = by_state.get(t.get("state", "?"), 0) + 1
    text = f"{len(trials)} trials (" + ", ".join(f"{n} {s}" for s, n in sorted(by_state.items())) + ")" \
        if trials else "no trials"
    waiting = len(report.get("trials") or []) - len(trials)
    return text + (f"; {waiting} enqueued seed recipe(s) never ran (the search stopped first)" if waiting else "")


# -- markdown -------------------------------------------------------------------------------

def render_markdown(report: dict, plot_files: dict[str, str] | None = None) -> str:
    plot_files = plot_files or {}
    out = [f"# {report.get('title') or 'autocompress report'}", ""]
    if report.get("created"):
        out += [f"_created {report['created']}_", ""]
    out += [f"**{_verdict(report)}**", ""]
    if headline(report):   # the deployed result leads; the storage ratio is not the deployed size
        out += [f"- {line}" for line in headline(report)] + [""]
    if report.get("blocking_layers"):
        out += ["Layers that block the budget (most sensitive first): "
                + ", ".join(f"`{x}`" for x in report["blocking_layers"]), ""]
    out += ["## Before / after (test split)", "",
            md_table(["", "before (fp32)", "after", "change"], before_after_rows(report)), ""]
    if report.get("budget"):
        out += ["## Budget", "", "```yaml", _yaml(report["budget"]), "```", ""]
    for name in ("pareto", "sparsity", "bits", "sensitivity"):
        if name in plot_files:
            out += [f"## {PLOT_TITLES[name]}", "", f"![{PLOT_TITLES[name]}]({plot_files[name]})", ""]
    if report.get("layers"):
        out += ["## Layers", "", md_table(layer_header(report), layer_rows(report)), ""]
    out += ["## Trial history", "", _counts(report) + "; ★ = on the Pareto front", ""]
    if report.get("trials"):
        out += [md_table(TRIAL_HEADER, trial_rows(report)), ""]
    if report.get("recipe"):
        out += ["## Recipe", "", "Replay it on a retrained model with `autocompress apply`:", "",
                "```yaml", _yaml(report["recipe"]), "```", ""]
    if report.get("artifacts"):
        out += ["## Artifacts", ""] + [f"- {k}: `{v}`" for k, v in report["artifacts"].items()] + [""]
    return "\n".join(out)


# -- HTML -------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{margin-bottom:.2em} .created{color:#777}
.verdict{padding:.6em 1em;border-radius:6px;font-weight:600}
.met{background:#e6f4ea;color:#1e6b34} .notmet{background:#fdecea;color:#a1261b}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
th,td{border:1px solid #ddd;padding:4px 8px} th{background:#f4f4f4} td.num{text-align:right}
tr.front td{background:#fff4e5}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
pre{background:#f7f7f7;padding:1em;overflow:auto;border-radius:6px}
#render-status{color:#999;font-size:12px}
"""

# Runs when the page has loaded: checks every plot decoded, then records it in the DOM, so a
# headless browser (and a human) can tell a broken report from a good one.
_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; });
  var s = document.getElementById('render-status');
  s.setAttribute('data-status', bad.length ? 'broken' : 'ok');
  s.textContent = bad.length ? ('broken plots: ' + bad.length) : ('rendered ' + imgs.length + ' plots');
});
"""


_NUMERIC = re.compile(r"^[-+]?[\d.]+( |x|$)|^—$")


def _html_table(header: list[str], rows: list[list[str]], front_col: int | None = None) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = []
    for r in rows:
        cls = ' class="front"' if front_col is not None and "★" in str(r[front_col]) else ""
        cells = "".join(f'<td{" class=num" if i and _NUMERIC.match(str(c)) else ""}>{e(str(c))}</td>'
                        for i, c in enumerate(r))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(report: dict, plots: dict[str, bytes] | None = None) -> str:
    """One self-contained HTML page: plots inline as base64 PNG, no external resources."""
    e = html.escape
    plots = all_plots(report) if plots is None else plots
    met = report.get("met")
    parts = [f"<h1>{e(report.get('title') or 'autocompress report')}</h1>"]
    if report.get("created"):
        parts.append(f'<div class="created">created {e(str(report["created"]))}</div>')
    parts.append(f'<p class="verdict {"met" if met else "notmet"}">{e(_verdict(report))}</p>')
    if headline(report):
        parts.append('<ul class="headline">' + "".join(f"<li>{e(x)}</li>" for x in headline(report)) + "</ul>")
    if report.get("blocking_layers"):
        parts.append("<p>Layers that block the budget (most sensitive first): "
                     + ", ".join(f"<code>{e(x)}</code>" for x in report["blocking_layers"]) + "</p>")
    parts += ["<h2>Before / after (test split)</h2>",
              _html_table(["", "before (fp32)", "after", "change"], before_after_rows(report))]
    if report.get("budget"):
        parts += ["<h2>Budget</h2>", f"<pre>{e(_yaml(report['budget']))}</pre>"]
    for name in ("pareto", "sparsity", "bits", "sensitivity"):
        if name in plots:
            b64 = base64.b64encode(plots[name]).decode("ascii")
            parts += [f"<h2>{PLOT_TITLES[name]}</h2>",
                      f'<img alt="{PLOT_TITLES[name]}" id="plot-{name}" src="data:image/png;base64,{b64}">']
    if report.get("layers"):
        parts += ["<h2>Layers</h2>", _html_table(layer_header(report), layer_rows(report))]
    parts += ["<h2>Trial history</h2>", f"<p>{e(_counts(report))}; ★ = on the Pareto front</p>"]
    if report.get("trials"):
        parts.append(_html_table(TRIAL_HEADER, trial_rows(report), front_col=0))
    if report.get("recipe"):
        parts += ["<h2>Recipe</h2>", "<p>Replay it on a retrained model with <code>autocompress apply</code>:</p>",
                  f"<pre>{e(_yaml(report['recipe']))}</pre>"]
    if report.get("artifacts"):
        parts += ["<h2>Artifacts</h2>", "<ul>" + "".join(
            f"<li>{e(str(k))}: <code>{e(str(v))}</code></li>" for k, v in report["artifacts"].items()) + "</ul>"]
    parts.append('<p id="render-status" data-status="pending">rendering…</p>')
    title = e(report.get("title") or "autocompress report")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{_CSS}</style><script>{_SCRIPT}</script></head>\n<body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


def write_reports(report: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.md`` (+ its PNG plots), ``report.html`` and ``report.json`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = dict(report)
    report.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    plots = all_plots(report)
    paths: dict[str, Path] = {}
    plot_files = {}
    if plots:
        safefs.make_dir(out / PLOT_DIR)
        for name, png in plots.items():
            p = out / PLOT_DIR / f"{name}.png"
            safefs.write_bytes(p, png)
            paths[f"plot_{name}"] = p
            plot_files[name] = f"{PLOT_DIR}/{name}.png"
    paths["md"] = out / "report.md"
    safefs.write_text(paths["md"], render_markdown(report, plot_files))
    paths["html"] = out / "report.html"
    safefs.write_text(paths["html"], render_html(report, plots))
    paths["json"] = out / "report.json"
    safefs.write_text(paths["json"], json.dumps(report, indent=2, default=str))
    log.info("reports written to %s (report.md, report.html, report.json)", out)
    return paths
