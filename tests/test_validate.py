"""Bad inputs stop before any long work with a message naming the value, tensor, shape or file:
labels outside the model's classes, NaN/Inf weights, an input shape the model cannot take, object
arrays in an .npz, a folder or binary file as the config; a bundled-model artifact exports with no
Python factory."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from autocompress.cli import BAD_INPUT, OK, main
from autocompress.data import DataError, from_datasets, load_npz
from autocompress.encode import save_compressed
from autocompress.models import WeightsError, build_model
from autocompress.search import Budget, compress
from autocompress.validate import check_run_inputs


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 10))


def _data(y_train, features: int = 16):
    rng = np.random.default_rng(0)
    x = lambda n: rng.random((n, features), dtype=np.float32)
    ok = lambda n: rng.integers(0, 10, n)
    return from_datasets((x(len(y_train)), np.asarray(y_train)), (x(16), ok(16)), (x(16), ok(16)))


@pytest.mark.parametrize("bad", [10, -1, 57])
def test_labels_outside_the_models_classes_are_refused(bad, tmp_path):
    y = np.arange(40) % 10
    y[[3, 7, 11]] = bad
    data = _data(y)
    with pytest.raises(DataError, match=rf"\[0, 10\).*train: 3 of 40 labels \(values \[{bad}\]\)"):
        check_run_inputs(_model(), data)
    t0 = time.perf_counter()
    with pytest.raises(DataError, match="labels must lie in"):     # compress stops before its baseline
        compress(_model(), data, Budget(max_trials=1), out_dir=tmp_path / "o", quick=True)
    assert time.perf_counter() - t0 < 20
    assert not (tmp_path / "o" / "study.db").exists()


def test_custom_metric_and_finetune_may_use_other_labels():
    y = np.arange(40) % 10
    y[0] = 57
    check_run_inputs(_model(), _data(y), class_labels=False)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_weights_are_named_by_tensor(value):
    model = _model()
    with torch.no_grad():
        model[2].weight[1, 2] = value
    with pytest.raises(WeightsError, match=r"2\.weight \(1 values\)"):
        check_run_inputs(model, _data(np.arange(40) % 10))


def test_input_shape_that_does_not_fit_names_the_shape():
    with pytest.raises(DataError, match=r"inputs of shape \(2, 20\).*one sample of the data is \(20,\)"):
        check_run_inputs(_model(), _data(np.arange(40) % 10, features=20))


def test_npz_with_an_object_array_is_refused_by_name(tmp_path):
    p = tmp_path / "d.npz"
    x = np.empty(4, dtype=object)
    x[:] = [np.zeros(3)] * 4
    np.savez(p, x_train=x, y_train=np.zeros(4, int), x_test=np.zeros((4, 3), np.float32), y_test=np.zeros(4, int))
    with pytest.raises(DataError, match="array 'x_train' cannot be read without unpickling"):
        load_npz(p)


def test_folder_or_binary_file_as_config_exits_2(tmp_path, caplog):
    assert main(["-q", "run", str(tmp_path)]) == BAD_INPUT
    assert "is a folder" in caplog.text
    blob = tmp_path / "model.yaml"
    blob.write_bytes(bytes(range(256)) * 4)
    assert main(["-q", "run", str(blob)]) == BAD_INPUT
    assert "not a text file" in caplog.text


def test_bundled_model_artifact_exports_without_a_factory(tmp_path, caplog):
    model = build_model("lenet5")
    art = tmp_path / "m.acz"
    save_compressed(model, art, model_factory=lambda: build_model("lenet5"))   # as compress() does
    onnx = tmp_path / "m.onnx"
    assert main(["-q", "export", str(art), "--input-shape", "1,28,28", "--out", str(onnx)]) == OK
    assert onnx.stat().st_size > 0
    assert main(["-q", "export", str(art), "--input-shape", "3,5", "--out", str(onnx)]) == BAD_INPUT
    assert "inputs of shape (1, 3, 5)" in caplog.text


def test_cli_run_with_labels_outside_the_model_exits_2_before_writing(tmp_path, monkeypatch, caplog):
    import sys
    import uuid

    import autocompress.search as search

    name = f"badlabels_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        "import numpy as np, torch\nfrom torch import nn\n"
        "def build():\n    return nn.Sequential(nn.Linear(16, 10))\n"
        "def data():\n    rng = np.random.default_rng(0)\n"
        "    x = lambda n: rng.random((n, 16), dtype=np.float32)\n"
        "    return (x(20), np.full(20, 57)), (x(8), np.zeros(8, int)), (x(8), np.zeros(8, int))\n")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {name}:build\ndata: {name}:data\nout_dir: out\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    called = []
    monkeypatch.setattr(search, "compress", lambda *a, **k: called.append(1), raising=False)
    try:
        assert main(["-q", "run", str(cfg)]) == BAD_INPUT
    finally:
        sys.modules.pop(name, None)
    assert "train: 20 of 20 labels (values [57])" in caplog.text
    assert called == [] and not (tmp_path / "out" / "run.yaml").exists()


def test_cli_run_with_nan_weights_exits_2_naming_the_tensor(tmp_path, monkeypatch, caplog):
    import sys
    import uuid

    from safetensors.torch import save_file

    import autocompress.search as search

    name = f"nanweights_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        "import numpy as np, torch\nfrom torch import nn\n"
        "def build():\n    return nn.Sequential(nn.Linear(16, 10))\n"
        "def data():\n    rng = np.random.default_rng(0)\n"
        "    x = lambda n: rng.random((n, 16), dtype=np.float32)\n"
        "    y = lambda n: rng.integers(0, 10, n)\n"
        "    return (x(20), y(20)), (x(8), y(8)), (x(8), y(8))\n")
    state = nn.Sequential(nn.Linear(16, 10)).state_dict()
    state["0.weight"][3, 4] = float("nan")
    save_file(state, str(tmp_path / "w.safetensors"))
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {name}:build\nweights: w.safetensors\ndata: {name}:data\nout_dir: out\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    called = []
    monkeypatch.setattr(search, "compress", lambda *a, **k: called.append(1), raising=False)
    try:
        assert main(["-q", "run", str(cfg)]) == BAD_INPUT
    finally:
        sys.modules.pop(name, None)
    assert "0.weight" in caplog.text and "nan" in caplog.text.lower()
    assert called == [] and not (tmp_path / "out" / "run.yaml").exists()
