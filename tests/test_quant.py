"""Quantization: configs, calibrators, fake quantization, BN folding, bad input."""

import math

import pytest
import torch
from torch import nn

from autocompress.config import ConfigError
from autocompress.quantize import (DynamicInt8Config, Fp16Config, Int4WeightOnlyConfig, Observer, PTQConfig,
                                   fake_quant, fold_batchnorm, quant_report, quantize_)
from autocompress.quantize.mixed import MixedPrecisionConfig, Precision
from autocompress.quantize.observers import CalibrationError, fake_quant_range
from autocompress.quantize.qat import QATConfig
from autocompress.train import TrainConfig
from zoo import batch_of, build


# -- configs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [
    PTQConfig(weight_bits=6, calibration="entropy", skip_layers=["fc1"]),
    QATConfig(weight_bits=2, act_bits=4, learned_scales=False, train=TrainConfig(epochs=0.5, lr=3e-4)),
    Int4WeightOnlyConfig(group_size=64, symmetric=True),
    DynamicInt8Config(per_channel=False),
    Fp16Config(skip_layers=["head"]),
    MixedPrecisionConfig(levels=[Precision(4, 8), Precision(8, 8), Precision(None, None)], max_drop=0.002),
])
def test_config_round_trip(cfg):
    assert type(cfg).from_json(cfg.to_json()) == cfg
    assert type(cfg).from_yaml(cfg.to_yaml()) == cfg


@pytest.mark.parametrize("make, field", [
    (lambda: PTQConfig(weight_bits=1), "weight_bits"),
    (lambda: PTQConfig(act_bits=9), "act_bits"),
    (lambda: QATConfig(weight_bits=16), "weight_bits"),
    (lambda: Int4WeightOnlyConfig(group_size=24), "group_size"),
    (lambda: PTQConfig.from_dict({"calibration": "kl"}), "calibration"),
    (lambda: Precision(4, None), "Precision"),
])
def test_config_errors_name_the_field(make, field):
    with pytest.raises(ConfigError, match=field):
        make()


# -- calibrators ---------------------------------------------------------------------------------

def _outlier_obs() -> Observer:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50_000, generator=g)
    x[:5] = torch.tensor([40.0, -35.0, 60.0, 30.0, -50.0])   # a handful of outliers
    obs = Observer("t")
    for chunk in x.split(5000):
        obs.update(chunk)
    return obs


def test_calibrators_clip_outliers_and_contain_zero():
    obs = _outlier_obs()
    lo, hi = obs.range("minmax")
    assert (lo, hi) == (-50.0, 60.0)
    width = hi - lo
    for method in ("percentile", "entropy"):
        a, b = obs.range(method)
        assert a <= 0.0 <= b, method
        assert b - a < 0.5 * width, f"{method} kept the outliers: {(a, b)}"
    # MSE may keep outliers when clipping them costs more than the coarser grid: it must simply
    # never be worse than min/max by its own criterion
    x = obs.samples()
    a, b = obs.range("mse")
    assert a <= 0.0 <= b and b - a <= width
    assert ((fake_quant_range(x, a, b, 8) - x) ** 2).mean() <= ((fake_quant_range(x, lo, hi, 8) - x) ** 2).mean()
    p_lo, p_hi = obs.range("percentile", percentile=99.9)
    assert 2.5 < p_hi < 4.5 and -4.5 < p_lo < -2.5      # ~3.3 sigma for a unit normal


def test_observer_rejects_nan_and_empty():
    obs = Observer("layer.x")
    with pytest.raises(CalibrationError, match="no calibration data"):
        obs.range("minmax")
    with pytest.raises(CalibrationError, match="layer.x.*NaN"):
        obs.update(torch.tensor([1.0, float("nan")]))


# -- fake quantization ---------------------------------------------------------------------------

def test_fake_quant_rounds_half_to_even_like_quantizelinear_and_passes_gradient():
    s = torch.tensor(1.0)
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, 200.0, -200.0], requires_grad=True)
    y = fake_quant(x, s, 0.0, -128, 127)
    assert y.tolist() == [0.0, 2.0, 2.0, -0.0, 127.0, -128.0]
    y.sum().backward()
    assert x.grad.tolist() == [1, 1, 1, 1, 0, 0]    # straight through inside, zero where clipped


def test_batchnorm_folding_keeps_outputs():
    model, x = build("residual_cnn")
    ref = model(x)
    folded = fold_batchnorm(model)
    assert len(folded) == 6
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)


def test_ptq_wraps_and_reports_every_layer():
    model, _ = build("plain_cnn")
    q = quantize_(model, PTQConfig(skip_layers=["head"]), batch_of("plain_cnn", 64))
    rep = quant_report(q)
    assert set(rep.layers) == {"features.0", "features.3", "fc1"}
    assert rep.layers["features.0"].mode == "static" and rep.layers["features.0"].storage == "int8"
    assert "skip_layers" in rep.float_layers["head"]
    assert "| features.0 | static | 8/8 | int8 |" in str(rep)


def test_weights_are_on_a_per_channel_symmetric_grid():
    model, _ = build("mlp")
    q = quantize_(model, PTQConfig(weight_bits=4), batch_of("mlp", 32))
    w = q.net[0]
    qw = w.quantized_weight().detach()
    scale = w.w_q.scale                      # (48,) one per output channel
    assert scale.shape == (48,)
    ints = qw / scale[:, None]
    assert torch.allclose(ints, ints.round(), atol=1e-4)
    assert ints.abs().max() <= 7             # 4-bit symmetric narrow range


@pytest.mark.parametrize("reduce_range, top", [(True, 63), (False, 127)])
def test_int8_weights_keep_seven_bits_of_range_unless_asked(reduce_range, top):
    # ORT's u8s8 kernels on x86 without VNNI saturate with full-range weights: 7 bits by default
    model, _ = build("mlp")
    q = quantize_(model, PTQConfig(reduce_range=reduce_range), batch_of("mlp", 32))
    w = q.net[0]
    ints = w.w_q.integer(w.weight)
    assert ints.abs().amax(1).min() == top       # every channel's largest weight reaches the edge
    assert w.w_q.bits == 8 and PTQConfig().reduce_range and QATConfig(weight_bits=8).ptq().reduce_range


# -- bad input -----------------------------------------------------------------------------------

def test_bad_calibration_data_errors():
    model, _ = build("plain_cnn")
    with pytest.raises(CalibrationError, match="empty"):
        quantize_(model, PTQConfig(), torch.empty(0, 1, 16, 16))
    with pytest.raises(CalibrationError, match="floating point"):
        quantize_(build("plain_cnn")[0], PTQConfig(), torch.zeros(4, 1, 16, 16, dtype=torch.uint8))
    with pytest.raises(CalibrationError, match="NaN"):
        quantize_(build("plain_cnn")[0], PTQConfig(), torch.full((4, 1, 16, 16), float("nan")))
    with pytest.raises(CalibrationError, match=r"shape \(4, 3, 16, 16\)"):
        quantize_(build("plain_cnn")[0], PTQConfig(), torch.zeros(4, 3, 16, 16))
    with pytest.raises(CalibrationError, match="required"):
        quantize_(build("plain_cnn")[0], PTQConfig(), None)


def test_nan_weights_name_the_layer():
    model, x = build("mlp")
    with torch.no_grad():
        model.net[2].weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"net\.2\.weight"):
        quantize_(model, PTQConfig(), x)


def test_unsupported_layers_fall_back_by_name_or_error():
    model, _ = build("gru")
    q = quantize_(model, PTQConfig(), batch_of("gru", 16))
    rep = quant_report(q)
    assert "rnn" in rep.float_layers and "GRU" in rep.float_layers["rnn"]
    assert rep.layers["head"].mode == "static"
    with pytest.raises(TypeError, match="rnn"):
        quantize_(build("gru")[0], PTQConfig(on_unsupported="error"), batch_of("gru", 16))
    with pytest.raises(ConfigError, match="nope"):
        quantize_(build("mlp")[0], PTQConfig(skip_layers=["nope"]), batch_of("mlp", 8))
    with pytest.raises(TypeError, match="unsupported config"):
        quantize_(build("mlp")[0], TrainConfig(), batch_of("mlp", 8))


def test_transformer_attention_stays_float_and_is_named():
    model, _ = build("transformer")
    q = quantize_(model, PTQConfig(), batch_of("transformer", 16))
    rep = quant_report(q)
    assert {"encoder.layers.0", "encoder.layers.1"} <= set(rep.float_layers)
    assert rep.layers["embed"].mode == "static" and rep.layers["head"].mode == "static"
    with torch.no_grad():
        assert not math.isnan(float(q(batch_of("transformer", 2)).sum()))


def test_importing_quantize_does_not_load_onnx():
    import subprocess
    import sys
    code = "import sys, autocompress.quantize; print('onnx' in sys.modules or 'onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_requantizing_starts_from_float_and_honours_the_new_config():
    model, _ = build("mlp")
    x = batch_of("mlp", 32)
    quantize_(model, PTQConfig(weight_bits=4), x)
    quantize_(model, PTQConfig(skip_layers=["head"]), x)
    rep = quant_report(model)
    assert "head" in rep.float_layers and rep.layers["net.0"].weight_bits == 8
    quantize_(model, Int4WeightOnlyConfig(group_size=16))
    assert {v.mode for v in quant_report(model).layers.values()} == {"weight_only"}
