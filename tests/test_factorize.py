"""Low-rank factorization: fewer params and MACs, exact on low-rank weights, ONNX parity,
ranks by energy / sensitivity, applied only where it shrinks the layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from zoo import batch_of, build

from autocompress.config import ConfigError
from autocompress.export import export_onnx
from autocompress.targets.onnxruntime import check_parity
from autocompress.factorize import FactorizeConfig, break_even_rank, factorize_, plan_ranks
from autocompress.measure.core import count_macs, count_params


def _low_rank_(model: nn.Module, r: int) -> None:
    """Make every Linear / Conv weight exactly rank <= r (as a matrix), so factorizing is lossless."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)) and getattr(m, "groups", 1) == 1:
                w = m.weight
                a = torch.randn(w.shape[0], r, generator=g) * 0.3
                b = torch.randn(r, w[0].numel(), generator=g) * 0.3
                w.copy_((a @ b).reshape(w.shape))


def test_linear_energy_rank_is_lossless_on_low_rank_weights(tmp_path):
    model, x = build("mlp")
    _low_rank_(model, 3)
    ref = model(x)
    params, macs = count_params(model), count_macs(model, x)
    factorize_(model, FactorizeConfig(method="energy", energy=0.999999))
    assert isinstance(model.net[0], nn.Sequential) and model.net[0][0].out_features == 3
    assert count_params(model) < params and count_macs(model, x) < macs
    assert torch.allclose(model(x), ref, atol=1e-4)
    xs = batch_of("mlp", 32)
    p = export_onnx(model, xs[:2], tmp_path / "mlp.onnx")
    check_parity(model, p, xs, atol=1e-4)


def test_conv_split_is_lossless_and_exports(tmp_path):
    model, x = build("plain_cnn")
    _low_rank_(model, 2)
    xs = batch_of("plain_cnn", 16)
    ref = model(xs)
    params, macs = count_params(model), count_macs(model, x)
    factorize_(model, FactorizeConfig(method="rank", rank=2))
    first, second = model.features[3]
    assert first.kernel_size == (3, 3) and first.out_channels == 2 and first.padding == (1, 1)
    assert second.kernel_size == (1, 1) and second.out_channels == 16
    assert count_params(model) < params and count_macs(model, x) < macs
    assert torch.allclose(model(xs), ref, atol=1e-4)
    p = export_onnx(model, xs[:2], tmp_path / "cnn.onnx")
    check_parity(model, p, xs, atol=1e-4)


def test_only_layers_that_shrink_are_factorized():
    lin = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(100, 100))
    assert break_even_rank(lin[0]) == 4            # 4 * 20 < 100 <= 5 * 20
    plan = plan_ranks(lin, FactorizeConfig(method="rank", rank=8))
    assert plan == {"2": 8}                         # rank 8 would grow the 10x10 layer
    factorize_(lin, FactorizeConfig(method="rank", rank=8))
    assert isinstance(lin[0], nn.Linear) and isinstance(lin[2], nn.Sequential)


def test_sensitivity_picks_smallest_rank_within_budget():
    model, _ = build("mlp")
    _low_rank_(model, 4)
    xs = batch_of("mlp", 64)
    ref = model(xs).argmax(-1)
    agreement = lambda m: float((m(xs).argmax(-1) == ref).float().mean())
    plan = plan_ranks(model, FactorizeConfig(method="sensitivity", max_drop=0.0, candidates=8), agreement)
    assert plan and all(r <= 4 for r in plan.values())
    factorize_(model, FactorizeConfig(method="sensitivity", max_drop=0.0, candidates=8), agreement)
    assert agreement(model) == 1.0
    with pytest.raises(ValueError, match="data="):
        plan_ranks(model, FactorizeConfig(method="sensitivity"))


def test_config_validation_and_layer_names():
    with pytest.raises(ConfigError, match="rank"):
        FactorizeConfig(method="rank")
    with pytest.raises(ConfigError, match="energy"):
        FactorizeConfig(energy=1.5)
    cfg = FactorizeConfig(method="rank", rank_ratio=0.25, layers=["fc1"])
    assert FactorizeConfig.from_json(cfg.to_json()) == cfg
    model, _ = build("mlp")
    with pytest.raises(ConfigError, match="fc1"):
        factorize_(model, cfg)
