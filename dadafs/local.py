"""The origin tier: export roots of a real filesystem, read-only, confined.

Paths are resolved component by component with ``openat(O_PATH | O_NOFOLLOW)`` from the export
root's directory descriptor: ``..`` and NUL are refused, and a symlink is never followed (it is
shown as it is, and ``readlink`` returns its target), so nothing outside an export root is ever
opened, whatever the path or the links inside the export say.

All blocking file-system calls run in worker threads (``trio.to_thread``); no state is shared
between those calls except the export root descriptors, which are never closed while serving.
"""

from __future__ import annotations

import errno
import os
import stat as stat_mod
from pathlib import Path
from typing import Any

import trio

from .source import CHUNK_SIZE, Attr, Buf, FsError, Version

_DIR_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
_MAX_NAME = 255
_MAX_PATH = 4096


def attr_of(st: os.stat_result) -> Attr:
    return Attr(
        ino=st.st_ino,
        mode=st.st_mode,
        nlink=st.st_nlink,
        uid=st.st_uid,
        gid=st.st_gid,
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
    )


def split_path(path: bytes) -> list[bytes]:
    """``b"/exp/a/b"`` -> ``[b"exp", b"a", b"b"]``; refuses ``..``, NUL and over-long names."""
    if not isinstance(path, bytes) or not path.startswith(b"/") or len(path) > _MAX_PATH:
        raise FsError(errno.EINVAL, "path must be absolute bytes")
    if b"\0" in path:
        raise FsError(errno.EINVAL, "NUL in path")
    parts = [p for p in path.split(b"/") if p and p != b"."]
    for p in parts:
        if p == b"..":
            raise FsError(errno.EACCES, "'..' is not allowed")
        if len(p) > _MAX_NAME:
            raise FsError(errno.ENAMETOOLONG)
    return parts


class LocalSource:
    """Serves ``{name: directory}`` export roots."""

    def __init__(self, exports: dict[bytes, Path]) -> None:
        if not exports:
            raise ValueError("no exports configured")
        self._roots: dict[bytes, int] = {}
        self._paths = dict(exports)
        for name, d in exports.items():
            if not name or b"/" in name or name in (b".", b".."):
                raise ValueError(f"bad export name {name!r}")
            self._roots[name] = os.open(d, _DIR_FLAGS)
        self._counters = {"requests": 0, "bytes_served": 0, "errors": 0}

    # -- path resolution (thread side) -------------------------------------------------------
    def _parent_fd(self, parts: list[bytes]) -> tuple[int, bytes | None]:
        """An fd of the directory holding the last component (caller closes it unless a root)."""
        root = self._roots.get(parts[0])
        if root is None:
            raise FsError(errno.ENOENT)
        if len(parts) == 1:
            return root, None
        fd = root
        try:
            for comp in parts[1:-1]:
                nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                if fd != root:
                    os.close(fd)
                fd = nfd
        except OSError as e:
            if fd != root:
                os.close(fd)
            # A symlink in the middle of a path is not followed: ELOOP/ENOTDIR -> ENOENT-like.
            raise FsError(
                errno.ENOTDIR if e.errno == errno.ELOOP else e.errno or errno.EIO
            ) from None
        return fd, parts[-1]

    def _lstat(self, parts: list[bytes]) -> os.stat_result:
        fd, name = self._parent_fd(parts)
        try:
            if name is None:
                return os.fstat(fd)
            return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError as e:
            raise FsError(e.errno or errno.EIO) from None
        finally:
            if name is not None and fd not in self._roots.values():
                os.close(fd)

    def _open(self, parts: list[bytes], flags: int) -> int:
        fd, name = self._parent_fd(parts)
        try:
            if name is None:
                return os.dup(fd) if flags & os.O_PATH else os.open(".", flags, dir_fd=fd)
            return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except OSError as e:
            raise FsError(
                errno.ENOENT if e.errno == errno.ELOOP else e.errno or errno.EIO
            ) from None
        finally:
            if name is not None and fd not in self._roots.values():
                os.close(fd)

    def _root_attr(self) -> Attr:
        # fstat of the root descriptor, not a path: after dropping root the path's parent
        # directories may not be reachable, and the path could have been replaced.
        st = os.fstat(next(iter(self._roots.values())))
        return Attr(
            1,
            stat_mod.S_IFDIR | 0o555,
            2 + len(self._roots),
            0,
            0,
            0,
            st.st_mtime_ns,
            st.st_ctime_ns,
        )

    def _stat_sync(self, path: bytes) -> Attr:
        parts = split_path(path)
        if not parts:
            return self._root_attr()
        return attr_of(self._lstat(parts))

    def _listdir_sync(self, path: bytes) -> list[tuple[bytes, Attr]]:
        parts = split_path(path)
        if not parts:
            return [(n, attr_of(os.fstat(fd))) for n, fd in self._roots.items()]
        fd = self._open(parts, os.O_RDONLY | os.O_DIRECTORY)
        try:
            out = []
            with os.scandir(fd) as it:
                for e in it:
                    try:
                        st = os.stat(e.name, dir_fd=fd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # removed while listing
                    out.append((os.fsencode(e.name), attr_of(st)))
            return out
        finally:
            os.close(fd)

    def _readlink_sync(self, path: bytes) -> bytes:
        parts = split_path(path)
        if not parts:
            raise FsError(errno.EINVAL)
        fd, name = self._parent_fd(parts)
        try:
            if name is None:
                raise FsError(errno.EINVAL)
            return os.readlink(name, dir_fd=fd)
        except OSError as e:
            raise FsError(e.errno or errno.EIO) from None
        finally:
            if name is not None and fd not in self._roots.values():
                os.close(fd)

    def _read_sync(self, path: bytes, version: Version, index: int) -> bytes:
        parts = split_path(path)
        if not parts:
            raise FsError(errno.EISDIR)
        # O_NONBLOCK: opening a FIFO (or a device) inside an export must not block a thread.
        fd = self._open(parts, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        try:
            for _ in range(3):
                before = os.fstat(fd)
                if not stat_mod.S_ISREG(before.st_mode):
                    raise FsError(
                        errno.EISDIR if stat_mod.S_ISDIR(before.st_mode) else errno.EINVAL
                    )
                if attr_of(before).version != tuple(version):
                    raise FsError(errno.ESTALE, "file changed")
                data = os.pread(fd, CHUNK_SIZE, index * CHUNK_SIZE)
                after = os.fstat(fd)
                # The bytes belong to one version only if nothing changed while we read.
                if (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns):
                    expect = max(0, min(CHUNK_SIZE, before.st_size - index * CHUNK_SIZE))
                    if len(data) != expect:
                        raise FsError(errno.ESTALE, "file changed during read")
                    return data
            raise FsError(errno.ESTALE, "file keeps changing")
        except OSError as e:
            if isinstance(e, FsError):
                raise
            raise FsError(e.errno or errno.EIO) from None
        finally:
            os.close(fd)

    def _statfs_sync(self, path: bytes) -> dict[str, int]:
        parts = split_path(path)
        fd = (
            self._roots[parts[0]]
            if parts and parts[0] in self._roots
            else next(iter(self._roots.values()))
        )
        s = os.fstatvfs(fd)
        return {
            "bsize": s.f_bsize,
            "frsize": s.f_frsize,
            "blocks": s.f_blocks,
            "bfree": s.f_bfree,
            "bavail": s.f_bavail,
            "files": s.f_files,
            "ffree": s.f_ffree,
            "namemax": s.f_namemax,
        }

    # -- the Source interface ----------------------------------------------------------------
    async def _run(self, fn: Any, *args: Any) -> Any:
        self._counters["requests"] += 1
        try:
            return await trio.to_thread.run_sync(fn, *args)
        except FsError:
            self._counters["errors"] += 1
            raise

    async def stat(self, path: bytes) -> Attr:
        result: Attr = await self._run(self._stat_sync, path)
        return result

    async def listdir(self, path: bytes) -> list[tuple[bytes, Attr]]:
        result: list[tuple[bytes, Attr]] = await self._run(self._listdir_sync, path)
        return result

    async def readlink(self, path: bytes) -> bytes:
        result: bytes = await self._run(self._readlink_sync, path)
        return result

    async def statfs(self, path: bytes) -> dict[str, int]:
        result: dict[str, int] = await self._run(self._statfs_sync, path)
        return result

    async def read_chunk(self, path: bytes, version: Version, index: int) -> Buf:
        data: bytes = await self._run(self._read_sync, path, version, index)
        self._counters["bytes_served"] += len(data)
        return data

    def stats(self) -> dict[str, Any]:
        return {
            "kind": "local",
            "exports": sorted(n.decode(errors="replace") for n in self._roots),
            **self._counters,
        }

    async def aclose(self) -> None:
        for fd in self._roots.values():
            os.close(fd)
        self._roots.clear()
