"""The structured latency path: layers thinned in the order the runtime's time rewards, and a
recipe's ratio read as the share of time to save (prune/latency_path.py, search/speed_probe.py)."""

import copy
import math

import pytest
import torch

from autocompress.prune import SensitivityResult
from autocompress.prune.latency_path import SAVED_TOL, latency_path, point_for
from zoo import build


def _sens(layers, drop_per_ratio):
    ratios = [0.25, 0.5, 0.75]
    return SensitivityResult("structured", ratios, 0.9,
                             {n: [0.9 - drop_per_ratio[n] * r for r in ratios] for n in layers})


def _widths(model):
    return {n: m.out_channels if isinstance(m, torch.nn.Conv2d) else m.out_features
            for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}


def test_path_thins_the_layer_that_saves_time_first_not_the_one_with_macs():
    model, x = build("plain_cnn")
    full = _widths(model)
    layers = ["features.0", "features.3", "fc1"]
    sens = _sens(layers, {"features.0": 0.02, "features.3": 0.02, "fc1": 0.02})   # equally robust

    def speed(m):
        # a runtime on which only the first convolution's width costs time (fc1 would be free)
        w = _widths(m)
        return 1.0 / (0.2 + 0.8 * w["features.0"] / full["features.0"])
    path = latency_path(model, x, sens, speed, round_to=None)
    assert path and path[0]["ratios"] == {"features.0": 0.25}
    assert all(b["saved"] > a["saved"] for a, b in zip(path, path[1:]))
    assert all(set(p["ratios"]) == {"features.0"} for p in path)    # the others save nothing: left alone
    assert path[-1]["saved"] == pytest.approx(0.8 * 0.75, abs=0.05)
    # a ratio is a share of the time: the first point that saves it; beyond the path, MACs decide
    assert point_for(path, 0.3)["saved"] >= 0.3 - SAVED_TOL and point_for(path, 0.99) is None
    assert point_for([], 0.5) is None


def test_accuracy_decides_between_layers_that_save_the_same_time():
    model, x = build("plain_cnn")
    layers = ["features.0", "features.3", "fc1"]
    sens = _sens(layers, {"features.0": 0.5, "features.3": 0.01, "fc1": 0.5})
    total = sum(p.numel() for p in model.parameters())
    path = latency_path(model, x, sens, lambda m: total / sum(p.numel() for p in m.parameters()), round_to=None)
    assert "features.3" in path[0]["ratios"]           # the robust layer goes first
    assert all(math.isfinite(p["drop"]) for p in path)


def test_a_probe_that_runs_out_leaves_a_partial_path_and_macs_beyond_it():
    model, x = build("plain_cnn")
    before = _widths(model)
    sens = _sens(["features.0", "fc1"], {"features.0": 0.1, "fc1": 0.1})
    calls = []

    def speed(m):
        calls.append(1)
        return None if len(calls) > 2 else 1.5
    path = latency_path(model, x, sens, speed, round_to=None)
    assert len(path) == 1 and path[0]["partial"] and path[0]["saved"] == pytest.approx(1 / 3, abs=1e-3)
    assert point_for(path, 0.2) is path[0]
    assert point_for(path, 0.6) is None                # beyond a cut-short path: MACs decide
    assert latency_path(model, x, sens, lambda m: None, round_to=None) is None
    assert _widths(model) == before                    # the model itself is never pruned


def test_speed_budget_search_times_the_path_on_the_runtime_and_replays_it(tmp_path):
    import json

    from torch.utils.data import Subset

    from autocompress.baselines import load_baseline
    from autocompress.data import Splits, load_mnist
    from autocompress.search import Budget, ResultOptions, SearchOptions, TrainingOptions, compress
    from autocompress.search.recipe import Recipe
    full = load_mnist(flat=False)
    data = Splits(Subset(full.train, range(3000)), Subset(full.val, range(500)), Subset(full.test, range(500)),
                  full.input_shape, 10)
    model = load_baseline("lenet5")
    budget = Budget(max_drop=50.0, objective="fastest", latency_batch=16, max_trials=1)
    res = compress(model, data, budget, search=SearchOptions(techniques=("structured",),
                   seeds=[Recipe(structured_ratio=0.5, finetune_epochs=0.25, distill=False)]),
                   training=TrainingOptions(quick=True), results=ResultOptions(out_dir=tmp_path))
    sens = json.loads((tmp_path / "sensitivity.json").read_text())["sensitivity"]["structured"]
    path = sens["latency_path"]
    assert path and all(0 < p["saved"] < 1 for p in path)
    assert all(b["saved"] > a["saved"] for a, b in zip(path, path[1:]))
    assert res.trials[0].state == "complete", res.trials[0]
    # the trial pruned the path's point for its ratio as it stands (round_to 8), not rescaled to MACs
    # (on ORT at batch 16 LeNet-5's path reaches ~90 % of the time saved: half is well inside it)
    from autocompress.prune import StructuredPruneConfig, channel_counts, prune_channels_
    point = point_for(path, 0.5)
    assert point is not None, path
    expect = prune_channels_(copy.deepcopy(model), StructuredPruneConfig(
        ratio=0.0, per_layer=point["ratios"], round_to=8), data.example_input(1))
    assert channel_counts(res.model) == channel_counts(expect) != channel_counts(model)
