"""Reading an artifact nobody vouches for: every declared size is checked before anything is built.

The CRC only catches accidents (anyone can recompute it), so the reader trusts no number in the file:

1. the header: magic, a known format version (1..VERSION), the payload length against the bytes present;
2. the metadata: decompressed to at most :data:`MAX_META_BYTES`, JSON of bounded depth;
3. the tensor table: names, dtypes, shapes (non-negative ints), encodings and coders from fixed lists;
   the streams' declared byte sizes must add up to exactly the bytes present; the values of all tensors
   together may not exceed what those bytes can plausibly hold (:func:`element_bound`); each stream's
   symbol count is bounded by its tensor's size and, for bit coders, by its own bytes;
4. the architecture: rebuilt on the ``meta`` device (no memory), its parameters and buffers must be
   exactly the tensors of the table (names, shapes, dtypes) - so an architecture declaring a
   ``Linear(200000, 200000)`` must also carry 4e10 values, which step 3 already refused;

and only then are tensors decoded and the real model built. Any failure is a :class:`StorageError`
naming the file and the field or tensor.
"""

from __future__ import annotations

import json
import lzma
import math
import struct
import zlib
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from autocompress.encode import entropy
from autocompress.encode.archspec import ArchError, rebuild
from autocompress.encode.storage import _HEAD, MAGIC, VERSION, StorageError, _check_keys
from autocompress.encode.tensors import _DECODERS, _DTYPES, _decode_tensor

MAX_META_BYTES = 1 << 24        # JSON metadata, decompressed (a 10k-tensor model needs ~2 MB)
MAX_ELEMS = 1 << 31             # values of all tensors together, whatever the file size
FLOOR_ELEMS = 1 << 24           # always allowed (64 MB of fp32): small all-zero models stay loadable
ELEMS_PER_BYTE = 1 << 10        # 4096x smaller than fp32 - far past any real compression ratio
MAX_NDIM = 8
MAX_HUFFMAN = 1 << 21           # the Huffman decoder is a Python loop; the encoder never goes past this


def element_bound(payload_bytes: int) -> int:
    """How many tensor values a payload of this size may declare in total."""
    return min(MAX_ELEMS, FLOOR_ELEMS + ELEMS_PER_BYTE * payload_bytes)


def _unpack_meta(kind: int, data: bytes) -> dict:
    try:
        if kind == 1:
            data = entropy.zstd_bounded(data, MAX_META_BYTES)
        elif kind == 2:
            d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=entropy._LZMA_FILTERS)
            data = d.decompress(data, max_length=MAX_META_BYTES + 1)
            if len(data) > MAX_META_BYTES:
                raise StorageError(f"metadata decompresses past {MAX_META_BYTES} bytes")
        elif kind != 0:
            raise StorageError(f"unknown metadata coder {kind}")
        if len(data) > MAX_META_BYTES:
            raise StorageError(f"metadata of {len(data)} bytes is larger than {MAX_META_BYTES}")
        meta = json.loads(data)
    except (lzma.LZMAError, ValueError, RecursionError) as e:       # CodecError is a ValueError
        if isinstance(e, StorageError):
            raise
        raise StorageError(f"metadata cannot be read: {type(e).__name__}: {e}") from None
    if not isinstance(meta, dict) or "arch" not in meta or not isinstance(meta.get("tensors"), list):
        raise StorageError("metadata lacks the architecture or the tensor table")
    return meta


def _int(v: Any, what: str, lo: int = 0, hi: int | None = None) -> int:
    if type(v) is not int or v < lo or (hi is not None and v > hi):
        raise StorageError(f"{what} is {v!r}, expected an integer in [{lo}, {hi if hi is not None else 'inf'}]")
    return v


def _known(v: Any, table: dict) -> bool:
    return isinstance(v, str) and v in table


def _check_table(tensors: list, present: int) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """Validate the tensor table against the ``present`` stream bytes; returns (name, shape, dtype)."""
    out, names, total_elems, total_bytes = [], set(), 0, 0
    bound = element_bound(present)
    for i, tm in enumerate(tensors):
        if not isinstance(tm, dict) or not isinstance(tm.get("name"), str):
            raise StorageError(f"tensor table entry {i} is malformed")
        name = tm["name"]
        where = f"tensor {name!r}"
        if name in names:
            raise StorageError(f"{where} appears twice in the tensor table")
        names.add(name)
        if not _known(tm.get("dtype"), _DTYPES):
            raise StorageError(f"{where}: unknown dtype {tm.get('dtype')!r}")
        if not _known(tm.get("enc"), _DECODERS):
            raise StorageError(f"{where}: unknown encoding {tm.get('enc')!r}")
        shape = tm.get("shape")
        if not isinstance(shape, list) or len(shape) > MAX_NDIM:
            raise StorageError(f"{where}: shape {shape!r} is not a list of at most {MAX_NDIM} sizes")
        shape = tuple(_int(s, f"{where}: a dimension", 0, MAX_ELEMS) for s in shape)
        numel = math.prod(shape)
        total_elems += numel
        if total_elems > bound:
            raise StorageError(f"{where} declares shape {list(shape)} ({numel} values): the tensors so far "
                               f"declare {total_elems} values, more than {present} stored bytes can hold "
                               f"(at most {bound})")
        streams = tm.get("streams")
        if not isinstance(streams, list) or not 1 <= len(streams) <= 4:
            raise StorageError(f"{where}: malformed stream list")
        for j, s in enumerate(streams):
            sw = f"{where}, stream {j}"
            if not (isinstance(s, list) and len(s) == 4 and _known(s[0], entropy.CODERS)):
                raise StorageError(f"{sw}: malformed stream header {s!r}")
            coder = s[0]
            n = _int(s[1], f"{sw}: symbol count", 0, 8 * numel + 1024)
            alphabet = _int(s[2], f"{sw}: alphabet", 1, 1 << 32)
            size = _int(s[3], f"{sw}: byte size", 0, present)
            bits = entropy.bit_width(alphabet) if coder == "bits" else 1 if coder == "huffman" else 0
            if n * bits > 8 * size:
                raise StorageError(f"{sw}: {n} {coder} symbols cannot fit in {size} bytes")
            if coder == "huffman" and n > MAX_HUFFMAN:
                raise StorageError(f"{sw}: {n} Huffman symbols, more than this reader decodes ({MAX_HUFFMAN})")
            total_bytes += size
        out.append((name, shape, _DTYPES[tm["dtype"]]))
    if total_bytes != present:
        raise StorageError(f"the tensor table declares {total_bytes} stream bytes but {present} are present")
    return out


def read_container(path: str | Path) -> tuple[dict, bytes, int]:
    """(metadata, payload, offset of the first stream), every declared size checked."""
    path = Path(path)
    if not path.exists():
        raise StorageError(f"{path}: file does not exist")
    if not path.is_file():
        raise StorageError(f"{path}: not a file")
    data = path.read_bytes()
    if len(data) < _HEAD.size or data[:4] != MAGIC:
        raise StorageError(f"{path}: not an autocompress artifact (bad magic)")
    _, version, crc, plen = _HEAD.unpack_from(data)
    if version > VERSION:
        raise StorageError(f"{path}: format version {version} is newer than this reader ({VERSION})")
    if version < 1:
        raise StorageError(f"{path}: format version {version} is not a valid version (this reader reads 1..{VERSION})")
    payload = data[_HEAD.size:]
    if len(payload) < plen:
        raise StorageError(f"{path}: truncated: {len(payload)} of {plen} payload bytes present")
    if len(payload) > plen:
        raise StorageError(f"{path}: {len(payload) - plen} unexpected trailing bytes")
    if zlib.crc32(payload) != crc:
        raise StorageError(f"{path}: checksum mismatch: the file is corrupted")
    if len(payload) < 5:
        raise StorageError(f"{path}: truncated: no metadata header")
    kind, mlen = struct.unpack_from("<BI", payload)
    if 5 + mlen > len(payload):
        raise StorageError(f"{path}: metadata length {mlen} runs past the end of the file")
    try:
        meta = _unpack_meta(kind, payload[5:5 + mlen])
        _check_table(meta["tensors"], len(payload) - 5 - mlen)
    except StorageError as e:
        raise StorageError(f"{path}: {e}") from None
    return meta, payload, 5 + mlen


def _check_arch(path: Path, meta: dict, model_factory: Callable[[], nn.Module] | None) -> None:
    """The architecture, built without memory, must consist of exactly the tensors of the table."""
    try:
        skeleton = rebuild(meta["arch"], model_factory, device="meta")
    except ArchError as e:
        raise StorageError(f"{path}: {e}") from None
    table = {tm["name"]: torch.empty(tm["shape"], dtype=_DTYPES[tm["dtype"]], device="meta")
             for tm in meta["tensors"]}
    try:
        _check_keys(table, skeleton.state_dict(), "the artifact's tensor table", "its architecture")
    except StorageError as e:
        raise StorageError(f"{path}: {e}") from None


def load_compressed(path: str | Path, model_factory: Callable[[], nn.Module] | None = None) -> nn.Module:
    """Rebuild the model stored by :func:`save_compressed` (eval mode, bit-identical tensors)."""
    meta, payload, off = read_container(path)
    _check_arch(Path(path), meta, model_factory)
    sd = {}
    for tm in meta["tensors"]:
        name, shape, dtype = tm["name"], tuple(tm["shape"]), _DTYPES[tm["dtype"]]
        try:
            streams = []
            for coder, n, alphabet, size in tm["streams"]:
                streams.append(entropy.decode(coder, payload[off:off + size], n, alphabet))
                off += size
            t = _decode_tensor(tm, streams, shape, dtype)
        except (KeyError, TypeError, ValueError, IndexError, OverflowError, entropy.CodecError) as e:
            raise StorageError(f"{path}: tensor {name!r} cannot be decoded: {e}") from None
        except RuntimeError as e:        # torch reshape/view of inconsistent streams; not a failed alloc
            if "alloc" in str(e):
                raise
            raise StorageError(f"{path}: tensor {name!r} cannot be decoded: {e}") from None
        if dtype == torch.bool:
            t = t.to(torch.bool)
        sd[name] = t
    try:
        model = rebuild(meta["arch"], model_factory)
    except ArchError as e:
        raise StorageError(f"{path}: {e}") from None
    _check_keys(sd, model.state_dict(), "the artifact", "the rebuilt architecture")
    model.load_state_dict(sd)
    return model.eval()


def artifact_info(path: str | Path) -> dict[str, Any]:
    """Per-tensor encoding and byte counts of an artifact (to see where the bytes go)."""
    meta, payload, off = read_container(path)
    rows = []
    for tm in meta["tensors"]:
        rows.append({"name": tm["name"], "shape": tm["shape"], "enc": tm["enc"],
                     "layout": tm.get("layout", "-"), "coders": [s[0] for s in tm["streams"]],
                     "bytes": sum(s[3] for s in tm["streams"])})
    return {"file_bytes": _HEAD.size + len(payload), "meta_bytes": off - 5, "arch": meta["arch"],
            "tensors": rows, "extra": meta.get("extra", {})}


__all__ = ["element_bound", "read_container", "load_compressed", "artifact_info", "MAX_ELEMS"]
