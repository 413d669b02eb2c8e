"""The automatic loop (issue 6): budget met or plainly not, best-so-far on disk, resume, workers."""

from __future__ import annotations

import json
import os
import uuid

import optuna
import pytest
import torch
from torch import nn
from torch.utils.data import Subset

from autocompress.data import Splits, load_mnist
from autocompress.search import Budget, Recipe, compress
from autocompress.search.budget import Budget as _B
from autocompress.train import TrainConfig, fit


def _tiny_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))


@pytest.fixture(scope="module")
def tiny():
    """A small MLP trained briefly on a MNIST subset, with small val/test subsets (fast)."""
    full = load_mnist(flat=True)
    data = Splits(Subset(full.train, range(6000)), Subset(full.val, range(1000)),
                  Subset(full.test, range(1000)), full.input_shape, 10)
    torch.manual_seed(0)
    model = _tiny_mlp()
    fit(model, data.train, TrainConfig(epochs=2, lr=2e-3, progress=False))
    return model.eval(), data


SMALL = ("prune", "cluster", "quantize")


def test_budget_violations_are_sentences():
    b = Budget(max_drop=0.3, min_size_ratio=10, min_speedup=2)
    base = {"accuracy": 0.99, "fp32_bytes": 1000, "latency_ms": 2.0}
    ok = {"accuracy": 0.988, "size_bytes": 90, "latency_ms": 0.9}
    assert b.violations(base, ok) == []
    bad = b.violations(base, {"accuracy": 0.98, "size_bytes": 500, "latency_ms": 1.5})
    assert len(bad) == 3 and "below the allowed" in bad[0] and "2x" in bad[2]
    assert _B.from_yaml(b.to_yaml()) == b


def test_recipe_round_trip_and_validation():
    r = Recipe(sparsity=0.9, cluster_bits=4, quant="qat", weight_bits=4, layer_ratios={"fc1": 0.5})
    assert Recipe.from_yaml(r.to_yaml()) == r
    with pytest.raises(ValueError, match="sparsity"):
        Recipe(sparsity=1.5)


def test_compress_meets_budget_and_keeps_best_on_disk(tiny, tmp_path):
    model, data = tiny
    budget = Budget(max_drop=3.0, min_size_ratio=8, objective="smallest", max_trials=2, time_limit_s=300)
    seeds = [Recipe(sparsity=0.8, cluster_bits=4, distill=False, finetune_epochs=0.5),
             Recipe(quant="int8", finetune_epochs=0.5)]
    res = compress(model, data, budget, techniques=SMALL, out_dir=tmp_path, quick=True, seeds=seeds)
    assert res.met, res.message
    assert len(res.trials) == 2 and all(t.state == "complete" for t in res.trials), [t.note for t in res.trials]
    best = tmp_path / "best"
    for f in ("model.onnx", "model.acz", "recipe.yaml", "best.json"):
        assert (best / f).exists()
    assert res.final.storage_bytes * 8 <= res.baseline.fp32_bytes
    # the deployed model's accuracy (ONNX Runtime, test split) is what the report shows
    drop = res.baseline.deployed_accuracy["test"] - res.final.deployed_accuracy["test"]
    assert drop < 0.05
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["met"] and doc["final"]["storage_bytes"] == res.final.storage_bytes
    assert Recipe.from_yaml(tmp_path / "recipe.yaml") == res.recipe


def test_unmeetable_budget_says_so_and_names_layers(tiny, tmp_path):
    model, data = tiny
    budget = Budget(max_drop=0.0, min_size_ratio=5000, objective="smallest", max_trials=1)
    res = compress(model, data, budget, techniques=SMALL, out_dir=tmp_path, quick=True,
                   seeds=[Recipe(quant="int8", finetune_epochs=0.5)])
    assert not res.met
    assert "NOT met" in res.message and "size ratio" in res.message
    assert res.pareto  # the trade-offs found are still returned
    assert res.blocking_layers and all(n in dict(model.named_modules()) for n in res.blocking_layers)


def test_interrupt_then_resume(tiny, tmp_path):
    model, data = tiny

    def finetune(m):  # Ctrl-C in the middle of the second trial's fine-tuning
        raise KeyboardInterrupt

    budget = Budget(max_drop=5.0, objective="smallest", max_trials=3)
    seeds = [Recipe(quant="int8", finetune_epochs=0.5),          # post-training: no fine-tune
             Recipe(sparsity=0.7, distill=False, finetune_epochs=0.5),
             Recipe(sparsity=0.5, cluster_bits=5, distill=False, finetune_epochs=0.5)]
    with pytest.raises(KeyboardInterrupt):
        compress(model, data, budget, techniques=SMALL, out_dir=tmp_path, quick=True, seeds=seeds,
                 finetune=finetune)
    assert (tmp_path / "best" / "model.onnx").exists()     # the first trial's result survived
    res = compress(model, data, budget, techniques=SMALL, out_dir=tmp_path, quick=True, resume=True)
    states = [t.state for t in res.trials]
    # the interrupted trial is recorded as failed and does not count against max_trials (nor do
    # sampled trials the rung rule stopped early)
    counted = [s for s in states if s != "pruned early"]
    assert counted.count("failed") == 1 and len(counted) == 4, states
    assert states[:3] == ["complete", "failed", "complete"], states
    assert Recipe.from_dict(res.trials[2].recipe).cluster_bits == 5       # the queued seed ran after resuming


@pytest.mark.skipif(not os.environ.get("AUTOCOMPRESS_TEST_PG"),
                    reason="set AUTOCOMPRESS_TEST_PG to a PostgreSQL URL (.ci/run starts one on loopback)")
def test_two_workers_share_a_postgres_study(tiny, tmp_path):
    model, data = tiny
    url = os.environ["AUTOCOMPRESS_TEST_PG"]
    name = f"test-{uuid.uuid4().hex[:8]}"
    budget = Budget(max_drop=5.0, objective="smallest", max_trials=4)
    res = compress(model, data, budget, techniques=("prune",), out_dir=tmp_path, quick=True,
                   storage=url, workers=2, study_name=name,
                   seeds=[Recipe(sparsity=s, distill=False, finetune_epochs=0.5) for s in (0.5, 0.8)])
    from autocompress.search.loop import _storage_url
    study = optuna.load_study(study_name=name, storage=_storage_url(tmp_path, url))
    workers = {t.user_attrs.get("worker") for t in study.trials}
    assert len(study.trials) == 4 and len(workers) == 2
    assert res.recipe is not None


def test_apply_mixed_precision_recipe_reports_per_layer_precision(tiny, tmp_path):
    from autocompress.search import apply_recipe
    model, data = tiny
    res = apply_recipe(model, Recipe(quant="mixed", weight_bits=4), data, out_dir=tmp_path, quick=True,
                       budget=Budget(max_drop=1.0))
    layers = res.to_dict()["layers"]
    assert {"1", "3"} <= set(layers)                      # the two Linear layers of the tiny MLP
    assert all(layers[n]["bits"] in (4, 8, 32) for n in ("1", "3"))
    assert all("mixed precision" in (layers[n]["precision_reason"] or "") for n in ("1", "3"))
    assert (tmp_path / "model.onnx").exists()
    assert abs(res.final.deployed_accuracy["test"] - res.final.accuracy["test"]) <= 0.002
