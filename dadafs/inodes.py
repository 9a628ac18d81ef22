"""The FUSE layer's inode table: path <-> inode number, with kernel lookup counts.

The kernel refers to entries by inode number; we hand out one per path on first lookup and
forget it when the kernel's lookup count drops to zero. Root is ``pyfuse3.ROOT_INODE`` <-> ``b"/"``.
Plain dict operations between awaits: atomic under trio.
"""

from __future__ import annotations

import errno
import itertools

import pyfuse3

from .source import FsError


class InodeTable:
    def __init__(self) -> None:
        self._ino_of: dict[bytes, int] = {b"/": pyfuse3.ROOT_INODE}
        self._path_of: dict[int, bytes] = {pyfuse3.ROOT_INODE: b"/"}
        self._lookups: dict[int, int] = {pyfuse3.ROOT_INODE: 1}
        self._next = itertools.count(pyfuse3.ROOT_INODE + 1)

    def path(self, ino: int) -> bytes:
        p = self._path_of.get(ino)
        if p is None:
            raise FsError(errno.ESTALE, "unknown inode")
        return p

    def assign(self, path: bytes) -> int:
        """The inode of ``path`` (a new one with lookup count 0 if it had none)."""
        ino = self._ino_of.get(path)
        if ino is None:
            ino = next(self._next)
            self._ino_of[path] = ino
            self._path_of[ino] = path
            self._lookups[ino] = 0
        return ino

    def ref(self, path: bytes) -> int:
        """The inode of ``path``, its lookup count raised by one (the kernel now knows it)."""
        ino = self.assign(path)
        self._lookups[ino] += 1
        return ino

    def drop_unused(self, ino: int) -> None:
        """Forget an inode that was assigned but never handed to the kernel."""
        if self._lookups.get(ino) == 0:
            self.forget(ino, 0)

    def forget(self, ino: int, n: int) -> None:
        if ino == pyfuse3.ROOT_INODE or ino not in self._lookups:
            return
        self._lookups[ino] -= n
        if self._lookups[ino] <= 0:
            del self._lookups[ino]
            path = self._path_of.pop(ino)
            del self._ino_of[path]

    def __len__(self) -> int:
        return len(self._path_of)


def child(parent: bytes, name: bytes) -> bytes:
    return (b"" if parent == b"/" else parent) + b"/" + name
