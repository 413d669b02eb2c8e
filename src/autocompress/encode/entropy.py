"""Entropy coders for integer symbol streams: bit packing, canonical Huffman (as in Deep
Compression), zstd and lzma. :func:`encode_best` tries them all and keeps the smallest;
:func:`plan` + :func:`encode_planned` do the same in one pass for streams too long for that.

A stream is a 1-D array of symbols in ``[0, alphabet)``. Decoding needs ``(coder, n, alphabet)``,
which the container stores beside the bytes; everything else a coder needs is inside its bytes.
"""

from __future__ import annotations

import heapq
import lzma
import math
from dataclasses import dataclass
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


def _word(width: int) -> np.dtype:
    return np.dtype(">u1") if width <= 8 else np.dtype(">u2") if width <= 16 else np.dtype(">u4")


_CHUNK = 1 << 20          # symbols per step (a multiple of 8: every chunk ends on a byte boundary)


def pack_bits(sym: np.ndarray, width: int) -> bytes:
    """MSB-first fixed-width fields; vectorised: each symbol's big-endian word, unpacked to bits,
    keeps its low ``width`` bits (chunked so the bit matrix stays small)."""
    if width == 0 or len(sym) == 0:
        return b""
    dt = _word(width)
    out = []
    for i in range(0, len(sym), _CHUNK):
        words = np.ascontiguousarray(sym[i:i + _CHUNK], dtype=dt).view(np.uint8)
        bits = np.unpackbits(words.reshape(-1, dt.itemsize), axis=1)[:, 8 * dt.itemsize - width:]
        out.append(bits.reshape(-1))
    return np.packbits(np.concatenate(out)).tobytes()


def unpack_bits(data: bytes, n: int, width: int) -> np.ndarray:
    if width == 0:
        return np.zeros(n, dtype=np.int64)
    if n * width > 8 * len(data):
        raise CodecError(f"bit-packed stream too short: {8 * len(data)} bits for {n} x {width}")
    nbytes = (n * width + 7) // 8
    if width == 8:
        return np.frombuffer(data, dtype=np.uint8, count=n).astype(np.int64)
    if width <= 25:       # a field plus its bit offset (< 8) fits one big-endian 32-bit window
        buf = np.zeros(nbytes + 4, dtype=np.uint32)
        buf[:nbytes] = np.frombuffer(data, dtype=np.uint8, count=nbytes)
        out = np.empty(n, dtype=np.int64)
        for i in range(0, n, _CHUNK):
            start = np.arange(i, min(n, i + _CHUNK), dtype=np.int64) * width
            at = start >> 3
            win = (buf[at] << 24) | (buf[at + 1] << 16) | (buf[at + 2] << 8) | buf[at + 3]
            out[i:i + len(at)] = (win >> (32 - width - (start & 7)).astype(np.uint32)) & ((1 << width) - 1)
        return out
    dt = _word(width)
    buf = np.frombuffer(data, dtype=np.uint8, count=nbytes)
    out = np.empty(n, dtype=np.int64)
    for i in range(0, n, _CHUNK):                       # chunk starts fall on byte boundaries
        m = min(_CHUNK, n - i)
        b0 = i * width // 8
        bits = np.zeros((m, 8 * dt.itemsize), dtype=np.uint8)
        bits[:, 8 * dt.itemsize - width:] = np.unpackbits(buf[b0:b0 + (m * width + 7) // 8])[: m * width].reshape(m, width)
        out[i:i + m] = np.packbits(bits, axis=1).reshape(-1).view(dt)
    return out


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
    body = np.frombuffer(data[used:], dtype=np.uint8).astype(np.int64)
    nb = 8 * len(body)
    # b24[i]: bytes i..i+2 big-endian; the 16 bits from bit p are (b24[p >> 3] >> (8 - (p & 7))) & 0xFFFF
    pad = np.concatenate([body, np.zeros(3, dtype=np.int64)])
    b24 = ((pad[:-2] << 16) | (pad[1:-1] << 8) | pad[2:])[:len(body) + 1].tolist()
    if n < 1 << 18:                                  # the run table costs ~0.1 s to build
        L = int(lens.max())                          # an L-bit table: cheap to build for short codes
        step = 1 << (MAX_CODE_LEN - L)
        out, p = _walk_single(b24, tsym[::step].tolist(), tlen[::step].tolist(), n, L)
    else:
        out, p = _walk_multi(b24, tsym, tlen, n)
    res = np.asarray(out, dtype=np.int64)
    if p > nb or (res < 0).any():
        raise CodecError("Huffman stream is corrupt")
    return res


def _walk_single(b24: list, tsym_l: list, tlen_l: list, n: int, L: int) -> tuple[list, int]:
    out = [0] * n
    p, top, mask = 0, 24 - L, (1 << L) - 1
    try:
        for i in range(n):
            w = (b24[p >> 3] >> (top - (p & 7))) & mask
            out[i] = tsym_l[w]
            p += tlen_l[w]
    except IndexError:
        raise CodecError(f"Huffman stream ends after {i} of {n} symbols") from None
    return out, p


def _walk_multi(b24: list, tsym: np.ndarray, tlen: np.ndarray, n: int) -> tuple[list, int]:
    """The decode loop is Python, so each step emits every symbol whose code lies whole inside the
    16-bit window (several per step for short codes): a table of symbol runs per window value."""
    full = 1 << MAX_CODE_LEN
    w = np.arange(full, dtype=np.int64)
    used = np.zeros(full, dtype=np.int64)
    alive = np.ones(full, dtype=bool)
    runs = np.full((full, MAX_CODE_LEN), -1, dtype=np.int64)
    count = np.zeros(full, dtype=np.int64)
    for k in range(MAX_CODE_LEN):
        idx = (w << used) & (full - 1)
        ln = tlen[idx]
        ok = alive & (ln > 0) & (used + ln <= MAX_CODE_LEN)
        if k == 0:
            ok[:] = True                 # the first code always goes (an invalid one is -1, 0 bits)
        runs[ok, k] = tsym[idx[ok]]
        used[ok] += ln[ok]
        count[ok] += 1
        alive &= ok
        if not alive.any():
            break
    runs_l = [tuple(r[:c]) for r, c in zip(runs.tolist(), count.tolist())]
    used_l = used.tolist()
    out: list = []
    p = 0
    try:
        while len(out) < n:
            x = (b24[p >> 3] >> (8 - (p & 7))) & 0xFFFF
            out.extend(runs_l[x])
            p += used_l[x]
    except IndexError:
        raise CodecError(f"Huffman stream ends after {len(out)} of {n} symbols") from None
    tlen_l = tlen.tolist()
    p -= sum(tlen_l[s] for s in out[n:] if s >= 0)      # symbols decoded past the end never were
    return out[:n], p


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
        counts = np.bincount(sym, minlength=alphabet)
        lens = _code_lengths(counts)
        est["huffman"] = len(_pack_table(lens)) + (int((lens * counts).sum()) + 7) // 8
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
