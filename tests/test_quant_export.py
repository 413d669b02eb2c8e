"""Quantized ONNX export: the PyTorch simulation and ONNX Runtime agree; QAT; mixed precision."""

import numpy as np
import onnx
import pytest
import torch
from torch.utils.data import Subset

from autocompress.baselines import load_baseline
from autocompress.export.qdq import quantization_metadata
from autocompress.targets.onnxruntime import export_quantized, ort_accuracy, run, session, verify_quantized
from autocompress.targets.ort_guard import latency_guard_
from autocompress.models import baseline_path
from autocompress.quantize import (DynamicInt8Config, Fp16Config, Int4WeightOnlyConfig, PTQConfig,
                                   quant_report, quantize_)
from autocompress.quantize.mixed import MixedPrecisionConfig, Precision, mixed_precision_
from autocompress.quantize.qat import QATConfig, qat_
from autocompress.train import TrainConfig, evaluate
from zoo import batch_of, build


def _ops(path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def _ort_vs_torch(model, path, x) -> float:
    with torch.no_grad():
        ref = model(x).numpy()
    return float(np.abs(run(session(path), x) - ref).max())


@pytest.mark.parametrize("name", ["plain_cnn", "residual_cnn", "depthwise_cnn", "concat_cnn", "mlp",
                                  "transformer", "gru"])
def test_static_int8_parity_on_zoo(name, tmp_path):
    model, _ = build(name)
    q = quantize_(model, PTQConfig(), batch_of(name, 64))
    path = export_quantized(q, batch_of(name, 4, seed=1), tmp_path / "q.onnx")
    x = batch_of(name, 32, seed=2)
    assert _ort_vs_torch(q, path, x) < 1e-4
    ops = _ops(path)
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    meta = quantization_metadata(path)
    assert set(meta["layers"]) == set(quant_report(q).layers)


@pytest.mark.parametrize("cfg, op", [(DynamicInt8Config(), "DynamicQuantizeMatMul"),
                                     (Int4WeightOnlyConfig(group_size=16), "MatMulNBits"),
                                     (Int4WeightOnlyConfig(group_size=32, symmetric=True), "MatMulNBits"),
                                     (Fp16Config(), "Cast")])
def test_other_modes_export_with_parity(cfg, op, tmp_path):
    model, _ = build("mlp")
    q = quantize_(model, cfg, batch_of("mlp", 32))
    path = export_quantized(q, batch_of("mlp", 4), tmp_path / "q.onnx")
    assert op in _ops(path)
    x = batch_of("mlp", 32, seed=3)
    # dynamic quantization ranges depend on the whole batch: run both on the same batch
    assert _ort_vs_torch(q, path, x) < 1e-4


def test_int4_weight_only_is_smaller_and_close_to_float(tmp_path):
    model, _ = build("mlp")
    x = batch_of("mlp", 64)
    with torch.no_grad():
        ref = model(x)
    q = quantize_(model, Int4WeightOnlyConfig(group_size=16), x)
    with torch.no_grad():
        err = (q(x) - ref).abs().max() / ref.abs().max()
    assert 0 < err < 0.2
    rep = quant_report(q)
    assert "int4 packed (MatMulNBits" in rep.layers["net.0"].storage


def test_sub_8bit_activations_clip_like_the_simulation(tmp_path):
    model, _ = build("plain_cnn")
    q = quantize_(model, PTQConfig(weight_bits=3, act_bits=4), batch_of("plain_cnn", 64))
    path = export_quantized(q, batch_of("plain_cnn", 4), tmp_path / "q.onnx")
    assert "Clip" in _ops(path)
    x = batch_of("plain_cnn", 32, seed=5) * 3      # out of the calibrated range: saturation matters
    assert _ort_vs_torch(q, path, x) < 1e-4
    assert "int8 holding 7 levels (3-bit)" in quant_report(q).layers["fc1"].storage


@pytest.mark.parametrize("bits", [2, 4])
def test_packed_sub8bit_linear_weights(bits, tmp_path):
    model, _ = build("plain_cnn")
    q = quantize_(model, PTQConfig(weight_bits=bits, weight_storage="packed"), batch_of("plain_cnn", 64))
    path = export_quantized(q, batch_of("plain_cnn", 4), tmp_path / "q.onnx")
    ops = _ops(path)
    assert ops.count("MatMulNBits") == 2 and ops.count("Conv") == 2     # convolutions stay int8 QDQ
    assert _ort_vs_torch(q, path, batch_of("plain_cnn", 32, seed=4)) < 1e-4
    rep = quant_report(q)
    assert rep.layers["fc1"].storage.startswith(f"int{bits} packed")
    assert rep.layers["features.0"].storage.startswith("int8 holding")
    assert quantization_metadata(path)["layers"]["fc1"]["storage"] == rep.layers["fc1"].storage


def test_skip_layer_has_no_qdq(tmp_path):
    model, _ = build("mlp")
    q = quantize_(model, PTQConfig(skip_layers=["head"]), batch_of("mlp", 32))
    path = export_quantized(q, batch_of("mlp", 4), tmp_path / "q.onnx")
    g = onnx.load(str(path)).graph
    gemm = [n for n in g.node if n.op_type == "Gemm" and "head.weight" in n.input]
    assert len(gemm) == 1                         # head still reads its float weight directly


@pytest.fixture(scope="module")
def mnist():
    if not baseline_path("lenet300").exists():
        pytest.skip("LeNet-300-100 baseline weights not trained yet")
    from autocompress.data import load_mnist
    return load_mnist(flat=True)


def test_mnist_ort_accuracy_matches_simulation(mnist, tmp_path):
    test = mnist.loader("test", 500, limit=3000)
    fp32 = evaluate(load_baseline("lenet300"), test)
    q = quantize_(load_baseline("lenet300"), PTQConfig(), mnist.calibration_batch(256))
    path = export_quantized(q, mnist.example_input(8), tmp_path / "q.onnx")
    sim, ort = evaluate(q, test), ort_accuracy(path, test)
    assert abs(sim - ort) <= 0.001
    assert fp32 - sim <= 0.003


def test_qat_beats_ptq_at_low_bits(mnist, tmp_path):
    val = mnist.loader("val", 500, limit=2000)
    train = Subset(mnist.train, range(4000))
    calib = mnist.calibration_batch(256)
    out = {}
    # 4 bits: per-tensor min/max (a weak PTQ); 2 bits: per-channel MSE (the best PTQ we have)
    for wb, ab, per_channel, wcal, lr in [(4, 4, False, "minmax", 1e-4), (2, 8, True, "mse", 3e-4)]:
        ptq = quantize_(load_baseline("lenet300"), PTQConfig(weight_bits=wb, act_bits=ab, per_channel=per_channel,
                                                             weight_calibration=wcal, num_calibration=256), calib)
        qat = qat_(load_baseline("lenet300"),
                   QATConfig(weight_bits=wb, act_bits=ab, per_channel=per_channel, calibration="minmax",
                             weight_calibration=wcal, num_calibration=256,
                             train=TrainConfig(epochs=1, lr=lr, progress=False)), train)
        out[wb] = (evaluate(ptq, val), evaluate(qat, val))
    assert out[4][1] > out[4][0]
    assert out[2][1] > out[2][0] + 0.01
    path = export_quantized(qat, mnist.example_input(8), tmp_path / "qat.onnx")
    test = mnist.loader("test", 500, limit=2000)
    assert abs(evaluate(qat, test) - ort_accuracy(path, test)) <= 0.001
    assert "QAT w2a8" in quant_report(qat).layers["fc1"].reason


def test_qat_loss_fn_hook_and_finetune_hook():
    model, _ = build("mlp")
    x = batch_of("mlp", 64)
    y = torch.zeros(64, dtype=torch.long)
    data = torch.utils.data.TensorDataset(x, y)
    calls = []

    def loss_fn(m, xb, yb):
        calls.append(1)
        return torch.nn.functional.cross_entropy(m(xb), yb)

    cfg = QATConfig(weight_bits=4, train=TrainConfig(epochs=1, batch_size=32, progress=False))
    qat_(model, cfg, data, loss_fn=loss_fn)
    assert len(calls) == 2
    seen = []
    qat_(build("mlp")[0], cfg, data, finetune=lambda m: seen.append(m) or m)
    assert len(seen) == 1 and quant_report(seen[0]).layers["head"].mode == "static"


def test_mixed_precision_meets_budget_and_explains(tmp_path):
    model, _ = build("mlp")
    x = batch_of("mlp", 128)
    with torch.no_grad():
        labels = model(x).argmax(-1)

    def agreement(m):   # "accuracy" = agreement with the float model's predictions
        with torch.no_grad():
            return float((m(x).argmax(-1) == labels).float().mean())

    cfg = MixedPrecisionConfig(levels=[Precision(2, 8), Precision(8, 8), Precision(None, None)], max_drop=0.02)
    res = mixed_precision_(model, cfg, x, agreement)
    assert res.reference == 1.0
    assert res.budget_met and res.reference - res.accuracy <= 0.02
    assert set(res.precision) == {"net.0", "net.2", "head"}
    assert set(res.precision.values()) <= {"w2a8", "w8a8", "fp32"}
    assert res.accuracy == agreement(model)           # the model is left at the chosen precisions
    raised = [n for n, p in res.precision.items() if p != "w2a8"]
    assert raised and all("raised to" in res.reason[n] for n in raised)
    path = export_quantized(model, x[:4], tmp_path / "mixed.onnx")
    assert _ort_vs_torch(model, path, x) < 1e-4


def test_latency_guard_never_ships_slower():
    model, _ = build("mlp")
    q = quantize_(model, PTQConfig(), batch_of("mlp", 32))
    rep = latency_guard_(q, batch_of("mlp", 2), batch_sizes=(1,), runs=20)
    assert set(rep.fp32_ms) == {1} and rep.quantized_ms[1] > 0
    if rep.whole_model_fp32:
        assert all(v.mode == "fp32" for v in quant_report(q).layers.values())
    else:
        assert rep.chosen_ms[1] <= rep.fp32_ms[1] * 1.02 or rep.fallbacks


def test_mixed_precision_backs_off_and_skips_a_worse_level():
    """A scripted 'accuracy': raising net.2 to w8a8 hurts (backed off / skipped), fp32 helps."""
    from autocompress.quantize.ptq import wrappers_of

    penalty = {"net.0": {2: 0.10, 8: 0.0}, "net.2": {2: 0.05, 8: 0.08}, "head": {2: 0.001, 8: 0.0}}

    def scripted(m):
        drop = 0.0
        for n, w in wrappers_of(m).items():
            if w.mode == "static":
                drop += penalty[n][w.w_q.bits]
        return 1.0 - drop

    model, _ = build("mlp")
    cfg = MixedPrecisionConfig(levels=[Precision(2, 8), Precision(8, 8), Precision(None, None)], max_drop=0.02)
    res = mixed_precision_(model, cfg, batch_of("mlp", 32), scripted)
    assert res.sensitivity == pytest.approx({"net.0": 0.10, "net.2": 0.05, "head": 0.001})
    assert res.precision["net.0"] == "w8a8"
    assert res.precision["net.2"] == "fp32" and "w8a8 measured worse, skipped" in res.reason["net.2"]
    assert res.budget_met and res.accuracy == pytest.approx(scripted(model))
    assert any(not h["kept"] for h in res.history)


def test_mixed_precision_falls_back_to_one_level_for_all_when_no_single_raise_helps():
    """Scripted: while any layer is at 2 bits the model is at chance and every single raise reads
    a little worse (noise), so the per-layer climb backs every layer off; w8a8 for all holds."""
    from autocompress.quantize.ptq import wrappers_of

    def scripted(m):
        modes = [(w.mode, w.w_q.bits) for w in wrappers_of(m).values()]
        if any(mode == "static" and bits == 2 for mode, bits in modes):
            return 0.10 - 0.001 * sum(mode != "static" or bits != 2 for mode, bits in modes)
        return 1.0 - 0.001 * sum(mode == "static" for mode, _ in modes)

    model, _ = build("mlp")
    cfg = MixedPrecisionConfig(levels=[Precision(2, 8), Precision(8, 8), Precision(None, None)], max_drop=0.01)
    res = mixed_precision_(model, cfg, batch_of("mlp", 32), scripted)
    assert res.budget_met and set(res.precision.values()) == {"w8a8"}
    assert res.accuracy == pytest.approx(scripted(model))
    assert all("with every layer" in r for r in res.reason.values())
    assert res.history[-1]["step"] == "every layer at w8a8 or above" and res.history[-1]["kept"]
