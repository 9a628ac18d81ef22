"""Rebuilding a device's index from its segments, without reading chunk data.

A sealed segment's footer is its checkpoint: one read of the trailer and one of the entries.
A segment without a valid footer (the open head, or one whose footer was invalidated when the
head entered it) is replayed by walking its record headers from offset 0: a header is accepted
while it is valid (magic, xxh64) and chains to the one before (``prev_seq``; the first has 0).
Keys found in several segments keep the record with the highest sequence number. Data checksums
are *not* checked here: every hit is verified before it is served (see docs/ssdcache.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import layout as L

Reader = Callable[[int, int], bytes]  # (offset, length) -> bytes, raises OSError


@dataclass
class SegmentScan:
    entries: np.ndarray  # layout.ENTRY_DTYPE
    sealed: bool
    end: int  # first free offset when the segment is the open head


@dataclass
class Recovered:
    seg: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    entries: np.ndarray = field(default_factory=lambda: np.zeros(0, L.ENTRY_DTYPE))
    head_seg: int = 0
    head_scan: SegmentScan | None = None
    max_seq: int = 0


def scan_segment(read: Reader, base: int, seg_size: int) -> SegmentScan:
    """The records of the segment at ``base``: from its footer, else by walking its headers."""
    trailer = read(base + seg_size - L.TRAILER_SIZE, L.TRAILER_SIZE)
    parsed = L.parse_trailer(trailer)
    if parsed is not None:
        count, digest = parsed
        start = seg_size - L.TRAILER_SIZE - count * L.ENTRY_SIZE
        if start >= 0:
            entries = L.parse_entries(read(base + start, count * L.ENTRY_SIZE), digest)
            if entries is not None and _plausible(entries, start):
                return SegmentScan(entries, True, seg_size)
    return walk_segment(read, base, seg_size)


def _plausible(entries: np.ndarray, footer_start: int) -> bool:
    if not len(entries):
        return True
    ends = entries["off"].astype(np.int64) + L.HEADER_SIZE + entries["len"].astype(np.int64)
    return bool(
        (entries["len"] > 0).all()
        and (entries["len"] <= L.MAX_DATA).all()
        and (entries["off"] % L.ALIGN == 0).all()
        and (ends <= footer_start).all()
    )


def walk_segment(read: Reader, base: int, seg_size: int) -> SegmentScan:
    rows: list[tuple[bytes, int, int, int]] = []
    off, prev = 0, 0
    block = b""
    block_off = 0
    want = 4096  # an empty segment costs one small read; then read-ahead grows to 256 KiB
    while off + L.HEADER_SIZE <= seg_size:
        # Read ahead in blocks: small records cost one read per block, not per header.
        if not block_off <= off < block_off + len(block) - L.HEADER_SIZE + 1:
            block_off = off
            block = read(base + off, min(want, seg_size - off))
            want = min(want * 4, 256 * 1024)
        hdr = L.unpack_header(block[off - block_off : off - block_off + L.HEADER_SIZE])
        if hdr is None or hdr.prev_seq != prev or (rows and hdr.seq <= prev):
            break
        span = L.record_span(hdr.length)
        if off + span > seg_size:
            break
        rows.append((hdr.key, off, hdr.length, hdr.seq))
        prev = hdr.seq
        off += span
    return SegmentScan(np.array(rows, dtype=L.ENTRY_DTYPE), False, off)


def key_words(entries: np.ndarray) -> np.ndarray:
    """The entries' keys as an (n, 2) array of little-endian uint64 (k0, k1)."""
    return np.frombuffer(entries["key"].tobytes(), dtype="<u8").reshape(-1, 2)


def newest_copies(words: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """Indices of the highest-seq record of each distinct key. Keys are hashes, so only records
    whose first key word repeats (copies of one key, practically) are resolved one by one."""
    order = np.argsort(words[:, 0], kind="stable")
    k0 = words[order, 0]
    same = np.flatnonzero(k0[1:] == k0[:-1])
    if not len(same):
        return order
    involved = np.unique(np.concatenate([order[same], order[same + 1]]))
    best: dict[tuple[int, int], int] = {}
    for i in involved.tolist():
        k = (int(words[i, 0]), int(words[i, 1]))
        if k not in best or seq[i] > seq[best[k]]:
            best[k] = i
    live = np.ones(len(order), dtype=bool)
    live[involved] = False
    live[np.fromiter(best.values(), dtype=np.int64)] = True
    return order[live[order]]


def recover(read: Reader, seg_size: int, nseg: int) -> Recovered:
    """Every live record of a device, newest copy of each key, and where the head stands."""
    scans = [scan_segment(read, s * seg_size, seg_size) for s in range(nseg)]
    segs = np.concatenate([np.full(len(sc.entries), s, np.int64) for s, sc in enumerate(scans)])
    entries = np.concatenate([sc.entries for sc in scans])
    out = Recovered()
    if not len(entries):
        out.head_scan = scans[0]
        return out
    keep = newest_copies(key_words(entries), entries["seq"])
    out.entries, out.seg = entries[keep], segs[keep]
    newest = int(np.argmax(entries["seq"]))
    out.max_seq = int(entries["seq"][newest])
    out.head_seg = int(segs[newest])
    out.head_scan = scans[out.head_seg]
    return out
