"""The real-model benchmark's quick mode: a Hugging Face BERT, handed over as transformers builds it
(int64 token ids + attention mask in, a ModelOutput out), goes through compress() with no wrapper."""

import json

import bench_realmodels


def test_bench_realmodels_quick_bert(capsys, tmp_path):
    assert bench_realmodels.main(["--quick", "--models", "bert_tiny", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| bert_tiny"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    ok, failed = (int(v) for v in cells[3].split("/"))
    assert ok >= 1 and failed == 0, row
    assert "->" in cells[5] and cells[6].endswith("x"), row        # deployed bytes, ORT ratio measured
    report = json.loads((tmp_path / "bert_tiny" / "report.json").read_text())
    assert report["final"]["deployed_accuracy"]["test"] is not None
    assert (tmp_path / "bert_tiny" / "model.onnx").exists()
