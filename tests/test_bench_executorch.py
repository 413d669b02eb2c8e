"""The ExecuTorch benchmark's quick mode runs end to end: both runtimes, fp32 and int8 .pte rows."""

import pytest

from autocompress import targets
from autocompress.models import baseline_path


@pytest.mark.slow
def test_bench_executorch_quick(tmp_path):
    if "executorch" not in targets.available():
        pytest.skip("executorch is not installed")
    if not baseline_path("lenet300").exists():
        pytest.skip("baselines not trained yet")
    import bench_executorch

    rows = {r["file"]: r for r in bench_executorch.rows("lenet300", True, tmp_path)}
    assert set(rows) == {"fp32 .onnx", "fp32 .pte", "int8 .pte (XNNPACK)"}
    fp, q = rows["fp32 .pte"], rows["int8 .pte (XNNPACK)"]
    assert q["bytes"] < fp["bytes"] / 3 and q["zipped"] <= q["bytes"]
    assert abs(q["accuracy"] - fp["accuracy"]) < 0.01 and fp["accuracy"] == rows["fp32 .onnx"]["accuracy"]
    assert all(r["b1_ms"] > 0 and r["b64_ms"] > 0 for r in rows.values())
