"""The one interface every tier implements: something that answers stat / list / read for a path.

Paths are ``bytes`` (names may be any bytes), absolute within the dadafs namespace:
``b"/"`` is the root whose entries are the export names, ``b"/<export>/<path under export>"``
everything below. Errors are raised as :class:`FsError` carrying an errno; they travel the protocol
unchanged and reach the application as the same errno.

File data are addressed in fixed-size chunks (:data:`CHUNK_SIZE`) of one file *version*; a
source asked for a chunk of a version the file no longer has raises ``FsError(ESTALE)`` so the
caller re-stats: a chunk never mixes bytes of two versions.
"""

from __future__ import annotations

import errno
import stat as stat_mod
from dataclasses import dataclass
from typing import Any, Protocol

import xxhash

CHUNK_SIZE = 1 << 20  # 1 MiB: one protocol read, one cache entry.

Version = tuple[int, int, int]  # (inode, size, mtime_ns)
Buf = bytes | bytearray  # chunk data: received straight into a bytearray, never copied


class FsError(OSError):
    """An error of a file (not of a host): carries an errno end to end."""

    def __init__(self, err: int, msg: str = "") -> None:
        super().__init__(err, msg or errno.errorcode.get(err, str(err)))


@dataclass(frozen=True, slots=True)
class Attr:
    """What ``stat`` says of an entry; ``ino`` is the origin's inode."""

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @property
    def version(self) -> Version:
        return (self.ino, self.size, self.mtime_ns)

    @property
    def is_dir(self) -> bool:
        return stat_mod.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat_mod.S_ISREG(self.mode)

    def to_wire(self) -> list[int]:
        return [
            self.ino,
            self.mode,
            self.nlink,
            self.uid,
            self.gid,
            self.size,
            self.mtime_ns,
            self.ctime_ns,
        ]

    @classmethod
    def from_wire(cls, v: list[int]) -> Attr:
        if not isinstance(v, list | tuple) or len(v) != 8 or not all(isinstance(x, int) for x in v):
            raise FsError(errno.EPROTO, "malformed attributes")
        return cls(*v)


def num_chunks(size: int) -> int:
    return (size + CHUNK_SIZE - 1) // CHUNK_SIZE


def chunk_len(size: int, index: int) -> int:
    """Length of chunk ``index`` of a file of ``size`` bytes (0 past the end)."""
    return max(0, min(CHUNK_SIZE, size - index * CHUNK_SIZE))


def chunk_key(path: bytes, version: Version, index: int) -> bytes:
    """128-bit xxh3 of (export/path, version, chunk index): the cache key of a chunk."""
    h = xxhash.xxh3_128()
    h.update(len(path).to_bytes(4, "little"))
    h.update(path)
    for v in (*version, index):
        h.update(int(v).to_bytes(16, "little", signed=True))
    return h.digest()


def checksum(data: bytes | bytearray | memoryview) -> bytes:
    """xxh3-128 of a chunk's bytes, stored beside every cached chunk and checked on read-back."""
    return xxhash.xxh3_128_digest(data)


class Source(Protocol):
    """A tier: local export roots, a remote upstream, or a cache wrapping another source."""

    async def stat(self, path: bytes) -> Attr: ...

    async def listdir(self, path: bytes) -> list[tuple[bytes, Attr]]: ...

    async def readlink(self, path: bytes) -> bytes: ...

    async def statfs(self, path: bytes) -> dict[str, int]: ...

    async def read_chunk(self, path: bytes, version: Version, index: int) -> Buf: ...

    def stats(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...
