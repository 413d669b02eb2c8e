"""Run configs: exact round-trips, and bad configs get messages naming the field and the fix."""

import sys
import textwrap
import uuid

import numpy as np
import pytest
import torch
from torch import nn

from autocompress.config import ConfigError
from autocompress.data import Splits
from autocompress.models import WeightsError, save_weights
from autocompress.runconfig import (RunConfig, TECHNIQUES, data_from_spec, load_config, load_data,
                                    load_metric, load_model, resolve_callable)
from autocompress.search.budget import Budget

USER_MODULE = """
import numpy as np
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))

def data():
    rng = np.random.default_rng(0)
    def part(n):
        return rng.random((n, 16), dtype=np.float32), rng.integers(0, 3, n)
    return part(64), part(32), part(32)

def bad_data():
    return 42

def not_a_model():
    return "hello"

def metric(model, loader):
    return 0.5

VALUE = 3
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A user folder with a model module (unique name: no clash in sys.modules), cwd elsewhere."""
    name = f"usermod_{uuid.uuid4().hex[:8]}"
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(sys, "path", list(sys.path))   # restore sys.path after the test
    yield proj, name
    sys.modules.pop(name, None)


def write_cfg(proj, text):
    p = proj / "run.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_roundtrip_exact(tmp_path):
    cfg = RunConfig(model="pkg.mod:build", data="data.npz", weights="w.safetensors", metric="m:f",
                    budget=Budget(max_drop=0.1, drop_mode="relative", min_size_ratio=37.5, max_size_bytes=12345,
                                  size_of="onnx", min_speedup=2.5, latency_batch=32, threads=2,
                                  time_limit_s=None, max_trials=None, objective="pareto"),
                    techniques=["quantize", "prune"], out_dir="out/x", seed=7, workers=3,
                    storage="postgresql://u@localhost/db", base_dir="/some/where")
    assert RunConfig.from_yaml(cfg.to_yaml()) == cfg
    assert RunConfig.from_json(cfg.to_json()) == cfg
    p = tmp_path / "c.yaml"
    cfg.to_yaml(p)
    assert RunConfig.from_yaml(p) == cfg
    assert RunConfig.from_yaml(p).to_yaml() == cfg.to_yaml()
    b = Budget(max_drop=0.3, min_speedup=5.0, objective="fastest")
    assert Budget.from_yaml(b.to_yaml()) == b
    # defaults: all techniques, default budget
    d = RunConfig.from_dict({"model": "lenet5", "data": "mnist"})
    assert d.techniques == list(TECHNIQUES) and d.budget == Budget()
    assert RunConfig.from_yaml(d.to_yaml()) == d


@pytest.mark.parametrize("text, words", [
    ("data: mnist\n", ["model", "required field is missing"]),
    ("model: lenet5\ndata: mnist\nworkers: two\n", ["workers", "expected an integer"]),
    ("model: lenet5\ndata: mnist\nbudjet: {max_drop: 1}\n", ["unknown key", "budjet", "budget"]),
    ("model: lenet5\ndata: mnist\ntechniques: [prunning]\n", ["techniques[0]", "prunning", "prune"]),
    ("model: lenet5\ndata: mnist\nbudget: {max_drop: -1}\n", ["max_drop", ">= 0"]),
    ("model: lenet5\ndata: mnist\nbudget: {objective: tiny}\n", ["budget.objective", "smallest"]),
    ("model: lenet5\ndata: mnist\ntechniques: [prune, prune]\n", ["techniques", "more than once"]),
    ("model: lenet5\ndata: mnist\nstorage: study.db\n", ["storage", "sqlite:///"]),
    ("model: lenet5\ndata: mnist\ndevice: gpu\n", ["RunConfig.device", "'gpu'", "cuda:N"]),
    ("model: [1, 2]\ndata: mnist\n", ["model", "expected a string"]),
])
def test_bad_configs_name_the_field(tmp_path, text, words):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_missing_config_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "broken.yaml"
    p.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_user_model_and_data_resolve_from_config_folder(project):
    proj, name = project
    ref = resolve_callable(f"{name}:build", "model", proj)()
    save_weights(ref, proj / "w.safetensors")
    cfg = load_config(write_cfg(proj, f"""
        model: {name}:build
        weights: w.safetensors
        data: {name}:data
        metric: {name}:metric
    """))
    assert cfg.base_dir == str(proj.resolve())
    model = load_model(cfg)
    assert isinstance(model, nn.Module) and not model.training
    for a, b in zip(model.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)
    data = load_data(cfg)
    assert isinstance(data, Splits) and len(data.train) == 64 and data.input_shape == (16,)
    assert load_metric(cfg)(model, None) == 0.5
    # the file form 'path/file.py:function' works too
    assert isinstance(resolve_callable(f"{name}.py:build", "model", proj)(), nn.Module)


def test_bad_references_name_field_and_fix(project, tmp_path):
    proj, name = project

    def err(**kw):
        cfg = RunConfig(**{"model": f"{name}:build", "data": f"{name}:data", "base_dir": str(proj), **kw})
        with pytest.raises((ConfigError, WeightsError)) as e:
            load_model(cfg)
            load_data(cfg)
            load_metric(cfg)
        return str(e.value)

    msg = err(model="no_such_module_xyz:build")
    assert "RunConfig.model" in msg and "no_such_module_xyz" in msg and "importable from the current directory" in msg
    msg = err(model=f"{name}:nope")
    assert "RunConfig.model" in msg and "no attribute 'nope'" in msg and "build" in msg
    msg = err(model=f"{name}:VALUE")
    assert "not a function" in msg
    msg = err(model="just_a_name")
    assert "'module:function'" in msg
    msg = err(model=f"{name}:not_a_model")
    assert "expected a torch.nn.Module" in msg
    msg = err(weights="missing.safetensors")
    assert "RunConfig.weights" in msg and "missing.safetensors" in msg and "does not exist" in msg
    msg = err(data=f"{name}:bad_data")
    assert "RunConfig.data" in msg and "Splits" in msg
    msg = err(data="nothing_here.npz")
    assert "RunConfig.data" in msg and "does not exist" in msg
    msg = err(data="imagenet")
    assert "bundled dataset" in msg
    msg = err(metric="no_such_module_xyz:f")
    assert "RunConfig.metric" in msg
    # a module that imports something missing: name the missing dependency, not the module
    (proj / f"{name}_dep.py").write_text("import not_installed_pkg_xyz\ndef build(): pass\n")
    msg = err(model=f"{name}_dep:build")
    assert "not_installed_pkg_xyz" in msg and "not installed" in msg
    # weights that do not fit the model name the tensor
    save_weights(nn.Linear(3, 3), tmp_path / "wrong.safetensors")
    msg = err(weights=str(tmp_path / "wrong.safetensors"))
    assert "does not match" in msg


def test_npz_data_relative_to_config(project):
    proj, name = project
    rng = np.random.default_rng(0)
    np.savez(proj / "d.npz", x_train=rng.random((50, 4), dtype=np.float32), y_train=rng.integers(0, 2, 50),
             x_test=rng.random((10, 4), dtype=np.float32), y_test=rng.integers(0, 2, 10))
    cfg = load_config(write_cfg(proj, f"model: {name}:build\ndata: d.npz\n"))
    d = load_data(cfg)
    assert len(d.test) == 10 and d.input_shape == (4,)
    assert isinstance(data_from_spec("d.npz", proj), Splits)


def test_bundled_model_names():
    from autocompress.models import baseline_path
    from autocompress.runconfig import model_factory

    cfg = RunConfig(model="lenet300", data="mnist-flat")
    assert sum(p.numel() for p in model_factory(cfg)().parameters()) == 266610
    if baseline_path("lenet300").exists():   # no weights named: the bundled trained baseline
        m = load_model(cfg)
        assert not m.training and float(m.fc1.weight.detach().abs().sum()) > 0
