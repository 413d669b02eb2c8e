"""Pruning criteria are registered once (prune.importance.CRITERIA) and read by unstructured and
structured pruning alike; prune_channels_ takes a custom criterion (callable or registered name)."""

import copy

import pytest
import torch
import torch_pruning as tp
from torch import nn

from autocompress.config import ConfigError
from autocompress.prune import (CRITERIA, Magnitude, PruneConfig, StructuredPruneConfig, prune_, prune_channels_,
                                register_criterion, sensitivity)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4))


X = torch.randn(2, 3, 8, 8)
INVERSE = lambda w, taylor=None: 1.0 / (w.abs() + 1e-3)  # noqa: E731
DATA = [(torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,))) for _ in range(2)]


def _kept(before: nn.Module, after: nn.Module) -> list[int]:
    """Which of the first conv's original output channels survived (matched by their weights)."""
    w0, w1 = before[0].weight.detach(), after[0].weight.detach()
    return sorted(next(i for i in range(w0.shape[0]) if torch.equal(w0[i], r)) for r in w1)


def _prune(importance=None, cfg_name="l1", data=None):
    m = _net()
    out = prune_channels_(copy.deepcopy(m), StructuredPruneConfig(ratio=0.5, importance=cfg_name), X, data,
                          importance=importance)
    return m, out


@pytest.fixture
def registered():
    names = []

    def reg(name, *a, **kw):
        names.append(name)
        return register_criterion(name, *a, **kw)
    yield reg
    for n in names:
        CRITERIA.pop(n, None)


def test_every_builtin_declares_both_forms_or_refuses_clearly():
    for name, c in CRITERIA.items():
        if c.score is None:   # channel-only criteria say so to unstructured pruning
            with pytest.raises(ConfigError, match=f"{name}.*whole channels only"):
                PruneConfig(importance=name)
        else:
            assert PruneConfig(importance=name).importance == name
        assert c.structured and StructuredPruneConfig(importance=name).importance == name


def test_callable_criterion_ranks_channels_like_the_registered_one():
    # a plain per-weight |w| ranks channels exactly as the registered 'l1' (torch-pruning's group L1)
    m, by_name = _prune()
    _, by_callable = _prune(importance=lambda w, taylor=None: w.abs())
    assert _kept(m, by_name) == _kept(m, by_callable)
    assert by_name[0].out_channels == 4


def test_custom_criterion_decides_what_is_kept():
    # favour the *smallest* weights: the opposite of magnitude (an honest sign the callable is used)
    m, out = _prune(importance=INVERSE)
    _, l1 = _prune()
    assert _kept(m, out) != _kept(m, l1) and len(_kept(m, out)) == 4


def test_registered_name_serves_both_kinds_of_pruning(registered):
    registered("inverse", INVERSE)
    m, out = _prune(cfg_name="inverse")
    _, direct = _prune(importance=INVERSE)
    assert _kept(m, out) == _kept(m, direct)
    lin = nn.Linear(16, 16)
    prune_(lin, PruneConfig(sparsity=0.5, importance="inverse", kinds=["linear"]))
    assert (lin.weight == 0).float().mean() == pytest.approx(0.5, abs=0.01)


def test_channel_only_criterion_and_torch_pruning_objects(registered):
    _, out = _prune(cfg_name="fpgm")
    assert out[0].out_channels == 4
    _, out = _prune(importance=tp.importance.GroupMagnitudeImportance(p=1))
    assert out[0].out_channels == 4
    registered("weights_only", Magnitude(1), structured=False)
    with pytest.raises(ConfigError, match="weights_only.*no structured form"):
        StructuredPruneConfig(importance="weights_only")
    with pytest.raises(ValueError, match="weights_only.*no structured form"):
        _prune(importance="weights_only")


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown pruning criterion 'nope'; known: \['fpgm', 'l1'"):
        _prune(importance="nope")
    with pytest.raises(ConfigError, match="StructuredPruneConfig.importance: unknown pruning criterion 'nope'"):
        StructuredPruneConfig(importance="nope")
    with pytest.raises(ValueError, match="unknown pruning criterion 'nope'"):
        prune_(nn.Linear(4, 4), importance="nope")


def test_data_hungry_custom_criterion(registered):
    def grad_times_weight(w, taylor=None):
        if taylor is None:
            raise AssertionError("taylor statistic not passed")
        return taylor
    grad_times_weight.needs_data = True
    with pytest.raises(ValueError, match="grad_times_weight.*needs data"):
        _prune(importance=grad_times_weight)
    m, out = _prune(importance=grad_times_weight, data=DATA)
    assert out[0].out_channels == 4
    with pytest.raises(ValueError, match="already registered"):
        register_criterion("l1", Magnitude(1))
    with pytest.raises(ValueError, match="declares neither"):
        register_criterion("empty")


def test_bad_scores_name_the_criterion():
    def bad(w, taylor=None):
        return w.sum()
    with pytest.raises(Exception, match="'bad'.*shaped like the weight"):
        _prune(importance=bad)
    with pytest.raises(Exception, match="'<lambda>' returned negative scores"):
        _prune(importance=lambda w, taylor=None: -w.abs())


def test_sensitivity_reads_the_registry_too(registered):
    registered("inverse", INVERSE)   # a plain callable: no needs_data attribute
    m = _net()
    score = lambda model: float(model(X).detach().abs().sum())   # noqa: E731
    sens = sensitivity(m, score, ratios=(0.5,), kind="unstructured", importance="inverse")
    assert sens.scores and all(len(c) == 1 for c in sens.scores.values())
    with pytest.raises(ValueError, match="'taylor' needs data"):
        sensitivity(m, score, ratios=(0.5,), kind="unstructured", importance="taylor")
