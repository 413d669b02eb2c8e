"""Sensitivity analysis, its JSON round trip and plot, and per-layer ratio allocation."""

import pytest
import torch

from autocompress.prune import (PruneConfig, SensitivityResult, StructuredPruneConfig, allocate_ratios,
                                global_sparsity, prune_, removal_fn, sensitivity)
from autocompress.train import evaluate
from zoo import build, make_loader


def test_unstructured_sensitivity_leaves_model_unchanged_and_round_trips(tmp_path):
    model, x = build("mlp")
    ref = model(x)
    loader = make_loader("mlp")
    sens = sensitivity(model, loader, ratios=(0.5, 0.9), kind="unstructured")
    assert torch.equal(model(x), ref)
    assert set(sens.scores) == {"net.0.weight", "net.2.weight", "head.weight"}
    assert all(len(v) == 2 for v in sens.scores.values())
    assert sens.baseline == pytest.approx(evaluate(model, loader))
    assert SensitivityResult.from_json(sens.to_json()) == sens
    sens.to_json(tmp_path / "s.json")
    assert SensitivityResult.from_json(tmp_path / "s.json") == sens
    png = sens.plot(tmp_path / "plot" / "s.png")
    assert png.exists() and png.stat().st_size > 1000


def test_structured_sensitivity_with_evaluate_fn():
    model, x = build("plain_cnn")
    loader = make_loader("plain_cnn")
    sens = sensitivity(model, lambda m: evaluate(m, loader), ratios=(0.5,), kind="structured", example_input=x)
    assert set(sens.scores) == {"features.0", "features.3", "fc1"}       # classifier excluded
    assert all(0 < c[0] < 1 for c in sens.costs.values())               # MACs removed, measured
    assert SensitivityResult.from_dict(sens.to_dict()) == sens
    with pytest.raises(ValueError, match="example_input"):
        sensitivity(model, loader, kind="structured")
    with pytest.raises(ValueError, match="ratios"):
        sensitivity(model, loader, ratios=(1.5,))


def _synthetic():
    # "fragile" loses accuracy early, "robust" barely at all; equal sizes
    return SensitivityResult("unstructured", [0.5, 0.8, 0.95], 0.9,
                             {"fragile": [0.85, 0.6, 0.3], "robust": [0.9, 0.89, 0.85]},
                             {"fragile": 100, "robust": 100})


@pytest.mark.parametrize("method", ["marginal", "equal_drop"])
def test_allocate_ratios_prunes_sensitive_layers_less_and_meets_target(method):
    r = allocate_ratios(_synthetic(), 0.7, method=method)
    assert r["fragile"] < r["robust"]
    assert (r["fragile"] + r["robust"]) / 2 == pytest.approx(0.7, abs=1e-4)
    assert max(r.values()) <= 0.95


def test_marginal_allocation_spares_layers_whose_pruning_saves_little():
    # same accuracy curves, but "small" holds 1 % of the weights: pruning it buys almost nothing
    same = [0.89, 0.85, 0.7]
    sens = SensitivityResult("unstructured", [0.5, 0.8, 0.95], 0.9, {"big": same, "small": same},
                             {"big": 990, "small": 10})
    r = allocate_ratios(sens, 0.75)
    assert r["small"] < r["big"]
    assert (990 * r["big"] + 10 * r["small"]) / 1000 == pytest.approx(0.75, abs=1e-4)
    with pytest.raises(ValueError, match="larger ratios"):
        allocate_ratios(_synthetic(), 0.97)
    with pytest.raises(ValueError, match="target"):
        allocate_ratios(_synthetic(), 1.5)


def test_allocated_ratios_feed_prune_and_structured_cost():
    model, x = build("mlp")
    sens = sensitivity(model, make_loader("mlp"), ratios=(0.5, 0.8, 0.95))
    prune_(model, PruneConfig(per_layer=allocate_ratios(sens, 0.8)))
    assert global_sparsity(model) == pytest.approx(0.8, abs=0.01)

    cnn, x = build("plain_cnn")
    ssens = sensitivity(cnn, make_loader("plain_cnn"), ratios=(0.5, 0.75), kind="structured", example_input=x)
    cost = removal_fn(cnn, x, "macs")
    ratios = allocate_ratios(ssens, 0.5, cost=cost, iters=12)
    assert cost(ratios) >= 0.5 - 0.05


def test_structured_sensitivity_scores_each_copy_after_after_prune():
    # the search re-estimates BatchNorm on each pruned copy (as its trials do) through after_prune:
    # it must see every copy, pruned, before the copy is scored, and never the model itself
    model, x = build("residual_cnn")
    loader = make_loader("residual_cnn")
    n0 = sum(p.numel() for p in model.parameters())
    seen = []

    def after(m):
        seen.append(sum(p.numel() for p in m.parameters()))
        assert m is not model
        for b in m.modules():
            if isinstance(b, torch.nn.BatchNorm2d):
                b.running_mean.fill_(1e3)        # wreck the statistics: the score must show it

    wrecked = sensitivity(model, loader, ratios=(0.5,), kind="structured", example_input=x, after_prune=after)
    plain = sensitivity(model, loader, ratios=(0.5,), kind="structured", example_input=x)
    assert len(seen) == len(plain.scores) and all(n < n0 for n in seen)
    assert wrecked.baseline == plain.baseline                     # the model itself untouched
    assert any(wrecked.scores[k] != plain.scores[k] for k in plain.scores)


def test_structured_sensitivity_skips_layers_whose_pruning_alone_removes_nothing():
    # residual_cnn's stem and downsampling convs share their channels with the residual adds:
    # their group is pruned through the block's last conv, and pruning them alone is a no-op
    model, x = build("residual_cnn")
    sens = sensitivity(model, make_loader("residual_cnn"), ratios=(0.5,), kind="structured", example_input=x)
    assert "stem.0" not in sens.scores and "down.0" not in sens.scores
    assert all(c[0] > 0 for c in sens.costs.values())
