"""Compressed weights in the deployed ONNX file: exact round trip, size from the bits, decoded at
load by stock ONNX Runtime (folded away), and runnable by a process that has only onnxruntime."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from autocompress import targets
from autocompress.export.packed import pack_model, packing_metadata

PLAIN = Path(__file__).resolve().parents[1] / "benchmarks" / "ort_plain.py"


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.fc1 = nn.Linear(8 * 6 * 6, 256)
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1))))


def _compress_(model: nn.Module, sparsity: float, levels: int, seed: int = 0) -> nn.Module:
    """Zero the smallest weights and snap the rest to ``levels`` shared values per layer (what
    pruning + clustering leave behind), without training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in (model.conv, model.fc1, model.fc2):
            w = m.weight
            keep = w.abs() > w.abs().flatten().kthvalue(max(1, int(sparsity * w.numel()))).values \
                if sparsity > 0 else torch.ones_like(w, dtype=torch.bool)
            table = torch.linspace(-1, 1, levels) * w.abs().max() + 1e-3 * torch.rand(levels, generator=g)
            snapped = table[(w.unsqueeze(-1) - table).abs().argmin(-1)]
            w.copy_(torch.where(keep, snapped, torch.zeros_like(w)))
    return model.eval()


@pytest.fixture(scope="module")
def ort_target():
    return targets.get("onnxruntime")


def _files(tmp_path, model, ort_target):
    x = torch.randn(1, 1, 8, 8)
    fp = ort_target.export(model, x, tmp_path / "fp32.onnx", packed=False)
    pk = ort_target.export(model, x, tmp_path / "packed.onnx")
    return fp, pk


def test_sparse_clustered_round_trip_is_exact_and_small(tmp_path, ort_target):
    torch.manual_seed(0)
    model = _compress_(Tiny(), sparsity=0.9, levels=16)
    fp, pk = _files(tmp_path, model, ort_target)
    xs = torch.randn(64, 1, 8, 8)
    ort_target.parity(model, pk, xs, atol=1e-5)                        # the project's parity check
    np.testing.assert_array_equal(ort_target.run(pk, xs), ort_target.run(fp, xs))   # weights bit-exact
    packed = {r["name"]: r for r in packing_metadata(pk)}
    assert packed["fc1.weight"]["encoding"] == "sparse"
    # the bound from the bits: each non-zero costs at most an 8-bit gap plus a 4-bit code (16
    # values; at 90 % sparsity an 8-bit gap almost never needs a filler) plus the codebook
    nnz = sum(int((m.weight != 0).sum()) for m in (model.conv, model.fc1, model.fc2))
    dense = sum(m.weight.numel() for m in (model.conv, model.fc1, model.fc2))
    others = 4 * sum(m.bias.numel() for m in (model.conv, model.fc1, model.fc2))
    bound = nnz * (8 + 4) / 8 + 3 * 16 * 4 + others + 3000       # + graph, decoder nodes, metadata
    assert pk.stat().st_size < bound, (pk.stat().st_size, bound)
    assert fp.stat().st_size > 4 * dense                              # fp32 stores every weight
    assert fp.stat().st_size / pk.stat().st_size > 0.8 * (4 * dense + others) / bound


def test_dense_clustered_weights_cost_their_bits(tmp_path, ort_target):
    torch.manual_seed(1)
    model = _compress_(Tiny(), sparsity=0.0, levels=16)                # 16 values: 4-bit codes
    fp, pk = _files(tmp_path, model, ort_target)
    ort_target.parity(model, pk, torch.randn(32, 1, 8, 8), atol=1e-5)
    enc = {r["name"]: r for r in packing_metadata(pk)}["fc1.weight"]
    assert enc["encoding"] == "codebook" and "bits=4" in enc["detail"]
    n = model.fc1.weight.numel()
    assert enc["packed_bytes"] <= n * 4 / 8 + 16 * 4 + 600            # codes + codebook + decoder
    assert fp.stat().st_size / pk.stat().st_size > 5                   # 32 -> 4 bits on ~all weights


def test_decoder_is_folded_at_load(tmp_path, ort_target):
    """ONNX Runtime's default constant folding decodes once, so inference runs the fp32 kernels."""
    model = _compress_(Tiny(), sparsity=0.8, levels=8)
    fp, pk = _files(tmp_path, model, ort_target)
    ops = {}
    for f in (fp, pk):
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(f.with_suffix(".opt.onnx"))
        ort.InferenceSession(str(f), so, providers=["CPUExecutionProvider"])
        ops[f] = sorted(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    assert ops[pk] == ops[fp]


def test_dense_fp32_is_left_alone(tmp_path, ort_target):
    model = Tiny().eval()
    onnx_model = onnx.load(str(ort_target.export(model, torch.randn(1, 1, 8, 8), tmp_path / "m.onnx",
                                                 packed=False)))
    assert pack_model(onnx_model) == []


def test_plain_onnxruntime_process_runs_it(tmp_path, ort_target):
    """A process with only onnxruntime + numpy (autocompress and torch refused) gets the accuracy
    the project reports for the deployed file."""
    torch.manual_seed(2)
    model = _compress_(Tiny(), sparsity=0.9, levels=16)
    _, pk = _files(tmp_path, model, ort_target)
    xs = torch.randn(300, 1, 8, 8)
    with torch.no_grad():
        logits = model(xs)
    labels = logits.argmax(-1).numpy()
    labels[::7] = (labels[::7] + 1) % 10                              # not all right: accuracy < 1
    np.save(tmp_path / "x.npy", xs.numpy())
    np.save(tmp_path / "y.npy", labels)
    reported = ort_target.accuracy(pk, [(xs, torch.from_numpy(labels))])
    out = subprocess.run([sys.executable, "-I", str(PLAIN), str(pk), str(tmp_path / "x.npy"),
                          str(tmp_path / "y.npy")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["blocked_imports"] == [] and got["loaded"] == []
    assert got["samples"] == 300 and got["accuracy"] == pytest.approx(reported, abs=1e-9)
    assert 0.5 < got["accuracy"] < 1.0


def test_sparse_int8_qdq_graph_packs_and_still_fuses(tmp_path, ort_target):
    """int8 weights of a QDQ graph are packed too; once folded, ONNX Runtime fuses the same
    integer kernels (QLinearConv / QGemm) as for the unpacked file, with identical outputs."""
    from autocompress.quantize import PTQConfig, quantize_
    model = _compress_(Tiny(), sparsity=0.9, levels=256)
    quantize_(model, PTQConfig(weight_bits=8, act_bits=8), torch.randn(64, 1, 8, 8))
    x = torch.randn(1, 1, 8, 8)
    a = ort_target.export(model, x, tmp_path / "q.onnx", quantized=True, packed=False)
    b = ort_target.export(model, x, tmp_path / "qp.onnx", quantized=True)
    assert b.stat().st_size < 0.5 * a.stat().st_size
    xs = torch.randn(32, 1, 8, 8)
    np.testing.assert_array_equal(ort_target.run(a, xs), ort_target.run(b, xs))
    ops = []
    for f in (a, b):
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(f.with_suffix(".opt.onnx"))
        ort.InferenceSession(str(f), so, providers=["CPUExecutionProvider"])
        ops.append(sorted(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node))
    assert ops[0] == ops[1] and "QGemm" in ops[1]


@pytest.mark.parametrize("exporter, opset, packs", [("torchscript", 18, True), ("dynamo", 17, False)])
def test_other_exporters_and_old_opsets(tmp_path, ort_target, exporter, opset, packs):
    """The legacy exporter's graph packs the same way; an opset without BitwiseAnd is left as is."""
    model = _compress_(Tiny(), sparsity=0.9, levels=16)
    x = torch.randn(1, 1, 8, 8)
    f = ort_target.export(model, x, tmp_path / "m.onnx", exporter=exporter, opset=opset)
    assert bool(packing_metadata(f)) == packs
    ort_target.parity(model, f, torch.randn(16, 1, 8, 8), atol=1e-5)


def test_packed_file_reads_back_as_plain_weights(tmp_path, ort_target):
    """Tools that read weights from initializers (the ONNX front door, viewers) get them back."""
    from autocompress.export.packed import unpack_model
    model = _compress_(Tiny(), sparsity=0.9, levels=16)
    fp, pk = _files(tmp_path, model, ort_target)
    proto = onnx.load(str(pk))
    restored = unpack_model(proto)
    assert "fc1.weight" in restored
    plain = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    np.testing.assert_array_equal(plain["fc1.weight"], model.fc1.weight.detach().numpy())
    assert {n.op_type for n in proto.graph.node} <= {n.op_type for n in onnx.load(str(fp)).graph.node}


def test_front_door_reads_a_deployed_packed_file(tmp_path, ort_target):
    import autocompress as ac
    model = _compress_(Tiny(), sparsity=0.9, levels=16)
    _, pk = _files(tmp_path, model, ort_target)
    back = ac.from_onnx(pk)                                  # checked against ONNX Runtime on the file
    with torch.no_grad():
        x = torch.randn(8, 1, 8, 8)
        torch.testing.assert_close(back(x), model(x), atol=1e-5, rtol=0)
