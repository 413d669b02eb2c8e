"""The CLI as a thin table over the library: arguments reach the right function, outputs land on
disk, exit codes follow the documented contract. The search itself is replaced by a recording fake
here (its own tests run it for real); export runs for real on a tiny model."""

import json
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import autocompress.search as search
from autocompress.cli import BAD_INPUT, INTERRUPTED, NOT_MET, OK, build_parser, main
from autocompress.models import save_weights
from autocompress.runconfig import RunConfig
from test_report import sample_report
from test_runconfig import USER_MODULE




class FakeResult:
    def __init__(self, met=True):
        self.met = met

    def to_dict(self):
        rep = sample_report(4)
        rep["met"] = self.met
        rep["message"] = "fake search" if self.met else "fake search: size ratio 3x is below 10x"
        return rep

    def export(self, out):
        from autocompress.report import write_reports
        return write_reports(self.to_dict(), out)


@pytest.fixture
def project(tmp_path, monkeypatch):
    name = f"clitest_{uuid.uuid4().hex[:8]}"
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    ns: dict = {}
    exec(textwrap.dedent(USER_MODULE), ns)
    save_weights(ns["build"](), proj / "w.safetensors")
    cfg = proj / "run.yaml"
    cfg.write_text(textwrap.dedent(f"""
        model: {name}:build
        weights: w.safetensors
        data: {name}:data
        budget: {{max_drop: 0.5, min_size_ratio: 10, max_trials: 3}}
        techniques: [prune, quantize]
        out_dir: out/default
        seed: 3
    """))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield proj, cfg, work
    sys.modules.pop(name, None)


def fake(calls, result=None, exc=None):
    def f(*args, **kwargs):
        calls.append((args, kwargs))
        if exc is not None:
            raise exc
        return result if result is not None else FakeResult()
    return f


def test_help_lists_commands_and_exit_codes(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ("demo", "run", "resume", "apply", "inspect", "export", "check", "exit codes", "130"):
        assert word in out
    sub = build_parser()._subparsers._group_actions[0].choices
    for name, p in sub.items():   # the table only where the exit status means something
        assert p.format_help().count("exit codes") == (name not in ("train", "inspect")), name


def test_run_then_resume(project, monkeypatch, capsys):
    proj, cfg, work = project
    calls = []
    monkeypatch.setattr(search, "compress", fake(calls), raising=False)
    assert main(["-q", "run", str(cfg), "--out", "out/r1", "--workers", "2"]) == OK
    (model, data, budget), kw = calls[0]
    assert isinstance(model, nn.Module) and len(data.train) == 64
    assert budget.min_size_ratio == 10 and budget.max_trials == 3
    s = kw["search"]   # compress()'s grouped options
    assert s.techniques == ["prune", "quantize"] and s.workers == 2 and s.seed == 3 and not s.resume
    assert Path(kw["results"].out_dir) == work / "out" / "r1"
    out = work / "out" / "r1"
    for f in ("run.yaml", "report.md", "report.html", "report.json"):
        assert (out / f).exists(), f
    saved = RunConfig.from_yaml(out / "run.yaml")
    assert saved.base_dir == str(proj.resolve()) and saved.out_dir == str(out) and saved.workers == 2
    printed = capsys.readouterr().out
    assert "before (fp32)" in printed and "budget met" in printed

    # resume from a different directory: run.yaml alone is enough
    monkeypatch.chdir(proj.parent)
    assert main(["-q", "resume", str(out)]) == OK
    (_, _, budget2), kw2 = calls[1]
    assert kw2["search"].resume is True and kw2["search"].techniques == ["prune", "quantize"] and budget2 == budget
    assert Path(kw2["results"].out_dir) == out
    assert kw["training"].device == kw2["training"].device == "auto"     # the config's default

    # --device reaches compress() and the saved run.yaml (resume keeps it unless told otherwise)
    assert main(["-q", "run", str(cfg), "--out", str(work / "out" / "r2"), "--device", "cpu"]) == OK
    assert calls[2][1]["training"].device == "cpu"
    assert RunConfig.from_yaml(work / "out" / "r2" / "run.yaml").device == "cpu"
    assert main(["-q", "resume", str(work / "out" / "r2")]) == OK
    assert calls[3][1]["training"].device == "cpu"
    assert main(["-q", "run", str(cfg), "--out", str(work / "out" / "r3"), "--device", "tpu"]) == BAD_INPUT
    assert len(calls) == 4


def test_run_exit_codes(project, monkeypatch, caplog):
    proj, cfg, work = project
    calls = []
    monkeypatch.setattr(search, "compress", fake(calls, FakeResult(met=False)), raising=False)
    assert main(["-q", "run", str(cfg), "--out", "o1"]) == NOT_MET
    assert (work / "o1" / "report.html").exists()
    monkeypatch.setattr(search, "compress", fake(calls, exc=KeyboardInterrupt()), raising=False)
    assert main(["-q", "run", str(cfg), "--out", "o2"]) == INTERRUPTED
    assert "resume" in caplog.text
    assert main(["-q", "resume", str(work / "nothing-here")]) == BAD_INPUT
    assert "run.yaml" in caplog.text


def test_bad_configs_exit_2_naming_the_field(project, monkeypatch, caplog):
    proj, cfg, work = project
    monkeypatch.setattr(search, "compress", fake([]), raising=False)
    text = cfg.read_text()
    cases = {"workers: x\n": "workers", "budgett: {}\n": "budgett"}
    for extra, word in cases.items():
        bad = proj / "bad.yaml"
        bad.write_text(text + extra)
        caplog.clear()
        assert main(["-q", "run", str(bad)]) == BAD_INPUT
        assert word in caplog.text
    bad.write_text(text.replace("w.safetensors", "gone.safetensors"))
    assert main(["-q", "run", str(bad), "--out", "never"]) == BAD_INPUT
    assert "RunConfig.weights" in caplog.text and not (work / "never").exists()
    bad.write_text(text.replace(":build", "_missing:build"))
    assert main(["-q", "run", str(bad)]) == BAD_INPUT
    assert "importable" in caplog.text
    assert main(["-q", "run", str(proj / "none.yaml")]) == BAD_INPUT
    with pytest.raises(SystemExit) as e:      # argparse usage errors are exit code 2 as well
        main(["run"])
    assert e.value.code == 2


def test_apply_uses_retrained_weights(project, monkeypatch):
    proj, cfg, work = project
    calls = []
    monkeypatch.setattr(search, "apply_recipe", fake(calls), raising=False)
    recipe = proj / "recipe.yaml"
    recipe.write_text("sparsity: 0.5\n")
    torch.manual_seed(5)
    retrained = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    save_weights(retrained, proj / "v2.safetensors")
    assert main(["-q", "apply", str(recipe), "--config", str(cfg), "--weights", str(proj / "v2.safetensors"),
                 "--out", "sprint2"]) == OK
    (model, rec, data), kw = calls[0]
    assert torch.equal(model[1].weight, retrained[1].weight)
    assert Path(rec) == recipe and Path(kw["out_dir"]) == work / "sprint2"
    assert kw["budget"].min_size_ratio == 10
    assert (work / "sprint2" / "report.json").exists()
    assert main(["-q", "apply", str(proj / "nope.yaml"), "--config", str(cfg)]) == BAD_INPUT


def test_inspect_writes_tables(project, monkeypatch, capsys):
    proj, cfg, work = project
    # both shapes the library produces: {layer: {setting: acc}} and the sensitivity objects' to_dict()
    sens = {"prune": {"1": {"0.5": 0.9, "0.9": 0.5}, "3": {"0.5": 0.92, "0.9": 0.8}},
            "structured": {"kind": "structured", "ratios": [0.25, 0.5], "baseline": 0.95,
                           "scores": {"1": [0.94, 0.7]}, "sizes": {"1": 136}}}
    monkeypatch.setattr(search, "inspect", lambda model, data, out: sens, raising=False)
    assert main(["-q", "inspect", str(cfg), "--out", "insp"]) == OK
    md = (work / "insp" / "inspect.md").read_text()
    assert "### prune" in md and "| 1 | 90.00 % | 50.00 % |" in md
    assert "### structured" in md and "| 1 | 94.00 % | 70.00 % |" in md
    assert (work / "insp" / "sensitivity.png").exists()
    assert json.loads((work / "insp" / "inspect.json").read_text()) == sens
    assert "### prune" in capsys.readouterr().out


def test_export_config_with_parity(project, capsys):
    proj, cfg, work = project
    assert main(["-q", "export", str(cfg), "--out", "m.onnx"]) == OK
    assert (work / "m.onnx").stat().st_size > 0
    out = capsys.readouterr().out
    assert "matches PyTorch" in out and "test accuracy" in out
    assert main(["-q", "export", str(proj / "missing.acz"), "--out", "x.onnx"]) == BAD_INPUT


def test_export_to_executorch_by_suffix(project, capsys):
    """--out m.pte goes through the ExecuTorch target; an unknown suffix names the known ones."""
    proj, cfg, work = project
    assert main(["-q", "export", str(cfg), "--out", "m.tflite"]) == BAD_INPUT
    pytest.importorskip("executorch")
    assert main(["-q", "export", str(cfg), "--out", "m.pte"]) == OK
    assert (work / "m.pte").read_bytes()[4:8] == b"ET12"
    assert "ExecuTorch (XNNPACK) matches PyTorch" in capsys.readouterr().out


def test_demo_dispatch(monkeypatch, tmp_path):
    demo = pytest.importorskip("autocompress.demo")
    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda model, out, quick: calls.append((model, out, quick)) or 0)
    assert main(["-q", "demo", "--model", "lenet300", "--out", str(tmp_path / "d"), "--quick"]) == 0
    assert calls == [("lenet300", tmp_path / "d", True)]


def test_example_config_is_valid():
    """The shipped example config parses and names functions that exist."""
    from autocompress.runconfig import load_config, model_factory

    root = Path(__file__).resolve().parents[1] / "examples"
    cfg = load_config(root / "custom_cnn.yaml")
    assert yaml.safe_load((root / "custom_cnn.yaml").read_text())["model"] == "custom_cnn:build"
    try:
        model = model_factory(cfg)()
        assert sum(p.numel() for p in model.parameters()) < 100_000
    finally:
        sys.modules.pop("custom_cnn", None)
        sys.path[:] = [p for p in sys.path if p != str(root)]


def test_apply_budget_against_the_original_reference(project, monkeypatch, capsys):
    """apply's own budget is relative to the weights given (regressed weights pass it); it also
    says, and exits 1, when the result misses the budget against the original run's reference."""
    proj, cfg, work = project
    monkeypatch.setattr(search, "apply_recipe", fake([]), raising=False)
    recipe = proj / "recipe.yaml"
    recipe.write_text("sparsity: 0.5\n")
    original = sample_report(2)
    original["baseline"]["deployed_accuracy"] = {"test": 0.999}   # the run's fp32 model: 99.9 %
    (proj / "report.json").write_text(json.dumps(original))  # next to the recipe, as a run leaves it
    assert main(["-q", "apply", str(recipe), "--config", str(cfg), "--out", "s1"]) == NOT_MET
    out = capsys.readouterr().out
    assert "relative to the weights given): budget met" in out
    assert "relative to the original reference): budget NOT met" in out and "99.90 %" in out
    original["baseline"]["deployed_accuracy"] = {"test": 0.992}
    (proj / "report.json").write_text(json.dumps(original))
    assert main(["-q", "apply", str(recipe), "--config", str(cfg), "--out", "s2"]) == OK
    assert "original reference): budget met" in capsys.readouterr().out
