"""Weight clustering and the compressed storage artifact: zeros kept, <= 2^bits values per layer,
shared-centroid fine-tuning, bit-exact round trips, corruption detected, entropy coders exact."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from zoo import batch_of, build

from autocompress.config import ConfigError
from autocompress.encode import (ClusterConfig, StorageError, artifact_info, cluster_, codebooks, kmeans_1d,
                                 load_compressed, save_compressed, strip_clusters_, sync_clusters)
from autocompress.encode import entropy
from autocompress.factorize import FactorizeConfig, factorize_
from autocompress.models import build_model
from autocompress.train import TrainConfig, fit


def _prune(model: nn.Module, frac: float = 0.8) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                w = m.weight
                k = int(w.numel() * frac)
                if k:
                    thr = w.abs().flatten().kthvalue(k).values
                    w[w.abs() <= thr] = 0


def _layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))


# -- clustering ------------------------------------------------------------------------------

@pytest.mark.parametrize("init", ["linear", "density", "kmeans++"])
def test_kmeans_1d_finds_separated_clusters(init):
    g = torch.Generator().manual_seed(0)
    v = torch.cat([torch.randn(300, generator=g) * 0.01 + c for c in (-1.0, 0.2, 2.0)])
    c, a = kmeans_1d(v, 4, init=init)
    assert len(c) <= 4 and a.max() < len(c)
    # every true cluster centre is matched by some centroid
    for centre in (-1.0, 0.2, 2.0):
        assert (c - centre).abs().min() < 0.05


@pytest.mark.parametrize("init", ["linear", "density", "kmeans++"])
def test_cluster_keeps_zeros_and_limits_values(init):
    model, x = build("plain_cnn")
    _prune(model, 0.7)
    zeros = {n: (m.weight == 0).clone() for n, m in _layers(model).items()}
    cluster_(model, ClusterConfig(bits=3, conv_bits=4, init=init))
    for n, m in _layers(model).items():
        w = m.weight.detach()
        assert torch.equal(w == 0, zeros[n]), f"{n}: zero pattern changed"
        bits = 4 if isinstance(m, nn.Conv2d) else 3
        assert len(torch.unique(w[w != 0])) <= 2 ** bits
    cb = codebooks(model)
    assert set(cb) == {f"{n}.weight" for n in _layers(model)}
    assert all(torch.equal(c.half().float(), c) for c in cb.values())   # fp16 codebooks by default
    assert torch.isfinite(model(x)).all()


def test_shared_centroid_finetuning_keeps_sharing_and_zeros():
    model, _ = build("mlp")
    _prune(model, 0.6)
    zeros = {n: (m.weight == 0).clone() for n, m in _layers(model).items()}
    cluster_(model, ClusterConfig(bits=2, codebook_dtype="fp32"))
    before = {k: v.clone() for k, v in codebooks(model).items()}
    xs, ys = batch_of("mlp", 64), torch.randint(0, 10, (64,))
    fit(model, [(xs, ys)] * 10, TrainConfig(epochs=1, lr=1e-2, progress=False), hooks=[sync_clusters])
    after = codebooks(model)
    assert any(not torch.equal(before[k], after[k]) for k in before), "centroids did not train"
    for n, m in _layers(model).items():
        w = m.weight.detach()
        assert torch.equal(w == 0, zeros[n]) or (w == 0).sum() >= zeros[n].sum()
        assert (w[zeros[n]] == 0).all()
        assert len(torch.unique(w[w != 0])) <= 4


def test_cluster_gradient_is_summed_per_cluster():
    lin = nn.Linear(6, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.1, 0.11, 0.0, -0.5, -0.52, 0.3]]))
    cluster_(lin, ClusterConfig(bits=2, codebook_dtype="fp32"))
    x = torch.arange(1.0, 7.0)[None]
    lin(x).sum().backward()
    g = lin.weight.grad[0]
    # raw gradient is x; members of one cluster get the sum of their raw gradients, the zero gets 0
    assert g[2] == 0
    assert torch.allclose(g[0], torch.tensor(1.0 + 2.0)) and g[0] == g[1]
    assert torch.allclose(g[3], torch.tensor(4.0 + 5.0)) and g[3] == g[4]
    strip_clusters_(lin)
    lin.weight.grad = None
    lin(x).sum().backward()
    assert torch.equal(lin.weight.grad[0], x[0])


def test_cluster_config_validation_and_round_trip():
    cfg = ClusterConfig(bits=4, layer_bits={"fc1": 6}, init="density")
    assert ClusterConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="bits"):
        ClusterConfig(bits=9)
    with pytest.raises(ConfigError, match="nope"):
        cluster_(build_model("lenet300"), ClusterConfig(layers=["nope"]))


# -- entropy coders --------------------------------------------------------------------------

@pytest.mark.parametrize("coder", sorted(entropy.CODERS))
def test_coders_round_trip(coder):
    rng = np.random.default_rng(0)
    for alphabet, n in [(1, 10), (2, 0), (17, 1000), (256, 5000)]:
        sym = np.minimum(rng.geometric(0.2, n) - 1, alphabet - 1)
        data = entropy.CODERS[coder][0](sym, alphabet)
        assert np.array_equal(entropy.decode(coder, data, n, alphabet), sym)


def test_huffman_beats_fixed_width_on_skewed_symbols():
    sym = np.minimum(np.random.default_rng(1).geometric(0.5, 20000) - 1, 31)
    huff = entropy.huffman_encode(sym, 32)
    assert len(huff) < 0.5 * len(entropy.pack_bits(sym, 5))
    name, data = entropy.encode_best(sym, 32)
    assert len(data) <= len(huff)


def test_long_streams_round_trip_through_fast_paths():
    """Bit packing of every width, the multi-symbol Huffman walk, and planned coding of long streams
    (sampled estimates, one coder run) decode back exactly; a truncated long Huffman stream is refused."""
    rng = np.random.default_rng(2)
    for width in (1, 3, 8, 11, 26):
        sym = rng.integers(0, 1 << width, 3001)
        assert np.array_equal(entropy.unpack_bits(entropy.pack_bits(sym, width), len(sym), width), sym)
    sym = np.minimum(rng.geometric(0.4, 300_000) - 1, 40)
    data = entropy.huffman_encode(sym, 41)
    assert np.array_equal(entropy.huffman_decode(data, len(sym), 41), sym)
    with pytest.raises(entropy.CodecError):
        entropy.huffman_decode(data[:len(data) // 2], len(sym), 41)
    for s in (sym, rng.integers(0, 256, 200_000)):          # compressible and incompressible
        alphabet = int(s.max()) + 1
        plan = entropy.plan(s, alphabet)
        assert plan.data is None                           # long: estimated, not tried with every coder
        coder, data = entropy.encode_planned(s, alphabet, plan)
        assert np.array_equal(entropy.decode(coder, data, len(s), alphabet), s)
        assert len(data) <= 1.05 * plan.est + 64


# -- storage ---------------------------------------------------------------------------------

def _round_trip(model, x, tmp_path, **kw):
    model.eval()
    path = tmp_path / "m.acz"
    n = save_compressed(model, path, **kw)
    assert n == path.stat().st_size
    loaded = load_compressed(path, model_factory=kw.get("model_factory"))
    with torch.no_grad():
        assert _bits_equal(model(x), loaded(x)), "outputs differ after load"
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and a.dtype == b.dtype and torch.equal(a, b), k
    return n, loaded, path


def test_storage_pruned_clustered_lenet300_is_small_and_bit_exact(tmp_path):
    model = build_model("lenet300")
    _prune(model, 0.95)
    cluster_(model, ClusterConfig(bits=4, init="density"))
    with torch.no_grad():
        for m in _layers(model).values():
            m.bias.copy_(m.bias.half().float())
    n, _, path = _round_trip(model, torch.rand(16, 784), tmp_path)
    ratio = 4 * 266610 / n
    assert ratio > 50, f"only {ratio:.1f}x"
    info = artifact_info(path)
    assert info["arch"] == {"kind": "registry", "name": "lenet300", "overrides": {}}
    assert {t["enc"] for t in info["tensors"] if t["name"].endswith("weight")} == {"codebook"}


@pytest.mark.parametrize("name", ["plain_cnn", "residual_cnn", "depthwise_cnn", "transformer", "gru"])
def test_storage_round_trip_zoo_with_factory(name, tmp_path):
    model, x = build(name)
    _prune(model, 0.5)
    cluster_(model, ClusterConfig(bits=5))
    factory = lambda: build(name)[0]
    _round_trip(model, batch_of(name, 8), tmp_path, model_factory=factory)


def test_storage_spec_sequential_and_factorized_registry(tmp_path):
    seq = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(4 * 13 * 13, 10))
    seq[1].running_mean.uniform_(-1, 1)
    _, loaded, path = _round_trip(seq, torch.rand(3, 1, 28, 28), tmp_path)
    assert artifact_info(path)["arch"]["kind"] == "spec"
    lenet = factorize_(build_model("lenet300"), FactorizeConfig(method="rank", rank=20))
    _, loaded, path = _round_trip(lenet, torch.rand(3, 784), tmp_path)
    # fc3 (10 x 100) would not shrink at rank 20 (break-even 9), so it stays dense
    assert set(artifact_info(path)["arch"]["overrides"]) == {"fc1", "fc2"}
    assert isinstance(loaded.fc1, nn.Sequential) and loaded.fc1[0].out_features == 20


def test_storage_int8_grid_and_int8_tensors(tmp_path):
    lin = nn.Sequential(nn.Linear(64, 32))
    q = torch.randint(-127, 128, (32, 64)).float()
    q[q.abs() < 60] = 0                                   # sparse int8 weights
    scale = torch.rand(32) * 0.01 + 1e-3
    with torch.no_grad():
        lin[0].weight.copy_(q * scale[:, None])
    # scales passed by the quantizer
    n, _, path = _round_trip(lin, torch.randn(4, 64), tmp_path, int8_scales={"0.weight": scale})
    encs = {t["name"]: t["enc"] for t in artifact_info(path)["tensors"]}
    assert encs["0.weight"] == "int8grid"
    assert n < 32 * 64                                    # below one byte per weight
    # symmetric absmax scales (the largest weight of each row is 127 * scale) are found alone
    q[:, 0] = 127
    with torch.no_grad():
        lin[0].weight.copy_(q * scale[:, None])
    n, _, path = _round_trip(lin, torch.randn(4, 64), tmp_path)
    assert {t["name"]: t["enc"] for t in artifact_info(path)["tensors"]}["0.weight"] == "int8grid"

    class Int8Buf(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("q", torch.zeros(10, 10, dtype=torch.int8))
            self.register_buffer("s", torch.ones(10))

        def forward(self, x):
            return x @ (self.q.float() * self.s[:, None])

    m = Int8Buf()
    m.q.copy_(torch.randint(-128, 128, (10, 10), dtype=torch.int8))
    _round_trip(m, torch.randn(2, 10), tmp_path, model_factory=Int8Buf)


def test_storage_errors(tmp_path):
    model = build_model("lenet300")
    _prune(model, 0.9)
    cluster_(model, ClusterConfig(bits=4))
    path = tmp_path / "m.acz"
    save_compressed(model, path)
    data = bytearray(path.read_bytes())

    bad = tmp_path / "bad.acz"
    for i in (20, len(data) // 2, len(data) - 1):          # any flipped byte in the payload
        d = bytearray(data)
        d[i] ^= 0x10
        bad.write_bytes(bytes(d))
        with pytest.raises(StorageError, match="checksum|corrupt"):
            load_compressed(bad)
    bad.write_bytes(bytes(data[:-100]))
    with pytest.raises(StorageError, match="truncated"):
        load_compressed(bad)
    bad.write_bytes(b"PK\x03\x04" + bytes(data[4:]))
    with pytest.raises(StorageError, match="magic"):
        load_compressed(bad)
    with pytest.raises(StorageError, match="does not exist"):
        load_compressed(tmp_path / "missing.acz")

    custom, _ = build("plain_cnn")
    with pytest.raises(StorageError, match="model_factory"):
        save_compressed(custom, path)
    save_compressed(custom, path, model_factory=lambda: build("plain_cnn")[0])
    with pytest.raises(StorageError, match="model_factory"):
        load_compressed(path)
    with pytest.raises(StorageError, match="PlainCNN"):
        load_compressed(path, model_factory=lambda: build("mlp")[0])


def test_pruned_fp32_is_stored_sparse_and_format_1_still_loads(tmp_path):
    """Format 2 stores a pruned unclustered weight as its non-zeros plus positions (far smaller than
    its dense bytes); a format-1 file (dense encodings only) still loads."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    with torch.no_grad():
        w = model[0].weight
        w[torch.rand_like(w) < 0.9] = 0
    x = torch.randn(4, 64)
    n, _, path = _round_trip(model, x, tmp_path)
    fc0 = next(r for r in artifact_info(path)["tensors"] if r["name"] == "0.weight")
    assert fc0["enc"] == "raw" and fc0["layout"] == "sparse"
    assert fc0["bytes"] < 0.3 * 64 * 128 * 4
    import zlib

    from autocompress.encode.storage import _HEAD, MAGIC
    dense = nn.Sequential(nn.Linear(8, 4))
    p1 = tmp_path / "v1.acz"
    save_compressed(dense, p1)
    data = p1.read_bytes()
    payload = data[_HEAD.size:]
    p1.write_bytes(_HEAD.pack(MAGIC, 1, zlib.crc32(payload), len(payload)) + payload)
    loaded = load_compressed(p1)
    assert torch.equal(loaded[0].weight, dense[0].weight)
