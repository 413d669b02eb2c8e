"""The README walk-through, for real, as a new user would run it (issue 7): `run` on the example's
custom CNN, `apply` the found recipe to the retrained copy, then `check` passing, and failing on a
deliberately regressed model. Nothing is faked; the budget is small so it stays CI-sized."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from autocompress.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.slow
def test_run_apply_check_walkthrough(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = yaml.safe_load((EXAMPLES / "custom_cnn.yaml").read_text())
    cfg.update(base_dir=str(EXAMPLES), out_dir=str(tmp_path / "run"), techniques=["prune", "cluster"])
    cfg["budget"].update(max_drop=1.0, min_size_ratio=5, max_trials=1, time_limit_s=300)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))

    # 1. run: search (one trial: the cheapest seed recipe), budget met, everything on disk
    assert main(["-q", "run", "cfg.yaml"]) == 0
    run = tmp_path / "run"
    for f in ("model.onnx", "model.acz", "recipe.yaml", "report.json", "report.html", "study.db"):
        assert (run / f).exists(), f
    report = json.loads((run / "report.json").read_text())
    assert report["met"] and report["final"]["storage_bytes"] * 5 <= report["baseline"]["fp32_bytes"]

    # 2. apply: replay the recipe on the retrained copy (no search)
    assert main(["-q", "apply", str(run / "recipe.yaml"), "--config", "cfg.yaml",
                 "--weights", str(EXAMPLES / "weights" / "custom_cnn_v2.safetensors"), "--out", "sprint2"]) == 0
    assert json.loads((tmp_path / "sprint2" / "report.json").read_text())["trials"][0]["state"] == "complete"

    # 3. check passes for the new sprint's artifact against the kept report with the default
    #    tolerances (a retrained model's entropy-coded artifact came out 4.9 % larger; its accuracy
    #    moves within the test set's sampling error): no flag needed for a benign retrain
    assert main(["-q", "check", "--config", "cfg.yaml",
                 "--weights", str(EXAMPLES / "weights" / "custom_cnn_v2.safetensors"),
                 "--artifact", "sprint2/model.acz", "--baseline", str(run / "report.json"),
                 "--summary", "ok.md", "--junit", "ok.xml"]) == 0, \
        (tmp_path / "ok.md").read_text()
    assert "failures=\"0\"" in (tmp_path / "ok.xml").read_text()

    # 4. ... and fails on a regressed model (untrained weights), saying why
    from autocompress.models import save_weights
    import custom_cnn  # on sys.path: the CLI put the config's folder there, as Python does for scripts
    torch.manual_seed(3)
    save_weights(custom_cnn.build(), tmp_path / "broken.safetensors")
    assert main(["-q", "export", "cfg.yaml", "--weights", "broken.safetensors", "--out", "broken.onnx"]) == 0
    assert main(["-q", "check", "--config", "cfg.yaml", "--onnx", "broken.onnx",
                 "--baseline", str(run / "report.json"), "--summary", "bad.md", "--junit", "bad.xml"]) == 1
    assert "accuracy" in (tmp_path / "bad.md").read_text().lower()
