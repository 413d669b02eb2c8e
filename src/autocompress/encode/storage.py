"""One-file compressed storage of a pruned / clustered / quantized model (Deep Compression, section 4).

File layout (little endian)::

    b"ACMP" | version u8 | crc32(payload) u32 | len(payload) u32 | payload
    payload = meta coder u8 | len(meta) u32 | meta (JSON, maybe zstd/lzma) | stream bytes ...

``meta`` holds the architecture description (:mod:`autocompress.encode.archspec`: rebuilt without
pickle or arbitrary code) and, per state-dict tensor, its encoding and the (coder, count, alphabet,
size) of each of its streams. How each tensor is encoded (the smallest exact of several ways) is
:mod:`autocompress.encode.tensors`; reading (which trusts no number in the file) is
:mod:`autocompress.encode.reader`.
"""

from __future__ import annotations

import json
import logging
import lzma
import struct
import zlib
from pathlib import Path
from typing import Any, Callable

import torch
import zstandard
from torch import nn

from autocompress import safefs
from autocompress.encode import entropy
from autocompress.encode.archspec import ArchError, describe, rebuild
# StorageError is the artifact's error, imported from here; it is raised from tensors.py up
from autocompress.encode.tensors import _DTYPE_NAMES, StorageError, _encode_tensor

log = logging.getLogger(__name__)

MAGIC = b"ACMP"
VERSION = 2                  # 2: raw tensors may be sparse (pruned fp32); 1 is still read
_HEAD = struct.Struct("<4sBII")          # magic, version, crc32, payload length


# -- file ----------------------------------------------------------------------------------

def _pack_meta(meta: dict) -> tuple[int, bytes]:
    raw = json.dumps(meta, separators=(",", ":")).encode()
    options = [(0, raw),
               (1, zstandard.ZstdCompressor(level=22, write_checksum=False).compress(raw)),
               (2, lzma.compress(raw, format=lzma.FORMAT_RAW, filters=entropy._LZMA_FILTERS))]
    return min(options, key=lambda o: len(o[1]))


def save_compressed(model: nn.Module, path: str | Path, *,
                    model_factory: Callable[[], nn.Module] | None = None,
                    int8_scales: dict[str, torch.Tensor] | None = None,
                    metadata: dict[str, Any] | None = None) -> int:
    """Write ``model`` to one compressed file; returns the bytes written (the whole file).

    ``model_factory``: for a model that is neither bundled nor made only of common layers, a
    callable building it (the same must be given to :func:`load_compressed`).
    ``int8_scales``: ``{state-dict name: (out_channels,) scale}`` of weights quantized as
    ``q * scale`` (found automatically for symmetric absmax scales).
    ``metadata``: small JSON-able dict stored alongside (e.g. accuracy, recipe).
    """
    try:
        arch = describe(model, model_factory)
        ref = rebuild(arch, model_factory).state_dict()
    except ArchError as e:
        raise StorageError(f"save_compressed: {e}") from None
    sd = model.state_dict()
    _check_keys(sd, ref, "the model", "its rebuilt architecture (is pruning re-parametrization still "
                "attached? make it permanent first)")
    tensors, blobs = [], []
    for name, t in sd.items():
        meta, streams = _encode_tensor(name, t, (int8_scales or {}).get(name))
        meta.update(name=name, shape=list(t.shape), dtype=_DTYPE_NAMES[t.dtype],
                    streams=[[c, n, a, len(d)] for c, n, a, d in streams])
        tensors.append(meta)
        blobs.extend(d for *_, d in streams)
    kind, mbytes = _pack_meta({"arch": arch, "tensors": tensors, "extra": metadata or {}})
    payload = b"".join([struct.pack("<BI", kind, len(mbytes)), mbytes, *blobs])
    data = _HEAD.pack(MAGIC, VERSION, zlib.crc32(payload), len(payload)) + payload
    path = Path(path)
    safefs.write_bytes(path, data)               # atomic, never through a planted symlink
    log.debug("save_compressed: %s, %d bytes", path, len(data))
    return len(data)


def _check_keys(sd: dict, ref: dict, a: str, b: str) -> None:
    missing, extra = sorted(set(ref) - set(sd)), sorted(set(sd) - set(ref))
    if missing or extra:
        raise StorageError(f"{a} and {b} disagree: missing {missing[:5]}, unexpected {extra[:5]}")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(ref[k].shape) or v.dtype != ref[k].dtype:
            raise StorageError(f"tensor {k!r}: {a} has {tuple(v.shape)} {v.dtype}, {b} has "
                               f"{tuple(ref[k].shape)} {ref[k].dtype}")


def load_compressed(path: str | Path, model_factory: Callable[[], nn.Module] | None = None) -> nn.Module:
    """Rebuild the model stored by :func:`save_compressed` (see :mod:`autocompress.encode.reader`)."""
    from autocompress.encode.reader import load_compressed as load
    return load(path, model_factory)


def artifact_info(path: str | Path) -> dict[str, Any]:
    """Per-tensor encoding and byte counts of an artifact (see :mod:`autocompress.encode.reader`)."""
    from autocompress.encode.reader import artifact_info as info
    return info(path)
