"""Deployment targets (issues 11 and 14): the registry, ONNX Runtime and ExecuTorch behind one
interface, and a search that measures on ExecuTorch and writes model.pte."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Subset

from autocompress import targets
from autocompress.config import ConfigError
from autocompress.data import Splits, load_mnist
from autocompress.search import Budget, Recipe, compress

needs_executorch = pytest.mark.skipif("executorch" not in targets.available(),
                                      reason="executorch is not installed (pip install 'autocompress[executorch]')")


@pytest.fixture(scope="module")
def lenet5():
    """The bundled trained LeNet-5 and a few real MNIST images (calibration and parity)."""
    from autocompress.models.lenet import LeNet5
    from autocompress.models.weights_io import baseline_path, load_weights
    model = load_weights(LeNet5(), baseline_path("lenet5")).eval()
    data = load_mnist()
    x = torch.cat([data.train[i][0][None] for i in range(192)])
    return model, data, x


def test_registry_names_both_targets_and_their_files():
    assert {"onnxruntime", "executorch"} <= set(targets.names())
    assert targets.get("onnxruntime").suffix == ".onnx"
    assert targets.get("executorch").filename == "model.pte"
    assert set(targets.available()) <= set(targets.names())


def test_unknown_runtime_is_a_clear_error_listing_the_known_ones():
    with pytest.raises(targets.UnknownTargetError, match=r"unknown runtime 'tflite'.*executorch.*onnxruntime"):
        targets.get("tflite")
    with pytest.raises(ConfigError, match=r"Budget.runtime.*'tflite'.*onnxruntime"):
        Budget(runtime="tflite")


def test_a_missing_runtime_package_names_the_extra(monkeypatch):
    t = targets.get("executorch")
    monkeypatch.setattr(type(t), "package", "autocompress_no_such_runtime")
    assert "executorch" not in targets.available()
    with pytest.raises(targets.UnknownTargetError, match=r"pip install 'autocompress\[executorch\]'"):
        targets.require("executorch")


def test_budget_runtime_reads_from_yaml():
    b = Budget.from_yaml("runtime: executorch\nmax_drop: 0.5\n")
    assert b.runtime == "executorch" and Budget.from_yaml(b.to_yaml()) == b
    assert Budget().runtime == "onnxruntime"


def test_importing_techniques_and_search_loads_no_runtime():
    code = ("import sys, autocompress.prune, autocompress.quantize, autocompress.search, autocompress.targets; "
            "print(sorted(m for m in ('onnx', 'onnxruntime', 'executorch', 'torchao') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_onnxruntime_target_exports_runs_and_checks_parity(lenet5, tmp_path):
    model, _, x = lenet5
    t = targets.get("onnxruntime")
    p = t.export(model, x[:1], tmp_path / t.filename)
    rep = t.parity(model, p, x[:64])
    assert rep.top1_agreement == 1.0 and t.size(p) == p.stat().st_size
    assert set(t.time({"a": p}, (1, 28, 28), (1, 4), runs=3)["a"]) == {1, 4}


@needs_executorch
def test_executorch_fp32_and_int8_pte(lenet5, tmp_path):
    model, data, x = lenet5
    t = targets.get("executorch")
    fp = t.export(model, x[:1], tmp_path / "fp32.pte")
    assert fp.read_bytes()[4:8] == b"ET12"   # an ExecuTorch flatbuffer program
    assert t.parity(model, fp, x[:64], atol=1e-3).top1_agreement == 1.0
    for b in (1, 7, 64, 1000):               # any batch up to the planned bound runs
        assert t.run(fp, data.example_input(b)).shape == (b, 10)
    q = t.export(model, x[:1], tmp_path / "int8.pte", quantized=True, calibration=x[:128])
    # int8 weights: about a quarter of the fp32 file
    assert t.size(q) < t.size(fp) / 3
    # 128 calibration images only (the search uses 512): a wider output tolerance, same top-1 gate
    rep = t.parity(model, q, x[128:192], atol=0.5, rtol=0.2, min_agreement=0.95)
    assert rep.max_abs_diff > 0      # really quantized, not fp32 again
    # the runtime's own accuracy on real test images stays with PyTorch's
    loader = data.loader("test", 500, limit=500)
    from autocompress.train import evaluate
    assert abs(t.accuracy(q, loader) - evaluate(model, loader)) < 0.02
    lat = t.time({"fp32": fp, "int8": q}, (1, 28, 28), (1,), runs=5)
    assert all(s[1].median_ms > 0 for s in lat.values())


@needs_executorch
def test_executorch_parity_failure_names_the_runtime(lenet5, tmp_path):
    model, _, x = lenet5
    t = targets.get("executorch")
    p = t.export(model, x[:1], tmp_path / "m.pte")
    other = type(model)().eval()
    with pytest.raises(targets.ParityError, match="ExecuTorch.*disagrees with PyTorch"):
        t.parity(other, p, x[:32])


def _tiny_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))


@needs_executorch
def test_compress_on_executorch_measures_there_and_writes_model_pte(tmp_path):
    from autocompress.train import TrainConfig, fit
    full = load_mnist(flat=True)
    data = Splits(Subset(full.train, range(3000)), Subset(full.val, range(500)),
                  Subset(full.test, range(500)), full.input_shape, 10)
    torch.manual_seed(0)
    model = _tiny_mlp()
    fit(model, data.train, TrainConfig(epochs=1, lr=2e-3, progress=False))
    budget = Budget(max_drop=5.0, objective="fastest", max_trials=1, latency_batch=8, runtime="executorch")
    res = compress(model.eval(), data, budget, techniques=("quantize",), out_dir=tmp_path / "run", quick=True,
                   seeds=[Recipe(quant="int8", finetune_epochs=0.2, distill=False)])
    assert res.trials[0].state == "complete", res.trials[0].note
    assert res.trials[0].latency_ms and res.trials[0].base_latency_ms   # timed on ExecuTorch
    assert (tmp_path / "run" / "best" / "model.pte").exists() and not (tmp_path / "run" / "best" / "model.onnx").exists()
    assert res.final.runtime == "executorch" and res.final.latency_ms
    # ExecuTorch re-quantizes the model itself: the accuracy that decided is the .pte's own on val
    assert res.trials[0].val_accuracy == pytest.approx(res.final.deployed_accuracy["val"], abs=1e-9)
    paths = res.export(tmp_path / "out")
    pte = tmp_path / "out" / "model.pte"
    assert pte.exists() and paths["pte"] == pte
    # the deployed .pte runs on ExecuTorch at the accuracy reported
    x, y = next(iter(data.loader("test", 500)))
    acc = float((targets.get("executorch").run(pte, x).argmax(-1) == y.numpy()).mean())
    assert acc == pytest.approx(res.final.deployed_accuracy["test"], abs=1e-9)
    assert np.isfinite(res.final.deployed_bytes) and res.final.deployed_bytes < res.baseline.deployed_bytes
    md = (tmp_path / "out" / "report.md").read_text()   # the report names the runtime it measured on
    assert "deployed .pte file" in md and "(ExecuTorch (XNNPACK))" in md


@needs_executorch
def test_check_gates_a_pte_on_executorch(lenet5, tmp_path):
    from autocompress.check import CheckInputError, run_check
    model, data, x = lenet5
    t = targets.get("executorch")
    ref = t.export(model, x[:1], tmp_path / "fp32.pte")
    cand = t.export(model, x[:1], tmp_path / "int8.pte", quantized=True, calibration=x)
    res = run_check(cand, data, budget=Budget(max_drop=1.0, min_size_ratio=3, latency_batch=4),
                    reference_onnx=ref, fp32_bytes=t.size(ref), limit=300, runs=5)
    assert res.passed, res.items
    assert res.figures["size_kind"] == "PTE file" and res.figures["candidate_ms"] > 0
    with pytest.raises(CheckInputError, match="different runtimes"):
        run_check(cand, data, budget=Budget(), reference_onnx=targets.get("onnxruntime").export(
            model, x[:1], tmp_path / "fp32.onnx"), limit=100)


@needs_executorch
def test_check_exports_an_artifact_for_the_reference_runtime(lenet5, tmp_path):
    """check(artifact=..., reference .pte): the candidate is exported to .pte and timed there."""
    from autocompress.check import check
    from autocompress.encode import save_compressed
    model, data, x = lenet5
    ref = targets.get("executorch").export(model, x[:1], tmp_path / "fp32.pte")
    acz = tmp_path / "m.acz"
    save_compressed(model, acz)
    res = check(artifact=acz, reference_onnx=ref, data=data, budget=Budget(max_drop=0.5, latency_batch=4),
                limit=200)
    assert res.passed and res.figures["candidate_ms"] > 0, res.items


class _ToyTarget(targets.Target):
    """A third runtime written in one place: torch.export's own .pt2 archive, run by PyTorch."""

    name, suffix, package, label = "toy", ".pt2", "torch", "torch.export (toy)"

    def export(self, model, example, path, *, quantized=False, calibration=None, **opts):
        ep = torch.export.export(model.eval(), (example.expand(4, *example.shape[1:]),),
                                 dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))
        torch.export.save(ep, str(path))
        return path

    def load(self, path, threads=1):
        m = torch.export.load(str(path)).module()
        return lambda x: m(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).detach().numpy()


def test_a_new_target_is_one_registered_class(monkeypatch, tmp_path):
    """Issue 14: registering a Target is all a runtime needs; the search measures on it, the
    result deploys its file, the report names it (no other file changed)."""
    from autocompress.targets import base
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    monkeypatch.setattr(base, "_LOADED", dict(base._LOADED))
    targets.register("toy", _ToyTarget)
    assert "toy" in targets.available()
    full = load_mnist(flat=True)
    data = Splits(Subset(full.train, range(1000)), Subset(full.val, range(300)),
                  Subset(full.test, range(300)), full.input_shape, 10)
    budget = Budget(max_drop=50.0, objective="fastest", max_trials=1, latency_batch=8, runtime="toy")
    res = compress(_tiny_mlp().eval(), data, budget, techniques=("prune",), out_dir=tmp_path, quick=True,
                   seeds=[Recipe(sparsity=0.5, finetune_epochs=0.1, distill=False)])
    assert res.trials[0].state == "complete", res.trials[0].note
    assert res.trials[0].latency_ms and res.final.runtime == "toy"
    assert (tmp_path / "model.pt2").exists() and not (tmp_path / "model.onnx").exists()
    md = (tmp_path / "report.md").read_text()
    assert "(torch.export (toy))" in md and "deployed .pt2 file" in md


@needs_executorch
def test_int8_pte_uses_our_ranges_only_where_they_fit_better(lenet5, tmp_path):
    from autocompress.targets.executorch import _with_ranges
    model, _, x = lenet5
    t = targets.get("executorch")
    plain = t.export(model, x[:1], tmp_path / "plain.pte", quantized=True, calibration=x[:128])
    # absurd ranges (every activation squeezed to a few levels) lose to the observed ones
    bad = {n: (-1000.0, 1000.0) for n in ("conv1", "conv2", "fc1", "fc2")}
    kept = t.export(model, x[:1], tmp_path / "kept.pte", quantized=True, calibration=x[:128], input_ranges=bad)
    assert np.array_equal(t.run(plain, x[128:160]), t.run(kept, x[128:160]))
    # and the ranges really reach the observers in front of the named layers
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e
    g = torch.export.export(model, (x[:64],)).module()
    prepared = prepare_pt2e(g, XNNPACKQuantizer().set_global(get_symmetric_quantization_config()))
    prepared(x[:64])
    _with_ranges(prepared, {"fc1": (-3.0, 5.0)})
    lims = {(float(o.min_val), float(o.max_val)) for o in prepared.modules() if hasattr(o, "min_val")}
    assert (-3.0, 5.0) in lims
