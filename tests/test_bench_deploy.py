"""The deployment benchmark's quick mode runs end to end (the full mode is run by hand)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from autocompress.models import baseline_path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_deploy.py"


@pytest.mark.slow
@pytest.mark.skipif(not baseline_path("lenet300").exists(), reason="bundled baseline not trained yet")
def test_bench_deploy_quick(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_deploy", BENCH)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_deploy"] = bench
    spec.loader.exec_module(bench)
    doc = bench.main(["--quick", "--model", "lenet300", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| lenet300 | ONNX Runtime | ORT quantize_static int8 |" in out
    rows = {r["file"]: r for r in doc["models"]["lenet300"]["rows"]}
    fp32, small = rows["fp32 .onnx"], rows["ours: smallest .onnx"]
    for r in rows.values():
        assert 0 < r["zipped"] <= r["bytes"] + 200 and r["b1_ms"] > 0 and r["b64_ms"] > 0
    for label in ("ours: smallest .onnx", "ours: fastest .onnx"):
        # the plain onnxruntime process gets exactly the accuracy the result reports
        assert rows[label]["accuracy"] == pytest.approx(rows[label]["reported"], abs=1e-9)
    # sparsity and bits are fixed by the quick recipe (90 %, 4-bit), so the size holds in quick mode
    assert small["bytes"] * 20 < fp32["bytes"]
    assert small["bytes"] <= 2 * small["acz"]
    assert (tmp_path / "results.json").exists()
