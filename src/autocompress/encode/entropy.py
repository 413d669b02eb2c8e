"""Entropy coders for integer symbol streams: bit packing, canonical Huffman (as in Deep
Compression; both in :mod:`autocompress.encode.bitcodes`), zstd and lzma, and the choice among
them. :func:`encode_best` tries them all and keeps the smallest;
:func:`plan` + :func:`encode_planned` do the same in one pass for streams too long for that.

A stream is a 1-D array of symbols in ``[0, alphabet)``. Decoding needs ``(coder, n, alphabet)``,
which the container stores beside the bytes; everything else a coder needs is inside its bytes.
"""

from __future__ import annotations

import lzma
from dataclasses import dataclass
from typing import Callable

import numpy as np
import zstandard

# the bit-level coders (and the error every decoder raises) are bitcodes.py's; importable from here
from autocompress.encode.bitcodes import (MAX_CODE_LEN, CodecError, bit_width, huffman_decode,  # noqa: F401
                                          huffman_encode, huffman_size, pack_bits, unpack_bits)

_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": 1 << 20}]


# -- byte-oriented general-purpose coders --------------------------------------------------

def _as_bytes(sym: np.ndarray, alphabet: int) -> bytes:
    dt = np.uint8 if alphabet <= 256 else np.dtype("<u2") if alphabet <= 65536 else np.dtype("<u4")
    return sym.astype(dt).tobytes()


def _from_bytes(raw: bytes, n: int, alphabet: int) -> np.ndarray:
    dt = np.uint8 if alphabet <= 256 else np.dtype("<u2") if alphabet <= 65536 else np.dtype("<u4")
    a = np.frombuffer(raw, dtype=dt)
    if len(a) != n:
        raise CodecError(f"stream decodes to {len(a)} symbols, expected {n}")
    return a.astype(np.int64)


def _zstd_enc(sym: np.ndarray, alphabet: int, level: int = 22) -> bytes:
    return zstandard.ZstdCompressor(level=level, write_content_size=False, write_checksum=False,
                                    write_dict_id=False).compress(_as_bytes(sym, alphabet))


def zstd_bounded(data: bytes, limit: int) -> bytes:
    """zstd-decompress at most ``limit`` bytes. A frame's declared content size is allocated up front
    by the library (``max_output_size`` only binds frames without one), so it is checked first."""
    try:
        declared = zstandard.frame_content_size(data)
        if declared > limit:
            raise CodecError(f"zstd frame declares {declared} bytes, more than the {limit} expected")
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=max(1, limit))
    except zstandard.ZstdError as e:
        raise CodecError(f"zstd: {e}") from None


def _zstd_dec(data: bytes, n: int, alphabet: int) -> np.ndarray:
    per = 1 if alphabet <= 256 else 2 if alphabet <= 65536 else 4
    return _from_bytes(zstd_bounded(data, n * per), n, alphabet)


def _lzma_enc(sym: np.ndarray, alphabet: int, preset: int | None = None) -> bytes:
    # the decoder reads any preset: LZMA2 carries its lc/lp/pb, and the dictionary size is fixed
    filters = _LZMA_FILTERS if preset is None or preset < 0 else [{**_LZMA_FILTERS[0], "preset": preset}]
    return lzma.compress(_as_bytes(sym, alphabet), format=lzma.FORMAT_RAW, filters=filters)


def _lzma_dec(data: bytes, n: int, alphabet: int) -> np.ndarray:
    try:
        per = 1 if alphabet <= 256 else 2 if alphabet <= 65536 else 4
        d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
        raw = d.decompress(data, max_length=n * per + 1)   # never more than the declared symbols
    except lzma.LZMAError as e:
        raise CodecError(f"lzma: {e}") from None
    return _from_bytes(raw, n, alphabet)


def _bits_enc(sym: np.ndarray, alphabet: int) -> bytes:
    return pack_bits(sym, bit_width(alphabet))


def _bits_dec(data: bytes, n: int, alphabet: int) -> np.ndarray:
    return unpack_bits(data, n, bit_width(alphabet))


# coder name -> (encode(sym, alphabet) -> bytes, decode(bytes, n, alphabet) -> sym)
CODERS: dict[str, tuple[Callable[[np.ndarray, int], bytes], Callable[[bytes, int, int], np.ndarray]]] = {
    "bits": (_bits_enc, _bits_dec),
    "huffman": (huffman_encode, huffman_decode),
    "zstd": (_zstd_enc, _zstd_dec),
    "lzma": (_lzma_enc, _lzma_dec),
}


def encode_best(sym: np.ndarray, alphabet: int, coders: tuple[str, ...] = tuple(CODERS)) -> tuple[str, bytes]:
    """Encode with every coder, keep the smallest that decodes back exactly."""
    sym = np.asarray(sym, dtype=np.int64)
    if len(sym) and (sym.min() < 0 or sym.max() >= alphabet):
        raise ValueError(f"symbols must lie in [0, {alphabet})")
    best: tuple[str, bytes] | None = None
    for name in coders:
        enc, dec = CODERS[name]
        if name == "huffman" and (alphabet > 1 << 16 or len(sym) > 1 << 21):  # pure-Python decoder
            continue
        data = enc(sym, alphabet)
        if best is None or len(data) < len(best[1]):
            if np.array_equal(dec(data, len(sym), alphabet), sym):   # never keep a lossy stream
                best = (name, data)
    assert best is not None
    return best


# -- big streams: estimate, then encode once -----------------------------------------------
# Streams up to EXACT_LIMIT symbols get every coder at its strongest setting (the smallest file).
# Longer ones would take minutes that way (lzma / zstd-22 run at ~1 MB/s on weight bytes), so their
# sizes are estimated - exactly for bits and Huffman, from a sample for zstd and lzma - and the
# cheapest coder within _TOLERANCE of the smallest estimate is the one that runs on the whole stream.

EXACT_LIMIT = 1 << 16
_PIECES, _PIECE = 4, 1 << 13             # the sample: 4 pieces of 8k symbols spread over the stream
_TOLERANCE = 0.015
_FULL_EFFORT = 1 << 21   # compressible streams up to this many symbols get the strongest settings
_DENSE = 0.7         # a sample zstd-3 cannot shrink below this is weight bytes: strong efforts gain < 1 %
# (name, coder, effort, strong): in cost order, so a near-tie goes to the faster coder
_BIG = (("bits", "bits", 0, False), ("zstd9", "zstd", 9, False), ("huffman", "huffman", 0, False),
        ("zstd19", "zstd", 19, True), ("lzma6", "lzma", 6, True))


@dataclass
class Plan:
    """How one stream will be coded: ``est`` bytes (exact once ``data`` is set)."""

    coder: str
    est: int
    effort: int = 0
    data: bytes | None = None


def _sample(sym: np.ndarray) -> np.ndarray:
    starts = np.linspace(0, len(sym) - _PIECE, _PIECES).astype(np.int64)
    return np.concatenate([sym[s:s + _PIECE] for s in starts])


def plan(sym: np.ndarray, alphabet: int) -> Plan:
    sym = np.asarray(sym, dtype=np.int64)
    if len(sym) <= EXACT_LIMIT:
        coder, data = encode_best(sym, alphabet)
        return Plan(coder, len(data), data=data)
    if sym.min() < 0 or sym.max() >= alphabet:
        raise ValueError(f"symbols must lie in [0, {alphabet})")
    n = len(sym)
    sample = _sample(sym)
    scale = n / len(sample)
    est: dict[str, int] = {"bits": (n * bit_width(alphabet) + 7) // 8}
    if alphabet <= 1 << 16 and n <= 1 << 21:
        est["huffman"] = huffman_size(np.bincount(sym, minlength=alphabet))
    dense = len(_zstd_enc(sample, alphabet, 3)) > _DENSE * len(sample) * (1 if alphabet <= 256 else 2)
    for name, coder, effort, heavy in _BIG:
        if heavy and (dense or n > 1 << 23):
            continue
        if coder == "zstd":
            est[name] = int(len(_zstd_enc(sample, alphabet, effort)) * scale)
        elif coder == "lzma":
            est[name] = int(len(_lzma_enc(sample, alphabet, effort)) * scale)
    best = min(est.values())
    for name, coder, effort, heavy in _BIG:            # cost order: the first near-best one
        if name in est and est[name] <= best * (1 + _TOLERANCE):
            if heavy and n <= _FULL_EFFORT:            # what encode_best would use: a few % smaller
                effort = 22 if coder == "zstd" else -1
            return Plan(coder, est[name], effort)
    raise AssertionError("unreachable")


def encode_planned(sym: np.ndarray, alphabet: int, p: Plan) -> tuple[str, bytes]:
    """Run the planned coder on the whole stream and check it decodes back exactly (bits if not)."""
    if p.data is not None:
        return p.coder, p.data
    sym = np.asarray(sym, dtype=np.int64)
    if p.coder == "zstd":
        data = _zstd_enc(sym, alphabet, p.effort)
    elif p.coder == "lzma":
        data = _lzma_enc(sym, alphabet, p.effort)
    else:
        data = CODERS[p.coder][0](sym, alphabet)
    if p.coder == "bits" or np.array_equal(decode(p.coder, data, len(sym), alphabet), sym):
        return p.coder, data
    return "bits", _bits_enc(sym, alphabet)


def decode(coder: str, data: bytes, n: int, alphabet: int) -> np.ndarray:
    if coder not in CODERS:
        raise CodecError(f"unknown coder {coder!r}; known: {sorted(CODERS)}")
    return CODERS[coder][1](data, n, alphabet)
