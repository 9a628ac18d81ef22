"""Issue 2: files that grow or are replaced at the origin; data served with the origin stopped."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.conftest import pattern, start_stack
from tests.harness.procs import Procs, wait_for

TTL_WAIT = 2.5  # client TTL 1 s + proxy TTL 1 s + slack


def test_growing_file_shows_new_size_and_bytes(tmp_path: Path, procs: Procs) -> None:
    export = tmp_path / "export"
    export.mkdir()
    f = export / "live.h5"
    first = pattern(1_500_000, 1)
    f.write_bytes(first)
    s = start_stack(tmp_path, export, procs)
    assert (s.root / "live.h5").read_bytes() == first
    more = pattern(2_300_000, 2)
    with open(f, "ab") as out:  # the detector appends frames
        out.write(more)
    time.sleep(TTL_WAIT)
    assert (s.root / "live.h5").stat().st_size == len(first) + len(more)
    assert (s.root / "live.h5").read_bytes() == first + more


def test_open_handle_follows_a_growing_file(tmp_path: Path, procs: Procs) -> None:
    export = tmp_path / "export"
    export.mkdir()
    f = export / "grow.bin"
    f.write_bytes(b"a" * 1000)
    s = start_stack(tmp_path, export, procs)
    with open(s.root / "grow.bin", "rb") as h:
        assert h.read() == b"a" * 1000
        with open(f, "ab") as out:
            out.write(b"b" * 5000)
        time.sleep(TTL_WAIT)
        h.seek(0)
        # Every byte read belongs to one version: old prefix, then the appended tail.
        assert h.read() == b"a" * 1000 + b"b" * 5000


def test_replaced_file_never_mixes_versions(tmp_path: Path, procs: Procs) -> None:
    export = tmp_path / "export"
    export.mkdir()
    f = export / "frame.cbf"
    old, new = pattern(3_000_000, 3), pattern(3_000_000, 4)
    f.write_bytes(old)
    s = start_stack(tmp_path, export, procs)
    assert (s.root / "frame.cbf").read_bytes() == old
    tmp = export / ".frame.tmp"
    tmp.write_bytes(new)
    os.replace(tmp, f)
    time.sleep(TTL_WAIT)
    assert (s.root / "frame.cbf").read_bytes() == new


def test_deleted_file_disappears_after_ttl(tmp_path: Path, procs: Procs) -> None:
    export = tmp_path / "export"
    export.mkdir()
    (export / "gone.txt").write_bytes(b"x")
    s = start_stack(tmp_path, export, procs)
    assert (s.root / "gone.txt").exists()
    (export / "gone.txt").unlink()
    wait_for(lambda: not (s.root / "gone.txt").exists(), "ENOENT after the TTL", timeout=5)


def test_served_with_origin_stopped_also_after_proxy_restart(tmp_path: Path, procs: Procs) -> None:
    export = tmp_path / "export"
    (export / "scan").mkdir(parents=True)
    files = {f"scan/frame{i}.bin": pattern(1_000_000 + i * 333_333, 10 + i) for i in range(4)}
    for rel, data in files.items():
        (export / rel).write_bytes(data)
    s = start_stack(tmp_path, export, procs)
    assert len(os.listdir(s.root / "scan")) == len(files)  # a reader lists the scan, then reads it
    for rel, data in files.items():
        assert (s.root / rel).read_bytes() == data

    procs.stop(procs.get("origin"))
    # A fresh client (cold RAM cache) through the proxy, origin gone.
    procs.stop(s.mount_proc)
    from tests.harness.tiers import mount, start_proxy

    m2 = mount(procs, s.key, s.proxy, tmp_path / "mnt2", ram_cache="64M")
    for rel, data in files.items():
        assert (tmp_path / "mnt2" / "data" / rel).read_bytes() == data
    procs.stop(m2)

    # The proxy restarts (its RAM is gone; the SSD cache stays); the origin is still down.
    procs.stop(procs.get("proxy"))
    proxy2 = start_proxy(procs, s.key, s.origin, s.cache, "2G", name="proxy2")
    mount(procs, s.key, proxy2, tmp_path / "mnt3", ram_cache="64M", name="mount3")
    assert sorted(os.listdir(tmp_path / "mnt3" / "data" / "scan")) == sorted(
        p.split("/")[1] for p in files
    )
    for rel, data in files.items():
        assert (tmp_path / "mnt3" / "data" / rel).read_bytes() == data


def test_failed_read_across_chunks_is_eio_and_the_mount_lives(tmp_path: Path, procs: Procs) -> None:
    """Both chunks of a read spanning a chunk edge fail (origin gone): EIO, and the mount stays."""
    from tests.harness.tiers import make_key, mount, start_origin, start_proxy

    export = tmp_path / "export"
    export.mkdir()
    (export / "f.bin").write_bytes(pattern(3 << 20, 5))
    key = make_key(tmp_path / "k")
    origin = start_origin(procs, key, {"data": export})
    proxy = start_proxy(procs, key, origin, tmp_path / "cache", "64M", extra=("--timeout", "1"))
    mnt = tmp_path / "mnt"
    mount(procs, key, proxy, mnt, extra=("--direct-io", "--meta-ttl", "30"))
    fd = os.open(mnt / "data" / "f.bin", os.O_RDONLY)  # attributes known, no data read yet
    try:
        procs.stop(procs.get("origin"))
        try:
            os.pread(fd, 2 << 20, (1 << 20) - 100)  # spans chunks 0, 1 and 2
            raise AssertionError("read succeeded with the origin gone")
        except OSError as e:
            assert e.errno == 5, e
    finally:
        os.close(fd)
    # Still mounted and answering (a dead mount would give ENOTCONN here).
    assert os.path.ismount(mnt)
    assert (mnt / "data" / "f.bin").stat().st_size == 3 << 20
