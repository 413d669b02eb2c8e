"""Entropy coders for integer symbol streams: bit packing, canonical Huffman (as in Deep
Compression), zstd and lzma. :func:`encode_best` tries them all and keeps the smallest.

A stream is a 1-D array of symbols in ``[0, alphabet)``. Decoding needs ``(coder, n, alphabet)``,
which the container stores beside the bytes; everything else a coder needs is inside its bytes.
"""

from __future__ import annotations

import heapq
import lzma
import math
from typing import Callable

import numpy as np
import zstandard

MAX_CODE_LEN = 16        # Huffman codes are length-limited so the decoder table has 2^16 entries
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": 1 << 20}]


class CodecError(ValueError):
    """A stream cannot be decoded (corrupt or inconsistent); the container reports which tensor."""


# -- fixed-width bit packing ---------------------------------------------------------------

def bit_width(alphabet: int) -> int:
    return max(0, math.ceil(math.log2(alphabet))) if alphabet > 1 else 0


def pack_bits(sym: np.ndarray, width: int) -> bytes:
    if width == 0 or len(sym) == 0:
        return b""
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint32)
    bits = ((sym.astype(np.uint32)[:, None] >> shifts) & 1).astype(np.uint8)   # (n, width) MSB first
    return np.packbits(bits.reshape(-1)).tobytes()


def unpack_bits(data: bytes, n: int, width: int) -> np.ndarray:
    if width == 0:
        return np.zeros(n, dtype=np.int64)
    if n * width > 8 * len(data):
        raise CodecError(f"bit-packed stream too short: {8 * len(data)} bits for {n} x {width}")
    data = data[:(n * width + 7) // 8]
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    if len(bits) < n * width:
        raise CodecError(f"bit-packed stream too short: {len(bits)} bits for {n} x {width}")
    bits = bits[: n * width].reshape(n, width).astype(np.int64)
    return (bits << np.arange(width - 1, -1, -1)).sum(1)


# -- canonical Huffman ---------------------------------------------------------------------

def _code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code length per symbol (0 = unused), limited to MAX_CODE_LEN by flattening counts."""
    counts = counts.astype(np.int64)
    while True:
        used = np.flatnonzero(counts)
        lens = np.zeros(len(counts), dtype=np.int64)
        if len(used) == 1:
            lens[used] = 1
            return lens
        heap = [(int(counts[s]), i, [int(s)]) for i, s in enumerate(used)]
        heapq.heapify(heap)
        tie = len(heap)
        while len(heap) > 1:
            c1, _, s1 = heapq.heappop(heap)
            c2, _, s2 = heapq.heappop(heap)
            for s in s1 + s2:
                lens[s] += 1
            heapq.heappush(heap, (c1 + c2, tie, s1 + s2))
            tie += 1
        if lens.max() <= MAX_CODE_LEN:
            return lens
        counts = np.where(counts > 0, (counts + 1) // 2, 0)   # flatter distribution -> shorter codes


def _canonical(lens: np.ndarray) -> np.ndarray:
    codes = np.zeros(len(lens), dtype=np.int64)
    code, prev = 0, 0
    for s in sorted(np.flatnonzero(lens), key=lambda s: (lens[s], s)):
        code <<= int(lens[s]) - prev
        codes[s] = code
        code += 1
        prev = int(lens[s])
    return codes


def _pack_table(lens: np.ndarray) -> bytes:
    """Code lengths (0..16) as 5-bit fields, or zstd of the bytes if smaller; first byte says which."""
    packed = pack_bits(lens, 5)
    z = zstandard.ZstdCompressor(level=19, write_content_size=False, write_checksum=False,
                                 write_dict_id=False).compress(lens.astype(np.uint8).tobytes())
    return b"\x00" + packed if len(packed) <= len(z) else b"\x01" + z


def _unpack_table(data: bytes, alphabet: int) -> tuple[np.ndarray, int]:
    if data[:1] == b"\x00":
        size = (alphabet * 5 + 7) // 8
        return unpack_bits(data[1:1 + size], alphabet, 5), 1 + size
    if data[:1] != b"\x01":
        raise CodecError("Huffman table: unknown table format")
    d = zstandard.ZstdDecompressor().decompressobj()
    out, fed = bytearray(), 1
    while fed < len(data) and not d.eof:                # small pieces: a crafted table cannot balloon
        out += d.decompress(data[fed:fed + 64])
        fed = min(fed + 64, len(data))
        if len(out) > alphabet:
            raise CodecError(f"Huffman table holds more than {alphabet} lengths")
    lens = np.frombuffer(bytes(out), dtype=np.uint8)
    if len(lens) != alphabet or not d.eof:
        raise CodecError(f"Huffman table holds {len(lens)} lengths, expected {alphabet}")
    return lens.astype(np.int64), fed - len(d.unused_data)


def huffman_encode(sym: np.ndarray, alphabet: int) -> bytes:
    if len(sym) == 0:
        return b""
    lens = _code_lengths(np.bincount(sym, minlength=alphabet))
    codes = _canonical(lens)
    out = [_pack_table(lens)]
    j = np.arange(MAX_CODE_LEN)
    chunks = []
    for start in range(0, len(sym), 1 << 16):          # (chunk, 16) bit matrices stay small
        s = sym[start:start + (1 << 16)]
        c, ln = codes[s][:, None], lens[s][:, None]
        valid = j[None, :] < ln
        bits = (c >> np.clip(ln - 1 - j[None, :], 0, None)) & 1
        chunks.append(bits[valid].astype(np.uint8))
    out.append(np.packbits(np.concatenate(chunks)).tobytes())
    return b"".join(out)


def huffman_decode(data: bytes, n: int, alphabet: int) -> np.ndarray:
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if n > 8 * len(data):                              # every symbol takes at least one bit
        raise CodecError(f"Huffman stream of {len(data)} bytes cannot hold {n} symbols")
    if alphabet > 1 << MAX_CODE_LEN:
        raise CodecError(f"Huffman alphabet {alphabet} is larger than {1 << MAX_CODE_LEN}")
    lens, used = _unpack_table(data, alphabet)
    if lens.max() > MAX_CODE_LEN or lens.max() == 0:
        raise CodecError("Huffman table is invalid")
    codes = _canonical(lens)
    tsym = np.full(1 << MAX_CODE_LEN, -1, dtype=np.int64)
    tlen = np.zeros(1 << MAX_CODE_LEN, dtype=np.int64)
    for s in np.flatnonzero(lens):
        sh = MAX_CODE_LEN - int(lens[s])
        lo = int(codes[s]) << sh
        if lo + (1 << sh) > len(tsym):
            raise CodecError("Huffman table is not a prefix code")
        tsym[lo:lo + (1 << sh)] = s
        tlen[lo:lo + (1 << sh)] = lens[s]
    bits = np.unpackbits(np.frombuffer(data[used:], dtype=np.uint8)).astype(np.int64)
    bits = np.concatenate([bits, np.zeros(MAX_CODE_LEN, dtype=np.int64)])
    nb = len(bits) - MAX_CODE_LEN
    win = np.zeros(nb, dtype=np.int64)                 # the next 16 bits at every bit position
    for k in range(MAX_CODE_LEN):
        win |= bits[k:k + nb] << (MAX_CODE_LEN - 1 - k)
    win_l, tsym_l, tlen_l = win.tolist(), tsym.tolist(), tlen.tolist()
    out = [0] * n
    p = 0
    try:
        for i in range(n):
            w = win_l[p]
            out[i] = tsym_l[w]
            p += tlen_l[w]
    except IndexError:
        raise CodecError(f"Huffman stream ends after {i} of {n} symbols") from None
    res = np.asarray(out, dtype=np.int64)
    if p > nb or (res < 0).any():
        raise CodecError("Huffman stream is corrupt")
    return res


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


def _zstd_enc(sym: np.ndarray, alphabet: int) -> bytes:
    return zstandard.ZstdCompressor(level=22, write_content_size=False, write_checksum=False,
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


def _lzma_enc(sym: np.ndarray, alphabet: int) -> bytes:
    return lzma.compress(_as_bytes(sym, alphabet), format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)


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


def decode(coder: str, data: bytes, n: int, alphabet: int) -> np.ndarray:
    if coder not in CODERS:
        raise CodecError(f"unknown coder {coder!r}; known: {sorted(CODERS)}")
    return CODERS[coder][1](data, n, alphabet)
