"""The search benchmark's quick mode runs end to end and prints its table."""

import bench_search


def test_bench_search_quick(capsys, tmp_path):
    assert bench_search.main(["--quick", "--model", "lenet5", "--budget", "smallest", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "autocompress (auto)" in out and "int8 PTQ alone" in out
    assert (tmp_path / "lenet5-smallest" / "report.json").exists()
