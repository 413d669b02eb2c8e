"""The GPU check's quick mode runs: the CPU row always, the CUDA rows (DataLoader, sliced, bf16)
where there is a device, each with a positive time per epoch and an accuracy measured after it."""

import json
import re

import torch

import bench_device


def test_bench_device_quick(capsys, tmp_path):
    assert bench_device.main(["--quick", "--models", "lenet5", "--out", str(tmp_path / "rows.json")]) == 0
    out = capsys.readouterr().out
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert [r["run"] for r in rows] == ["cpu"] + (["cuda, DataLoader", "cuda", "cuda, bf16"]
                                                  if torch.cuda.is_available() else [])
    assert all(r["s_per_epoch"] > 0 and 0 <= r["val_acc"] <= 1 for r in rows)
    assert rows[0]["val_acc"] > 0.9                  # LeNet-5's bundled weights, barely fine-tuned
    assert re.search(r"\| lenet5 \| cpu \| 0.01 \| \d+\.\d+ \| 1.0x \|", out)
