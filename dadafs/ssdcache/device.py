"""One cache device (one SSD): a ring of segments in one file, its RAM index, its write head.

Concurrency: one lock per device guards the index, the head, the pin counts and the counters.
Data are written and verified *outside* the lock: a put reserves its place under the lock, writes,
then publishes the index entry under the lock; a get looks up and pins under the lock, verifies
and is served unlocked. A segment with pins (reads being served or writes in flight) is never
recycled: the head skips it. Any OSError of the device takes it out of service (``state``).

The event-loop thread uses only :meth:`Device.lookup_resident` and :meth:`Device.unpin_nowait`,
which never wait for the lock (a rollover holds it across disk I/O): a busy lock means "take the
slow path in a worker thread", and an unpin that finds the lock busy is queued and applied by the
next holder (a late unpin only delays the recycling of a segment).
"""

from __future__ import annotations

import errno
import json
import logging
import mmap
import os
import threading
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from ..source import checksum
from . import index as ix
from . import layout as L
from .recovery import SegmentScan, key_words, recover, scan_segment
from .resident import Residency

SUPERBLOCK = "dadafs-cache.json"
DATAFILE = "chunks.dat"
RESERVED = 4096  # capacity kept for the superblock
MAX_DEFAULT_SEG = 64 << 20
# A restart continues far above the last seq: a crashed run's leftovers never chain.
SEQ_JUMP = 1 << 24
POLICIES = ("fifo", "clock", "clock-late")
VERIFY_HITS = ("first", "always")


def default_segment_size(capacity: int) -> int:
    """About 1/64 of the device, between MIN_SEG_SIZE and 64 MiB: eviction works one segment at a time."""
    want = min(MAX_DEFAULT_SEG, (capacity - RESERVED) // 64)
    return L.align(max(L.MIN_SEG_SIZE, want))


class Device:
    def __init__(
        self,
        ident: int,
        path: Path,
        capacity: int,
        *,
        segment_size: int | None = None,
        policy: str = "clock",
        verify: str = "pread",
        verify_hits: str = "first",
        log: logging.Logger,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown eviction policy {policy!r} (one of {', '.join(POLICIES)})")
        if verify not in ("mmap", "pread"):
            raise ValueError(f"unknown verify mode {verify!r} (mmap or pread)")
        if verify_hits not in VERIFY_HITS:
            raise ValueError(f"unknown verify_hits {verify_hits!r} (first or always)")
        self.ident, self.path, self.capacity = ident, Path(path), capacity
        self.policy, self.verify, self.log = policy, verify, log
        self.verify_hits = verify_hits
        self.seg_size = L.align(segment_size) if segment_size else default_segment_size(capacity)
        if not L.MIN_SEG_SIZE <= self.seg_size <= L.MAX_SEG_SIZE:
            raise ValueError(
                f"{path}: segment size must lie in [{L.MIN_SEG_SIZE}, {L.MAX_SEG_SIZE}], got {self.seg_size}"
            )
        self.nseg = (capacity - RESERVED) // self.seg_size
        if self.nseg * self.seg_size > (ix.LOC_MASK + 1) * L.ALIGN:
            raise ValueError(f"{path}: capacity {capacity} above the 32 TiB a device can address")
        if self.nseg < 2:
            raise ValueError(
                f"{path}: capacity {capacity} too small, need at least {2 * self.seg_size + RESERVED} bytes"
            )
        self.lock = threading.RLock()
        self.index = ix.ChunkIndex()
        self.state = "ok"
        self.fd = -1
        self._mm: mmap.mmap | None = None
        self._mv: memoryview | None = None
        self._res: Residency | None = None
        self._late_unpins: deque[int] = deque()
        self.pins = [0] * self.nseg
        self.head_seg = 0
        self.head_off = 0
        self.head_sealed = False
        self.head_rows: list[tuple[bytes, int, int, int]] = []
        self.seq = 1
        self.prev_seq = 0
        self.bytes = 0
        self.c = dict.fromkeys(
            (
                "hits",
                "misses",
                "resident_hits",
                "puts",
                "evictions",
                "reinserted",
                "checksum_failures",
                "skipped_pinned",
            ),
            0,
        )
        self._tls = threading.local()
        try:
            self._open()
        except OSError as e:
            self._fail(e, "open")

    # ---- opening and recovery -------------------------------------------------------------

    def _open(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        geometry = {"format": 1, "seg_size": self.seg_size, "nseg": self.nseg}
        sb = self.path / SUPERBLOCK
        data = self.path / DATAFILE
        try:
            same = json.loads(sb.read_text()) == geometry
        except (OSError, ValueError):
            same = False
        if not same and data.exists():
            self.log.warning("cache %s: new geometry %s, starting empty", self.path, geometry)
            data.unlink()
        if not same:
            tmp = sb.with_suffix(".tmp")
            tmp.write_text(json.dumps(geometry))
            os.replace(tmp, sb)
        self.fd = os.open(data, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        size = self.nseg * self.seg_size
        if os.fstat(self.fd).st_size != size:
            os.ftruncate(self.fd, size)  # sparse: blocks are allocated only where records land
        if self.verify == "mmap":
            self._mm = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
            self._mv = memoryview(self._mm)
        if self.verify_hits == "first":
            self._res = Residency(self.fd, size)
        self._recover()

    def _recover(self) -> None:
        rec = recover(self._read, self.seg_size, self.nseg)
        if len(rec.entries):
            words = key_words(rec.entries)
            locs = (rec.seg * self.seg_size + rec.entries["off"].astype(np.int64)) // L.ALIGN
            lens = rec.entries["len"].astype(np.uint64)
            meta = np.uint64(ix.VALID) | (lens << np.uint64(ix.LEN_SHIFT)) | locs.astype(np.uint64)
            self.index.bulk_insert(words[:, 0].copy(), words[:, 1].copy(), meta)
            self.bytes = int(lens.sum())
        self.seq = rec.max_seq + SEQ_JUMP
        self.head_seg = rec.head_seg
        scan = rec.head_scan
        assert scan is not None
        if scan.sealed:
            self.head_sealed = True  # the next put moves on to a fresh segment
        else:
            self.head_off = scan.end
            self.head_rows = [
                (bytes(e["key"]), int(e["off"]), int(e["len"]), int(e["seq"])) for e in scan.entries
            ]
            self.prev_seq = self.head_rows[-1][3] if self.head_rows else 0

    # ---- raw I/O ---------------------------------------------------------------------------

    def _read(self, off: int, n: int) -> bytes:
        return os.pread(self.fd, n, off)

    def _write(self, off: int, bufs: list[bytes | memoryview]) -> None:
        want = sum(len(b) for b in bufs)
        done = os.pwritev(self.fd, bufs, off)
        if done != want:
            raise OSError(errno.ENOSPC, f"short write ({done} of {want} bytes)")

    def copy(self, off: int, n: int) -> bytes:
        """Bytes of a pinned region (page cache through the mmap, or one pread)."""
        if self._mv is not None:
            return bytes(self._mv[off : off + n])
        return self._read(off, n)

    def _verified(self, loc: int, key: bytes, length: int) -> bytes | None:
        """The record's xxh3 if the record at ``loc`` is ``key``'s, whole, and its bytes match
        it; None otherwise."""
        mv = self._mv
        if mv is not None:
            hdr = L.unpack_header(mv[loc : loc + L.HEADER_SIZE])
            if hdr is None or hdr.key != key or hdr.length != length:
                return None
            data = mv[loc + L.HEADER_SIZE : loc + L.HEADER_SIZE + length]
            return hdr.digest if checksum(data) == hdr.digest else None
        buf = getattr(self._tls, "buf", None)
        if buf is None:
            buf = self._tls.buf = bytearray(L.HEADER_SIZE + L.MAX_DATA)
        view = memoryview(buf)[: L.HEADER_SIZE + length]
        if os.preadv(self.fd, [view], loc) != len(view):
            return None
        hdr = L.unpack_header(view[: L.HEADER_SIZE])
        if hdr is None or hdr.key != key or hdr.length != length:
            return None
        return hdr.digest if checksum(view[L.HEADER_SIZE :]) == hdr.digest else None

    # ---- failure ---------------------------------------------------------------------------

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    def _fail(self, e: OSError, what: str) -> None:
        with self.lock:
            if not self.ok:
                return
            name = errno.errorcode.get(e.errno or 0, "error")
            self.state = f"failed: {what}: {name} {e.strerror or e}"
            self.log.error("cache device %s out of service (%s)", self.path, self.state)
            self.index.clear()
            self.bytes = 0
            self.head_rows = []
            self._close_files_if_unpinned()

    def _close_files_if_unpinned(self) -> None:
        self._drain_unpins()
        if any(self.pins):
            return  # a ChunkRef still uses the fd; the last release closes it
        if self._res is not None:
            self._res.close()
            self._res = None
        if self._mv is not None:
            self._mv.release()
            self._mv = None
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # ---- get ---------------------------------------------------------------------------------

    def lookup(self, key: bytes) -> tuple[int, int, int] | None:
        """Pin ``key``'s record: (segment, location, length), or None (a miss)."""
        k0, k1 = ix.split_key(key)
        with self.lock:
            self._drain_unpins()
            if not self.ok:
                return None
            slot = self.index.find(k0, k1)
            if slot < 0:
                self.c["misses"] += 1
                return None
            return self._take_hit(slot, self.index.meta(slot))

    def _take_hit(self, slot: int, meta: int) -> tuple[int, int, int]:
        """Mark the record referenced, pin its segment, count a hit (lock held):
        (segment, location, length)."""
        if self.policy != "fifo" and not meta & ix.REF:
            self.index.set_meta(slot, meta | ix.REF)
        loc = ix.meta_loc(meta) * L.ALIGN
        seg = loc // self.seg_size
        self.pins[seg] += 1
        self.c["hits"] += 1
        return seg, loc, ix.meta_len(meta)

    def lookup_resident(self, key: bytes) -> tuple[int, int, int, bytes] | None:
        """Pin and count a hit whose bytes need no disk read and no new check: (segment,
        location, length, xxh3), or None, which means "take the slow path" (a miss, a record
        not verified since it was written or recovered, pages not all in the page cache, or
        the lock busy). Never blocks; meant for the event-loop thread (``verify_hits="first"``).
        """
        res = self._res
        if res is None:
            return None
        k0, k1 = ix.split_key(key)
        if not self.lock.acquire(blocking=False):
            return None
        try:
            if not self.ok:
                return None
            slot = self.index.find(k0, k1)
            if slot < 0:
                return None
            meta = self.index.meta(slot)
            if not meta & ix.VERIFIED:
                return None
            loc = ix.meta_loc(meta) * L.ALIGN
            length = ix.meta_len(meta)
            if not res.resident(loc, L.HEADER_SIZE + length):
                return None
            hdr = L.unpack_header(os.pread(self.fd, L.HEADER_SIZE, loc))
            if hdr is None or hdr.key != key or hdr.length != length:
                return None
            self.c["resident_hits"] += 1
            return (*self._take_hit(slot, meta), hdr.digest)
        except OSError:
            return None  # the slow path meets the error again and handles it
        finally:
            self.lock.release()

    def verify_pinned(self, key: bytes, seg: int, loc: int, length: int) -> bytes | None:
        """Check a pinned record and return its xxh3; a bad one is dropped, counted, unpinned."""
        try:
            good = self._verified(loc, key, length)
        except OSError as e:
            self.unpin(seg)
            self._fail(e, "read")
            return None
        except (ValueError, TypeError):  # mapping closed by a concurrent close(): a miss
            self.unpin(seg)
            return None
        if good is not None:
            if self.verify_hits == "first":
                with self.lock:
                    slot = self.index.find(*ix.split_key(key))
                    if slot >= 0:
                        meta = self.index.meta(slot)
                        if ix.meta_loc(meta) * L.ALIGN == loc:
                            self.index.set_meta(slot, meta | ix.VERIFIED)
            return good
        with self.lock:
            self.c["hits"] -= 1
            self.c["misses"] += 1
            self.c["checksum_failures"] += 1
            self._drop_if_at(key, loc)
        self.log.warning(
            "cache %s: bad record for key %s at %d, dropped", self.path, key.hex(), loc
        )
        self.unpin(seg)
        return None

    def unpin(self, seg: int) -> None:
        with self.lock:
            self._unpin_locked(seg)

    def unpin_nowait(self, seg: int) -> None:
        """:meth:`unpin` without waiting: a busy lock queues it for the next holder."""
        if not self.lock.acquire(blocking=False):
            self._late_unpins.append(seg)  # deque.append is atomic
            return
        try:
            self._unpin_locked(seg)
        finally:
            self.lock.release()

    def _unpin_locked(self, seg: int) -> None:
        if self.pins[seg] > 0:  # close() may have forgotten the pins already
            self.pins[seg] -= 1
        self._drain_unpins()
        if not self.ok:
            self._close_files_if_unpinned()

    def _drain_unpins(self) -> None:
        """Apply queued unpins (lock held)."""
        late = self._late_unpins
        while late:
            seg = late.popleft()
            if self.pins[seg] > 0:
                self.pins[seg] -= 1

    def _drop_if_at(self, key: bytes, loc: int) -> bool:
        slot = self.index.find(*ix.split_key(key))
        if slot >= 0 and ix.meta_loc(self.index.meta(slot)) * L.ALIGN == loc:
            self.bytes -= ix.meta_len(self.index.meta(slot))
            self.index.remove_slot(slot)
            return True
        return False

    def key_list(self) -> list[bytes]:
        """Every cached key (a copy; for tests and tools, O(entries))."""
        with self.lock:
            k0, k1, _ = self.index.arrays()
        return [ix.join_key(int(a), int(b)) for a, b in zip(k0, k1, strict=True)]

    def contains(self, key: bytes, wait: bool = True, busy: bool = False) -> bool:
        """Whether ``key`` is indexed; with ``wait=False`` ``busy`` while the lock is busy."""
        if not self.lock.acquire(blocking=wait):
            return busy
        try:
            return self.ok and self.index.find(*ix.split_key(key)) >= 0
        finally:
            self.lock.release()

    # ---- put ---------------------------------------------------------------------------------

    def put(self, key: bytes, data: bytes | memoryview) -> bool:
        """Append a record; False when it was not stored (present already, device failed, all pinned)."""
        length = len(data)
        k0, k1 = ix.split_key(key)
        digest = checksum(data)
        with self.lock:
            self._drain_unpins()
            if not self.ok or self.index.find(k0, k1) >= 0:
                return False
            place = self._reserve(key, length)
            if place is None:
                return False
            seg, off, seq, prev = place
            self.pins[seg] += 1
        loc = seg * self.seg_size + off
        try:
            self._write(loc, [L.pack_header(length, seq, prev, key, digest), data])
        except OSError as e:
            self.unpin(seg)
            self._fail(e, "write")
            return False
        with self.lock:
            self.pins[seg] -= 1
            if not self.ok:
                self._close_files_if_unpinned()
                return False
            self._publish(k0, k1, loc, length, ref=False, verified=True)
            self.c["puts"] += 1
        return True

    def _publish(
        self, k0: int, k1: int, loc: int, length: int, *, ref: bool, verified: bool
    ) -> None:
        """Index a record. ``verified``: its bytes are the ones this process wrote and hashed
        (a fresh put), so a hit served from the page cache needs no check (``verify_hits``)."""
        slot = self.index.find(k0, k1)
        if slot >= 0:
            self.bytes -= ix.meta_len(self.index.meta(slot))
        meta = ix.pack_meta(loc // L.ALIGN, length, ref)
        if verified and self.verify_hits == "first":
            meta |= ix.VERIFIED
        self.index.put(k0, k1, meta)
        self.bytes += length

    def _reserve(self, key: bytes, length: int) -> tuple[int, int, int, int] | None:
        """Place for a record in the head segment (rolling over when full); lock held."""
        span = L.record_span(length)
        fits = self.head_off + span + L.footer_span(len(self.head_rows) + 1) <= self.seg_size
        if (self.head_sealed or not fits) and not self._rollover():
            return None
        seg, off, seq, prev = self.head_seg, self.head_off, self.seq, self.prev_seq
        self.seq += 1
        self.prev_seq = seq
        self.head_off += span
        self.head_rows.append((key, off, length, seq))
        return seg, off, seq, prev

    def _rollover(self) -> bool:
        """Seal the head segment and move the head to the next unpinned one, evicting it."""
        self._drain_unpins()
        nxt = (self.head_seg + 1) % self.nseg
        while self.pins[nxt] or nxt == self.head_seg:
            if nxt == self.head_seg:
                return False  # every other segment is pinned: drop this put
            self.c["skipped_pinned"] += 1
            nxt = (nxt + 1) % self.nseg
        try:
            if not self.head_sealed and self.head_rows:
                rows = np.array(self.head_rows, dtype=L.ENTRY_DTYPE)
                footer = L.pack_footer(rows)
                self._write((self.head_seg + 1) * self.seg_size - len(footer), [footer])
            keep = self._evict(nxt)
            if self.policy == "clock-late":
                self._clear_refs((nxt + self.nseg // 2) % self.nseg)
            base = nxt * self.seg_size
            self._write(base + self.seg_size - L.TRAILER_SIZE, [bytes(L.TRAILER_SIZE)])
        except OSError as e:
            self._fail(e, "rollover")
            return False
        self.head_seg, self.head_off, self.head_rows = nxt, 0, []
        self.head_sealed, self.prev_seq = False, 0
        self._reinsert(keep)
        return True

    def _evict(self, seg: int) -> list[tuple[bytes, bytes]]:
        """Drop the index entries of ``seg``; under CLOCK return referenced records to re-append."""
        base = seg * self.seg_size
        scan: SegmentScan = scan_segment(self._read, base, self.seg_size)
        keep: list[tuple[bytes, bytes]] = []
        budget = self.seg_size // 2  # re-appended bytes per segment: the head always advances
        for e in scan.entries:
            key = bytes(e["key"])
            k0, k1 = ix.split_key(key)
            slot = self.index.find(k0, k1)
            loc = base + int(e["off"])
            if slot < 0 or ix.meta_loc(self.index.meta(slot)) * L.ALIGN != loc:
                continue  # superseded or dropped already
            meta = self.index.meta(slot)
            length = ix.meta_len(meta)
            if meta & ix.REF and L.record_span(length) <= budget:
                data = self._read(loc + L.HEADER_SIZE, length)
                hdr = L.unpack_header(self._read(loc, L.HEADER_SIZE))
                if hdr is not None and hdr.key == key and checksum(data) == hdr.digest:
                    keep.append((key, data))
                    budget -= L.record_span(length)
            self.bytes -= length
            self.index.remove_slot(slot)
            self.c["evictions"] += 1
        self.c["evictions"] -= len(keep)
        return keep

    def _clear_refs(self, seg: int) -> None:
        """Forget the references of a segment half a lap old: only later ones earn a second chance."""
        base = seg * self.seg_size
        for e in scan_segment(self._read, base, self.seg_size).entries:
            slot = self.index.find(*ix.split_key(bytes(e["key"])))
            if slot >= 0:
                meta = self.index.meta(slot)
                if meta & ix.REF and ix.meta_loc(meta) * L.ALIGN == base + int(e["off"]):
                    self.index.set_meta(slot, meta & ~ix.REF)

    def _reinsert(self, keep: list[tuple[bytes, bytes]]) -> None:
        """Write second-chance records at the head (lock held, fresh segment, so they fit)."""
        for key, data in keep:
            length = len(data)
            place = self._reserve(key, length)
            if place is None:
                return
            seg, off, seq, prev = place
            loc = seg * self.seg_size + off
            try:
                self._write(loc, [L.pack_header(length, seq, prev, key, checksum(data)), data])
            except OSError as e:
                self._fail(e, "write")
                return
            self._publish(*ix.split_key(key), loc, length, ref=False, verified=True)
            self.c["reinserted"] += 1

    # ---- reporting and closing ------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "path": str(self.path),
                "capacity": self.nseg * self.seg_size + RESERVED,
                "segment_size": self.seg_size,
                "segments": self.nseg,
                "policy": self.policy,
                "verify_hits": self.verify_hits,
                "state": self.state,
                "bytes": self.bytes,
                "chunks": self.index.count,
                "entries": self.index.count,
                "index_ram_bytes": self.index.nbytes,
                **self.c,
            }

    def close(self) -> None:
        with self.lock:
            if self.ok and self.fd >= 0:
                try:
                    os.fsync(self.fd)
                except OSError as e:
                    self.log.warning("cache %s: fsync at close failed: %s", self.path, e)
            if any(self.pins):
                self.log.warning(
                    "cache %s: closing with %d pinned chunks", self.path, sum(self.pins)
                )
                self.pins = [0] * self.nseg
            self._close_files_if_unpinned()
            if self.ok:
                self.state = "closed"
