"""Honest, quiet and quick to use: typos fail when a config is built in Python, the CLI answers
``--help``/``--version`` without importing torch and takes ``-q``/``-v`` anywhere."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from autocompress.config import ConfigError

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _configs():
    from autocompress.prune import PruneConfig
    from autocompress.search import Budget, Recipe
    from autocompress.train import TrainConfig
    return Budget, Recipe, PruneConfig, TrainConfig


@pytest.mark.parametrize("make, field, bad, suggestion", [
    ("Budget", "objective", "smalest", "smallest"),
    ("Budget", "drop_mode", "relativ", "relative"),
    ("Recipe", "quant", "int4", "int8"),
    ("PruneConfig", "importance", "l3", None),
    ("TrainConfig", "optimizer", "adamw", "adam"),
])
def test_literal_typos_rejected_when_built(make, field, bad, suggestion):
    cls = dict(zip(("Budget", "Recipe", "PruneConfig", "TrainConfig"), _configs()))[make]
    with pytest.raises(ConfigError) as e:
        cls(**{field: bad})
    msg = str(e.value)
    assert f"{make}.{field}" in msg and repr(bad) in msg      # names the field and the bad value
    allowed = list(__import__("typing").get_args(__import__("typing").get_type_hints(cls)[field]))
    assert all(repr(a) in msg for a in allowed)                 # and lists what is allowed
    if suggestion:
        assert f"did you mean {suggestion!r}" in msg


@pytest.mark.parametrize("field, bad", [("max_drop", math.nan), ("min_size_ratio", math.nan),
                                        ("max_drop", math.inf), ("time_limit_s", -math.inf),
                                        ("max_drop", "0.3"), ("max_trials", 2.5), ("threads", True)])
def test_budget_numbers_must_be_finite_numbers(field, bad):
    Budget = _configs()[0]
    with pytest.raises(ConfigError, match=f"Budget.{field}"):
        Budget(**{field: bad})


def test_nested_and_container_fields_checked():
    Budget, Recipe, PruneConfig, _ = _configs()
    with pytest.raises(ConfigError, match=r"Recipe.layer_ratios\['conv1'\]"):
        Recipe(layer_ratios={"conv1": math.nan})
    with pytest.raises(ConfigError, match=r"PruneConfig.kinds\[1\].*'lineer'.*did you mean 'linear'"):
        PruneConfig(kinds=["conv", "lineer"])
    from autocompress.runconfig import RunConfig
    with pytest.raises(ConfigError, match=r"RunConfig.techniques\[0\].*did you mean 'prune'"):
        RunConfig(model="lenet5", data="mnist", techniques=["prunee"])
    # valid values still build, and assignment is re-checked on request
    b = Budget(objective="pareto", drop_mode="relative", max_drop=1)
    b.objective = "fastst"
    with pytest.raises(ConfigError, match="did you mean 'fastest'"):
        b.revalidate()


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"})


def test_help_and_version_do_not_import_torch():
    code = ("import sys\nfrom autocompress.cli import main\n"
            "for argv in (['--help'], ['--version'], ['run', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code == 0, argv\n"
            "import autocompress\nassert autocompress.ConfigError\n"
            "print('TORCH' if 'torch' in sys.modules else 'LEAN')")
    r = _run(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("LEAN") and "autocompress 0." in r.stdout
    r = _run("import autocompress, sys; autocompress.Splits; print('torch' in sys.modules)")
    assert r.stdout.strip() == "True"      # the lazy names still resolve


def test_verbosity_flags_anywhere():
    from autocompress.cli import build_parser
    p = build_parser()
    assert p.parse_args(["-q", "run", "c.yaml"]).quiet
    a = p.parse_args(["run", "c.yaml", "-q"])
    assert a.quiet and not a.verbose
    assert p.parse_args(["check", "--onnx", "m.onnx", "-v"]).verbose == 1
    assert p.parse_args(["run", "c.yaml", "-vv"]).verbose == 2
    assert not p.parse_args(["run", "c.yaml"]).quiet


def test_help_texts_are_there_and_true():
    from autocompress.cli import build_parser
    sub = build_parser()._subparsers._group_actions[0].choices
    inspect_help = sub["inspect"].format_help()
    assert "run config (YAML)" in inspect_help and "pruning" in inspect_help
    assert "each technique" not in inspect_help
    demo = sub["demo"].format_help()
    assert "lenet300" in demo and "LeNet-300-100" in demo and "seconds" not in demo
    assert "well under a minute" not in sub["apply"].format_help()


# -- progress lines and quiet logs -------------------------------------------------------------

def test_progress_line_per_trial_with_eta_and_best(monkeypatch):
    import io

    import optuna

    from autocompress.search import progress
    from autocompress.search.budget import Budget
    from autocompress.search.trial import score

    monkeypatch.delenv("AUTOCOMPRESS_PROGRESS", raising=False)
    progress.set_enabled(None)
    sizes = [30_000, 12_000, 50_000]

    def objective(t):
        i = t.number
        if i == 2:
            t.set_user_attr("note", "failed: RuntimeError: boom")
            raise RuntimeError("boom")
        t.set_user_attr("val_accuracy", 0.99 - 0.001 * i)
        t.set_user_attr("size_bytes", sizes[i])
        t.set_user_attr("violations", [])
        return float(sizes[i])

    out = io.StringIO()
    counted = lambda s: sum(t.state.name == "COMPLETE" for t in s.trials)   # noqa: E731
    cb = progress.TrialProgress(4, counted, lambda a: score(a, Budget()), stream=out)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    study.optimize(objective, n_trials=3, callbacks=[cb], catch=(RuntimeError,))
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("search: trial 1/4 (#0) done") and "ETA ~" in lines[0] and "elapsed" in lines[0]
    assert "30.00 kB" in lines[0] and "val 99.00 %" in lines[0]
    assert "best so far: #1, val 98.90 %, 12.00 kB, meets the budget" in lines[1]   # smaller wins
    assert "trial #2 fail" in lines[2] and "boom" in lines[2] and "best so far: #1" in lines[2]

    progress.set_enabled(False)          # what -q does
    try:
        cb(study, study.trials[0])
        assert len(out.getvalue().splitlines()) == 3
    finally:
        progress.set_enabled(None)
        monkeypatch.delenv("AUTOCOMPRESS_PROGRESS", raising=False)


def test_cli_levels_default_hides_info(monkeypatch):
    import logging

    from autocompress.cli import _setup_logging
    from autocompress.search import progress

    lg = logging.getLogger("autocompress")
    old = lg.level
    try:
        _setup_logging(0, False)
        assert lg.getEffectiveLevel() == logging.WARNING and progress.enabled()
        _setup_logging(1, False)
        assert lg.getEffectiveLevel() == logging.INFO
        _setup_logging(2, False)
        assert lg.getEffectiveLevel() == logging.DEBUG
        _setup_logging(0, True)
        assert lg.getEffectiveLevel() == logging.WARNING and not progress.enabled()
    finally:
        lg.setLevel(old)
        progress.set_enabled(None)
        monkeypatch.delenv("AUTOCOMPRESS_PROGRESS", raising=False)
        monkeypatch.delenv("TQDM_DISABLE", raising=False)


# -- the headline leads with the deployed result ------------------------------------------------

def test_headline_deployed_first_and_warns_when_it_did_not_shrink(tmp_path):
    from test_report import sample_report

    from autocompress.report import headline, render_html, render_markdown

    rep = sample_report(4)
    lines = headline(rep)
    assert lines[0].startswith("deployed model.onnx (ONNX Runtime): 1.73 MB -> 300.00 kB (5.8x smaller)")
    assert "faster at batch 64" in lines[0] and "test accuracy 99.20 % -> 99.10 %" in lines[0]
    assert lines[1].startswith("storage artifact model.acz: 30.00 kB, 57.5x smaller")
    assert not any(x.startswith("warning") for x in lines)
    md = render_markdown(rep)
    assert md.index("deployed model.onnx") < md.index("Before / after")   # leads the report
    assert "deployed model.onnx" in render_html(rep, plots={})

    # only the storage artifact is small: said in so many words
    rep["final"]["deployed_bytes"] = rep["baseline"]["deployed_bytes"]
    lines = headline(rep)
    assert "same size" in lines[0] and lines[-1].startswith("warning: the deployed file did not shrink")
    assert "storage artifact only" in lines[-1]

    # deployed size not recorded: measured from the exported file the report lists
    rep["final"]["deployed_bytes"] = None
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"x" * 1234)
    rep["artifacts"] = {"onnx": str(onnx)}
    assert "-> 1.23 kB" in headline(rep)[0]
    rep["final"]["deployed_zipped_bytes"] = 999   # a zipped size, when recorded, sits beside it
    assert "zipped 999 B" in headline(rep)[0]


# -- data pitfalls ------------------------------------------------------------------------------

def _synthetic(shift: float = 0.0, scale: float = 1.0):
    import numpy as np

    from autocompress.data import from_datasets
    rng = np.random.default_rng(0)
    w = np.random.default_rng(1).normal(size=(16, 3)).astype(np.float32)

    def part(n):
        x = rng.normal(size=(n, 16)).astype(np.float32)
        return x * scale + shift, (x @ w).argmax(1)
    return from_datasets(part(2000), part(500), part(200))


def test_unnormalised_inputs_are_flagged():
    import torch
    from torch import nn

    from autocompress.data_checks import input_scaling_warning
    from autocompress.train import TrainConfig, fit

    torch.manual_seed(0)
    model = fit(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3)), _synthetic().train,
                TrainConfig(epochs=3, lr=3e-3, batch_size=64, progress=False))
    assert input_scaling_warning(model, _synthetic()) is None          # the data it was trained on
    msg = input_scaling_warning(model, _synthetic(shift=2.0, scale=0.3))  # same task, other units
    assert msg and "standardised" in msg and "normalise the inputs" in msg


def test_validation_far_above_test_is_flagged():
    from autocompress.report import headline
    from autocompress.report.headline import split_overlap_warning

    overlapping = {"baseline": {"accuracy": {"val": 0.999, "test": 0.94}}}
    assert "overlap the validation split" in split_overlap_warning(overlapping)
    assert split_overlap_warning({"baseline": {"accuracy": {"val": 0.984, "test": 0.979}}}) is None
    rep = {"baseline": {"accuracy": {"val": 0.999, "test": 0.94}, "fp32_bytes": 1000, "deployed_bytes": 1100},
           "final": {"deployed_bytes": 300, "accuracy": {"val": 0.998, "test": 0.939}}}
    assert headline(rep)[-1].startswith("warning: the original model's validation accuracy 99.90 %")


def test_report_does_not_list_seeds_that_never_ran():
    from test_report import sample_report

    from autocompress.report import render_markdown
    from autocompress.report.tables import trial_rows

    rep = sample_report(4)
    rep["trials"].append({"number": 99, "state": "waiting", "recipe": {"sparsity": 0.9}})
    assert all(r[0] != "99" for r in trial_rows(rep)) and len(trial_rows(rep)) == 4
    md = render_markdown(rep)
    assert "4 trials (" in md and "1 enqueued seed recipe(s) never ran" in md and "waiting" not in md


def test_demo_prints_headline_first_and_only_files_that_exist(monkeypatch, tmp_path, capsys):
    from test_report import sample_report

    import autocompress.demo as demo

    class R:
        met, message, recipe = True, "budget met by trial 1", None

        def to_dict(self):
            return sample_report(3)

    def fake_compress(net, data, budget, results, **kw):
        out_dir = results.out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "model.acz").write_bytes(b"x")
        return R()
    monkeypatch.setattr(demo, "compress", fake_compress)
    monkeypatch.setattr(demo, "load_baseline", lambda name: None)
    monkeypatch.setattr(demo, "load_mnist", lambda flat: None)
    assert demo.run_demo("lenet5", tmp_path / "d", quick=True) == 0
    out = [x for x in capsys.readouterr().out.splitlines() if x.strip()]
    assert out[0] == sample_report(3)["title"] and out[1].startswith("deployed model.onnx")
    files = next(x for x in out if x.startswith("files in"))
    assert files.endswith(": model.acz")            # not a list of files that were never written


def test_cli_config_errors_exit_2(tmp_path, caplog):
    from autocompress.cli import BAD_INPUT, main
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"")
    for flags, field in ((["--max-drop", "nan"], "Budget.max_drop"), (["--tol-accuracy", "inf"], "Tolerance"),
                         (["--min-size-ratio", "-3"], "Budget.min_size_ratio")):
        caplog.clear()
        assert main(["-q", "check", "--onnx", str(onnx), "--data", "mnist", *flags]) == BAD_INPUT
        assert field in caplog.text
