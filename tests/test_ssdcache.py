"""The SSD chunk store (dadafs.ssdcache): index, layout, eviction, verification, recovery, threads."""

from __future__ import annotations

import os
import random
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dadafs.source import chunk_key
from dadafs.ssdcache import ChunkStore, parse_size
from dadafs.ssdcache import layout as L
from dadafs.ssdcache.device import DATAFILE, Device
from dadafs.ssdcache.index import ChunkIndex, home, meta_loc

MiB = 1 << 20


def key(i: int, size: int = 0) -> bytes:
    return chunk_key(b"/t/file", (1, size, 0), i)


def payload(i: int, size: int) -> bytes:
    return random.Random(i * 1_000_003 + size).randbytes(size)


def disk_usage(d: Path) -> tuple[int, int]:
    """(allocated bytes, apparent bytes) of every file under ``d``."""
    files = [p.stat() for p in d.rglob("*") if p.is_file()]
    return sum(s.st_blocks * 512 for s in files), sum(s.st_size for s in files)


def location(store: ChunkStore, k: bytes) -> tuple[Device, int]:
    """(device, record offset in its data file) of a cached key."""
    dev = store.device_for(k)
    assert dev is not None
    slot = dev.index.find(int.from_bytes(k[:8], "little"), int.from_bytes(k[8:], "little"))
    assert slot >= 0
    return dev, meta_loc(dev.index.meta(slot)) * L.ALIGN


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ChunkStore]:
    s = ChunkStore([(tmp_path / "a", 12 * MiB), (tmp_path / "b", 9 * MiB)])
    try:
        yield s
    finally:
        s.close()


# ---- small pieces -----------------------------------------------------------------------------


def test_parse_size() -> None:
    assert parse_size("4096") == 4096
    assert parse_size("64M") == 64 * MiB
    assert parse_size("500G") == 500 << 30
    assert parse_size("1.8T") == int(1.8 * (1 << 40))
    assert parse_size("512MiB") == 512 * MiB
    for bad in ("", "12Q", "-1G", "G"):
        with pytest.raises(ValueError, match="bad size"):
            parse_size(bad)


WRAP_K0 = [k for k in range(200_000) if home(k, 1024) in (1020, 1022, 1023, 0, 3)][:7]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("pgr"), st.integers(0, 300)), max_size=400))
def test_index_matches_a_dict(ops: list[tuple[str, int]]) -> None:
    # Few distinct k0 whose home slots sit at the end of the 1024-slot table: long clusters that
    # wrap around, and back-shifts across the wrap.
    ix, model = ChunkIndex(), {}
    for n, (op, i) in enumerate(ops):
        k0, k1 = WRAP_K0[i % len(WRAP_K0)], i
        slot = ix.find(k0, k1)
        assert (slot >= 0) == ((k0, k1) in model)
        if op == "p":
            ix.put(k0, k1, (1 << 63) | n)
            model[(k0, k1)] = (1 << 63) | n
        elif op == "r" and slot >= 0:
            ix.remove_slot(slot)
            del model[(k0, k1)]
        assert ix.count == len(model)
    for (k0, k1), meta in model.items():
        assert ix.meta(ix.find(k0, k1)) == meta


def test_index_bulk_insert_and_growth() -> None:
    rng = random.Random(3)
    ix = ChunkIndex()
    pairs = {(rng.getrandbits(64), rng.getrandbits(64)): (1 << 63) | i for i in range(20_000)}
    import numpy as np

    k = np.array(list(pairs), dtype=np.uint64)
    ix.bulk_insert(k[:10_000, 0], k[:10_000, 1], np.array(list(pairs.values())[:10_000], np.uint64))
    for (k0, k1), meta in list(pairs.items())[10_000:]:
        ix.put(k0, k1, meta)
    assert ix.count == 20_000
    assert ix.count <= 0.7 * ix.slots
    for (k0, k1), meta in pairs.items():
        assert ix.meta(ix.find(k0, k1)) == meta


def test_header_and_footer_formats_reject_damage() -> None:
    h = L.pack_header(1000, 7, 6, b"k" * 16, b"d" * 16)
    assert L.unpack_header(h) == L.Header(1000, 7, 6, b"k" * 16, b"d" * 16)
    for i in range(len(h)):
        bad = bytearray(h)
        bad[i] ^= 0x10
        assert L.unpack_header(bytes(bad)) is None
    assert L.unpack_header(h[:40]) is None


def test_rejects_bad_configuration(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="too small"):
        ChunkStore([(tmp_path / "a", 3 * MiB)])
    with pytest.raises(ValueError, match="32 TiB"):
        ChunkStore([(tmp_path / "a", 40 << 40)])
    with pytest.raises(ValueError, match="distinct"):
        ChunkStore([(tmp_path / "a", 64 * MiB), (tmp_path / "a", 64 * MiB)])
    with pytest.raises(ValueError, match="policy"):
        ChunkStore([(tmp_path / "a", 64 * MiB)], policy="lru")
    s = ChunkStore([(tmp_path / "a", 64 * MiB)])
    try:
        with pytest.raises(ValueError, match="chunk length"):
            s.put(key(1), b"")
        with pytest.raises(ValueError, match="16 bytes"):
            s.put(b"short", b"x")
    finally:
        s.close()


# ---- behaviour --------------------------------------------------------------------------------


def test_put_get_sendfile(store: ChunkStore) -> None:
    data = {i: payload(i, 1 + i * 37_001 % MiB) for i in range(12)}
    for i, d in data.items():
        store.put(key(i), d)
    a, b = socket.socketpair()
    try:
        for i, d in data.items():
            ref = store.get(key(i))
            assert ref is not None and ref.length == len(d)
            got = bytearray()

            def receive(n: int = len(d), buf: bytearray = got) -> None:
                while len(buf) < n:
                    buf += b.recv(n - len(buf))

            reader = threading.Thread(target=receive)
            reader.start()
            with ref:
                sent = 0
                while sent < ref.length:
                    sent += os.sendfile(a.fileno(), ref.fd, ref.offset + sent, ref.length - sent)
            reader.join(timeout=30)
            assert got == d
    finally:
        a.close()
        b.close()
    assert store.get(key(99)) is None
    s = store.stats()
    assert s["hits"] == 12 and s["misses"] == 1 and s["chunks"] == 12
    assert s["bytes"] == sum(map(len, data.values()))
    assert {d["chunks"] > 0 for d in s["devices"]} == {True}  # spread over both devices


WORKLOAD = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 60), st.integers(1, MiB)),
        st.tuples(st.just("get"), st.integers(0, 60), st.integers(1, MiB)),
        st.tuples(st.just("reopen"), st.just(0), st.just(0)),
    ),
    min_size=10,
    max_size=60,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=WORKLOAD, policy=st.sampled_from(["fifo", "clock", "clock-late"]))
def test_random_workload_larger_than_the_cache(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int, int]], policy: str
) -> None:
    root = tmp_path_factory.mktemp("wl")
    caps = [(root / "a", 7 * MiB), (root / "b", 9 * MiB)]
    store = ChunkStore(caps, policy=policy)
    # Sizes are drawn per key from a few buckets so puts of a key seen before reuse its size.
    sizes: dict[int, int] = {}
    try:
        for op, i, size in ops:
            if op == "reopen":
                store.close()
                store = ChunkStore(caps, policy=policy)
                continue
            size = sizes.setdefault(i, size)
            k, d = key(i, size), payload(i, size)
            if op == "put":
                store.put(k, d)
                assert store.read(k) == d  # a fresh put is readable at once
            else:
                got = store.read(k)
                assert got is None or got == d
                if got is None:
                    store.put(k, d)
            for path, cap in caps:
                used, apparent = disk_usage(path)
                assert used <= cap and apparent <= cap
        assert store.stats()["checksum_failures"] == 0
        assert all(dev["state"] == "ok" for dev in store.stats()["devices"])
    finally:
        store.close()
        shutil.rmtree(root)  # 25 examples of up to 16 MiB each: do not keep them around


@pytest.mark.parametrize("verify", ["mmap", "pread"])
@pytest.mark.parametrize("where", ["data", "data-last-byte", "header", "length"])
def test_flipped_bytes_are_detected_counted_and_dropped(
    tmp_path: Path, verify: str, where: str
) -> None:
    store = ChunkStore([(tmp_path / "a", 16 * MiB)], verify=verify)
    try:
        items = {i: payload(i, 300_000 + i) for i in range(5)}
        for i, d in items.items():
            store.put(key(i), d)
        dev, loc = location(store, key(2))
        off = {
            "data": loc + L.HEADER_SIZE + 1234,
            "data-last-byte": loc + L.HEADER_SIZE + len(items[2]) - 1,
            "header": loc + 20,
            "length": loc + 4,
        }[where]
        fd = os.open(dev.path / DATAFILE, os.O_RDWR)
        try:
            b = os.pread(fd, 1, off)
            os.pwrite(fd, bytes([b[0] ^ 0x01]), off)
        finally:
            os.close(fd)
        assert store.get(key(2)) is None
        assert not store.contains(key(2))
        s = store.stats()
        assert s["checksum_failures"] == 1 and s["chunks"] == 4
        for i in (0, 1, 3, 4):
            assert store.read(key(i)) == items[i]
        store.put(key(2), items[2])  # fetched again by the caller: cached anew, correct
        assert store.read(key(2)) == items[2]
    finally:
        store.close()


def test_restart_keeps_the_index_after_close_and_after_a_crash(tmp_path: Path) -> None:
    caps = [(tmp_path / "a", 12 * MiB), (tmp_path / "b", 10 * MiB)]
    store = ChunkStore(caps)
    for i in range(120):  # ~3x the capacity: many rollovers, sealed footers, wrapped heads
        store.put(key(i), payload(i, 200_000 + i))
        if i % 7 == 0:
            store.read(key(i // 2))
    before = sorted(store.cached_keys())
    stats = store.stats()
    # A second store on the same files, the first never closed: what kill -9 leaves behind.
    crashed = ChunkStore(caps)
    try:
        assert sorted(crashed.cached_keys()) == before
        assert crashed.stats()["bytes"] == stats["bytes"]
    finally:
        crashed.close()
    store.close()
    reopened = ChunkStore(caps)
    try:
        assert sorted(reopened.cached_keys()) == before
        for k in before:
            i = next(j for j in range(120) if key(j) == k)
            assert reopened.read(k) == payload(i, 200_000 + i)
    finally:
        reopened.close()


def test_torn_footer_falls_back_to_walking_headers(tmp_path: Path) -> None:
    caps = [(tmp_path / "a", 16 * MiB)]
    store = ChunkStore(caps)
    for i in range(30):
        store.put(key(i), payload(i, 150_000))
    before = sorted(store.cached_keys())
    dev = store.devices[0]
    store.close()
    with open(dev.path / DATAFILE, "r+b") as f:  # damage every sealed footer's trailer
        for s in range(dev.nseg):
            f.seek((s + 1) * dev.seg_size - 10)
            f.write(b"\xff\xff")
    store = ChunkStore(caps)
    try:
        assert sorted(store.cached_keys()) == before
        assert all(store.read(key(i)) == payload(i, 150_000) for i in range(30) if key(i) in before)
    finally:
        store.close()


def test_pinned_region_is_never_overwritten(tmp_path: Path) -> None:
    store = ChunkStore([(tmp_path / "a", 12 * MiB)])
    try:
        store.put(key(0), payload(0, MiB))
        ref = store.get(key(0))
        assert ref is not None
        for i in range(1, 60):  # five times around the ring
            store.put(key(i), payload(i, 900_000))
        assert os.pread(ref.fd, ref.length, ref.offset) == payload(0, MiB)
        assert store.stats()["devices"][0]["skipped_pinned"] > 0
        ref.release()
        ref.release()  # idempotent
        for i in range(60, 120):
            store.put(key(i), payload(i, 900_000))
        assert not store.contains(key(0))  # once released, its segment is recycled
    finally:
        store.close()


def test_clock_policies_keep_referenced_chunks_fifo_does_not(tmp_path: Path) -> None:
    kept = {}
    for policy in ("fifo", "clock", "clock-late"):
        store = ChunkStore([(tmp_path / policy, 24 * MiB)], policy=policy)
        try:
            hot = [key(10_000 + h) for h in range(4)]
            for h, k in enumerate(hot):
                store.put(k, payload(10_000 + h, 200_000))
            for i in range(150):  # a scan 3x the cache, re-reading the hot chunks as it goes
                store.put(key(i), payload(i, 500_000))
                for h, k in enumerate(hot):
                    got = store.read(k)
                    assert got is None or got == payload(10_000 + h, 200_000)
            kept[policy] = sum(store.contains(k) for k in hot)
        finally:
            store.close()
    assert kept == {"fifo": 0, "clock": 4, "clock-late": 4}


def test_concurrent_threads_get_and_put(tmp_path: Path) -> None:
    caps = [(tmp_path / "a", 10 * MiB), (tmp_path / "b", 8 * MiB)]
    store = ChunkStore(caps)
    errors: list[str] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(300):
            i = rng.randrange(80)
            size = 100_000 + i * 5_000
            ref = store.get(key(i, size))
            if ref is None:
                store.put(key(i, size), payload(i, size))
                continue
            with ref:  # other threads keep writing while this region is read
                if os.pread(ref.fd, ref.length, ref.offset) != payload(i, size):
                    errors.append(f"wrong bytes for chunk {i}")

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        s = store.stats()
        assert s["hits"] > 0 and s["evictions"] > 0 and s["checksum_failures"] == 0
        assert all(not any(dev.pins) for dev in store.devices)
        for path, cap in caps:
            assert disk_usage(path)[0] <= cap
    finally:
        store.close()


def test_torn_record_after_restart_is_detected(tmp_path: Path) -> None:
    """A kill in the middle of a record's write: header on disk, the data's tail never written."""
    caps = [(tmp_path / "a", 16 * MiB)]
    store = ChunkStore(caps)
    for i in range(6):
        store.put(key(i), payload(i, 400_000))
    dev, loc = location(store, key(5))  # the last record written
    path = dev.path / DATAFILE
    # No close(): the process "dies" here, its last write torn half-way.
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, bytes(200_000), loc + L.HEADER_SIZE + 200_000)
    finally:
        os.close(fd)
    reopened = ChunkStore(caps)
    try:
        assert reopened.contains(key(5))  # its header is whole: recovery cannot tell...
        assert reopened.read(key(5)) is None  # ...but the checksum can, before anything is served
        assert reopened.stats()["checksum_failures"] == 1 and not reopened.contains(key(5))
        assert all(reopened.read(key(i)) == payload(i, 400_000) for i in range(5))
    finally:
        reopened.close()
        store.close()


@contextmanager
def _lock_held_elsewhere(dev: Device) -> Iterator[None]:
    """Another thread holds ``dev``'s lock for the duration (as a rollover doing I/O would)."""
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with dev.lock:
            held.set()
            done.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    try:
        held.wait(5)
        yield
    finally:
        done.set()
        t.join()


def test_resident_hit_needs_no_check_but_get_always_checks(tmp_path: Path) -> None:
    """A chunk this process wrote, still in the page cache, is served without hashing (its
    digest comes from the record header, for the receiver's check); get() always checks."""
    store = ChunkStore([(tmp_path / "a", 16 * MiB)])
    try:
        d = payload(1, 100_000)
        store.put(key(1), d)
        ref = store.get_resident(key(1))
        assert ref is not None and ref.digest == xxhash.xxh3_128_digest(d)
        assert os.pread(ref.fd, ref.length, ref.offset) == d
        ref.release()
        dev, loc = location(store, key(1))
        assert dev.c["resident_hits"] == 1 and dev.c["hits"] == 1
        fd = os.open(dev.path / DATAFILE, os.O_RDWR)
        try:
            os.pwrite(fd, b"\xff", loc + L.HEADER_SIZE + 10)
        finally:
            os.close(fd)
        # Not hashed again: the damaged bytes go out with the true digest, which the receiver
        # checks (it then asks again with a check, i.e. through get()).
        ref = store.get_resident(key(1))
        assert ref is not None and ref.digest == xxhash.xxh3_128_digest(d)
        assert xxhash.xxh3_128_digest(os.pread(ref.fd, ref.length, ref.offset)) != ref.digest
        ref.release()
        assert store.get(key(1)) is None  # the checked path finds the damage and drops it
        assert store.stats()["checksum_failures"] == 1 and not store.contains(key(1))
        assert store.get_resident(key(1)) is None
    finally:
        store.close()


def test_resident_path_needs_a_check_after_restart_and_pages_in_ram(tmp_path: Path) -> None:
    caps = [(tmp_path / "a", 16 * MiB)]
    store = ChunkStore(caps)
    d = payload(2, 300_000)
    store.put(key(2), d)
    store.close()
    store = ChunkStore(caps)
    try:
        assert store.contains(key(2))
        assert store.get_resident(key(2)) is None  # recovered: not checked by this process yet
        ref = store.get(key(2))
        assert ref is not None
        ref.release()
        ref = store.get_resident(key(2))  # checked once: now served from the page cache
        assert ref is not None
        ref.release()
        dev, _ = location(store, key(2))
        os.fsync(dev.fd)
        os.posix_fadvise(dev.fd, 0, 0, os.POSIX_FADV_DONTNEED)  # evict the file's pages
        assert store.get_resident(key(2)) is None  # a disk read would block: slow path
        ref = store.get(key(2))
        assert ref is not None and os.pread(ref.fd, ref.length, ref.offset) == d
        ref.release()
    finally:
        store.close()


def test_verify_hits_always_never_serves_unchecked(tmp_path: Path) -> None:
    store = ChunkStore([(tmp_path / "a", 16 * MiB)], verify_hits="always")
    try:
        store.put(key(3), payload(3, 1000))
        assert store.get_resident(key(3)) is None
        assert store.read(key(3)) == payload(3, 1000)
        assert store.get_resident(key(3)) is None
        with pytest.raises(ValueError, match="verify_hits"):
            ChunkStore([(tmp_path / "b", 16 * MiB)], verify_hits="sometimes")
    finally:
        store.close()


def test_release_never_waits_for_a_busy_device_lock(tmp_path: Path) -> None:
    """The event loop releases refs: with the lock held elsewhere (a rollover doing I/O) the
    unpin is queued, and the next holder applies it, so the segment can be recycled again."""
    store = ChunkStore([(tmp_path / "a", 16 * MiB)])
    try:
        store.put(key(4), payload(4, 1000))
        ref = store.get_resident(key(4))
        assert ref is not None
        dev, loc = location(store, key(4))
        seg = loc // dev.seg_size
        assert dev.pins[seg] == 1
        with _lock_held_elsewhere(dev):
            t0 = time.monotonic()
            ref.release()
            assert time.monotonic() - t0 < 0.5 and dev.pins[seg] == 1  # queued, not waited for
            assert store.get_resident(key(4)) is None  # lock busy: "slow path", no blocking
        again = store.get(key(4))  # any later holder of the lock drains the queue
        assert again is not None
        again.release()
        assert dev.pins[seg] == 0
    finally:
        store.close()


def test_stats_report_every_device_figure(store: ChunkStore) -> None:
    store.put(key(1), payload(1, 1000))
    s = store.stats()
    for k in (
        "bytes",
        "chunks",
        "hits",
        "misses",
        "evictions",
        "checksum_failures",
        "index_ram_bytes",
        "entries",
    ):
        assert k in s and all(k in d for d in s["devices"])
    assert [d["state"] for d in s["devices"]] == ["ok", "ok"]
    assert s["chunks"] == s["entries"] == 1 and s["bytes"] == 1000
    assert s["index_ram_bytes"] == sum(d.index.nbytes for d in store.devices)


def test_chunks_spread_over_devices_in_proportion_to_capacity(tmp_path: Path) -> None:
    store = ChunkStore([(tmp_path / "a", 8 * MiB), (tmp_path / "b", 24 * MiB)])
    try:
        small, big = store.devices
        share = sum(store.device_for(key(i)) is small for i in range(20_000)) / 20_000
        assert abs(share - 0.25) < 0.02, share
        # Rendezvous: taking a device out moves only its own keys.
        before = {i: store.device_for(key(i)) for i in range(2_000)}
        small.state = "failed: test"
        assert all(store.device_for(key(i)) is big for i in range(2_000))
        small.state = "ok"
        assert all(store.device_for(key(i)) is before[i] for i in range(2_000))
    finally:
        store.close()


def _damage(path: Path, off: int, data: bytes) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, data, off)
    finally:
        os.close(fd)


def test_crash_after_the_head_invalidated_the_next_footer(tmp_path: Path) -> None:
    """Killed between zeroing the next segment's trailer and writing into it: that segment's
    previous-lap records are walked back in; they are whole and right, and evicted next lap."""
    caps = [(tmp_path / "a", 16 * MiB)]
    store = ChunkStore(caps)
    sizes = {i: 250_000 + i for i in range(80)}  # ~3 laps
    for i, n in sizes.items():
        store.put(key(i), payload(i, n))
    dev = store.devices[0]
    nxt = (dev.head_seg + 1) % dev.nseg
    _damage(dev.path / DATAFILE, (nxt + 1) * dev.seg_size - L.TRAILER_SIZE, bytes(L.TRAILER_SIZE))
    reopened = ChunkStore(caps)
    try:
        assert set(store.cached_keys()) <= set(reopened.cached_keys())
        for i in range(80, 200):
            sizes[i] = 250_000 + i
            reopened.put(key(i), payload(i, sizes[i]))
        for i, n in sizes.items():
            assert reopened.read(key(i)) in (None, payload(i, n))
        assert disk_usage(tmp_path / "a")[0] <= 16 * MiB
        assert reopened.stats()["checksum_failures"] == 0
    finally:
        reopened.close()
        store.close()


def test_leftovers_after_a_torn_header_never_chain_to_new_records(tmp_path: Path) -> None:
    caps = [(tmp_path / "a", 16 * MiB)]
    store = ChunkStore(caps)
    for i in range(6):
        store.put(key(i), payload(i, 100_000))
    dev = store.devices[0]
    assert len(dev.head_rows) == 6
    _, off3, _, _ = dev.head_rows[3]
    base = dev.head_seg * dev.seg_size
    _damage(dev.path / DATAFILE, base + off3 + 8, b"\xee" * 8)  # record 3's header torn
    first = ChunkStore(caps)  # restart: records 0-2 kept, 3 torn, 4-5 are leftovers
    assert sorted(first.cached_keys()) == sorted(key(i) for i in range(3))
    first.put(key(100), payload(100, 100_000))  # same length: lands exactly where record 3 was
    first.close()
    second = ChunkStore(caps)
    try:
        assert sorted(second.cached_keys()) == sorted([key(i) for i in range(3)] + [key(100)])
        assert second.read(key(100)) == payload(100, 100_000)
    finally:
        second.close()
        store.close()


def test_contains_without_waiting_never_blocks(store: ChunkStore) -> None:
    store.put(key(1), payload(1, 1000))
    assert store.contains(key(1), wait=False) and store.contains(key(1))
    dev = store.device_for(key(1))
    assert dev is not None
    with _lock_held_elsewhere(dev):
        t0 = time.monotonic()
        assert store.contains(key(1), wait=False) is False  # busy: a false "no", at once
        assert time.monotonic() - t0 < 0.5
    assert store.contains(key(1), wait=False)


def test_recovery_keeps_the_newest_copy_of_each_key() -> None:
    import numpy as np

    from dadafs.ssdcache.recovery import newest_copies

    rng = np.random.default_rng(5)
    words = rng.integers(0, 2**63, (5000, 2), dtype=np.uint64)
    words[100:300] = words[:200]  # 200 keys stored twice
    words[300:310] = words[:10]  # ... and 10 of them three times
    words[400:405, 0] = words[600:605, 0]  # same first word, different keys: all distinct
    seq = rng.permutation(5000).astype(np.uint64)
    best: dict[tuple[int, int], int] = {}
    for i in range(5000):
        k = (int(words[i, 0]), int(words[i, 1]))
        if k not in best or seq[i] > seq[best[k]]:
            best[k] = i
    assert sorted(newest_copies(words, seq).tolist()) == sorted(best.values())
