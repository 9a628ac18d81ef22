"""The SSD chunk store under faults: kill -9 of a writer, a device filling up, unusable devices.

Run as a script, this file is the writer process that the kill -9 test starts and kills.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dadafs.source import chunk_key
from dadafs.ssdcache import ChunkStore

MiB = 1 << 20


def key(i: int) -> bytes:
    return chunk_key(b"/crash/file", (0, 0, 0), i)


def payload(i: int) -> bytes:
    """Self-describing chunk ``i``: its index, then bytes only ``i`` determines (1 B .. 1 MiB)."""
    size = max(8, (i * 2_654_435_761) % MiB + 1) if i % 5 else MiB
    return i.to_bytes(8, "little") + random.Random(i).randbytes(size - 8)


def check_every_entry(store: ChunkStore) -> tuple[int, int]:
    """Read every indexed chunk; each must be exactly its key's bytes. (good, dropped)."""
    good = dropped = 0
    for k in store.cached_keys():
        data = store.read(k)
        if data is None:
            dropped += 1  # torn by the kill: detected by its checksum, dropped
            continue
        i = int.from_bytes(data[:8], "little")
        assert k == key(i) and data == payload(i), f"wrong bytes served for chunk {i}"
        good += 1
    return good, dropped


def writer_main(args: list[str]) -> None:
    """Writer process: 4 threads putting fresh chunks forever; says 'ready' once past capacity."""
    start, caps = (
        int(args[0]),
        [(Path(p), int(c)) for p, c in zip(args[1::2], args[2::2], strict=True)],
    )
    store = ChunkStore(caps)
    written = [0]
    lock = threading.Lock()
    ready = 1.5 * sum(c for _, c in caps)

    def run(t: int) -> None:
        i = start + t
        while True:
            d = payload(i)
            store.put(key(i), d)
            i += 4
            with lock:
                written[0] += len(d)
                if written[0] >= ready > written[0] - len(d):
                    print("ready", flush=True)

    for t in range(4):
        threading.Thread(target=run, args=(t,), daemon=True).start()
    time.sleep(600)


def test_kill_9_during_heavy_writes(tmp_path: Path) -> None:
    caps = [(tmp_path / "a", 16 * MiB), (tmp_path / "b", 12 * MiB)]
    cmd = [sys.executable, __file__]
    for p, c in caps:
        cmd += [str(p), str(c)]
    rng = random.Random(7)
    for rnd in range(3):
        proc = subprocess.Popen(
            [*cmd[:2], str(rnd * 1_000_000), *cmd[2:]], stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.0, 0.3))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        store = ChunkStore(caps)
        try:
            t0 = time.perf_counter()
            stats = store.stats()
            good, dropped = check_every_entry(store)
            ring = sum(d["segments"] * d["segment_size"] for d in stats["devices"])
            # Most of the cache survives: the ring keeps all but the segment being recycled.
            assert stats["bytes"] >= 0.5 * ring, (rnd, stats["bytes"], ring)
            assert dropped <= 8 and good >= 10
            after = store.stats()
            assert after["checksum_failures"] == dropped
            assert all(d["state"] == "ok" for d in after["devices"])
            for i in range(rnd * 1_000_000, rnd * 1_000_000 + 20):  # and it keeps caching
                store.put(key(i), payload(i))
                assert store.read(key(i)) == payload(i)
            assert time.perf_counter() - t0 < 60
        finally:
            store.close()


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if res.returncode:
        pytest.skip(f"cannot mount tmpfs (needs root): {res.stderr.strip()}")


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs: a device that runs out of space."""
    where = tmp_path / "small"
    _mount_tmpfs(where, "3m")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)
        if os.path.ismount(where):
            subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def readonly_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A directory on a read-only mount."""
    where = tmp_path / "ro"
    _mount_tmpfs(where, "8m")
    try:
        (where / "cache").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        yield where / "cache"
    finally:
        subprocess.run(["umount", str(where)], check=False)
        if os.path.ismount(where):
            subprocess.run(["umount", "-l", str(where)], check=False)


def test_device_running_out_of_space_is_taken_out_and_the_other_keeps_caching(
    tmp_path: Path, small_tmpfs: Path
) -> None:
    store = ChunkStore([(small_tmpfs / "cache", 16 * MiB), (tmp_path / "big", 16 * MiB)])
    small, big = store.devices
    try:
        failed_at = None
        for i in range(80):
            store.put(key(i), payload(i))
            if failed_at is None and not small.ok:
                failed_at, big_puts = i, big.c["puts"]
            got = store.read(key(i))
            assert got is None or got == payload(i)
        assert failed_at is not None, "the small device never filled up"
        assert "ENOSPC" in small.state and small.fd == -1
        assert big.ok and big.c["puts"] > big_puts + 10  # the other device kept caching
        for i in range(80):  # every chunk readable or a miss that is cached again, correctly
            if store.read(key(i)) is None:
                store.put(key(i), payload(i))
            assert store.read(key(i)) in (None, payload(i))
        s = store.stats()
        assert s["devices_ok"] == 1 and s["devices"][0]["state"].startswith("failed: ")
        assert s["devices"][0]["chunks"] == 0
    finally:
        store.close()
    shutil.rmtree(tmp_path / "big")


def test_unusable_devices_at_start(tmp_path: Path, readonly_tmpfs: Path) -> None:
    notadir = tmp_path / "file"
    notadir.write_text("not a directory")
    store = ChunkStore(
        [(readonly_tmpfs, 16 * MiB), (notadir, 16 * MiB), (tmp_path / "good", 16 * MiB)]
    )
    try:
        ro, bad, good = store.stats()["devices"]
        assert "EROFS" in ro["state"] and ro["state"].startswith("failed: open")
        assert bad["state"].startswith("failed: open")
        assert good["state"] == "ok"
        for i in range(10):
            store.put(key(i), payload(i))
            assert store.read(key(i)) == payload(i)
        assert store.stats()["chunks"] == 10
    finally:
        store.close()


if __name__ == "__main__":
    writer_main(sys.argv[1:])
