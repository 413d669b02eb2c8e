"""The trial's device reaches every fine-tune: masked (unstructured pruning), clustered and QAT ones
too, not only plain models. On the CPU the device is passed and the steps still work; with CUDA
the same recipes train there and come back on the CPU with their structure intact."""

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from autocompress.data import Splits
from autocompress.search import Budget, Recipe
from autocompress.search import steps as steps_mod
from autocompress.search.steps import TrialContext, apply_recipe_steps

RECIPES = {"masked": Recipe(sparsity=0.5, distill=False, finetune_epochs=0.5),
           "clustered": Recipe(cluster_bits=3, distill=False, finetune_epochs=0.5),
           "qat": Recipe(quant="qat", weight_bits=4, distill=True, finetune_epochs=0.5)}


def _setup(tmp_path, device: str):
    g = torch.Generator().manual_seed(0)
    ds = lambda n: TensorDataset(torch.randn(n, 16, generator=g), torch.randint(0, 4, (n,), generator=g))  # noqa: E731
    data = Splits(ds(256), ds(64), ds(64), (16,), 4)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    ctx = TrialContext(data=data, teacher=model, example=torch.randn(1, 16), evaluate=lambda m: 0.0,
                       finetune=None, seed=0, quick=True, work_dir=tmp_path, budget=Budget(), device=device)
    return model, ctx


@pytest.mark.parametrize("kind", sorted(RECIPES))
def test_every_fine_tune_gets_the_trial_device(kind, tmp_path, monkeypatch):
    seen = []
    real = steps_mod.fit

    def spy(*a, **kw):
        seen.append(kw.get("device"))
        return real(*a, **kw)
    monkeypatch.setattr(steps_mod, "fit", spy)
    model, ctx = _setup(tmp_path, "cpu")
    out = apply_recipe_steps(model, RECIPES[kind], ctx)
    assert seen and all(d == "cpu" for d in seen), seen
    assert torch.isfinite(out(torch.randn(2, 16))).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
@pytest.mark.parametrize("kind", sorted(RECIPES))
def test_fine_tunes_run_on_cuda_and_come_back(kind, tmp_path):
    model, ctx = _setup(tmp_path, "cuda")
    out = apply_recipe_steps(model, RECIPES[kind], ctx)
    assert all(p.device.type == "cpu" for p in out.parameters())
    w = [m for m in out.modules() if isinstance(m, nn.Linear)][0].weight
    if kind == "masked":
        assert float((w == 0).float().mean()) >= 0.45
    if kind == "clustered":
        assert torch.unique(w.detach()).numel() <= 2 ** 4 + 1     # conv_bits / fc bits, plus the zero
