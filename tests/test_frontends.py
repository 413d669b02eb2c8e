"""Models from other frameworks: ONNX files and Keras 3 models become modules every technique takes.

The zoo's CNNs go out through our ONNX export and come back through ``from_onnx``; the converted
module must match ONNX Runtime on the file (and the original PyTorch model) within 1e-4, survive
pruning, clustering and quantization, and export again. Keras models keep their NHWC input.
"""

import copy
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import autocompress as ac
from autocompress.config import ConfigError
from autocompress.export import export_onnx
from autocompress.targets.onnxruntime import check_parity, run, session
from autocompress.frontends import FrontendError, OnnxModel
from zoo import CNN_NAMES, batch_of, build

if importlib.util.find_spec("onnx2torch") is None:   # not imported here: our loader must go first
    pytest.skip("onnx2torch is not installed (pip install '.[onnx]')", allow_module_level=True)


def _zoo_onnx(name, tmp_path) -> tuple[torch.nn.Module, Path]:
    model, x = build(name)
    return model, export_onnx(model, x, tmp_path / f"{name}.onnx")


@pytest.mark.parametrize("name", CNN_NAMES)
def test_from_onnx_matches_onnx_runtime(name, tmp_path):
    model, path = _zoo_onnx(name, tmp_path)
    conv = ac.from_onnx(path)
    assert isinstance(conv, OnnxModel)
    assert conv.input_names == ["input"] and conv.output_names == ["output"]
    assert conv.input_shapes[0][1:] == (1, 16, 16) and isinstance(conv.input_shapes[0][0], str)
    x = batch_of(name, 7, seed=3)           # another batch size than the check inside from_onnx
    with torch.no_grad():
        got = conv(x).numpy()
        ref_torch = model(x).numpy()
    ref_ort = run(session(path), x)
    assert np.abs(got - ref_ort).max() <= 1e-4
    assert np.abs(got - ref_torch).max() <= 1e-4
    # what the graph clean-up promises: real layers, no run-time reshape left for the techniques
    kinds = {type(m).__name__ for m in conv.modules()}
    assert "OnnxReshape" not in kinds and {"Conv2d", "Linear"} <= kinds


def test_techniques_run_on_a_converted_cnn(tmp_path):
    from autocompress.encode import ClusterConfig, cluster_
    from autocompress.targets.onnxruntime import export_quantized
    from autocompress.prune import PruneConfig, StructuredPruneConfig, model_cost, prune_, prune_channels_
    from autocompress.quantize import PTQConfig, quantize_

    _, path = _zoo_onnx("residual_cnn", tmp_path)
    conv = ac.from_onnx(path)
    x, xs = batch_of("residual_cnn", 2), batch_of("residual_cnn", 16, seed=5)

    pruned = copy.deepcopy(conv)
    p0 = model_cost(pruned, x, "params")
    prune_channels_(pruned, StructuredPruneConfig(ratio=0.5), x)
    assert model_cost(pruned, x, "params") < 0.6 * p0
    check_parity(pruned, export_onnx(pruned, x, tmp_path / "structured.onnx"), xs, atol=1e-4)

    sparse = prune_(copy.deepcopy(conv), PruneConfig(sparsity=0.8))
    clustered = cluster_(sparse, ClusterConfig())
    check_parity(clustered, export_onnx(clustered, x, tmp_path / "clustered.onnx"), xs, atol=1e-4)

    q = quantize_(copy.deepcopy(conv), PTQConfig(), xs)
    out = export_quantized(q, x, tmp_path / "int8.onnx")      # verifies parity with the fake-quant model
    kinds = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "QuantizeLinear" in kinds or "QLinearConv" in kinds


def _custom_op_model(path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    nodes = [helper.make_node("Relu", ["x"], ["h"], name="relu0"),
             helper.make_node("FancyGate", ["h"], ["y"], name="gate_node", domain="com.example")]
    graph = helper.make_graph(nodes, "custom", [x], [y])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save(m, str(path))
    return path


def test_unsupported_operator_is_named(tmp_path):
    path = _custom_op_model(tmp_path / "custom.onnx")
    with pytest.raises(FrontendError) as e:
        ac.from_onnx(path)
    msg = str(e.value)
    assert "com.example::FancyGate" in msg and "gate_node" in msg and "custom.onnx" in msg
    assert "Relu" not in msg.split("converter:")[1].split(".")[0]     # supported ops are not blamed


def test_missing_and_unreadable_files_are_clear(tmp_path):
    with pytest.raises(FrontendError, match="does not exist"):
        ac.from_onnx(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(FrontendError, match="not a readable ONNX file"):
        ac.from_onnx(bad)


def test_newer_opset_is_down_converted(tmp_path):
    from onnx import version_converter
    model, path = _zoo_onnx("plain_cnn", tmp_path)
    newer = tmp_path / "opset20.onnx"
    onnx.save(version_converter.convert_version(onnx.load(str(path)), 20), str(newer))
    conv = ac.from_onnx(newer)
    x = batch_of("plain_cnn", 5)
    with torch.no_grad():
        assert np.abs(conv(x).numpy() - run(session(newer), x)).max() <= 1e-4


def test_run_config_takes_an_onnx_file_without_weights(tmp_path):
    from autocompress.runconfig import RunConfig, load_model, model_factory
    _, path = _zoo_onnx("concat_cnn", tmp_path)
    cfg = RunConfig(model=path.name, data="mnist", base_dir=str(tmp_path))
    m = load_model(cfg)
    assert isinstance(m, OnnxModel) and m.parity["output"] <= 1e-4
    assert type(model_factory(cfg)()) is OnnxModel
    with pytest.raises(ConfigError, match="holds its weights"):
        load_model(RunConfig(model=path.name, data="mnist", weights="w.safetensors", base_dir=str(tmp_path)))
    _custom_op_model(tmp_path / "custom.onnx")
    with pytest.raises(ConfigError, match="FancyGate"):
        load_model(RunConfig(model="custom.onnx", data="mnist", base_dir=str(tmp_path)))


# -- Keras ---------------------------------------------------------------------------------------

def _keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip(f"Keras runs on {keras.backend.backend()!r}, these tests need the torch backend")
    return keras


def test_keras_cnn_keeps_nhwc_and_matches_keras(tmp_path):
    keras = _keras()
    from autocompress.prune import StructuredPruneConfig, model_cost, prune_channels_
    keras.utils.set_random_seed(0)
    km = keras.Sequential([keras.Input((12, 12, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                           keras.layers.MaxPooling2D(), keras.layers.Conv2D(8, 3, activation="relu"),
                           keras.layers.Flatten(), keras.layers.Dense(16, activation="relu"),
                           keras.layers.Dense(10)])
    conv = ac.from_keras(km, path=tmp_path / "k.onnx")
    assert conv.channels_last and conv.input_shapes[0][1:] == (12, 12, 1)
    x = np.random.default_rng(0).standard_normal((6, 12, 12, 1)).astype(np.float32)
    with torch.no_grad():
        got = conv(torch.from_numpy(x)).numpy()
    assert np.abs(got - np.asarray(km.predict(x, verbose=0))).max() <= 1e-4
    # Keras' NHWC sandwiches collapse: one layout change at the input, Dense layers are nn.Linear
    kinds = [type(m).__name__ for m in conv.net.modules()]
    assert kinds.count("OnnxTranspose") == 1 and kinds.count("Linear") == 2
    assert all(m.bias is not None for m in conv.modules() if isinstance(m, torch.nn.Conv2d))
    xt = torch.from_numpy(x[:2])
    p0 = model_cost(conv, xt, "params")
    prune_channels_(conv, StructuredPruneConfig(ratio=0.5), xt)
    assert model_cost(conv, xt, "params") < p0
    check_parity(conv, export_onnx(conv, xt, tmp_path / "pruned.onnx"), torch.from_numpy(x), atol=1e-4)


def test_keras_functional_bn_residual_depthwise_gap(tmp_path):
    keras = _keras()
    from autocompress.prune import StructuredPruneConfig, model_cost, prune_channels_
    keras.utils.set_random_seed(0)
    L = keras.layers
    inp = keras.Input((16, 16, 3))
    h = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, padding="same", use_bias=False)(inp)))
    h = L.Add()([h, L.Conv2D(8, 3, padding="same", activation="relu")(h)])
    h = L.Conv2D(16, 1, activation="relu")(L.DepthwiseConv2D(3, padding="same")(h))
    km = keras.Model(inp, L.Dense(10)(L.Dropout(0.2)(L.GlobalAveragePooling2D()(h))))
    x = np.random.default_rng(0).standard_normal((6, 16, 16, 3)).astype(np.float32)
    km(x)
    bn = next(layer for layer in km.layers if isinstance(layer, L.BatchNormalization))
    bn.moving_mean.assign(np.linspace(-0.1, 0.1, 8).astype(np.float32))   # BN that is not the identity
    bn.moving_variance.assign(np.linspace(0.5, 1.5, 8).astype(np.float32))
    conv = ac.from_keras(km)
    with torch.no_grad():
        got = conv(torch.from_numpy(x)).numpy()
    assert np.abs(got - np.asarray(km(x).detach().cpu())).max() <= 1e-4
    kinds = [type(m).__name__ for m in conv.net.modules()]
    # BN folded into its conv, the residual add and the pooling in NCHW: one layout change, at the input
    assert kinds.count("OnnxTranspose") == 1 and kinds.count("Conv2d") == 4 and kinds.count("Linear") == 1
    xt = torch.from_numpy(x)
    p0 = model_cost(conv, xt[:2], "params")
    prune_channels_(conv, StructuredPruneConfig(ratio=0.5), xt[:2])
    assert model_cost(conv, xt[:2], "params") < 0.7 * p0
    check_parity(conv, export_onnx(conv, xt[:2], tmp_path / "pruned.onnx"), xt, atol=1e-4)


@pytest.mark.slow
def test_keras_mnist_example_quick(tmp_path):
    _keras()
    path = Path(__file__).resolve().parents[1] / "examples" / "keras_mnist.py"
    spec = importlib.util.spec_from_file_location("keras_mnist_example", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod            # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    o = mod.run(tmp_path / "out", quick=True)
    assert abs(o.converted_acc - o.keras_acc) < 0.01          # conversion kept the Keras model's accuracy
    assert o.compressed_bytes < o.keras_bytes
    assert (tmp_path / "out" / "model.onnx").exists()
    # the budget (max 5 points lost, quick) is judged on validation; on test it holds too, loosely
    assert o.compressed_ort_acc >= o.keras_acc - 0.10


def test_compressed_export_keeps_the_files_names(tmp_path):
    from autocompress.targets.onnxruntime import export_quantized
    from autocompress.prune import PruneConfig, prune_
    from autocompress.quantize import PTQConfig, quantize_

    model, x = build("plain_cnn")
    path = tmp_path / "named.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}}, opset_version=17)
    conv = ac.from_onnx(path)
    assert (conv.input_names, conv.output_names) == (["image"], ["logits"])
    xs = batch_of("plain_cnn", 16, seed=5)
    outs = [export_onnx(prune_(copy.deepcopy(conv), PruneConfig(sparsity=0.5)), x, tmp_path / "sparse.onnx"),
            export_quantized(quantize_(copy.deepcopy(conv), PTQConfig(), xs), x, tmp_path / "int8.onnx")]
    for out in outs:
        s = session(out)
        assert [i.name for i in s.get_inputs()] == ["image"] and [o.name for o in s.get_outputs()] == ["logits"]
        assert s.get_inputs()[0].shape[1:] == [1, 16, 16]


@pytest.mark.slow
def test_converted_model_exports_with_dynamo_and_to_executorch(tmp_path):
    from autocompress import targets
    _, path = _zoo_onnx("residual_cnn", tmp_path)
    conv = ac.from_onnx(path)
    x, xs = batch_of("residual_cnn", 2), batch_of("residual_cnn", 8, seed=2)
    check_parity(conv, export_onnx(conv, x, tmp_path / "dyn.onnx", exporter="dynamo"), xs, atol=1e-4)
    et = targets.get("executorch")
    if not et.installed():
        pytest.skip("ExecuTorch is not installed")
    assert et.parity(conv, et.export(conv, x, tmp_path / "m.pte"), xs, atol=1e-4).max_abs_diff <= 1e-4
