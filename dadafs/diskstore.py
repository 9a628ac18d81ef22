"""Adapter: the SSD engine (:mod:`dadafs.ssdcache`, synchronous, thread-safe) as a chunk store.

Every engine call that may touch the disk runs in a worker thread, so disk I/O never blocks the
trio loop. Hits can also be returned as pinned file regions for zero-copy ``sendfile``: checked
ones in a worker thread (:meth:`get_ref`), or, on the loop's own thread without a hash, those
whose bytes are in the page cache and were checked since this process wrote or recovered them
(:meth:`get_resident`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from .source import Buf
from .ssdcache import ChunkRef, ChunkStore


class DiskStore:
    def __init__(self, devices: list[tuple[Path, int]]) -> None:
        self.engine = ChunkStore(devices)

    async def get(self, key: bytes) -> Buf | None:
        data: Buf | None = await trio.to_thread.run_sync(self.engine.read, key)
        return data

    async def get_ref(self, key: bytes) -> ChunkRef | None:
        """A pinned hit whose bytes were hashed now, or None."""
        ref: ChunkRef | None = await trio.to_thread.run_sync(self.engine.get, key)
        return ref

    def get_resident(self, key: bytes) -> ChunkRef | None:
        """A hit servable from the page cache without a hash, or None (then :meth:`get_ref`)."""
        return self.engine.get_resident(key)  # never blocks

    async def put(self, key: bytes, data: Buf, digest: bytes | None = None) -> None:
        # The engine hashes the record itself as it writes it (its header carries the digest).
        await trio.to_thread.run_sync(self.engine.put, key, memoryview(data))

    def contains(self, key: bytes) -> bool:
        """An index lookup, never waiting on a device lock: safe on the trio thread. It serves
        prefetch decisions, so a busy lock answers "yes": a skipped prefetch costs nothing (the
        read itself fetches), a needless one costs an upstream read."""
        return bool(self.engine.contains(key, wait=False, busy=True))

    def stats(self) -> dict[str, Any]:
        return {"kind": "ssd", **self.engine.stats()}

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self.engine.close)
