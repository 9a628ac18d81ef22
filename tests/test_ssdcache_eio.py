"""A cache device that starts answering EIO: taken out of service, the other device keeps caching.

The failing device is a small pyfuse3 passthrough filesystem in its own process over a backing
directory; once a flag file exists, every read and write it serves fails with EIO. Run as a
script, this file is that filesystem: ``python test_ssdcache_eio.py BACKING MOUNTPOINT FLAG``.
"""

from __future__ import annotations

import errno
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dadafs.source import chunk_key
from dadafs.ssdcache import ChunkStore

MiB = 1 << 20


def key(i: int) -> bytes:
    return chunk_key(b"/eio/file", (0, 0, 0), i)


def payload(i: int) -> bytes:
    return random.Random(i).randbytes(200_000 + i)


# ---- the filesystem (script mode) ----------------------------------------------------------


def fuse_main(backing: str, mountpoint: str, flag: str) -> None:
    import pyfuse3
    import trio

    class Passthrough(pyfuse3.Operations):
        def __init__(self) -> None:
            super().__init__()
            self.paths: dict[int, str] = {pyfuse3.ROOT_INODE: backing}
            self.fds: dict[int, int] = {}

        def _check(self) -> None:
            if os.path.exists(flag):
                raise pyfuse3.FUSEError(errno.EIO)

        def _attr(self, path: str) -> Any:
            st = os.lstat(path)
            ino = pyfuse3.ROOT_INODE if path == backing else st.st_ino
            self.paths[ino] = path
            a = pyfuse3.EntryAttributes()
            for name in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size"):
                setattr(a, name, getattr(st, name))
            a.st_ino = ino
            a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = (
                st.st_atime_ns,
                st.st_mtime_ns,
                st.st_ctime_ns,
            )
            a.st_blksize, a.st_blocks = 4096, st.st_blocks
            a.attr_timeout = a.entry_timeout = 0
            return a

        async def lookup(self, parent: int, name: bytes, ctx: Any = None) -> Any:
            path = os.path.join(self.paths[parent], os.fsdecode(name))
            try:
                return self._attr(path)
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno or errno.EIO) from None

        async def getattr(self, inode: int, ctx: Any = None) -> Any:
            return self._attr(self.paths[inode])

        async def setattr(self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any) -> Any:
            if fields.update_size:
                self._check()
                os.truncate(self.paths[inode], attr.st_size)
            return self._attr(self.paths[inode])

        async def open(self, inode: int, flags: int, ctx: Any) -> Any:
            fd = os.open(self.paths[inode], flags & ~(os.O_CREAT | os.O_EXCL))
            self.fds[fd] = inode
            return pyfuse3.FileInfo(fh=fd)

        async def read(self, fh: int, off: int, size: int) -> bytes:
            self._check()
            return os.pread(fh, size, off)

        async def write(self, fh: int, off: int, buf: bytes) -> int:
            self._check()
            return os.pwrite(fh, buf, off)

        async def flush(self, fh: int) -> None:
            pass

        async def fsync(self, fh: int, datasync: bool) -> None:
            self._check()

        async def release(self, fh: int) -> None:
            os.close(fh)
            self.fds.pop(fh, None)

    opts = set(pyfuse3.default_options)
    opts.discard("default_permissions")
    opts.add("fsname=eiofs")
    pyfuse3.init(Passthrough(), mountpoint, opts)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


# ---- the test ------------------------------------------------------------------------------


@pytest.fixture
def eio_mount(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(cache directory on the failing filesystem, flag file that turns EIO on)."""
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        pytest.skip("no /dev/fuse")
    backing, mnt, flag = tmp_path / "backing", tmp_path / "mnt", tmp_path / "fail-now"
    backing.mkdir()
    mnt.mkdir()
    # Create the device's files directly, so the filesystem needs no create/rename/mkdir.
    ChunkStore([(backing / "cache", 16 * MiB)]).close()
    proc = subprocess.Popen([sys.executable, __file__, str(backing), str(mnt), str(flag)])
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mnt):
            assert proc.poll() is None, "the FUSE filesystem exited"
            assert time.monotonic() < deadline, "the FUSE filesystem did not mount"
            time.sleep(0.05)
        yield mnt / "cache", flag
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("first", ["write", "read"])
def test_device_returning_eio_is_taken_out_and_the_other_keeps_caching(
    tmp_path: Path, eio_mount: tuple[Path, Path], first: str
) -> None:
    cache, flag = eio_mount
    # pread verification: with mmap an EIO on a mapped page would be a SIGBUS (docs/ssdcache.md)
    store = ChunkStore([(cache, 16 * MiB), (tmp_path / "disk", 16 * MiB)], verify="pread")
    fuse_dev, disk = store.devices
    try:
        assert fuse_dev.ok and disk.ok
        for i in range(20):
            store.put(key(i), payload(i))
            assert store.read(key(i)) == payload(i)
        assert fuse_dev.c["puts"] > 0 and disk.c["puts"] > 0
        if first == "read":  # nothing of the device left in the page cache
            fd = os.open(cache / "chunks.dat", os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
        flag.touch()  # the SSD starts failing
        for i in range(20, 60) if first == "write" else ():
            store.put(key(i), payload(i))
        for i in range(60):
            got = store.read(key(i))
            assert got is None or got == payload(i)
        assert not fuse_dev.ok and f"{first}: EIO" in fuse_dev.state, fuse_dev.state
        disk_puts = disk.c["puts"]
        for i in range(60, 80):  # everything now goes to the healthy device
            store.put(key(i), payload(i))
            assert store.read(key(i)) == payload(i)
        assert disk.c["puts"] == disk_puts + 20
        assert store.stats()["devices_ok"] == 1
    finally:
        store.close()


if __name__ == "__main__":
    fuse_main(*sys.argv[1:4])
