"""Per-tensor encodings of the storage artifact (:mod:`autocompress.encode.storage` writes the file).

Every tensor is encoded in each applicable way and the smallest is kept:

- ``raw``: its bytes (fp32 stored as fp16 when that is exact), optionally byte-plane shuffled; from
  format 2 also sparse: the non-zero values' bytes plus their positions (below);
- ``codebook``: <= 256 distinct non-zero fp32 values (weight sharing): codebook (fp16 if exact) plus
  one index per weight;
- ``int8grid``: fp32 weights equal to ``q * scale[channel]`` with int8 ``q`` (quantized models);
- ``ints``: int8 / uint8 tensors.

Index symbols are laid out ``dense`` (zero is a symbol) or ``sparse`` (relative positions of the
non-zeros as gaps capped at ``cap``, a gap symbol ``cap`` meaning "skip cap zeros", plus the non-zero
symbols), then each stream goes through the smallest of bit-packing, Huffman, zstd and lzma.
Every encoding is decoded again and compared bit-for-bit before it is accepted, so loading restores
exactly the tensors that were saved and the model's outputs are bit-identical.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import torch

from autocompress.encode import entropy

log = logging.getLogger(__name__)

_GAP_CAPS = (15, 31, 63, 127, 255)
_EST_MARGIN = 0.03                       # how far off a sampled size estimate may be
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float64": torch.float64, "int64": torch.int64, "int32": torch.int32,
           "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


# defined here, the lowest module that raises it; storage.py (its public home) re-exports it
class StorageError(ValueError):
    """The artifact is not an autocompress file, is truncated or corrupted, or does not fit the model."""


Coded = tuple[str, int, int, bytes]               # (coder, n symbols, alphabet, data)


# -- streams -------------------------------------------------------------------------------

class _Stream:
    """A symbol stream whose size is known (exactly, or estimated for a long one) before it is coded;
    coding happens only for the candidates that may win, once (sparse layouts share their values)."""

    def __init__(self, sym: np.ndarray, alphabet: int) -> None:
        self.sym, self.alphabet = sym, alphabet
        self.plan = entropy.plan(sym, alphabet)
        self._coded: Coded | None = None

    @property
    def exact(self) -> bool:
        return self.plan.data is not None

    def coded(self) -> Coded:
        if self._coded is None:
            coder, data = entropy.encode_planned(self.sym, self.alphabet, self.plan)
            self._coded = (coder, len(self.sym), self.alphabet, data)
        return self._coded


Streams = list[_Stream]


def _enc(sym: np.ndarray, alphabet: int) -> _Stream:
    return _Stream(sym, alphabet)


def _enc_bytes(raw: bytes) -> _Stream:
    return _enc(np.frombuffer(raw, dtype=np.uint8), 256)


def _layout(dsym: np.ndarray, alphabet: int, zero: int | None) -> list[tuple[dict, Streams]]:
    """Dense and sparse layouts of index symbols ``dsym`` (one per weight); ``zero`` = zero's symbol."""
    out = [({"layout": "dense"}, [_enc(dsym, alphabet)])]
    if zero is None:
        return out
    nz = np.flatnonzero(dsym != zero)
    vals = dsym[nz]
    vals = vals - (vals > zero)                  # the zero symbol never appears among non-zeros
    vstream = _enc(vals, max(1, alphabet - 1))
    return out + [(lay, [tok, vstream]) for lay, tok in _gap_layouts(nz)]


def _gap_layouts(nz: np.ndarray) -> list[tuple[dict, _Stream]]:
    """Per gap cap: the positions ``nz`` of the non-zeros as gap tokens (see the module docstring)."""
    out = []
    gaps = np.diff(nz, prepend=-1) - 1           # zeros skipped before each non-zero
    for cap in _GAP_CAPS:
        fill = gaps // cap                       # "skip cap" tokens before the remainder
        tokens = np.full(int(fill.sum() + len(gaps)), cap, dtype=np.int64)
        ends = np.cumsum(fill + 1) - 1           # where each remainder token goes
        tokens[ends] = gaps - fill * cap
        out.append(({"layout": "sparse", "cap": cap, "nnz": int(len(nz))}, _enc(tokens, cap + 1)))
    return out


def _positions(meta: dict, tokens: np.ndarray, numel: int) -> np.ndarray:
    cap = int(meta["cap"])
    adv = tokens + (tokens != cap)               # a value token consumes its own position too
    pos = np.cumsum(adv)[tokens != cap] - 1
    if len(pos) != int(meta["nnz"]) or (len(pos) and (pos[-1] >= numel or pos.min() < 0)):
        raise StorageError("sparse positions fall outside the tensor")
    return pos


def _unlayout(meta: dict, streams: list[np.ndarray], numel: int, zero: int | None) -> np.ndarray:
    if meta["layout"] == "dense":
        return streams[0]
    tokens, vals = streams[0], streams[1]
    if zero is None or len(vals) != int(meta["nnz"]):
        raise StorageError("sparse layout is inconsistent")
    pos = _positions(meta, tokens, numel)
    dsym = np.full(numel, zero, dtype=np.int64)
    dsym[pos] = vals + (vals >= zero)
    return dsym


# -- tensor encodings: each returns candidate (meta, streams); decoders invert them ----------

def _f32_bits(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().view(torch.int32).reshape(-1).numpy()


def _small_floats(vals: np.ndarray) -> tuple[str, bytes]:
    """fp32 values as fp16 bytes when that round-trips bit-exactly, else fp32 bytes."""
    f = vals.astype("<f4")
    h = f.astype("<f2")
    if np.array_equal(h.astype("<f4").view("<i4"), f.view("<i4")):
        return "float16", h.tobytes()
    return "float32", f.tobytes()


def _floats_from(kind: str, raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype="<f2" if kind == "float16" else "<f4").astype("<f4")


def _raw_candidates(t: torch.Tensor, hint: Any) -> list[tuple[dict, Streams]]:
    t = t.detach().contiguous()
    stored = t
    if t.dtype == torch.float32 and torch.equal(t.half().float().view(torch.int32), t.view(torch.int32)):
        stored = t.half()                        # exact in fp16: half the bytes
    arr = stored.reshape(-1).view(torch.uint8).numpy() if stored.numel() else np.zeros(0, np.uint8)
    item = stored.element_size()
    out = [({"enc": "raw", "as": _DTYPE_NAMES[stored.dtype], "shuffle": False}, [_enc(arr, 256)])]
    if item > 1 and arr.size:
        planes = arr.reshape(-1, item).T.reshape(-1)     # byte planes: exponents compress together
        out.append(({"enc": "raw", "as": _DTYPE_NAMES[stored.dtype], "shuffle": True},
                    [_enc(planes, 256)]))
    flat = stored.reshape(-1)
    nz = torch.nonzero(flat).reshape(-1).numpy() if stored.is_floating_point() else np.zeros(0)
    if 0 < len(nz) <= flat.numel() // 2:         # pruned: the non-zeros and where they are (format 2)
        vals = flat[torch.from_numpy(nz)].contiguous().view(torch.uint8).numpy()
        vstream = _enc(vals.reshape(-1, item).T.reshape(-1), 256)
        head = {"enc": "raw", "as": _DTYPE_NAMES[stored.dtype], "shuffle": True}
        out += [({**head, **lay}, [tok, vstream]) for lay, tok in _gap_layouts(nz)]
    return out


def _raw_decode(meta: dict, streams: list[np.ndarray], numel: int, dtype: torch.dtype,
                shape: tuple[int, ...]) -> torch.Tensor:
    as_dt = _DTYPES[meta["as"]]
    item = torch.empty(0, dtype=as_dt).element_size()
    sparse = meta.get("layout") == "sparse"
    arr = streams[1 if sparse else 0].astype(np.uint8)
    count = int(meta["nnz"]) if sparse else numel
    if arr.size != count * item:
        raise StorageError(f"raw stream holds {arr.size} bytes, expected {count * item}")
    if meta["shuffle"]:
        arr = arr.reshape(item, -1).T.reshape(-1)
    vals = torch.from_numpy(arr.copy()).view(as_dt)
    if not sparse:
        return vals.to(dtype)
    t = torch.zeros(numel, dtype=as_dt)
    t[torch.from_numpy(_positions(meta, streams[0], numel))] = vals
    return t.to(dtype)


def _codebook_candidates(t: torch.Tensor, hint: Any) -> list[tuple[dict, Streams]]:
    if t.dtype != torch.float32 or t.numel() < 16:
        return []
    bits = _f32_bits(t)
    if len(np.unique(bits[:4096])) > 257:                 # cheap early no for unshared weights
        return []
    uniq = np.unique(bits)                                # bit patterns: -0.0 and NaNs kept exact
    has_zero = bool((uniq == 0).any())
    nonzero = uniq[uniq != 0]
    if len(nonzero) > 256 or len(nonzero) * 4 > t.numel():
        return []
    kind, cb = _small_floats(nonzero.view("<f4"))
    # symbols: 0 = exact +0.0 (when present), then the codebook in order
    dsym = np.searchsorted(nonzero, bits) + (1 if has_zero else 0)
    dsym[bits == 0] = 0
    alphabet = len(nonzero) + (1 if has_zero else 0)
    head = {"enc": "codebook", "cb": kind, "k": int(len(nonzero)), "zero": has_zero}
    cbs = _enc_bytes(cb)
    return [({**head, **lay}, [cbs, *st]) for lay, st in _layout(dsym, max(alphabet, 1),
                                                                  0 if has_zero else None)]


def _codebook_decode(meta: dict, streams: list[np.ndarray], numel: int, dtype: torch.dtype,
                     shape: tuple[int, ...]) -> torch.Tensor:
    cb = _floats_from(meta["cb"], streams[0].astype(np.uint8).tobytes())
    if len(cb) != int(meta["k"]):
        raise StorageError("codebook size mismatch")
    zero = 0 if meta["zero"] else None
    dsym = _unlayout(meta, streams[1:], numel, zero)
    table = np.concatenate([np.zeros(1, "<f4"), cb]) if zero is not None else cb
    if len(dsym) != numel or (len(dsym) and dsym.max() >= len(table)):
        raise StorageError("codebook indices out of range")
    return torch.from_numpy(table[dsym].astype("<f4"))


def _grid_scales(t: torch.Tensor, hint: Any) -> list[torch.Tensor]:
    """Candidate per-channel scales: the caller's, else absmax / 127 (symmetric int8) and neighbours."""
    if hint is not None:
        return [hint.detach().float().reshape(-1)]
    amax = t.detach().abs().reshape(t.shape[0], -1).amax(1)
    s = (amax / 127).float()
    return [s, torch.nextafter(s, torch.full_like(s, np.inf)), torch.nextafter(s, torch.zeros_like(s))]


def _int8grid_candidates(t: torch.Tensor, hint: Any) -> list[tuple[dict, Streams]]:
    if t.dtype != torch.float32 or t.ndim < 1 or t.numel() < 16:
        return []
    w = t.detach().reshape(t.shape[0], -1)
    rows = max(1, 4096 // max(1, w.shape[1]))            # a few rows first: a cheap early no
    for s in _grid_scales(t, hint):
        if s.numel() != t.shape[0] or not torch.all(s > 0) or not torch.isfinite(s).all():
            continue
        head_q = torch.round(w[:rows] / s[:rows, None]).clamp(-128, 127)
        if not torch.equal((head_q * s[:rows, None]).view(torch.int32), w[:rows].contiguous().view(torch.int32)):
            continue
        q = torch.round(w / s[:, None]).clamp(-128, 127)
        if torch.equal((q * s[:, None]).view(torch.int32), w.contiguous().view(torch.int32)):
            dsym = (q.to(torch.int64) + 128).reshape(-1).numpy()
            head = {"enc": "int8grid"}
            sstream = _enc_bytes(s.numpy().astype("<f4").tobytes())
            return [({**head, **lay}, [sstream, *st]) for lay, st in _layout(dsym, 256, 128)]
    return []


def _int8grid_decode(meta: dict, streams: list[np.ndarray], numel: int, dtype: torch.dtype,
                     shape: tuple[int, ...]) -> torch.Tensor:
    s = torch.from_numpy(np.frombuffer(streams[0].astype(np.uint8).tobytes(), "<f4").copy())
    q = torch.from_numpy(_unlayout(meta, streams[1:], numel, 128) - 128).float()
    if s.numel() != shape[0]:
        raise StorageError("int8 scales do not match the channel count")
    return (q.reshape(shape[0], -1) * s[:, None]).reshape(-1)


def _ints_candidates(t: torch.Tensor, hint: Any) -> list[tuple[dict, Streams]]:
    if t.dtype not in (torch.int8, torch.uint8) or t.numel() == 0:
        return []
    off = 128 if t.dtype == torch.int8 else 0
    dsym = t.detach().reshape(-1).to(torch.int64).numpy() + off
    return [({"enc": "ints", **lay}, st) for lay, st in _layout(dsym, 256, off)]


def _ints_decode(meta: dict, streams: list[np.ndarray], numel: int, dtype: torch.dtype,
                 shape: tuple[int, ...]) -> torch.Tensor:
    off = 128 if dtype == torch.int8 else 0
    return torch.from_numpy(_unlayout(meta, streams, numel, off) - off).to(dtype)


_CANDIDATES: tuple[Callable[[torch.Tensor, Any], list[tuple[dict, Streams]]], ...] = (
    _raw_candidates, _codebook_candidates, _int8grid_candidates, _ints_candidates)
_DECODERS: dict[str, Callable[..., torch.Tensor]] = {
    "raw": _raw_decode, "codebook": _codebook_decode, "ints": _ints_decode, "int8grid": _int8grid_decode}


def _decode_tensor(meta: dict, streams: list[np.ndarray], shape: tuple[int, ...],
                   dtype: torch.dtype) -> torch.Tensor:
    numel = int(np.prod(shape)) if shape else 1
    enc = meta.get("enc")
    if enc not in _DECODERS:
        raise StorageError(f"unknown tensor encoding {enc!r}")
    flat = _DECODERS[enc](meta, streams, numel, dtype, shape)
    if flat.numel() != numel:
        raise StorageError(f"decoded {flat.numel()} values, expected {numel}")
    return flat.to(dtype).reshape(shape)


def _bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == torch.bool:
        return torch.equal(a, b)
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def _encode_tensor(name: str, t: torch.Tensor, hint: Any) -> tuple[dict, list[Coded]]:
    t = t.detach().cpu().contiguous()
    if t.dtype not in _DTYPE_NAMES:
        raise StorageError(f"tensor {name!r} has dtype {t.dtype}, which the artifact cannot store")
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    if t.is_floating_point():
        # -0.0 (from masking by multiplication, w * 0) is stored as +0.0: equal as numbers, so every
        # output compares equal, and it lets the zero be the sparse "nothing here" symbol
        t = torch.where(t == 0, torch.zeros((), dtype=t.dtype), t)
    cands = [c for make in _CANDIDATES for c in make(t, hint)]
    est = [sum(st.plan.est for st in c[1]) + 8 * len(c[1]) for c in cands]   # streams + their meta
    best: tuple[dict, list[Coded]] | None = None
    best_size = 0
    for i in sorted(range(len(cands)), key=est.__getitem__):       # stable: ties keep their order
        meta, streams = cands[i]
        # an estimate may be off by a few percent: such a candidate is coded and measured if close
        slack = 1.0 if all(st.exact for st in streams) else 1.0 - _EST_MARGIN
        if best is not None and est[i] * slack >= best_size:
            continue
        coded = [st.coded() for st in streams]
        size = sum(len(c[3]) for c in coded) + 8 * len(coded)
        if best is not None and size >= best_size:
            continue
        # every coded stream was already decoded back to its symbols (encode_best / encode_planned
        # check that); what is left to check is the tensor rebuilt from those symbols
        decoded = _decode_tensor(meta, [st.sym for st in streams], tuple(t.shape), t.dtype)
        if _bit_equal(decoded, t):               # only exact encodings are ever kept
            best, best_size = (meta, coded), size
        else:
            log.debug("%s: %s encoding not exact, skipped", name, meta.get("enc"))
    if best is None:
        raise StorageError(f"tensor {name!r}: no exact encoding found")
    return best
