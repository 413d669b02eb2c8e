"""The artifact reader trusts no number in the file: crafted and mutated files (with a recomputed CRC,
which anyone can do) are refused with StorageError naming the cause, quickly and without allocating
what the file declares."""

from __future__ import annotations

import contextlib
import json
import resource
import struct
import time
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from autocompress.cli import main
from autocompress.encode import StorageError, load_compressed, save_compressed
from autocompress.encode.storage import _HEAD, MAGIC, VERSION, _pack_meta


def _parts(path):
    """(version, meta dict, stream bytes) of a valid artifact."""
    data = path.read_bytes()
    _, version, _, _ = _HEAD.unpack_from(data)
    payload = data[_HEAD.size:]
    kind, mlen = struct.unpack_from("<BI", payload)
    from autocompress.encode.reader import _unpack_meta
    return version, _unpack_meta(kind, payload[5:5 + mlen]), payload[5 + mlen:]


def _craft(path, meta, blobs: bytes, version: int = VERSION, raw_meta: bytes | None = None, kind: int = 0):
    """Write an artifact with a correct CRC around whatever ``meta`` says."""
    kind, mbytes = (kind, raw_meta) if raw_meta is not None else _pack_meta(meta)
    payload = struct.pack("<BI", kind, len(mbytes)) + mbytes + blobs
    path.write_bytes(_HEAD.pack(MAGIC, version, zlib.crc32(payload), len(payload)) + payload)
    return path


@pytest.fixture()
def small(tmp_path):
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3))
    path = tmp_path / "ok.acz"
    save_compressed(model, path)
    return path


@contextlib.contextmanager
def _memory_cap(extra_bytes: int = 1 << 30):
    """Lower the soft address-space limit to what is mapped now + ``extra_bytes``: a reader that tries
    to allocate what a crafted file declares fails with MemoryError/RuntimeError instead of swapping."""
    with open("/proc/self/statm") as f:
        vm = int(f.read().split()[0]) * resource.getpagesize()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm + extra_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def test_version_zero_and_future_are_refused(small, tmp_path):
    _, meta, blobs = _parts(small)
    with pytest.raises(StorageError, match="format version 0 is not a valid version"):
        load_compressed(_craft(tmp_path / "v0.acz", meta, blobs, version=0))
    with pytest.raises(StorageError, match="newer than this reader"):
        load_compressed(_craft(tmp_path / "v9.acz", meta, blobs, version=VERSION + 1))


def test_huge_linear_arch_is_refused_before_building(small, tmp_path):
    _, meta, blobs = _parts(small)
    meta["arch"]["tree"]["children"][0][1]["kwargs"].update(in_features=200000, out_features=200000)
    path = _craft(tmp_path / "huge.acz", meta, blobs)
    t0 = time.perf_counter()
    with _memory_cap(), pytest.raises(StorageError, match=r"tensor '0.weight'.*\(200000, 200000\)"):
        load_compressed(path)
    assert time.perf_counter() - t0 < 5
    # the table agreeing with the arch does not help: 4e10 values cannot come from a few bytes
    meta["tensors"][0]["shape"] = [200000, 200000]
    with _memory_cap(), pytest.raises(StorageError, match="'0.weight' declares shape .200000, 200000."):
        load_compressed(_craft(tmp_path / "huge2.acz", meta, blobs))


def test_tensor_of_2_pow_31_backed_by_no_bytes_is_refused(small, tmp_path):
    _, meta, blobs = _parts(small)
    meta["tensors"][1]["shape"] = [1 << 31]
    meta["tensors"][1]["streams"] = [["bits", 1 << 31, 1, 0]]
    with _memory_cap(), pytest.raises(StorageError, match="'0.bias' declares shape"):
        load_compressed(_craft(tmp_path / "big.acz", meta, blobs))
    # within the element bound, but the stream's bytes cannot hold the declared symbols
    meta["tensors"][1]["shape"] = [4]
    meta["tensors"][1]["streams"] = [["huffman", 1000, 256, 0]]
    with pytest.raises(StorageError, match="stream 0: 1000 huffman symbols cannot fit in 0 bytes"):
        load_compressed(_craft(tmp_path / "big2.acz", meta, blobs))


def test_stream_sizes_must_add_up_to_bytes_present(small, tmp_path):
    _, meta, blobs = _parts(small)
    with pytest.raises(StorageError, match="declares .* stream bytes but .* are present"):
        load_compressed(_craft(tmp_path / "short.acz", meta, blobs[:-3]))


def test_arch_cannot_pick_device_dtype_or_nest_forever(small, tmp_path):
    _, meta, blobs = _parts(small)
    meta["arch"]["tree"]["children"][0][1]["kwargs"]["device"] = "cuda"
    with pytest.raises(StorageError, match="may not set .'device'."):
        load_compressed(_craft(tmp_path / "dev.acz", meta, blobs))
    deep = {"type": "Identity"}
    for _ in range(200):
        deep = {"type": "Sequential", "children": [["a", deep]]}
    meta["arch"] = {"kind": "spec", "tree": deep}
    with pytest.raises(StorageError, match="nested deeper than"):
        load_compressed(_craft(tmp_path / "deep.acz", meta, blobs))
    with pytest.raises(StorageError, match="metadata cannot be read"):
        load_compressed(_craft(tmp_path / "deepjson.acz", None, blobs, raw_meta=b"[" * 100000))


def _zstd_frame_declaring(size: int, content: bytes = b"{}") -> bytes:
    """A valid zstd frame whose header claims ``size`` bytes of content (the library allocates that)."""
    return (b"\x28\xb5\x2f\xfd" + b"\xe0" + size.to_bytes(8, "little")
            + ((len(content) << 3) | 1).to_bytes(3, "little") + content)


def test_zstd_declared_content_size_is_not_trusted(small, tmp_path):
    from autocompress.encode import entropy

    frame = _zstd_frame_declaring(1 << 40)
    with _memory_cap(), pytest.raises(StorageError, match="declares 1099511627776 bytes"):
        load_compressed(_craft(tmp_path / "zmeta.acz", None, b"", raw_meta=frame, kind=1))
    with _memory_cap(), pytest.raises(entropy.CodecError, match="declares"):
        entropy.decode("zstd", frame, 10, 256)


def test_cli_check_and_export_refuse_crafted_artifact_with_exit_2(small, tmp_path, capsys):
    _, meta, blobs = _parts(small)
    meta["arch"]["tree"]["children"][0][1]["kwargs"].update(in_features=200000, out_features=200000)
    path = _craft(tmp_path / "huge.acz", meta, blobs)
    with _memory_cap():
        assert main(["export", str(path), "--input-shape", "8", "--out", str(tmp_path / "m.onnx")]) == 2


# -- fuzzing ---------------------------------------------------------------------------------

def _load_only_storage_error(path) -> None:
    t0 = time.perf_counter()
    try:
        load_compressed(path)
    except StorageError:
        pass
    assert time.perf_counter() - t0 < 5, "the reader took too long on a crafted file"


_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_FUZZ
@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8))
def test_fuzz_mutated_bytes_with_recomputed_crc(small, tmp_path, edits):
    data = bytearray(small.read_bytes())
    payload = bytearray(data[_HEAD.size:])
    for pos, val in edits:
        payload[pos % len(payload)] = val
    bad = tmp_path / "fuzz.acz"
    bad.write_bytes(_HEAD.pack(MAGIC, VERSION, zlib.crc32(payload), len(payload)) + payload)
    with _memory_cap():
        _load_only_storage_error(bad)


_json = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats() | st.text(max_size=8),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                     max_leaves=12)
_dims = st.lists(st.integers(-1, 1 << 40) | st.sampled_from([0, 1, 3, 8, 1 << 31]), max_size=4)
_stream = st.tuples(st.sampled_from(["bits", "huffman", "zstd", "lzma", "nope"]),
                    st.integers(-1, 1 << 34), st.integers(0, 1 << 33), st.integers(-1, 200)).map(list)


@_FUZZ
@given(field=st.sampled_from(["shape", "streams", "dtype", "enc", "name", "layout", "cap", "nnz", "k", "as"]),
       index=st.integers(0, 3), value=_json | _dims | st.lists(_stream, max_size=3))
def test_fuzz_crafted_tensor_table(small, tmp_path, field, index, value):
    _, meta, blobs = _parts(small)
    meta["tensors"][index][field] = value
    with _memory_cap():
        _load_only_storage_error(_craft(tmp_path / "crafted.acz", meta, blobs))


@_FUZZ
@given(path=st.sampled_from(["in_features", "out_features", "bias", "type", "kwargs", "kind", "tree", "name"]),
       value=_json | st.integers(0, 1 << 40))
def test_fuzz_crafted_architecture(small, tmp_path, path, value):
    _, meta, blobs = _parts(small)
    layer = meta["arch"]["tree"]["children"][0][1]
    if path in ("in_features", "out_features", "bias"):
        layer["kwargs"][path] = value
    elif path in ("type", "kwargs"):
        layer[path] = value
    elif path == "name":
        meta["arch"] = {"kind": "registry", "name": value, "overrides": {"fc1": layer}}
    else:
        meta["arch"][path] = value
    with _memory_cap():
        _load_only_storage_error(_craft(tmp_path / "arch.acz", meta, blobs))


def test_valid_artifact_still_loads_bit_exact(small):
    _, meta, _ = _parts(small)
    model = load_compressed(small)
    assert [t["name"] for t in meta["tensors"]] == list(model.state_dict())
    assert json.dumps(meta["arch"]).count("Linear") == 2


@pytest.mark.parametrize("where, value, message", [
    ("cls", "posix:system", "not under the packages"),
    ("cls", "builtins:eval", "not under the packages"),
    ("cls", "torch.nn.modules.linear:torch.load", "not that object.s own name"),   # via an import
    ("cls", "torch.nn.modules.linear:Linear.__init__", "not under the packages"),
    ("cls", "torch.nn.functional:relu", "not a torch module class"),
    ("attr", {"$": "ref", "v": "subprocess:Popen"}, "not under the packages"),
    ("attr", {"$": "hfconfig", "cls": "torch.nn.modules.linear:Linear", "v": {"$": "dict", "v": {}}},
     "not a Hugging Face config"),
    ("name", "__class__", "may not be set"),
])
def test_class_tree_names_only_allowed_library_objects(tmp_path, where, value, message):
    """A model of library classes (not in the layer table) is described by import paths; a file naming
    anything outside the allow-list, or not by its own name, or a dunder attribute, is refused."""
    model = nn.Sequential(nn.Linear(8, 4), nn.Mish())
    path = tmp_path / "tree.acz"
    save_compressed(model, path)
    _, meta, blobs = _parts(path)
    assert meta["arch"]["kind"] == "tree"
    node = meta["arch"]["tree"]["children"][1][1]                  # the Mish
    if where == "cls":
        node["cls"] = value
    elif where == "attr":
        node["attrs"]["inplace"] = value
    else:
        node["attrs"][value] = 1
    with pytest.raises(StorageError, match=message):
        load_compressed(_craft(tmp_path / "bad.acz", meta, blobs))
