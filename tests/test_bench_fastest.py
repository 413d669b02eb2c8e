"""The "fastest" benchmark's quick mode runs end to end: our loop, the Torch-Pruning peer and ORT
int8 in one table, each speed-up timed interleaved against the same fp32 file, and the compress()
call's wall-clock set against its time limit."""

import re

import bench_fastest


def test_bench_fastest_quick(capsys, tmp_path):
    assert bench_fastest.main(["--quick", "--models", "lenet5", "--out", str(tmp_path / "out"),
                               "--cache", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    for who in ("Torch-Pruning uniform 50 % + 1 ep", "ORT int8 quantize_static"):
        assert who in out
    speedups = [float(s) for s in re.findall(r"\| (\d+\.\d+)x \(", out)]
    assert len(speedups) >= 2 and all(s > 0 for s in speedups)
    wall, limit = map(float, re.search(r"\| (\d+) / (\d+) s = ", out).groups())
    assert wall <= 2 * limit       # the promise is 1.1x (the full run checks it); a loaded CI runner needs slack
    assert (tmp_path / "out" / "lenet5" / "auto" / "report.json").exists()
