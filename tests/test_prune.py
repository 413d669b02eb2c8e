"""Unstructured pruning: importance criteria, schedules, masks, prune_, errors."""

import logging

import pytest
import torch
from torch import nn

from autocompress.config import ConfigError
from autocompress.prune import (MaskHook, Magnitude, PruneConfig, Random, Taylor, apply_masks, channel_scores,
                                finetune, global_sparsity, has_masks, make_permanent, polynomial_schedule,
                                prune_, sparsity_report, taylor_stats)
from autocompress.train import TrainConfig, fit
from zoo import build, make_loader


def test_importance_criteria_shapes_and_values():
    w = torch.tensor([[1.0, -3.0], [0.5, 2.0]])
    assert torch.equal(Magnitude(1)(w), w.abs())
    assert torch.equal(Magnitude(2)(w), w.square())
    assert torch.equal(channel_scores(Magnitude(1)(w), 0), torch.tensor([4.0, 2.5]))
    assert torch.equal(channel_scores(Magnitude(1)(w), 1), torch.tensor([1.5, 5.0]))
    assert torch.equal(Random(3)(w), Random(3)(w)) and Random(3)(w).shape == w.shape
    with pytest.raises(ValueError, match="needs data"):
        Taylor()(w)
    with pytest.raises(ValueError):
        Magnitude(3)


def test_taylor_stats_accumulates_real_gradients():
    model, _ = build("mlp")
    params = {n: p for n, p in model.named_parameters() if n.endswith("weight")}
    stats = taylor_stats(model, params, make_loader("mlp"), batches=2)
    assert set(stats) == set(params)
    assert all(s.shape == params[n].shape and (s >= 0).all() and s.sum() > 0 for n, s in stats.items())
    assert all(p.grad is None for p in model.parameters())        # the user's .grad left alone


def test_polynomial_schedule():
    s = polynomial_schedule(0.9, 4)
    assert s[-1] == pytest.approx(0.9) and all(a < b for a, b in zip(s, s[1:]))
    assert s[0] > 0.9 / 4          # cubic: prunes fast early (Zhu & Gupta)
    with pytest.raises(ValueError):
        polynomial_schedule(0.9, 0)


def test_layer_scope_hits_exact_sparsity_and_zeros_are_permanent():
    model, x = build("plain_cnn")
    prune_(model, PruneConfig(sparsity=0.75, per_layer={"head": 0.5}))
    rep = sparsity_report(model)
    assert rep["head.weight"] == pytest.approx(0.5, abs=0.01)
    for name in ("features.0.weight", "features.3.weight", "fc1.weight"):
        assert rep[name] == pytest.approx(0.75, abs=0.01)
    assert not has_masks(model) and not model._forward_pre_hooks
    sd = model.state_dict()
    assert not any(k.endswith("_prune_mask") for k in sd)
    assert float((sd["fc1.weight"] == 0).float().mean()) == pytest.approx(0.75, abs=0.01)


def test_global_scope_and_filters():
    model, _ = build("mlp")
    prune_(model, PruneConfig(sparsity=0.6, scope="global", exclude=["head"]))
    rep = sparsity_report(model)
    assert rep["head.weight"] == 0.0
    n0, n2 = model.net[0].weight.numel(), model.net[2].weight.numel()
    total = (rep["net.0.weight"] * n0 + rep["net.2.weight"] * n2) / (n0 + n2)
    assert total == pytest.approx(0.6, abs=0.005)


def test_rnn_and_attention_weights_are_prunable():
    gru, _ = build("gru")
    prune_(gru, PruneConfig(sparsity=0.5, kinds=["rnn"]))
    rep = sparsity_report(gru)
    assert rep["rnn.weight_ih_l0"] == pytest.approx(0.5, abs=0.01)
    assert rep["rnn.weight_hh_l0"] == pytest.approx(0.5, abs=0.01)
    assert rep["head.weight"] == 0.0
    tr, x = build("transformer")
    prune_(tr, PruneConfig(sparsity=0.5, kinds=["attention"]))
    rep = sparsity_report(tr)
    assert rep["encoder.layers.0.self_attn.in_proj_weight"] == pytest.approx(0.5, abs=0.01)
    assert rep["encoder.layers.1.self_attn.out_proj.weight"] == pytest.approx(0.5, abs=0.01)
    assert rep["encoder.layers.0.linear1.weight"] == 0.0
    assert tr(x).isfinite().all()


def test_masks_enforced_during_fit_and_user_loops():
    model, _ = build("mlp")
    loader = make_loader("mlp")
    prune_(model, PruneConfig(sparsity=0.8, permanent=False))
    assert has_masks(model)
    zero = {n: (p == 0) for n, p in model.named_parameters() if n.endswith("weight")}
    fit(model, loader, TrainConfig(epochs=2, lr=1e-2, progress=False), hooks=[MaskHook()])
    for n, p in model.named_parameters():
        if n in zero:
            assert (p[zero[n]] == 0).all(), n
    # a user's own loop without our hook: the forward pre-hook re-imposes the masks
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for xb, yb in loader:
        opt.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
    model(next(iter(loader))[0])
    assert all((dict(model.named_parameters())[n][z] == 0).all() for n, z in zero.items())
    make_permanent(model)
    assert not has_masks(model)
    assert global_sparsity(model) == pytest.approx(0.8, abs=0.01)


def test_gradual_pruning_calls_finetune_each_round():
    model, _ = build("mlp")
    seen = []

    def tune(m):
        seen.append(global_sparsity(m))
        return m

    prune_(model, PruneConfig(sparsity=0.9, schedule="polynomial", steps=3), finetune=tune)
    assert len(seen) == 3 and seen[0] < seen[1] < seen[2]
    assert seen[-1] == pytest.approx(0.9, abs=0.01)


def test_taylor_prune_and_config_finetune():
    model, _ = build("mlp")
    cfg = PruneConfig(sparsity=0.5, importance="taylor", finetune=TrainConfig(epochs=1, progress=False))
    prune_(model, cfg, make_loader("mlp"))
    assert global_sparsity(model) == pytest.approx(0.5, abs=0.01)


def test_finetune_helper_with_train_step_and_loss_fn():
    model, _ = build("mlp")
    prune_(model, PruneConfig(sparsity=0.7, permanent=False))
    calls = []

    def step(m, x, y, opt):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        calls.append(1)
        return loss

    finetune(model, make_loader("mlp"), TrainConfig(epochs=1, lr=0.1, progress=False), train_step=step)
    assert len(calls) == 4 and global_sparsity(model) >= 0.7 - 0.01
    used = []
    finetune(model, make_loader("mlp"), TrainConfig(epochs=1, progress=False),
             loss_fn=lambda m, x, y: used.append(1) or nn.functional.cross_entropy(m(x), y))
    assert used and global_sparsity(model) >= 0.7 - 0.01


def test_bad_input_errors_name_the_field():
    model, _ = build("mlp")
    with pytest.raises(ConfigError, match="sparsity"):
        PruneConfig(sparsity=1.5)
    with pytest.raises(ConfigError, match="steps"):
        PruneConfig(steps=3)
    with pytest.raises(ConfigError, match="kinds"):
        PruneConfig.from_dict({"kinds": ["lstm"]})
    with pytest.raises(ValueError, match="nosuch"):
        prune_(model, PruneConfig(per_layer={"nosuch": 0.5}))
    with pytest.raises(ValueError, match="needs data"):
        prune_(model, PruneConfig(importance="taylor"))
    with pytest.raises(ValueError, match="no prunable"):
        prune_(model, PruneConfig(kinds=["rnn"]))


def test_config_round_trip():
    cfg = PruneConfig(sparsity=0.8, per_layer={"fc1": 0.9}, schedule="polynomial", steps=3,
                      finetune=TrainConfig(epochs=0.5))
    assert PruneConfig.from_json(cfg.to_json()) == cfg
    assert PruneConfig.from_yaml(cfg.to_yaml()) == cfg


def test_model_with_live_masks_still_exports(tmp_path):
    from autocompress.export import export_onnx
    from autocompress.targets.onnxruntime import check_parity
    from zoo import batch_of

    model, x = build("plain_cnn")
    prune_(model, PruneConfig(sparsity=0.8, permanent=False))
    path = export_onnx(model, x, tmp_path / "m.onnx")      # the enforcing hook stays out of the graph
    check_parity(model, path, batch_of("plain_cnn", 8), atol=1e-4)
    assert has_masks(model)
