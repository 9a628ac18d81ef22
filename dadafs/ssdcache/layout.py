"""On-disk formats of the SSD cache: record headers and segment footers (see docs/ssdcache.md).

A device is one file ``chunks.dat`` cut into ``nseg`` segments of ``seg_size`` bytes. Records are
appended at 512-byte aligned offsets inside a segment: a 64-byte header, then the chunk bytes. A
sealed segment ends with a footer: one 32-byte entry per record, then a 64-byte trailer. Every
header and trailer carries its own xxh64, so a torn or stale one is recognised and ignored.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import xxhash

ALIGN = 512  # records start on 512-byte boundaries: locations fit 36 bits in the index
HEADER_SIZE = 64
TRAILER_SIZE = 64
ENTRY_SIZE = 32
MAX_DATA = 1 << 20  # CHUNK_SIZE: the largest record payload
MIN_SEG_SIZE = 2 * MAX_DATA + 4 * ALIGN  # a segment holds at least one full record and its footer
MAX_SEG_SIZE = 1 << 31  # footer offsets are u32

_HDR = struct.Struct("<4sIQQ16s16s")  # magic, length, seq, prev_seq, key, data xxh3-128 (+ xxh64)
_TRL = struct.Struct(
    "<4sIQQ16s"
)  # magic, count, seq_first, seq_last, entries xxh3-128 (+ pad, xxh64)
HDR_MAGIC = b"DSR1"
TRL_MAGIC = b"DSF1"

# One footer entry: key, offset in segment, length, seq.
ENTRY_DTYPE = np.dtype([("key", "V16"), ("off", "<u4"), ("len", "<u4"), ("seq", "<u8")])
assert ENTRY_DTYPE.itemsize == ENTRY_SIZE


def align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def record_span(length: int) -> int:
    """Bytes a record of ``length`` data bytes occupies, padding included."""
    return align(HEADER_SIZE + length)


def footer_span(count: int) -> int:
    """Bytes the footer of a segment with ``count`` records occupies (at the segment's end)."""
    return align(count * ENTRY_SIZE + TRAILER_SIZE)


@dataclass(frozen=True, slots=True)
class Header:
    length: int
    seq: int
    prev_seq: int
    key: bytes
    digest: bytes


def pack_header(length: int, seq: int, prev_seq: int, key: bytes, digest: bytes) -> bytes:
    body = _HDR.pack(HDR_MAGIC, length, seq, prev_seq, key, digest)
    return body + xxhash.xxh64_digest(body)


def unpack_header(buf: bytes | memoryview) -> Header | None:
    """The header in ``buf`` (64 bytes), or None when it is not a whole, valid header."""
    if len(buf) < HEADER_SIZE:
        return None
    body = bytes(buf[: _HDR.size])
    if body[:4] != HDR_MAGIC or xxhash.xxh64_digest(body) != bytes(buf[_HDR.size : HEADER_SIZE]):
        return None
    _, length, seq, prev_seq, key, digest = _HDR.unpack(body)
    if not 0 < length <= MAX_DATA:
        return None
    return Header(length, seq, prev_seq, key, digest)


def pack_footer(entries: np.ndarray) -> bytes:
    """Footer bytes (entries then trailer, padded in front to 512) of a sealed segment."""
    raw = entries.astype(ENTRY_DTYPE, copy=False).tobytes()
    count = len(entries)
    first = int(entries["seq"][0]) if count else 0
    last = int(entries["seq"][-1]) if count else 0
    body = _TRL.pack(TRL_MAGIC, count, first, last, xxhash.xxh3_128_digest(raw))
    pad = TRAILER_SIZE - len(body) - 8
    trailer = body + b"\0" * pad
    trailer += xxhash.xxh64_digest(trailer)
    out = raw + trailer
    return b"\0" * (footer_span(count) - len(out)) + out


def parse_trailer(buf: bytes) -> tuple[int, bytes] | None:
    """(record count, entries digest) of a valid trailer, else None."""
    if len(buf) != TRAILER_SIZE or buf[:4] != TRL_MAGIC:
        return None
    if xxhash.xxh64_digest(buf[:-8]) != buf[-8:]:
        return None
    _, count, _first, _last, digest = _TRL.unpack(buf[: _TRL.size])
    return count, digest


def parse_entries(raw: bytes, digest: bytes) -> np.ndarray | None:
    if xxhash.xxh3_128_digest(raw) != digest or len(raw) % ENTRY_SIZE:
        return None
    return np.frombuffer(raw, dtype=ENTRY_DTYPE).copy()
