"""Real architectures (torchvision, timm, Hugging Face, LSTM/GRU) through structured pruning and
ONNX export, handed over as they are (ModelOutput out, int64 token ids in)."""

import logging

import numpy as np
import pytest
import torch
from torch import nn

from autocompress.export import export_onnx
from autocompress.targets.onnxruntime import check_parity, run, session
from autocompress.measure.core import count_macs, count_params
from autocompress.outputs import pick_output
from autocompress.prune import StructuredPruneConfig, StructuredPruneError, prune_channels_
from autocompress.prune.families import hf_attention
from realzoo import HF_NAMES, REAL_ZOO_NAMES, RNN_NAMES, batch_of, build_real

# the recurrent layer and the layer feeding it stay; the rest of a small RNN model is little
_MOST_KEPT = {"lstm": 0.97, "gru": 0.97, "shufflenet_v2": 0.7}


@pytest.mark.parametrize("name", REAL_ZOO_NAMES)
def test_structured_pruning_on_real_architectures(name):
    model, x = build_real(name)
    p0, m0 = count_params(model), count_macs(model, x)
    prune_channels_(model, StructuredPruneConfig(ratio=0.5, round_to=8), x)
    out = pick_output(model(batch_of(name, 3, 7)))
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    assert count_params(model) < _MOST_KEPT.get(name, 0.5) * p0
    assert count_macs(model, x) < m0


def test_vit_and_convnext_own_parameters_follow_their_channels():
    vit, x = build_real("vit_tiny")
    prune_channels_(vit, StructuredPruneConfig(ratio=0.5, round_to=8), x)
    width = vit.patch_embed.proj.out_channels
    assert width < 64 and vit.cls_token.shape[-1] == width and vit.pos_embed.shape[-1] == width
    cnx, x = build_real("convnext_tiny")
    prune_channels_(cnx, StructuredPruneConfig(ratio=0.5, round_to=8), x)
    block = cnx.stages[1].blocks[0]
    assert block.gamma.shape[0] == block.conv_dw.out_channels < 32


@pytest.mark.parametrize("name", HF_NAMES + ("vit_tiny",))
def test_attention_heads_pruned_whole_and_module_counts_updated(name):
    model, x = build_real(name)
    before = {a.name: (a.heads, a.head_size) for a in hf_attention(model)}
    assert before
    prune_channels_(model, StructuredPruneConfig(ratio=0.5, head_ratio=0.5, round_to=8), x)
    for a in hf_attention(model):
        heads, size = before[a.name]
        assert a.heads == heads // 2 and a.head_size == size
        assert all(q.out_features == a.heads * size * a.fused for q in a.qkv)
    assert pick_output(model(x)).shape == (2, 10)


def test_hf_model_with_attention_mask_after_pruning():
    model, x = build_real("bert_tiny")
    prune_channels_(model, StructuredPruneConfig(ratio=0.5, head_ratio=0.5), x)
    mask = torch.ones_like(x)
    mask[:, -4:] = 0
    assert model(input_ids=x, attention_mask=mask).logits.shape == (2, 10)


class _ShapeBound(nn.Module):
    """Multiplies by a buffer sized for 16 channels: pruning the conv before it breaks the forward."""

    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.ones(1, 16, 1, 1))

    def forward(self, x):
        return x * self.scale


def test_broken_surgery_names_the_layer_and_restores_the_model():
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), _ShapeBound(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(16, 10)).eval()
    x = torch.randn(2, 3, 8, 8)
    ref = model(x)
    with pytest.raises(StructuredPruneError, match=r"layer '2' \(_ShapeBound\)"):
        prune_channels_(model, StructuredPruneConfig(ratio=0.5), x)
    assert torch.equal(model(x), ref)


def test_recurrent_layers_kept_and_neighbours_pruned(caplog):
    model, x = build_real("gru")
    with caplog.at_level(logging.DEBUG, logger="autocompress.prune.structured"):
        prune_channels_(model, StructuredPruneConfig(ratio=0.5), x)
    assert model.rnn.input_size == model.proj[0].out_features == 32      # feeds the GRU: kept
    assert model.fc[0].out_features == 16                                  # after it: pruned
    assert "'proj.0'" in caplog.text and "GRU" in caplog.text


@pytest.mark.parametrize("name", RNN_NAMES)
def test_recurrent_export_runs_at_batch_8(name, tmp_path):
    model, x = build_real(name)
    path = export_onnx(model, x[:1], tmp_path / f"{name}.onnx", dynamic_batch=True)
    rep = check_parity(model, path, batch_of(name, 8, 3), atol=1e-4)
    assert rep.samples == 8


def test_hf_model_exports_as_it_is_with_int64_ids_and_attention_mask(tmp_path):
    model, ids = build_real("bert_tiny")
    mask = torch.ones_like(ids)
    mask[0, -5:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    path = export_onnx(model, inputs, tmp_path / "bert.onnx")
    sess = session(path)
    assert [(i.name, i.type) for i in sess.get_inputs()] == [("input_ids", "tensor(int64)"),
                                                             ("attention_mask", "tensor(int64)")]
    ids8 = batch_of("bert_tiny", 8, 4)
    check_parity(model, path, {"input_ids": ids8, "attention_mask": torch.ones_like(ids8)}, atol=1e-4)
    # the mask matters: the graph did not freeze it
    got = run(sess, inputs)
    assert np.allclose(got, model(**inputs).logits.detach().numpy(), atol=1e-4)
    assert not np.allclose(got[0], run(sess, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})[0])


def test_hf_model_exports_with_ids_alone_and_parity_reads_the_modeloutput(tmp_path):
    model, ids = build_real("distilbert_tiny")
    prune_channels_(model, StructuredPruneConfig(ratio=0.5, head_ratio=0.5), ids)
    path = export_onnx(model, ids, tmp_path / "distil.onnx")
    assert session(path).get_inputs()[0].type == "tensor(int64)"
    check_parity(model, path, batch_of("distilbert_tiny", 8, 2), atol=1e-4)


def test_from_datasets_keeps_int64_ids_and_keyword_inputs_through_ort(tmp_path):
    from autocompress.data import from_datasets
    from autocompress.targets.onnxruntime import ort_accuracy

    model, _ = build_real("bert_tiny")
    ids = batch_of("bert_tiny", 24, 9).numpy()              # numpy int64, as a tokenizer gives
    mask = np.ones_like(ids)
    y = np.arange(24) % 10
    data = from_datasets(({"input_ids": ids, "attention_mask": mask}, y),
                         ({"input_ids": ids[:8], "attention_mask": mask[:8]}, y[:8]), (ids, y))
    x = data.example_input(4)
    assert x["input_ids"].dtype == torch.int64 and data.input_shape == (16,) and data.num_classes == 10
    assert data.calibration_batch(10)["attention_mask"].shape == (10, 16)
    path = export_onnx(model, x, tmp_path / "bert.onnx")
    with torch.no_grad():
        want = np.mean([int(model(**xb).logits.argmax(-1)[i] == yb[i])
                        for xb, yb in data.loader("val", 8) for i in range(len(yb))])
    assert ort_accuracy(path, data.loader("val", 4)) == pytest.approx(want)
    ids_only = from_datasets((ids, y), (ids, y), (ids, y))            # plain int64 array too
    assert ids_only.example_input(2).dtype == torch.int64


def test_static_int8_export_with_all_zero_biases(tmp_path):
    # fresh BatchNorm folds to an all-zero conv bias and a zero-initialised head bias: the exporter
    # drops them, which used to fail with an ONNX node name
    from autocompress.targets.onnxruntime import export_quantized
    from autocompress.quantize import PTQConfig, quantize_

    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()
    nn.init.zeros_(model[5].bias)
    x = torch.randn(32, 3, 12, 12)
    q = quantize_(model, PTQConfig(), x)
    path = export_quantized(q, x[:8], tmp_path / "q.onnx")         # verifies parity on ORT
    assert run(session(path), x[:4]).shape == (4, 10)


@pytest.mark.parametrize("config", ["DynamicInt8Config", "Int4WeightOnlyConfig"])
def test_linear_only_quantization_on_a_cnn_without_linear_says_so_up_front(config):
    import autocompress.quantize as Q

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 10, 1), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten()).eval()
    with pytest.raises(ValueError, match="no Linear layer.*Conv2d.*PTQConfig"):
        Q.quantize_(model, getattr(Q, config)(), torch.randn(4, 3, 8, 8))


def test_structured_pruning_with_keyword_inputs():
    model, ids = build_real("bert_tiny")
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    m0 = count_macs(model, inputs)
    prune_channels_(model, StructuredPruneConfig(ratio=0.5, head_ratio=0.5), inputs)
    assert count_macs(model, inputs) < 0.6 * m0 and model(**inputs).logits.shape == (2, 10)


def test_dynamic_batch_is_never_silently_fixed_on_recurrent_models(tmp_path):
    from autocompress.export import ExportError

    model, x = build_real("lstm")
    for exporter in ("dynamo", "torchscript"):
        try:
            path = export_onnx(model, x[:1], tmp_path / f"{exporter}.onnx", exporter=exporter)
        except ExportError as e:              # allowed: a clear refusal, never a batch-1 graph
            assert "batch dimension is fixed" in str(e) or exporter == "dynamo"
            continue
        assert run(session(path), batch_of("lstm", 8)).shape == (8, 10)


def test_dynamic_int8_export_of_an_hf_model_as_it_is(tmp_path):
    from autocompress.targets.onnxruntime import export_quantized
    from autocompress.quantize import DynamicInt8Config, quantize_

    model, ids = build_real("distilbert_tiny")
    q = quantize_(model, DynamicInt8Config())
    path = export_quantized(q, batch_of("distilbert_tiny", 8, 3), tmp_path / "q.onnx")   # ORT parity inside
    assert session(path).get_inputs()[0].type == "tensor(int64)"


def _hf_dict(name: str, n: int, seed: int) -> dict:
    ids = batch_of(name, n, seed)
    mask = torch.ones_like(ids)
    mask[::2, -3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("name", HF_NAMES)
def test_static_int8_on_hf_models_keeps_int64_ids_unobserved(name, tmp_path, caplog):
    # token ids (and the attention mask) reach the model as they are: only the Linear layers'
    # activations are calibrated; the QDQ graph keeps int64 inputs and matches the simulation on ORT
    from autocompress.targets.onnxruntime import export_quantized
    from autocompress.quantize import PTQConfig, quant_report, quantize_

    model, _ = build_real(name)
    calib = _hf_dict(name, 32, 3) if name == "bert_tiny" else batch_of(name, 32, 3)
    with torch.no_grad():
        ref = pick_output(model(**calib) if isinstance(calib, dict) else model(calib))
    with caplog.at_level(logging.INFO, logger="autocompress.quantize.ptq"):
        q = quantize_(model, PTQConfig(), calib)
    assert "integer inputs" in caplog.text and "unobserved" in caplog.text
    rep = quant_report(q)
    static = [n for n, r in rep.layers.items() if r.mode == "static"]
    assert len(static) >= 10 and all(isinstance(q.get_submodule(n).module, nn.Linear) for n in static)
    assert any("Embedding" in why for why in rep.float_layers.values())
    example = _hf_dict(name, 8, 5) if name == "bert_tiny" else batch_of(name, 8, 5)
    path = export_quantized(q, example, tmp_path / "q.onnx")          # ORT parity with the simulation inside
    sess = session(path)
    assert {i.type for i in sess.get_inputs()} == {"tensor(int64)"}
    assert len(sess.get_inputs()) == (2 if name == "bert_tiny" else 1)
    ops = {n.op_type for n in __import__("onnx").load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    with torch.no_grad():     # quantized for real (not the float model), and close to it
        sim = pick_output(q(**calib) if isinstance(calib, dict) else q(calib))
    assert not torch.equal(sim, ref) and (sim - ref).abs().max() < 0.2 * ref.abs().max()


def test_static_int8_calibrates_from_a_loader_of_dict_batches_with_labels():
    from autocompress.quantize import PTQConfig, quantize_

    model, _ = build_real("bert_tiny")
    loader = [(_hf_dict("bert_tiny", 8, s), torch.arange(8) % 10) for s in range(3)]
    q = quantize_(model, PTQConfig(num_calibration=20), loader)
    x = _hf_dict("bert_tiny", 4, 9)
    assert q(**x).logits.shape == (4, 10)


@pytest.mark.parametrize("kind", ["structured", "unstructured"])
def test_taylor_importance_with_dict_batches_and_modeloutput(kind):
    # cross_entropy (the default loss) calls the model with keyword inputs and reads its logits
    from autocompress.prune import PruneConfig, prune_
    from autocompress.prune.importance import taylor_stats

    model, ids = build_real("bert_tiny")
    loader = [(_hf_dict("bert_tiny", 8, s), torch.arange(8) % 10) for s in range(2)]
    params = {"classifier.weight": model.classifier.weight}
    assert taylor_stats(model, params, loader, batches=2)["classifier.weight"].abs().sum() > 0
    example = _hf_dict("bert_tiny", 2, 1)
    if kind == "structured":
        m0 = count_macs(model, example)
        prune_channels_(model, StructuredPruneConfig(ratio=0.5, importance="taylor", taylor_batches=2),
                        example, loader)
        assert count_macs(model, example) < 0.6 * m0
    else:
        prune_(model, PruneConfig(sparsity=0.5, importance="taylor"), loader)
        w = model.bert.encoder.layer[0].intermediate.dense.weight
        assert 0.4 < float((w == 0).float().mean()) < 0.6
    assert model(**example).logits.shape == (2, 10)


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "vit_tiny", "bert_tiny", "distilbert_tiny"])
def test_artifact_loads_structurally_pruned_library_models_without_factory(name, tmp_path):
    """torchvision / timm / Hugging Face classes are rebuilt from the artifact alone (import paths
    from the allow-list plus attributes), with the pruned widths and head counts; outputs bit-equal."""
    from autocompress.encode import artifact_info, load_compressed, save_compressed
    model, x = build_real(name)
    heads = 0.5 if name != "mobilenet_v3_small" else 0.0
    prune_channels_(model, StructuredPruneConfig(ratio=0.5, head_ratio=heads, round_to=8), x)
    model.eval()
    save_compressed(model, tmp_path / "m.acz")
    assert artifact_info(tmp_path / "m.acz")["arch"]["kind"] == "tree"
    loaded = load_compressed(tmp_path / "m.acz")
    x = batch_of(name, 3, 11)
    with torch.no_grad():
        assert torch.equal(pick_output(model(x)), pick_output(loaded(x)))


def test_artifact_recurrent_layers_rebuild_and_a_custom_class_is_named(tmp_path):
    from autocompress.encode import StorageError, load_compressed, save_compressed
    x = batch_of("lstm", 2, 3)
    for cell in (nn.LSTM, nn.GRU):                    # torch.nn layers: no factory needed
        torch.manual_seed(0)
        rnn = cell(16, 24, batch_first=True, num_layers=2).eval()
        save_compressed(rnn, tmp_path / "r.acz")
        back = load_compressed(tmp_path / "r.acz")
        with torch.no_grad():
            assert torch.equal(rnn(x)[0], back(x)[0])
    model, _ = build_real("lstm")                     # a class of the user's own: its code is needed
    with pytest.raises(StorageError, match=r"_RNNClassifier.*not from a package.*model_factory="):
        save_compressed(model, tmp_path / "c.acz")
