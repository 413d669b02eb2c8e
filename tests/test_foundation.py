"""Foundation: config round-trip, data loading and validation, models, safe weights, export parity,
measurement (issue 2)."""

from __future__ import annotations

import dataclasses
import pickle
from typing import Literal

import numpy as np
import pytest
import torch
from torch import nn

from autocompress.config import Config, ConfigError
from autocompress.data import DataError, arrays_to_dataset, from_datasets, load_mnist, load_npz
from autocompress.export import ParityError, export_onnx, onnx_bytes
from autocompress.targets.onnxruntime import check_parity, measure_latency
from autocompress.measure import count_macs, count_nonzero, count_params, fp32_bytes
from autocompress.models import (LeNet5, LeNet300100, WeightsError, build_model, load_weights,
                                 save_weights)


# -- config ---------------------------------------------------------------------------------

@dataclasses.dataclass
class Inner(Config):
    bits: int = 8
    mode: Literal["a", "b"] = "a"


@dataclasses.dataclass
class Outer(Config):
    name: str
    ratio: float = 0.5
    inner: Inner = dataclasses.field(default_factory=Inner)
    layers: list[str] = dataclasses.field(default_factory=list)
    per_layer: dict[str, float] = dataclasses.field(default_factory=dict)
    limit: int | None = None


def test_config_round_trips_yaml_and_json():
    c = Outer("x", 0.25, Inner(4, "b"), ["fc1"], {"fc1": 0.9}, 3)
    assert Outer.from_yaml(c.to_yaml()) == c
    assert Outer.from_json(c.to_json()) == c


@pytest.mark.parametrize("data, needle", [
    ({"name": "x", "ratoi": 1.0}, "unknown key(s) ['ratoi']"),
    ({"ratio": 1.0}, "Outer.name: required field is missing"),
    ({"name": "x", "ratio": "big"}, "Outer.ratio: expected a number"),
    ({"name": "x", "inner": {"mode": "c"}}, "Outer.inner.mode: 'c' is not one of"),
    ({"name": "x", "layers": "fc1"}, "Outer.layers: expected a list"),
])
def test_config_errors_name_the_field(data, needle):
    with pytest.raises(ConfigError) as e:
        Outer.from_dict(data)
    assert needle in str(e.value)


# -- data -------------------------------------------------------------------------------------

def test_mnist_splits_and_shapes():
    d = load_mnist()
    assert (len(d.train), len(d.val), len(d.test)) == (50000, 10000, 10000)
    x, y = d.train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0 <= float(x.min()) <= float(x.max()) < 1
    assert y.dtype == torch.int64 and d.num_classes == 10
    flat = load_mnist(flat=True)
    assert flat.train[0][0].shape == (784,)
    # the validation split is not a copy of the test split
    assert not torch.equal(d.val.tensors[0][:100], d.test.tensors[0][:100])


def test_user_arrays_validated():
    x = np.random.rand(20, 784).astype(np.float32)
    y = np.arange(20) % 10
    ds = arrays_to_dataset(x, y, (1, 28, 28))
    assert ds[0][0].shape == (1, 28, 28)
    with pytest.raises(DataError, match=r"expected inputs of shape \(N, 1, 28, 28\)"):
        arrays_to_dataset(np.random.rand(20, 100).astype(np.float32), y, (1, 28, 28))
    with pytest.raises(DataError, match="labels must be integer"):
        arrays_to_dataset(x, y.astype(np.float32))
    with pytest.raises(DataError, match="20 inputs but 19 labels"):
        arrays_to_dataset(x, y[:19])
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        arrays_to_dataset(bad, y)
    with pytest.raises(DataError, match="expected a Dataset"):
        from_datasets([1, 2], (x, y), (x, y))


def test_npz_loading(tmp_path):
    x = np.random.rand(30, 784).astype(np.float32)
    y = np.arange(30) % 10
    p = tmp_path / "d.npz"
    np.savez(p, x_train=x, y_train=y, x_test=x[:10], y_test=y[:10])
    s = load_npz(p, input_shape=(784,))
    assert len(s.train) + len(s.val) == 30 and len(s.test) == 10
    np.savez(tmp_path / "bad.npz", x_train=x)
    with pytest.raises(DataError, match="missing arrays"):
        load_npz(tmp_path / "bad.npz")
    with pytest.raises(DataError, match="does not exist"):
        load_npz(tmp_path / "nope.npz")


# -- models and weights ---------------------------------------------------------------------------

def test_reference_parameter_counts():
    assert count_params(LeNet5()) == 431_080
    assert count_params(LeNet300100()) == 266_610
    assert LeNet5()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert LeNet300100()(torch.zeros(2, 784)).shape == (2, 10)


def test_safe_weight_loading(tmp_path):
    m = build_model("lenet300")
    for suffix in (".safetensors", ".pt"):
        p = save_weights(m, tmp_path / f"w{suffix}")
        m2 = load_weights(build_model("lenet300"), p)
        assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
    with pytest.raises(WeightsError, match="does not match LeNet5"):
        load_weights(build_model("lenet5"), tmp_path / "w.safetensors")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    torch.save({"fc1.weight": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match="cannot read weights"):
        load_weights(build_model("lenet300"), tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match="does not exist"):
        load_weights(build_model("lenet300"), tmp_path / "missing.safetensors")


def test_mnist_unpickler_refuses_code():
    from autocompress.data import _NumpyOnlyUnpickler
    import io
    payload = pickle.dumps(print)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        _NumpyOnlyUnpickler(io.BytesIO(payload)).load()


# -- export and measurement -----------------------------------------------------------------------

def test_export_parity_and_self_contained(tmp_path):
    d = load_mnist()
    m = build_model("lenet5").eval()
    p = export_onnx(m, d.example_input(1), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx.data").exists()
    assert onnx_bytes(p) > fp32_bytes(m)   # weights embedded in the one file
    rep = check_parity(m, p, d.example_input(64))
    assert rep.max_abs_diff < 1e-4 and rep.top1_agreement == 1.0
    with torch.no_grad():                  # a model that changed after export must fail parity
        m.fc2.bias += 5 * torch.randn(10)
    with pytest.raises(ParityError, match="disagrees"):
        check_parity(m, p, d.example_input(64))


def test_counts_and_macs():
    m = build_model("lenet300")
    with torch.no_grad():
        m.fc1.weight[:, :400] = 0
    assert count_nonzero(m) == count_params(m) - 300 * 400
    assert fp32_bytes(m) == 4 * 266_610
    assert count_macs(m, torch.zeros(1, 784)) == 784 * 300 + 300 * 100 + 100 * 10
    # LeNet-5: conv1 20*24*24*25 + conv2 50*8*8*500 + fc 800*500 + 500*10
    assert count_macs(LeNet5(), torch.zeros(1, 1, 28, 28)) == 288_000 + 1_600_000 + 400_000 + 5_000


def test_latency_slower_model_measures_slower(tmp_path):
    small = nn.Sequential(nn.Linear(256, 16))
    big = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 16))
    x = torch.zeros(1, 256)
    ps = export_onnx(small, x, tmp_path / "s.onnx")
    pb = export_onnx(big, x, tmp_path / "b.onnx")
    lat = measure_latency({"small": ps, "big": pb}, (256,), batch_sizes=(1, 64), runs=30, warmup=3)
    for b in (1, 64):
        assert lat["big"][b].median_ms > lat["small"][b].median_ms


def test_import_is_lean_and_verbs_resolve():
    import subprocess
    import sys
    code = ("import sys, autocompress as ac; "
            "heavy = [m for m in ('onnx', 'onnxruntime', 'optuna', 'torch_pruning', 'matplotlib') if m in sys.modules]; "
            "assert not heavy, heavy; "
            "assert callable(ac.prune_) and callable(ac.quantize_) and callable(ac.compress); "
            "assert ac.Budget(max_drop=0.2).max_drop == 0.2")
    subprocess.run([sys.executable, "-c", code], check=True)
