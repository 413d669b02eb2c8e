"""Bit-level coders for integer symbol streams: fixed-width bit packing and length-limited
canonical Huffman (as in Deep Compression). The byte-oriented coders (zstd, lzma) and the choice
among all of them are :mod:`autocompress.encode.entropy`, which re-exports these names.
"""

from __future__ import annotations

import heapq
import math

import numpy as np
import zstandard

MAX_CODE_LEN = 16        # Huffman codes are length-limited so the decoder table has 2^16 entries


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


def huffman_size(counts: np.ndarray) -> int:
    """The exact bytes :func:`huffman_encode` writes for symbols with these counts (no coding)."""
    lens = _code_lengths(counts)
    return len(_pack_table(lens)) + (int((lens * counts).sum()) + 7) // 8


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
