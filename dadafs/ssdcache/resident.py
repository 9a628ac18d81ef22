"""Whether a region of a cache file is in the page cache, without reading it: mincore(2).

The event-loop thread may ``sendfile`` a cached chunk itself only when no disk read can block it,
i.e. when every page of the record is resident. Python has no ``mincore``; this maps the file
read-only and shared through libc (the mapping is never touched, so it costs address space only)
and asks the kernel about the pages of a region. For a file mapping the kernel answers from the
page cache, since the caller may write the file (Linux >= 5.2 answers only for such callers).

Not thread-safe by design: each call allocates its own small result vector.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os

PAGE = mmap.PAGESIZE
_MAP_FAILED = ctypes.c_void_p(-1).value

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.munmap.restype = ctypes.c_int
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
_libc.mincore.restype = ctypes.c_int


class Residency:
    """A read-only view of ``size`` bytes of ``fd`` that answers :meth:`resident`."""

    def __init__(self, fd: int, size: int) -> None:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr is None or addr == _MAP_FAILED:
            err = ctypes.get_errno()
            raise OSError(err, f"mmap for residency checks: {os.strerror(err)}")
        self._addr: int | None = addr
        self.size = size

    def resident(self, off: int, n: int) -> bool:
        """True when every page of bytes ``[off, off + n)`` is in the page cache."""
        addr = self._addr
        if addr is None or n <= 0 or off < 0 or off + n > self.size:
            return False
        start = off - off % PAGE
        pages = (off + n - start + PAGE - 1) // PAGE
        vec = ctypes.create_string_buffer(pages)
        if _libc.mincore(ctypes.c_void_p(addr + start), pages * PAGE, vec) != 0:
            return False
        # Each byte is 1 for a resident page (other values, reserved bits included, count as
        # "not resident": the caller then takes the slow path, which is always correct).
        return vec.raw[:pages].count(1) == pages

    def close(self) -> None:
        addr, self._addr = self._addr, None
        if addr is not None:
            _libc.munmap(ctypes.c_void_p(addr), self.size)
