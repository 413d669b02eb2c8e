"""The pruning benchmark runs end to end in quick mode (numbers are not asserted: tiny budgets)."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_prune.py"


@pytest.mark.slow
def test_bench_prune_quick(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_prune", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_prune"] = mod            # dataclasses resolve their module by name
    spec.loader.exec_module(mod)
    result = mod.main(["--quick", "--model", "all", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| lenet300 |" in out and "torch-pruning uniform" in out
    assert {r["model"] for r in result["unstructured"]} == {"lenet300", "lenet5"}
    ours, peer = result["unstructured"][1], result["unstructured"][2]
    assert ours["sparsity"] == pytest.approx(0.92, abs=0.005) and peer["sparsity"] == pytest.approx(0.92, abs=0.005)
    base, st_ours, st_tp = result["structured"]
    assert st_ours["macs"] < base["macs"] / 5 and st_tp["macs"] < base["macs"] / 5
    assert (tmp_path / "lenet5_ours.onnx").exists() and (tmp_path / "lenet5_structured_sensitivity.png").exists()
