"""fit's own batching and precision: a TensorDataset (bare or through Subsets, as the search's
train split is) is batched by slicing, every sample once per epoch with its own label; bf16
autocast is used only where asked or, on "auto", on a CUDA device with nothing fake-quantized."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from autocompress.quantize.fake_quant import WeightQuantizer
from autocompress.train import TrainConfig, shuffled_batches, _TensorBatches, fit, use_bf16


def _nested(n=100):
    x = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 3)
    y = torch.arange(n) * 7
    inner = Subset(TensorDataset(x, y), list(range(10, n)))          # rows 10..n-1
    return Subset(inner, list(range(0, n - 10, 2))), x, y            # of those, every other one


def test_subsets_of_a_tensor_dataset_are_sliced_every_sample_once_with_its_label():
    ds, x, y = _nested()
    batches = shuffled_batches(ds, batch_size=8, seed=0)
    assert isinstance(batches, _TensorBatches) and len(batches) == len(DataLoader(ds, batch_size=8))
    epochs = []
    for _ in range(2):
        rows = []
        for bx, by in batches:
            assert bx.shape[1:] == (3,) and len(bx) <= 8
            assert torch.equal(by, bx[:, 0].long() * 7)              # the label stays with its input
            rows += bx[:, 0].long().tolist()
        assert sorted(rows) == [ds[i][0][0].long().item() for i in range(len(ds))]
        epochs.append(rows)
    assert epochs[0] != epochs[1]                                     # reshuffled every epoch
    again = [bx[:, 0].long().tolist() for bx, _ in shuffled_batches(ds, 8, seed=0)]
    assert sum(again, []) == epochs[0]                                # seeded: runs repeat


def test_other_datasets_keep_the_data_loader():
    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return torch.zeros(2), 0
    assert isinstance(shuffled_batches(Pairs(), 2, 0), DataLoader)
    three = TensorDataset(torch.zeros(4, 2), torch.zeros(4), torch.zeros(4))
    assert isinstance(shuffled_batches(three, 2, 0), DataLoader)


def test_fit_trains_from_a_sliced_tensor_dataset():
    torch.manual_seed(0)
    x = torch.randn(512, 4)
    ds = Subset(TensorDataset(x, (x[:, 0] > 0).long()), list(range(400)))
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    fit(model, ds, TrainConfig(epochs=5, lr=1e-2, batch_size=32, progress=False))
    with torch.no_grad():
        acc = (model(x[400:]).argmax(1) == (x[400:, 0] > 0).long()).float().mean().item()
    assert acc > 0.9


def test_bf16_only_where_asked_or_where_it_is_safe(monkeypatch):
    plain = nn.Linear(2, 2)
    quantized = nn.Sequential(nn.Linear(2, 2), WeightQuantizer(bits=4))
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not use_bf16("fp32", cuda, plain) and use_bf16("bf16", cpu, plain)
    assert not use_bf16("auto", cpu, plain)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert use_bf16("auto", cuda, plain)
    assert not use_bf16("auto", cuda, quantized)                      # QAT keeps fp32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert not use_bf16("auto", cuda, plain)


def test_fit_under_bf16_autocast_on_the_cpu_still_learns():
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    fit(model, TensorDataset(x, (x[:, 1] > 0).long()),
        TrainConfig(epochs=5, lr=1e-2, batch_size=32, precision="bf16", progress=False))
    assert next(model.parameters()).dtype == torch.float32           # autocast, not a cast
    with torch.no_grad():
        assert (model(x).argmax(1) == (x[:, 1] > 0).long()).float().mean().item() > 0.85


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "auto"])
def test_fit_on_cuda_in_each_precision(precision):
    torch.manual_seed(0)
    x = torch.randn(512, 4)
    model = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
    fit(model, TensorDataset(x, (x[:, 0] > 0).long()),
        TrainConfig(epochs=5, lr=1e-2, batch_size=32, precision=precision, progress=False), device="cuda")
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        assert (model(x).argmax(1) == (x[:, 0] > 0).long()).float().mean().item() > 0.9
