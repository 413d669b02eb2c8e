"""The workflow benchmark's quick mode runs end to end and prints its table."""

import importlib.util
from pathlib import Path

import pytest

from autocompress.models import baseline_path


@pytest.mark.slow
@pytest.mark.skipif(not baseline_path("lenet5").exists(), reason="bundled LeNet-5 weights not trained yet")
def test_bench_workflow_quick(tmp_path, capsys):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_workflow.py"
    spec = importlib.util.spec_from_file_location("bench_workflow", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| apply (recipe replay, LeNet-5) |" in out and "| check (" in out
    assert "verdict stability" in out
    assert (tmp_path / "check.md").exists() and (tmp_path / "check.xml").exists()
    assert (tmp_path / "apply" / "report.html").exists()
