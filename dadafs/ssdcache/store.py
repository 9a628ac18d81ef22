"""The chunk store the proxy uses: several devices, chunks spread over them by hash.

Placement is rendezvous hashing weighted by capacity over the devices in service: each key goes
to the device with the highest ``w / -ln(u)``, ``u`` a per-device xxh64 of the key. A device that
fails takes only its own keys elsewhere; the others keep theirs.

Every public method is thread-safe (each device has its own lock; the device list is immutable).
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from . import layout as L
from .device import Device


@dataclass(eq=False)
class ChunkRef:
    """A pinned cached chunk: ``length`` bytes at ``offset`` of ``fd``, whose xxh3 is ``digest``.

    The region is not overwritten until :meth:`release` (idempotent, never blocks; also a context
    manager), so ``os.sendfile(sock, ref.fd, ref.offset, ref.length)`` sends the record's bytes.
    They were checked against ``digest`` on the way to this ref, or (a resident hit) when this
    process wrote or last read them from the device; the receiver checks them against ``digest``.
    """

    fd: int
    offset: int
    length: int
    _device: Device | None = field(default=None, repr=False)
    _seg: int = field(default=-1, repr=False)
    digest: bytes | None = None  # the record's xxh3-128

    def release(self) -> None:
        dev, self._device = self._device, None
        if dev is not None:
            dev.unpin_nowait(self._seg)

    def __enter__(self) -> ChunkRef:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class ChunkStore:
    def __init__(
        self,
        devices: list[tuple[Path, int]],
        *,
        log: logging.Logger | None = None,
        policy: str = "clock",
        verify: str = "pread",
        segment_size: int | None = None,
        verify_hits: str = "first",
    ) -> None:
        if not devices:
            raise ValueError("a chunk store needs at least one cache directory")
        paths = [Path(p).resolve() for p, _ in devices]
        if len(set(paths)) != len(paths):
            raise ValueError("cache directories must be distinct")
        self.log = log or logging.getLogger("dadafs.ssdcache")
        self.devices = [
            Device(
                i,
                p,
                cap,
                segment_size=segment_size,
                policy=policy,
                verify=verify,
                verify_hits=verify_hits,
                log=self.log,
            )
            for i, (p, cap) in enumerate(devices)
        ]
        self._no_device_misses = 0
        self._lock = threading.Lock()  # guards _no_device_misses
        for d in self.devices:
            self.log.info("cache %s: %s, %d chunks, %s", d.path, d.state, d.index.count, d.policy)

    def device_for(self, key: bytes) -> Device | None:
        """The device in service that ``key`` belongs to (rendezvous hashing), or None."""
        best, best_score = None, -1.0
        for d in self.devices:
            if not d.ok:
                continue
            u = (xxhash.xxh64_intdigest(key, seed=d.ident) + 0.5) / 2.0**64
            score = d.capacity / -math.log(u)
            if score > best_score:
                best, best_score = d, score
        return best

    def get(self, key: bytes) -> ChunkRef | None:
        """The chunk, read from the device and checked against its xxh3 (a bad record is
        dropped, counted and reported as a miss); may block on disk I/O."""
        dev = self.device_for(key)
        if dev is None:
            with self._lock:
                self._no_device_misses += 1
            return None
        found = dev.lookup(key)
        if found is None:
            return None
        seg, loc, length = found
        digest = dev.verify_pinned(key, seg, loc, length)
        if digest is None:
            return None
        return ChunkRef(dev.fd, loc + L.HEADER_SIZE, length, dev, seg, digest)

    def get_resident(self, key: bytes) -> ChunkRef | None:
        """The chunk if serving it needs neither disk I/O nor hashing: verified since this
        process wrote or recovered it, and wholly in the page cache. Never blocks; None means
        "use :meth:`get`" (in a worker thread), not "a miss"."""
        dev = self.device_for(key)
        if dev is None:
            return None
        found = dev.lookup_resident(key)
        if found is None:
            return None
        seg, loc, length, digest = found
        return ChunkRef(dev.fd, loc + L.HEADER_SIZE, length, dev, seg, digest)

    def read(self, key: bytes) -> bytes | None:
        ref = self.get(key)
        if ref is None:
            return None
        with ref:
            assert ref._device is not None
            return ref._device.copy(ref.offset, ref.length)

    def put(self, key: bytes, data: bytes | memoryview) -> None:
        """Cache ``data`` under ``key`` (best effort: never raises for device trouble)."""
        if not 0 < len(data) <= L.MAX_DATA:
            raise ValueError(f"chunk length must lie in [1, {L.MAX_DATA}], got {len(data)}")
        dev = self.device_for(key)
        if dev is not None:
            dev.put(key, data)

    def contains(self, key: bytes, *, wait: bool = True, busy: bool = False) -> bool:
        """Whether ``key`` is cached (no I/O, not verified). ``wait=False`` never blocks: it
        answers ``busy`` while the device's lock is held (e.g. by a rollover copying chunks),
        which suits an event-loop thread deciding whether to prefetch."""
        dev = self.device_for(key)
        return dev is not None and dev.contains(key, wait, busy)

    def cached_keys(self) -> list[bytes]:
        """Every cached key of the devices in service (a copy; for tests and tools)."""
        return [k for d in self.devices if d.ok for k in d.key_list()]

    def stats(self) -> dict[str, Any]:
        per = [d.stats() for d in self.devices]
        total: dict[str, Any] = {
            k: sum(p[k] for p in per)
            for k in (
                "capacity",
                "bytes",
                "chunks",
                "entries",
                "index_ram_bytes",
                "hits",
                "misses",
                "resident_hits",
                "puts",
                "evictions",
                "reinserted",
                "checksum_failures",
            )
        }
        total["misses"] += self._no_device_misses
        total["devices_ok"] = sum(1 for d in self.devices if d.ok)
        total["devices"] = per
        return total

    def close(self) -> None:
        for d in self.devices:
            d.close()
