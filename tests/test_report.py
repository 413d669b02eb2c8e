"""Reports: the before/after table, markdown/HTML/JSON files, plots, tolerance of missing keys."""

import json
import re

from autocompress.report import before_after_table, render_html, write_reports
from autocompress.report.plots import all_plots
from autocompress.search.budget import Budget


def sample_report(n_trials: int = 12) -> dict:
    """A report shaped like ``Result.to_dict()`` with plausible LeNet-5 figures (made up for the
    renderer only; nothing here is presented as a measurement)."""
    base = {"name": "baseline", "params": 431080, "nonzero": 431080, "macs": 2293000,
            "fp32_bytes": 1724320, "deployed_bytes": 1725900, "storage_bytes": None,
            "accuracy": {"val": 0.9915, "test": 0.992}, "deployed_accuracy": {"test": 0.992},
            "latency_ms": {"1": 0.20, "64": 4.0}, "deployed_path": None}
    final = dict(base, name="final", nonzero=30000, deployed_bytes=300000, storage_bytes=30000,
                 accuracy={"val": 0.9905, "test": 0.9912}, deployed_accuracy={"test": 0.991},
                 latency_ms={"1": 0.25, "64": 1.0})
    trials = []
    for i in range(n_trials):
        sp = 0.5 + 0.04 * i
        trials.append({"number": i, "state": "complete" if i % 5 else "pruned",
                       "recipe": {"sparsity": sp, "cluster_bits": 4 if i % 2 else None, "quant": "none"},
                       "val_accuracy": 0.992 - 0.0004 * i * (1 + i % 3), "size_bytes": int(200000 / (1 + i)),
                       "latency_ms": 4.0 / (1 + 0.2 * i), "feasible": i % 3 != 0,
                       "duration_s": 3.0 + i, "note": "" if i % 4 else "early-stopped <b>"})
    layers = {name: {"sparsity": sp, "bits": bits, "precision_reason": reason,
                     "sensitivity": {"prune": {"0.5": 0.991, "0.8": 0.989 - d, "0.95": 0.95 - 4 * d},
                                     "quantize": {"8": 0.992, "4": 0.99 - d, "2": 0.9 - d}}}
              for name, sp, bits, reason, d in [("conv1", 0.4, 8, "first layer: sensitive", 0.01),
                                                ("conv2", 0.9, 4, None, 0.002),
                                                ("fc1", 0.97, 4, None, 0.0),
                                                ("fc2", 0.8, 6, "logits", 0.005)]}
    return {"title": "LeNet-5 <automatic>", "created": "2025-01-01T00:00:00+00:00", "met": True,
            "message": "budget met by trial 7", "budget": Budget(max_drop=0.1, min_size_ratio=50).to_dict(),
            "baseline": base, "final": final, "trials": trials, "pareto": [1, 4, 7],
            "layers": layers, "recipe": {"sparsity": 0.9, "cluster_bits": 4, "quant": "none"},
            "blocking_layers": ["conv1"],
            "artifacts": {"onnx": "model.onnx", "storage": "model.acz", "recipe": "recipe.yaml"}}


def test_before_after_table_shape_and_honesty():
    t = before_after_table(sample_report())
    lines = t.splitlines()
    assert lines[0].startswith("|  | before (fp32) | after | change")
    body = "\n".join(lines[2:])
    # the deployed file's size leads: it is what ships; the storage artifact comes second
    assert lines[2].startswith("| size (deployed") and lines[3].startswith("| size (storage artifact")
    assert "57.5x smaller" in lines[3]        # 1724320 / 30000
    assert "batch 1" in body and "1.25x slower" in body   # 0.20 -> 0.25 ms: shown, not hidden
    assert "batch 64" in body and "4.00x faster" in body
    assert "accuracy (test, ONNX Runtime)" in body and "-0.10 points" in body


def test_table_tolerates_missing_keys():
    t = before_after_table({})
    assert "accuracy (test)" in t and "—" in t
    html = render_html({"title": "empty"})
    assert "<h1>empty</h1>" in html and "no trials" in html
    assert all_plots({}) == {}


def test_write_reports_files(tmp_path):
    rep = sample_report()
    paths = write_reports(rep, tmp_path)
    assert {"md", "html", "json"} <= set(paths)
    assert json.loads(paths["json"].read_text())["final"]["storage_bytes"] == 30000
    md = paths["md"].read_text()
    for section in ("Before / after", "Pareto front", "Per-layer sparsity", "Per-layer bit width",
                    "Per-layer sensitivity", "Trial history", "Recipe", "cluster_bits: 4"):
        assert section in md, section
    for png in re.findall(r"\]\((report_plots/\w+\.png)\)", md):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = paths["html"].read_text()
    # self-contained: 4 inline PNGs, no external src/href
    assert html.count('src="data:image/png;base64,') == 4
    assert not re.search(r'(src|href)="(?!data:)', html)
    # user-provided text is escaped
    assert "&lt;automatic&gt;" in html and "early-stopped &lt;b&gt;" in html


def test_plots_reflect_data():
    plots = all_plots(sample_report())
    assert set(plots) == {"pareto", "sparsity", "bits", "sensitivity"}
    # no latency and no layers -> only the size panel of the Pareto plot
    rep = sample_report()
    for t in rep["trials"]:
        t.pop("latency_ms")
    rep.pop("layers")
    assert set(all_plots(rep)) == {"pareto"}


def test_equal_figures_say_same():
    rep = sample_report()
    rep["final"]["deployed_bytes"] = rep["baseline"]["deployed_bytes"]
    rep["final"]["latency_ms"] = dict(rep["baseline"]["latency_ms"])
    body = before_after_table(rep)
    assert body.count("same (within 1 %)") == 3


def test_report_written_with_the_old_onnx_names_reads_the_same():
    # report.json files written before the deployed_* names (onnx_bytes, ort_accuracy, onnx_path)
    from autocompress.measure import Measurement
    from autocompress.report.headline import headline
    new = sample_report()
    old = json.loads(json.dumps(new))
    for m in (old["baseline"], old["final"]):
        m["onnx_bytes"], m["ort_accuracy"], m["onnx_path"] = (m.pop("deployed_bytes"), m.pop("deployed_accuracy"),
                                                              m.pop("deployed_path"))
    assert before_after_table(old) == before_after_table(new)
    assert headline(old) == headline(new) and "1.73 MB -> 300.00 kB" in headline(old)[0]
    m = Measurement.from_dict({k: v for k, v in old["final"].items()})
    assert m.deployed_bytes == 300000 and m.deployed_accuracy == {"test": 0.991}
