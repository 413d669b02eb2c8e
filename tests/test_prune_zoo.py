"""Pruning works on models we have not seen: the whole zoo, pruned (unstructured and structured),
exported to ONNX and checked against ONNX Runtime."""

import copy
import logging

import pytest
import torch
from torch import nn

from autocompress.export import export_onnx
from autocompress.targets.onnxruntime import check_parity
from autocompress.measure.core import count_params
from autocompress.prune import (PruneConfig, StructuredPruneConfig, StructuredPruneError, channel_counts,
                                global_sparsity, model_cost, prune_, prune_channels_)
from zoo import CNN_NAMES, ZOO_NAMES, batch_of, build, make_loader


def _export_and_check(model, x, name, tmp_path):
    path = export_onnx(model, x, tmp_path / f"{name}.onnx")
    check_parity(model, path, batch_of(name, 16, seed=5), atol=1e-4)
    return path


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_unstructured_zoo_prune_export_parity(name, tmp_path):
    model, x = build(name)
    prune_(model, PruneConfig(sparsity=0.8))
    assert global_sparsity(model) == pytest.approx(0.8, abs=0.01)
    _export_and_check(model, x, name, tmp_path)


@pytest.mark.parametrize("name", [n for n in ZOO_NAMES if n != "gru"])
def test_structured_zoo_shrinks_and_exports(name, tmp_path):
    model, x = build(name)
    p0, m0 = model_cost(model, x, "params"), model_cost(model, x, "macs")
    ref_shape = model(x).shape
    prune_channels_(model, StructuredPruneConfig(ratio=0.5), x)
    assert model(x).shape == ref_shape
    assert model_cost(model, x, "params") < 0.8 * p0
    assert model_cost(model, x, "macs") < 0.8 * m0
    assert channel_counts(model)["head"] == 10                      # classifier kept
    _export_and_check(model, x, name, tmp_path)


def test_structured_gru_is_skipped_with_a_message(caplog, tmp_path):
    model, x = build("gru")
    before = copy.deepcopy(model)
    with caplog.at_level(logging.DEBUG, logger="autocompress.prune.structured"):
        prune_channels_(model, StructuredPruneConfig(ratio=0.5), x)
    assert "rnn" in caplog.text and "GRU" in caplog.text
    assert torch.equal(model(x), before(x))
    _export_and_check(model, x, "gru", tmp_path)


class _LinearIntoGRU(nn.Module):
    def __init__(self):
        super().__init__()
        self.pre = nn.Linear(12, 16)
        self.rnn = nn.GRU(16, 16, batch_first=True)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        out, _ = self.rnn(torch.relu(self.pre(x)))
        return self.head(out[:, -1])


def test_structured_layer_feeding_a_gru_is_kept_and_the_rest_pruned(caplog):
    # the recurrent layer blocks only the channels that reach it, not the whole model
    model, x = _LinearIntoGRU().eval(), torch.randn(2, 8, 12)
    ref = model(x)
    with caplog.at_level(logging.DEBUG, logger="autocompress.prune.structured"):
        prune_channels_(model, StructuredPruneConfig(ratio=0.5), x)
    assert "'pre'" in caplog.text and "rnn" in caplog.text and "GRU" in caplog.text
    assert model.pre.out_features == 16 and torch.equal(model(x), ref)


@pytest.mark.parametrize("metric", ["macs", "params"])
def test_structured_global_target(metric):
    model, x = build("residual_cnn")
    before = model_cost(model, x, metric)
    prune_channels_(model, StructuredPruneConfig(target=metric, amount=0.6), x)
    removed = 1 - model_cost(model, x, metric) / before
    assert 0.6 <= removed < 0.75


def test_structured_round_to_exclude_and_per_layer():
    model, x = build("plain_cnn")
    cfg = StructuredPruneConfig(ratio=0.4, round_to=4, exclude=["features.0"], per_layer={"fc1": 0.75})
    prune_channels_(model, cfg, x)
    ch = channel_counts(model)
    assert ch["features.0"] == 8 and ch["features.3"] % 4 == 0 and ch["features.3"] < 16
    assert ch["fc1"] == 8


def test_rounded_ratio_keeps_the_nearest_multiple():
    from autocompress.prune.structured import rounded_ratio
    def kept(r, c, rt):     # what torch-pruning keeps for that ratio
        return int(c * (1 - rounded_ratio(r, c, rt)))
    assert kept(0.5, 20, 8) == 8 and kept(0.4, 20, 8) == 16 and kept(0.3, 20, 8) == 16
    assert kept(0.9, 50, 8) == 8                        # never below round_to (torch-pruning's went to 0)
    assert rounded_ratio(0.5, 6, 8) == 0.0              # too small to round: kept whole
    assert kept(0.01, 500, 8) == 496 and rounded_ratio(0.001, 496, 8) == 0.0
    assert rounded_ratio(0.3, 20, None) == 0.3


@pytest.mark.parametrize("round_to", [8, 16])
def test_mac_target_reached_with_rounded_channels(round_to):
    """LeNet-5's conv1 (20 channels) steps 16 -> 8 with round_to=8, a jump of tens of points of MACs:
    the solver pins it and goes on with the other layers (it reached 16.8 % at most before)."""
    from autocompress.models.lenet import LeNet5
    torch.manual_seed(0)
    model, x = LeNet5().eval(), torch.randn(2, 1, 28, 28)
    before = model_cost(model, x, "macs")
    prune_channels_(model, StructuredPruneConfig(target="macs", amount=0.5, round_to=round_to), x)
    assert 0.5 <= 1 - model_cost(model, x, "macs") / before <= 0.53
    counts = channel_counts(model)
    assert all(c % round_to == 0 for n, c in counts.items() if n != "fc2"), counts


def test_structured_depthwise_groups_stay_consistent():
    model, x = build("depthwise_cnn")
    prune_channels_(model, StructuredPruneConfig(ratio=0.5), x)
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            assert m.groups == m.in_channels == m.out_channels


def test_structured_taylor_and_iterative_finetune():
    model, x = build("plain_cnn")
    calls = []
    cfg = StructuredPruneConfig(ratio=0.5, importance="taylor", steps=2)
    prune_channels_(model, cfg, x, make_loader("plain_cnn"), finetune=lambda m: calls.append(1) or m)
    assert len(calls) == 2 and channel_counts(model)["fc1"] == 16


def test_structured_bad_input():
    model, x = build("plain_cnn")
    with pytest.raises(ValueError, match="example_input"):
        prune_channels_(model, StructuredPruneConfig(), None)
    with pytest.raises(ValueError, match="nosuch"):
        prune_channels_(model, StructuredPruneConfig(exclude=["nosuch"]), x)
    with pytest.raises(Exception, match="ratio"):
        StructuredPruneConfig(ratio=1.2)
    with pytest.raises(ValueError, match="taylor"):
        prune_channels_(model, StructuredPruneConfig(importance="taylor"), x)
    with pytest.raises(StructuredPruneError, match="head"):   # the classifier alone cannot give 99%
        prune_channels_(build("mlp")[0], StructuredPruneConfig(target="params", amount=0.99),
                        build("mlp")[1])
    cfg = StructuredPruneConfig(target="macs", amount=0.7, per_layer={"fc1": 0.2}, round_to=2)
    assert StructuredPruneConfig.from_json(cfg.to_json()) == cfg
    assert count_params(model) == 9802                             # failed calls left it untouched


def test_attention_heads_physically_removed(tmp_path):
    from autocompress.prune.heads import PrunedMultiheadAttention

    model, x = build("transformer")
    m0 = model_cost(model, x, "macs")
    prune_channels_(model, StructuredPruneConfig(ratio=0.0, head_ratio=0.5), x)
    attn = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    assert attn and all(isinstance(a, PrunedMultiheadAttention) and a.num_heads == 2 for a in attn)
    assert all(a.in_proj_weight.shape == (3 * 2 * a.head_dim, 16) for a in attn)
    assert model_cost(model, x, "macs") < m0
    _export_and_check(model, x, "transformer", tmp_path)


@pytest.mark.parametrize("batch_first", [True, False])
def test_pruned_attention_with_all_heads_matches_torch(batch_first):
    from autocompress.prune.heads import PrunedMultiheadAttention

    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    same = PrunedMultiheadAttention(mha, [0, 1, 2, 3]).eval()
    x = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    for kw in ({}, {"key_padding_mask": pad}, {"attn_mask": torch.randn(5, 5) > 0.5, "key_padding_mask": pad}):
        (a, wa), (b, wb) = mha(x, x, x, **kw), same(x, x, x, **kw)
        assert torch.allclose(a, b, atol=1e-6) and torch.allclose(wa, wb, atol=1e-6)
