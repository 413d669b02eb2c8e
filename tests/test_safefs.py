"""An out_dir someone else prepared: writes never follow planted symlinks, best/ changes as one unit,
one run holds the folder at a time (a second one exits 2 at once, the first untouched), a killed run's
RUNNING trials are marked failed on resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from torch import nn

import autocompress.search as search
from autocompress import safefs
from autocompress.data import from_datasets
from autocompress.cli import BAD_INPUT, OK, main
from autocompress.search import Budget, compress
from autocompress.search.recipe import Recipe
from autocompress.search.trial import fail_orphans, keep_if_best
from test_cli import FakeResult, fake, project  # noqa: F401  (fixture)

SRC = str(Path(safefs.__file__).parents[1])


# -- symlinks -------------------------------------------------------------------------------

def _planted(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """(out_dir, victim): ``out_dir/name`` is a symlink to a file outside that must stay intact."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / name).symlink_to(victim)
    return out, victim


def _tiny_data(n: int = 32):
    rng = np.random.default_rng(0)
    part = lambda k: (rng.random((k, 4), dtype=np.float32), rng.integers(0, 2, k))
    return from_datasets(part(n), part(n // 2), part(n // 2))


def test_writes_refuse_a_planted_symlink_and_leave_its_target_alone(tmp_path):
    out, outside = _planted(tmp_path, "budget.yaml")
    with pytest.raises(safefs.UnsafePathError, match="budget.yaml is a symlink"):
        Budget().to_yaml(out / "budget.yaml")
    assert outside.read_text() == "precious"


def test_planted_temporary_names_are_never_written_through(tmp_path):
    outside = tmp_path / "victim.txt"
    outside.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    for attempt in range(3):        # every name the writer tries first
        (out / f".report.json.{os.getpid()}.{attempt}.tmp").symlink_to(outside)
    safefs.write_text(out / "report.json", "{}")
    assert (out / "report.json").read_text() == "{}" and not (out / "report.json").is_symlink()
    assert outside.read_text() == "precious"


def test_symlinked_best_folder_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "best").symlink_to(elsewhere, target_is_directory=True)
    stage = safefs.staging_dir(out / "best")
    with pytest.raises(safefs.UnsafePathError, match="best is a symlink"):
        safefs.swap_in_dir(stage, out / "best")
    assert list(elsewhere.iterdir()) == []


# -- best/ as one unit --------------------------------------------------------------------------

def _trial_files(tmp_path: Path, n: int) -> dict:
    d = tmp_path / f"t{n}"
    d.mkdir()
    (d / "model.onnx").write_text(f"onnx of trial {n}")
    (d / "model.acz").write_text(f"acz of trial {n}")
    return {"deployed": d / "model.onnx", "storage": d / "model.acz"}


def _keep(tmp_path, shared, n: int, size: float) -> None:
    trial = SimpleNamespace(number=n, user_attrs={"val_accuracy": 0.9, "size_bytes": size, "constraints": [0.0]})
    keep_if_best(trial, shared, object(), Recipe(), _trial_files(tmp_path, n), True)


def _best(out: Path) -> dict:
    return {p.name: p.read_text() for p in (out / "best").iterdir()}


def test_best_folder_never_mixes_two_trials(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    shared = SimpleNamespace(out_dir=out, budget=Budget(), best_model=None)
    _keep(tmp_path, shared, 1, 1000.0)
    first = _best(out)
    assert json.loads(first["best.json"])["trial"] == 1 and first["model.onnx"] == "onnx of trial 1"

    real, calls = os.replace, []

    def dies_on_second(src, dst):        # a kill right after the first of trial 2's files lands
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(src, dst)
    monkeypatch.setattr(os, "replace", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        _keep(tmp_path, shared, 2, 500.0)
    assert _best(out) == first           # untouched: still all of trial 1

    monkeypatch.setattr(os, "replace", real)
    _keep(tmp_path, shared, 3, 400.0)
    now = _best(out)
    assert json.loads(now["best.json"])["trial"] == 3
    assert now["model.onnx"] == "onnx of trial 3" and now["model.acz"] == "acz of trial 3"
    assert [p.name for p in out.iterdir() if p.name.startswith(".best.")] == []   # the dead stage is gone


# -- one run per folder ---------------------------------------------------------------------------

def _holder(out: Path) -> subprocess.Popen:
    code = ("import sys; from autocompress.safefs import DirLock; DirLock(sys.argv[1]).acquire(); "
            "print('held', flush=True); sys.stdin.read()")
    p = subprocess.Popen([sys.executable, "-c", code, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         env={**os.environ, "PYTHONPATH": SRC}, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_lock_on_a_folder_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "out"
    p = _holder(out)
    try:
        with pytest.raises(safefs.BusyError, match=f'"pid": {p.pid}'):
            safefs.DirLock(out).acquire()
    finally:
        p.kill()
        p.wait()
    with safefs.DirLock(out):            # the killed holder's lock file is stale: taken at once
        with safefs.DirLock(out):        # re-entrant in one process (the CLI, then compress())
            pass


def test_cli_run_on_a_busy_folder_exits_2_and_touches_nothing(project, monkeypatch, caplog):  # noqa: F811
    proj, cfg, work = project
    calls = []
    monkeypatch.setattr(search, "compress", fake(calls), raising=False)
    out = work / "busy"
    out.mkdir()
    (out / "run.yaml").write_text("the first run's own copy\n")
    p = _holder(out)
    try:
        t0 = time.perf_counter()
        assert main(["-q", "run", str(cfg), "--out", str(out)]) == BAD_INPUT
        assert time.perf_counter() - t0 < 20
        assert f'"pid": {p.pid}' in caplog.text and "in use by another run" in caplog.text
        assert (out / "run.yaml").read_text() == "the first run's own copy\n" and calls == []
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert main(["-q", "run", str(cfg), "--out", str(out)]) == OK     # stale lock recovered
    assert len(calls) == 1


# -- a killed run's trials ------------------------------------------------------------------------

def test_resume_marks_orphaned_running_trials_failed(tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=url, study_name="s")
    done = study.ask()
    study.tell(done, 1.0)
    study.ask()                                  # started, then its process was killed
    study = optuna.load_study(storage=url, study_name="s")
    assert fail_orphans(study) == 1
    states = [t.state.name for t in study.get_trials()]
    assert states == ["COMPLETE", "FAIL"]
    assert "orphaned" in study.get_trials()[1].user_attrs["note"]


def test_compress_refuses_an_out_dir_with_a_planted_link(tmp_path):
    out, victim = _planted(tmp_path, "baseline.onnx")
    with pytest.raises(safefs.UnsafePathError, match="baseline.onnx is a symlink"):
        compress(nn.Sequential(nn.Linear(4, 2)), _tiny_data(16), Budget(max_trials=1), out_dir=out, quick=True)
    assert victim.read_text() == "precious"


def test_compress_resume_fails_the_killed_runs_running_trial(tmp_path):
    import optuna

    from autocompress.search.loop import STUDY, _storage_url

    out = tmp_path / "out"
    out.mkdir()
    data = _tiny_data()
    study = optuna.create_study(study_name=STUDY, storage=_storage_url(out, None),
                                directions=["maximize", "minimize", "minimize"])
    study.ask()                                   # the killed run's trial, left RUNNING
    compress(nn.Sequential(nn.Linear(4, 2)), data, Budget(max_trials=1, max_drop=100.0), out_dir=out,
             resume=True, quick=True, techniques=("prune",))
    trials = optuna.load_study(study_name=STUDY, storage=_storage_url(out, None)).get_trials()
    assert trials[0].state.name == "FAIL" and "orphaned" in trials[0].user_attrs["note"]
    assert all(t.state.name != "RUNNING" for t in trials)
