"""The FUSE layer: exposes any source (here a RAM cache over a remote) to the kernel, read-only.

Kernel requests are served by pyfuse3 in trio tasks on one thread. Rules:
- handlers may await the source; all table updates (inodes, handles) happen between awaits;
- a handle pins the file version it was opened with; a read that runs past that version's size,
  or meets ESTALE, re-stats and moves the handle to the new version (files that grow while an
  experiment runs), so every chunk a read returns belongs to one version;
- sequential reads start readahead of the following chunks in the background nursery; the window
  doubles while access stays sequential and collapses on a seek.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import stat as stat_mod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyfuse3
import trio

from .cache import CacheSource
from .inodes import InodeTable, child
from .source import CHUNK_SIZE, Attr, Buf, FsError

log = logging.getLogger("dadafs.fuse")

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC | os.O_CREAT


@dataclass
class FuseOptions:
    meta_ttl: float = 1.0
    readahead_max: int = 16  # chunks
    direct_io: bool = False


@dataclass
class _Handle:
    path: bytes
    attr: Attr
    next_off: int = 0
    window: int = 0
    ahead_upto: int = -1  # highest chunk index prefetch was started for
    rate: float = 0.0  # the reader's sequential rate, bytes/s (moving average)
    last_t: float = 0.0


@dataclass
class _DirHandle:
    path: bytes
    entries: list[tuple[bytes, Attr]] = field(default_factory=list)


class DadaFuse(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, cache: CacheSource, nursery: trio.Nursery, opts: FuseOptions) -> None:
        super().__init__()
        self.cache = cache
        self.nursery = nursery
        self.opts = opts
        self.inodes = InodeTable()
        self.handles: dict[int, _Handle | _DirHandle] = {}
        self._fh = 0
        self._last_version: dict[bytes, tuple[int, int, int]] = {}
        self._prefetch_slots = trio.Semaphore(64)
        self.fetch_latency = 0.002  # seconds for an upstream chunk (moving average)
        self.counters = {"reads": 0, "bytes_read": 0, "errors": 0, "readahead_chunks": 0}

    # -- helpers -------------------------------------------------------------------------------
    def _entry(self, ino: int, a: Attr) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = ino
        e.generation = 0
        e.entry_timeout = self.opts.meta_ttl
        e.attr_timeout = self.opts.meta_ttl
        e.st_mode = a.mode
        e.st_nlink = a.nlink
        e.st_uid = a.uid
        e.st_gid = a.gid
        e.st_rdev = 0
        e.st_size = a.size
        e.st_blksize = CHUNK_SIZE
        e.st_blocks = (a.size + 511) // 512
        e.st_atime_ns = a.mtime_ns
        e.st_mtime_ns = a.mtime_ns
        e.st_ctime_ns = a.ctime_ns
        return e

    def _new_fh(self, h: _Handle | _DirHandle) -> int:
        self._fh += 1
        self.handles[self._fh] = h
        return self._fh

    async def _call(self, coro: Any) -> Any:
        """Await a source call; turn our errors into FUSEError for the kernel."""
        try:
            return await coro
        except FsError as e:
            self.counters["errors"] += 1
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except Exception:  # a bug costs this request an EIO, never the mount
            self.counters["errors"] += 1
            log.exception("request failed")
            raise pyfuse3.FUSEError(errno.EIO) from None

    # -- metadata --------------------------------------------------------------------------------
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: Any = None
    ) -> pyfuse3.EntryAttributes:
        parent = self._path(parent_inode)
        if name == b".":
            path = parent
        elif name == b"..":
            path = parent.rsplit(b"/", 1)[0] or b"/"
        else:
            path = child(parent, name)
        attr = await self._call(self.cache.stat(path))
        return self._entry(self.inodes.ref(path), attr)

    def _path(self, ino: int) -> bytes:
        try:
            return self.inodes.path(ino)
        except FsError as e:
            raise pyfuse3.FUSEError(e.errno or errno.ESTALE) from None

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            self.inodes.forget(ino, n)

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        attr = await self._call(self.cache.stat(self._path(inode)))
        return self._entry(inode, attr)

    async def readlink(self, inode: int, ctx: Any) -> bytes:
        target: bytes = await self._call(self.cache.readlink(self._path(inode)))
        return target

    async def opendir(self, inode: int, ctx: Any) -> int:
        path = self._path(inode)
        entries = await self._call(self.cache.listdir(path))
        return self._new_fh(_DirHandle(path, sorted(entries)))

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        h = self.handles[fh]
        assert isinstance(h, _DirHandle)
        for i in range(start_id, len(h.entries)):
            name, attr = h.entries[i]
            path = child(h.path, name)
            ino = self.inodes.assign(path)
            if not pyfuse3.readdir_reply(token, name, self._entry(ino, attr), i + 1):
                self.inodes.drop_unused(ino)  # the kernel's buffer is full; it asks again
                return
            self.inodes.ref(path)

    async def releasedir(self, fh: int) -> None:
        self.handles.pop(fh, None)

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        s = await self._call(self.cache.statfs(b"/"))
        out = pyfuse3.StatvfsData()
        out.f_bsize = s["bsize"]
        out.f_frsize = s["frsize"]
        out.f_blocks = s["blocks"]
        out.f_bfree = s["bfree"]
        out.f_bavail = s["bavail"]
        out.f_files = s["files"]
        out.f_ffree = 0
        out.f_favail = 0
        out.f_namemax = s["namemax"]
        return out

    async def access(self, inode: int, mode: int, ctx: Any) -> bool:
        if mode & os.W_OK:
            raise pyfuse3.FUSEError(errno.EROFS)
        return True

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        # ENOSYS (not ENOATTR) makes the kernel stop asking for the mount's lifetime: `ls -l`
        # would otherwise send two xattr requests per entry.
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    # -- data ------------------------------------------------------------------------------------
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        if flags & _WRITE_FLAGS:
            raise pyfuse3.FUSEError(errno.EROFS)
        path = self._path(inode)
        attr = await self._call(self.cache.stat(path))
        if stat_mod.S_ISDIR(attr.mode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        fi = pyfuse3.FileInfo()
        fi.fh = self._new_fh(_Handle(path, attr))
        fi.direct_io = self.opts.direct_io
        # The page cache may keep this file's pages only while its version is unchanged.
        fi.keep_cache = self._last_version.get(path) == attr.version
        self._last_version[path] = attr.version
        fi.nonseekable = False
        return fi

    async def release(self, fh: int) -> None:
        self.handles.pop(fh, None)

    # pyfuse3's stub says bytes; its fuse_read_async takes any buffer (PyObject_GetBuffer).
    async def read(self, fh: int, off: int, size: int) -> Buf | memoryview:  # type: ignore[override]
        h = self.handles.get(fh)
        if not isinstance(h, _Handle):
            raise pyfuse3.FUSEError(errno.EBADF)
        self.counters["reads"] += 1
        if off + size > h.attr.size:  # the file may have grown since open
            await self._refresh(h)
        for attempt in range(3):
            try:
                data = await self._read(h, off, size)
                break
            except FsError as e:
                if e.errno != errno.ESTALE or attempt == 2:
                    self.counters["errors"] += 1
                    raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
                self.cache.invalidate(h.path)
                await self._refresh(h)
            except Exception:  # a bug costs this read an EIO, never the mount
                self.counters["errors"] += 1
                log.exception("read of %r at %d failed", h.path, off)
                raise pyfuse3.FUSEError(errno.EIO) from None
        self.counters["bytes_read"] += len(data)
        return data

    async def _refresh(self, h: _Handle) -> None:
        attr = await self._call(self.cache.stat(h.path))
        if attr.version != h.attr.version:
            h.attr = attr
            h.ahead_upto = -1
            # The page cache may hold pages of the old version: the next open must drop them.
            self._last_version.pop(h.path, None)

    async def _read(self, h: _Handle, off: int, size: int) -> Buf | memoryview:
        """The bytes of [off, off+size) of the handle's version. Returns views, not copies:
        pyfuse3 hands any buffer to the kernel, and cached chunks are never modified."""
        attr = h.attr
        end = min(off + size, attr.size)
        if off >= end:
            return b""
        first, last = off // CHUNK_SIZE, (end - 1) // CHUNK_SIZE
        self._readahead(h, off, end, last)
        if first == last:
            chunk = await self.cache.read_chunk(h.path, attr.version, first)
            base = first * CHUNK_SIZE
            return memoryview(chunk)[off - base : end - base]
        parts: list[Buf] = [b""] * (last - first + 1)
        errors: list[FsError] = []

        async def one(i: int) -> None:
            try:
                parts[i - first] = await self.cache.read_chunk(h.path, attr.version, i)
            except FsError as e:  # several may fail: report one, never an ExceptionGroup
                errors.append(e)

        async with trio.open_nursery() as n:
            for i in range(first, last + 1):
                n.start_soon(one, i)
        if errors:
            raise errors[0]
        base = first * CHUNK_SIZE
        return memoryview(b"".join(parts))[off - base : end - base]

    def _readahead(self, h: _Handle, off: int, end: int, last: int) -> None:
        """Sequential reads grow a window of chunks fetched ahead; a seek drops it.

        The window aims at twice the bandwidth-delay product: the reader's measured rate times
        the measured latency of an upstream chunk fetch, plus two chunks of slack. It grows by
        doubling (slow start) toward that aim, so a fast reader on a long link gets a deep
        window and a slow one does not flood the cache.
        """
        now = trio.current_time()
        if off == h.next_off or (h.next_off and 0 <= off - h.next_off < CHUNK_SIZE):
            dt = now - h.last_t
            if dt > 0:
                inst = (end - off) / dt
                h.rate = inst if h.rate == 0 else 0.7 * h.rate + 0.3 * inst
            bdp = h.rate * self.fetch_latency / CHUNK_SIZE
            aim = min(self.opts.readahead_max, max(2, math.ceil(2 * bdp) + 2))
            h.window = min(aim, max(2, h.window * 2))
        elif off != 0:
            h.window = 0  # a seek: random access, no readahead
            h.rate = 0.0
            h.ahead_upto = last
        h.next_off = end
        h.last_t = now
        if h.window == 0:
            return
        nchunks = (h.attr.size + CHUNK_SIZE - 1) // CHUNK_SIZE
        start = max(last + 1, h.ahead_upto + 1)
        stop = min(last + h.window, nchunks - 1)
        for i in range(start, stop + 1):
            self.counters["readahead_chunks"] += 1
            self.nursery.start_soon(self._prefetch, h.path, h.attr.version, i)
        h.ahead_upto = max(h.ahead_upto, stop)

    async def _prefetch(self, path: bytes, version: tuple[int, int, int], index: int) -> None:
        async with self._prefetch_slots:
            t0 = trio.current_time()
            if await self.cache.prefetch(path, version, index):  # it went upstream: a sample
                self.fetch_latency = 0.8 * self.fetch_latency + 0.2 * (trio.current_time() - t0)

    # -- everything that would write -----------------------------------------------------------
    async def _erofs(self, *args: Any, **kw: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    setattr = mknod = mkdir = unlink = rmdir = symlink = rename = link = _erofs
    create = write = setxattr = removexattr = _erofs

    def stats(self) -> dict[str, Any]:
        return {
            "fuse": {**self.counters, "inodes": len(self.inodes), "open_handles": len(self.handles)}
        }
