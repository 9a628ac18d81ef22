"""Issue 3 at the proxy: miss collapsing, corruption on disk, prefetch, stats per device, kill -9."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import trio

from dadafs.auth import load_key
from dadafs.remote import RemoteSource
from dadafs.source import CHUNK_SIZE
from dadafs.spec import parse_spec
from tests.conftest import pattern, start_stack
from tests.harness.procs import Procs
from tests.harness.tiers import make_key, mount, start_origin, start_proxy, stats


def _export(tmp_path: Path, files: dict[str, bytes]) -> Path:
    """An export directory under ``tmp_path`` holding ``files``."""
    export = tmp_path / "export"
    export.mkdir()
    for name, data in files.items():
        (export / name).write_bytes(data)
    return export


def _read_all(addr: str, key: Path, path: bytes, readers: int) -> list[bytes]:
    """``readers`` protocol clients (each its own connection) read the whole file concurrently."""

    async def main() -> list[bytes]:
        out: list[bytes] = [b""] * readers
        async with trio.open_nursery() as n:
            clients = [
                RemoteSource(parse_spec(addr), load_key(key), n, pool=1) for _ in range(readers)
            ]
            attr = await clients[0].stat(path)
            nchunks = (attr.size + CHUNK_SIZE - 1) // CHUNK_SIZE

            async def one(i: int) -> None:
                parts = [
                    bytes(await clients[i].read_chunk(path, attr.version, c))
                    for c in range(nchunks)
                ]
                out[i] = b"".join(parts)

            async with trio.open_nursery() as m:
                for i in range(readers):
                    m.start_soon(one, i)
            for c in clients:
                await c.aclose()
            n.cancel_scope.cancel()
        return out

    return trio.run(main)


def test_50_readers_of_a_cold_file_cost_one_upstream_fetch_per_chunk(
    tmp_path: Path, procs: Procs
) -> None:
    data = pattern(6 * CHUNK_SIZE + 4321, 7)
    export = _export(tmp_path, {"cold.bin": data})
    key = make_key(tmp_path / "k")
    origin = start_origin(procs, key, {"d": export})
    proxy = start_proxy(procs, key, origin, tmp_path / "cache", "256M")
    got = _read_all(proxy, key, b"/d/cold.bin", 50)
    assert all(g == data for g in got)
    o = stats(origin, key)["source"]
    assert o["bytes_served"] == len(data)  # each chunk left the origin exactly once
    p = stats(proxy, key)["source"]
    assert p["misses"] == 7
    assert p["collapsed"] + p["hits"] >= 50 * 7 - 7  # some misses are prefetches, not reads


def test_flipped_bytes_in_the_cache_are_detected_and_refetched(
    tmp_path: Path, procs: Procs
) -> None:
    data = pattern(3 * CHUNK_SIZE + 99, 8)
    export = _export(tmp_path, {"f.bin": data})
    s = start_stack(tmp_path, export, procs)
    assert (s.root / "f.bin").read_bytes() == data
    # Corrupt every copy of a recognisable run of the file's bytes inside the cache's data file.
    assert _flip_in_cache(s.cache, data[CHUNK_SIZE + 1000 : CHUNK_SIZE + 1064]) >= 1
    procs.stop(s.mount_proc)  # a cold client: the read must come from the proxy's disk
    m2 = tmp_path / "mnt2"
    mount(procs, s.key, s.proxy, m2, ram_cache="64M", name="mount2")
    Path("/proc/sys/vm/drop_caches").write_text("1")  # the proxy reads what is on disk
    assert (m2 / "data" / "f.bin").read_bytes() == data
    st = stats(s.proxy, s.key)["source"]["store"]
    assert st["checksum_failures"] >= 1
    assert stats(s.origin, s.key)["source"]["bytes_served"] > len(data)  # refetched


def _flip_in_cache(cache: Path, needle: bytes) -> int:
    """Flip a byte of every copy of ``needle`` inside the cache's files (through the page cache,
    as a bad SSD or a stray write would leave it); returns how many copies were damaged."""
    flipped = 0
    for f in cache.rglob("*"):
        if f.is_file():
            raw = bytearray(f.read_bytes())
            pos = raw.find(needle)
            while pos >= 0:
                raw[pos + 10] ^= 0xFF
                flipped += 1
                pos = raw.find(needle, pos + 1)
            if flipped:
                f.write_bytes(raw)
    return flipped


def test_damage_in_a_hot_chunk_is_caught_by_the_client_and_repaired_by_the_proxy(
    tmp_path: Path, procs: Procs
) -> None:
    """A hot chunk goes out without a new hash at the proxy, with the digest of its record: the
    client's end-to-end check sees the damage, asks again with "check", and the proxy then
    hashes the chunk, drops it, counts it and fetches it again."""
    data = pattern(3 * CHUNK_SIZE + 99, 18)
    export = _export(tmp_path, {"f.bin": data})
    key = make_key(tmp_path / "k")
    origin = start_origin(procs, key, {"d": export})
    cache = tmp_path / "cache"
    proxy = start_proxy(procs, key, origin, cache, "256M")
    assert _read_all(proxy, key, b"/d/f.bin", 1) == [data]
    assert _read_all(proxy, key, b"/d/f.bin", 1) == [data]
    before = stats(proxy, key)["source"]["store"]
    assert before["resident_hits"] >= 3  # hot reads served from the page cache, no hashing
    assert _flip_in_cache(cache, data[CHUNK_SIZE + 1000 : CHUNK_SIZE + 1064]) >= 1
    assert _read_all(proxy, key, b"/d/f.bin", 1) == [data]
    after = stats(proxy, key)["source"]
    assert after["store"]["checksum_failures"] == before["checksum_failures"] + 1
    assert stats(origin, key)["source"]["bytes_served"] == len(data) + CHUNK_SIZE  # refetched
    assert _read_all(proxy, key, b"/d/f.bin", 1) == [data]  # and cached again, whole


def test_sequential_reader_triggers_proxy_prefetch_and_device_stats(
    tmp_path: Path, procs: Procs
) -> None:
    data = pattern(12 * CHUNK_SIZE, 9)
    export = _export(tmp_path, {"seq.bin": data})
    key = make_key(tmp_path / "k")
    origin = start_origin(procs, key, {"d": export})
    proxy = start_proxy(procs, key, origin, tmp_path / "cache", "256M")
    assert _read_all(proxy, key, b"/d/seq.bin", 1) == [data]
    p = stats(proxy, key)["source"]
    assert p["prefetched"] > 0
    assert p["hits"] > 0  # later chunks were already there when asked for
    dev = p["store"]["devices"][0]
    assert dev["state"] == "ok" and dev["chunks"] >= 12 and dev["bytes"] >= len(data)
    assert p["store"]["index_ram_bytes"] > 0 and p["store"]["entries"] >= 12


def test_proxy_killed_during_heavy_writes_never_serves_a_wrong_byte(
    tmp_path: Path, procs: Procs
) -> None:
    files = {f"f{i}.bin": pattern(3 * CHUNK_SIZE + i * 1111, 20 + i) for i in range(12)}
    export = _export(tmp_path, files)
    key = make_key(tmp_path / "k")
    origin = start_origin(procs, key, {"d": export})
    cache = tmp_path / "cache"
    proxy = start_proxy(procs, key, origin, cache, "256M")
    done = threading.Event()

    def load() -> None:
        try:
            _read_all(proxy, key, b"/d/f0.bin", 1)
            for n in files:
                try:
                    _read_all(proxy, key, f"/d/{n}".encode(), 1)
                except BaseException:
                    return
        finally:
            done.set()

    t = threading.Thread(target=load, daemon=True)
    t.start()
    wait = 0.0
    while stats(proxy, key)["source"]["misses"] < 8 and wait < 30:
        trio.run(trio.sleep, 0.05)
        wait += 0.05
    procs.stop(procs.get("proxy"), sig=signal.SIGKILL)
    t.join(30)
    proxy2 = start_proxy(procs, key, origin, cache, "256M", name="proxy2")
    kept = stats(proxy2, key)["source"]["store"]["entries"]
    for n, d in files.items():
        assert _read_all(proxy2, key, f"/d/{n}".encode(), 1) == [d], n
    assert kept > 0  # the cache survived the kill
