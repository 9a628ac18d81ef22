"""CacheSource's miss collapsing when a store lookup answers late (the race behind a rare double
upstream fetch at the proxy: a reader's lookup misses, another reader's fetch lands meanwhile)."""

from __future__ import annotations

from pathlib import Path

import trio

from dadafs.cache import CacheSource, RamStore
from dadafs.local import LocalSource
from dadafs.source import CHUNK_SIZE, Buf
from tests.conftest import pattern


class _LateStore(RamStore):
    """A real RAM store; once :meth:`arm` is called, its next lookup answers only when
    ``answer`` is set, as a lookup in a worker thread may (the thread looked before a put, its
    reply reaches the loop after it)."""

    def arm(self) -> None:
        self.answer = trio.Event()
        self.looking: trio.Event | None = trio.Event()

    async def get(self, key: bytes) -> Buf | None:
        found = await super().get(key)
        looking, self.looking = getattr(self, "looking", None), None
        if looking is not None:
            looking.set()
            await self.answer.wait()
        return found


def _cache(tmp_path: Path, data: bytes) -> tuple[CacheSource, LocalSource, _LateStore]:
    (tmp_path / "f.bin").write_bytes(data)
    origin = LocalSource({b"d": tmp_path})
    store = _LateStore(64 << 20)
    return CacheSource(origin, store), origin, store


def test_a_chunk_that_lands_during_a_late_lookup_is_not_fetched_again(tmp_path: Path) -> None:
    data = pattern(CHUNK_SIZE + 10, 3)
    cache, origin, store = _cache(tmp_path, data)

    async def main() -> list[bytes]:
        attr = await cache.stat(b"/d/f.bin")
        store.arm()
        looking = store.looking
        assert looking is not None
        got: list[bytes] = []

        async def read() -> None:
            got.append(bytes(await cache.read_chunk(b"/d/f.bin", attr.version, 0)))

        async with trio.open_nursery() as n:
            n.start_soon(read)  # its lookup misses and answers late
            await looking.wait()
            await read()  # fetches and stores the chunk meanwhile
            store.answer.set()
        return got

    got = trio.run(main)
    assert got == [data[:CHUNK_SIZE]] * 2
    assert origin.stats()["bytes_served"] == CHUNK_SIZE  # left the origin once
    assert cache.counters["misses"] == 1
    assert cache.counters["hits"] == 1


def test_a_missing_chunk_is_still_fetched_after_a_late_lookup(tmp_path: Path) -> None:
    data = pattern(CHUNK_SIZE + 10, 4)
    cache, origin, store = _cache(tmp_path, data)

    async def main() -> bytes:
        attr = await cache.stat(b"/d/f.bin")
        store.arm()
        store.answer.set()
        return bytes(await cache.read_chunk(b"/d/f.bin", attr.version, 1))

    assert trio.run(main) == data[CHUNK_SIZE:]
    assert origin.stats()["bytes_served"] == 10
    assert cache.counters["misses"] == 1
