"""The quantization benchmark's quick mode runs end to end and prints its table."""

import sys
from pathlib import Path

import pytest

from autocompress.models import baseline_path



@pytest.mark.slow
def test_bench_quant_quick(capsys, tmp_path):
    if not baseline_path("lenet300").exists():
        pytest.skip("baselines not trained yet")
    import bench_quant

    assert bench_quant.main(["--quick", "--model", "lenet300", "--json", str(tmp_path / "rows.json")]) == 0
    out = capsys.readouterr().out
    assert "| lenet300 | ORT quantize_static (QDQ, MinMax) |" in out
    assert "ours QAT w4a8" in out and "MatMulNBits" in out
    assert "largest |PyTorch simulation - ORT| accuracy gap: 0.0" in out
