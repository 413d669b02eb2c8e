"""The storage benchmark's quick mode runs end to end (the full mode is run by hand)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from autocompress.models import baseline_path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_storage.py"


@pytest.mark.slow
@pytest.mark.skipif(not (baseline_path("lenet5").exists() and baseline_path("lenet300").exists()),
                    reason="bundled baselines not trained yet")
def test_bench_storage_quick(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_storage", BENCH)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_storage"] = bench        # dataclasses resolve their module by name
    spec.loader.exec_module(bench)
    res = bench.main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| lenet300 |" in out and "| lenet5 |" in out and "Low-rank" in out
    for row in res["storage"]:
        assert row["bit_exact"], f"{row['model']}: loaded model differs from the saved one"
        assert row["test"] == row["ort_test"] or abs(row["test"] - row["ort_test"]) < 0.002
        # sparsity and bits are fixed by the recipe, so the size ratio holds even in quick mode
        assert row["ratio"] > 30, row
    lr = res["lowrank"]
    assert lr["lowrank_params"] < lr["base_params"] and lr["lowrank_macs"] < lr["base_macs"]
    assert (tmp_path / "results.json").exists()
