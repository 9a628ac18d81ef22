"""The result cache of the control node: whole results and per-line partials in a directory.

An entry is keyed by what determines its numbers: the canonical request (``Request.key()``),
the version of every input file (``engine.input_version``: path, inode, size, mtime) and, for
a partial, the scan lines it holds. A touched input gives a new version and so new keys: old
entries are never served again and age out.

Layout: ``DIR/xx/KEY.dres`` (``xx`` = the key's first two hex digits). A file is::

    b"DADARES1" | xxh3_128(body) (16 bytes) | body
    body = u32 header length | msgpack header | array bytes, concatenated in header order

The header holds the kind (``result`` / ``partial``), the request's canonical text, the lines,
and for each map and axis its name, dtype and shape. Reading checks the magic, the checksum and
that the header matches the key asked for; any mismatch counts as corrupt: the file is removed
and the caller recomputes. Writes go to ``DIR/tmp/`` and are renamed into place (atomic on one
filesystem), so readers never see half an entry, also with several writers at once.

The directory is bounded in bytes: after a write that takes the total over the bound, the
least recently used entries go (a hit refreshes an entry's mtime). The running total is kept
per process and rescanned from the directory before evicting, so several processes sharing the
directory (several ``dada stxm`` at once) keep it bounded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgpack
import numpy as np
import xxhash

from workers.request import BadParameter, Request
from workers.result import Partial, Result

MAGIC = b"DADARES1"
SUFFIX = ".dres"
DEFAULT_DIR = "/var/cache/dada/results"
DEFAULT_SIZE = 10 << 30
_HEAD = len(MAGIC) + 16


def parse_size(text: str) -> int:
    """``10G``, ``512M``, ``4096`` (bytes; K/M/G/T are powers of 1024)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text, re.I)
    if not m:
        raise BadParameter(f"bad size {text!r}: a number with an optional K, M, G or T suffix")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " "))


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    corrupt: int = 0
    writes: int = 0
    evicted: int = 0


class ResultCache:
    """A bounded, checksummed, file-based cache of :class:`Result` and :class:`Partial`."""

    def __init__(self, directory: str | Path, max_bytes: int = DEFAULT_SIZE) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.stats = CacheStats()
        try:
            (self.dir / "tmp").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(f"result cache {self.dir}: {e.strerror}") from None
        if not os.access(self.dir, os.W_OK | os.X_OK):
            raise PermissionError(f"result cache {self.dir}: not writable")
        self._total = self._scan_total()

    # ---- keys ----------------------------------------------------------------------------
    @staticmethod
    def result_key(request: Request, version: str) -> str:
        return _digest("result", request.key(), version)

    @staticmethod
    def line_key(request: Request, version: str, line: int) -> str:
        return _digest("line", request.key(), version, str(line))

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}{SUFFIX}"

    # ---- whole results -------------------------------------------------------------------
    def get_result(self, request: Request, version: str) -> Result | None:
        got = self._read(self.result_key(request, version), "result", request, None)
        if got is None:
            return None
        maps, axes = got
        return Result(request=request, maps=maps, axes=axes)

    def put_result(self, result: Result, version: str) -> None:
        r = result.request
        self._write(self.result_key(r, version), "result", r, None, result.maps, result.axes)

    # ---- per-line partials ---------------------------------------------------------------
    def get_line(self, request: Request, version: str, line: int) -> Partial | None:
        lines = range(line, line + 1)
        got = self._read(self.line_key(request, version, line), "partial", request, lines)
        if got is None:
            return None
        maps, axes = got
        return Partial(key=request.key(), lines=lines, maps=maps, axes=axes)

    def put_partial(self, request: Request, version: str, partial: Partial) -> None:
        """Store a partial of any number of lines as one entry per line."""
        for k, line in enumerate(partial.lines):
            maps = {name: a[k : k + 1] for name, a in partial.maps.items()}
            self._write(
                self.line_key(request, version, line),
                "partial",
                request,
                range(line, line + 1),
                maps,
                partial.axes,
            )

    def drop_lines(self, request: Request, version: str) -> None:
        """Forget the per-line partials of a request (once its whole result is stored)."""
        for line in range(request.vert):
            self._remove(self._path(self.line_key(request, version, line)))

    # ---- maintenance ---------------------------------------------------------------------
    def entries(self) -> Iterator[Path]:
        for sub in self.dir.iterdir():
            if sub.is_dir() and len(sub.name) == 2:
                yield from sub.glob(f"*{SUFFIX}")

    def total_bytes(self) -> int:
        return self._scan_total()

    def _scan_total(self) -> int:
        total = 0
        for p in self.entries():
            with contextlib.suppress(FileNotFoundError):
                total += p.stat().st_size
        return total

    def _evict(self) -> None:
        """Remove least recently used entries until the directory is within its bound."""
        entries = []
        for p in self.entries():
            with contextlib.suppress(FileNotFoundError):
                st = p.stat()
                entries.append((st.st_mtime_ns, st.st_size, p))
        total = sum(e[1] for e in entries)
        entries.sort()
        for _, size, p in entries:
            if total <= self.max_bytes:
                break
            self._remove(p)
            total -= size
            self.stats.evicted += 1
        self._total = total

    def _remove(self, p: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()

    # ---- the file format -----------------------------------------------------------------
    def _write(
        self,
        key: str,
        kind: str,
        request: Request,
        lines: range | None,
        maps: dict[str, np.ndarray],
        axes: dict[str, np.ndarray],
    ) -> None:
        arrays = [("map", n, np.ascontiguousarray(a)) for n, a in maps.items()]
        arrays += [("axis", n, np.ascontiguousarray(a)) for n, a in axes.items()]
        header = {
            "kind": kind,
            "request": request.canonical(),
            "lines": None if lines is None else [lines.start, lines.stop],
            "arrays": [[role, n, a.dtype.str, list(a.shape)] for role, n, a in arrays],
        }
        head = msgpack.packb(header)
        h = xxhash.xxh3_128()
        parts = [struct.pack("<I", len(head)), head, *(a.data for _, _, a in arrays)]
        for part in parts:
            h.update(part)
        size = _HEAD + 4 + len(head) + sum(a.nbytes for _, _, a in arrays)
        if size > self.max_bytes:
            return  # larger than the whole cache: not worth keeping
        tmp = self.dir / "tmp" / f"{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        dest = self._path(key)
        try:
            dest.parent.mkdir(exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(MAGIC)
                f.write(h.digest())
                for part in parts:
                    f.write(part)
            try:
                old = dest.stat().st_size
            except FileNotFoundError:
                old = 0
            os.replace(tmp, dest)
        except BaseException:
            self._remove(tmp)
            raise
        self.stats.writes += 1
        self._total += size - old
        if self._total > self.max_bytes:
            self._evict()

    def _read(
        self, key: str, kind: str, request: Request, lines: range | None
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None:
        path = self._path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self.stats.misses += 1
            return None
        try:
            got = _decode(data, kind, request, lines)
        except (ValueError, KeyError, TypeError, struct.error, msgpack.UnpackException):
            got = None
        if got is None:
            self.stats.corrupt += 1
            self.stats.misses += 1
            self._remove(path)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # least recently used: a hit makes it young
        self.stats.hits += 1
        return got


def _decode(
    data: bytes, kind: str, request: Request, lines: range | None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None:
    if len(data) < _HEAD + 4 or data[: len(MAGIC)] != MAGIC:
        return None
    body = memoryview(data)[_HEAD:]
    if xxhash.xxh3_128_digest(body) != data[len(MAGIC) : _HEAD]:
        return None
    (n,) = struct.unpack_from("<I", body)
    header = msgpack.unpackb(body[4 : 4 + n])
    want_lines = None if lines is None else [lines.start, lines.stop]
    if (
        header["kind"] != kind
        or header["request"] != request.canonical()
        or header["lines"] != want_lines
    ):
        return None  # a key collision or a misplaced file: not ours
    pos = 4 + n
    out: dict[str, dict[str, np.ndarray]] = {"map": {}, "axis": {}}
    for role, name, dtype, shape in header["arrays"]:
        dt = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        a = np.frombuffer(body, dtype=dt, count=count, offset=pos).reshape(shape).copy()
        pos += count * dt.itemsize
        out[role][name] = a
    if pos != len(body):
        return None
    return out["map"], out["axis"]


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]
