"""A cache wrapping any source: metadata with a TTL, chunks in a bounded store.

The same class is the client's RAM cache and the proxy's SSD cache; only the chunk store differs
(:class:`RamStore` here, the SSD engine of :mod:`dadafs.ssdcache` through
:class:`dadafs.diskstore.DiskStore`).

Consistency: ``stat``/``listdir``/``readlink`` answers (and ENOENT) are kept for ``meta_ttl``
seconds. Chunks are keyed by (path, file version, index), so a changed file makes its old chunks
unreachable and no read mixes two versions. An ESTALE from upstream (the file changed under a
version we still believed in) drops the path's metadata so the next stat sees the new version.

Concurrency (trio, one thread): dict updates happen between awaits and are atomic. A chunk miss
registers an in-flight entry *before* its first await, so concurrent readers of the same chunk
wait on that one fetch (miss collapsing) instead of each going upstream. A reader's store lookup
is an await (a worker thread at the proxy), so the chunk may land while it is out: the one
fetcher looks in the store once more (``contains``, then a lookup) before going upstream.
"""

from __future__ import annotations

import errno
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack
import trio
import xxhash

from .source import CHUNK_SIZE, Attr, Buf, FsError, Source, Version, checksum, chunk_key

log = logging.getLogger("dadafs.cache")


class ChunkStore(Protocol):
    """Where a cache keeps chunk bytes; ``get`` returns verified bytes or None."""

    async def get(self, key: bytes) -> Buf | None: ...

    async def put(self, key: bytes, data: Buf, digest: bytes | None = None) -> None: ...

    def contains(self, key: bytes) -> bool:
        """Never blocks; may answer True when it can't tell now (never False for a stored key)."""
        ...

    def stats(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


class RamStore:
    """LRU chunks in RAM, bounded in bytes; each entry carries its xxh3, checked on every hit."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._d: OrderedDict[bytes, tuple[Buf, bytes]] = OrderedDict()
        self.counters = {"evictions": 0, "checksum_failures": 0}

    async def get(self, key: bytes) -> Buf | None:
        item = self._d.get(key)
        if item is None:
            return None
        data, digest = item
        if checksum(data) != digest:
            self.counters["checksum_failures"] += 1
            self._drop(key)
            return None
        self._d.move_to_end(key)
        return data

    async def put(self, key: bytes, data: Buf, digest: bytes | None = None) -> None:
        """Keep ``data``; ``digest`` is its xxh3 when already known (checked on receipt)."""
        if len(data) > self.capacity:
            return
        if key in self._d:
            self._drop(key)
        while self.used + len(data) > self.capacity and self._d:
            self._drop(next(iter(self._d)))
            self.counters["evictions"] += 1
        self._d[key] = (data, digest or checksum(data))
        self.used += len(data)

    def contains(self, key: bytes) -> bool:
        return key in self._d

    def _drop(self, key: bytes) -> None:
        data, _ = self._d.pop(key)
        self.used -= len(data)

    def stats(self) -> dict[str, Any]:
        return {
            "kind": "ram",
            "capacity": self.capacity,
            "cached_bytes": self.used,
            "cached_entries": len(self._d),
            **self.counters,
        }

    async def aclose(self) -> None:
        self._d.clear()
        self.used = 0


@dataclass
class _Inflight:
    done: trio.Event = field(default_factory=trio.Event)
    data: Buf | None = None
    error: BaseException | None = None


class _Meta:
    """TTL'd answers: value or the FsError to raise again."""

    def __init__(self, ttl: float, max_entries: int = 500_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.d: dict[tuple[str, bytes], tuple[float, Any]] = {}
        self.expired: dict[tuple[str, bytes], tuple[float, Any]] = {}

    def get(self, kind: str, path: bytes) -> tuple[bool, Any]:
        hit = self.d.get((kind, path))
        if hit is None:
            return False, None
        if hit[0] < trio.current_time():
            del self.d[(kind, path)]
            if len(self.expired) >= self.max_entries:
                self.expired.clear()
            self.expired[(kind, path)] = hit
            return False, None
        return True, hit[1]

    def put(self, kind: str, path: bytes, value: Any) -> None:
        if self.ttl <= 0:
            return
        if len(self.d) >= self.max_entries:
            now = trio.current_time()
            self.d = {k: v for k, v in self.d.items() if v[0] >= now}
            if len(self.d) >= self.max_entries:
                self.d.clear()
        self.d[(kind, path)] = (trio.current_time() + self.ttl, value)

    def stale(self, kind: str, path: bytes) -> Any:
        """The last answer even if expired (kept until evicted), or None."""
        hit = self.d.get((kind, path)) or self.expired.get((kind, path))
        return None if hit is None else hit[1]

    def forget(self, path: bytes) -> None:
        for kind in ("stat", "list", "link"):
            self.d.pop((kind, path), None)


# Chunks fetched and still being written to the store (bounds the RAM this can take).
_MAX_WRITING = 64

# Errors that mean "upstream unreachable", not "the file says no": stale answers may stand in.
_HOST_ERRNOS = {errno.EIO, errno.ETIMEDOUT, errno.EHOSTDOWN, errno.EHOSTUNREACH, errno.ECONNREFUSED}


def _meta_key(kind: str, path: bytes) -> bytes:
    return xxhash.xxh3_128_digest(b"meta\0" + kind.encode() + b"\0" + path)


def _encode_meta(kind: str, value: Any) -> Any:
    if isinstance(value, FsError):
        return {"e": value.errno}
    if kind == "stat":
        return value.to_wire()
    if kind == "list":
        return [[n, a.to_wire()] for n, a in value]
    return value


def _decode_meta(kind: str, raw: Any) -> Any:
    if isinstance(raw, dict):
        return FsError(int(raw["e"]))
    if kind == "stat":
        return Attr.from_wire(raw)
    if kind == "list":
        return [(bytes(n), Attr.from_wire(a)) for n, a in raw]
    if not isinstance(raw, bytes):
        raise TypeError("readlink record is not bytes")
    return raw


class CacheSource:
    """``Source`` = metadata TTL cache + chunk store in front of an upstream ``Source``."""

    def __init__(
        self,
        upstream: Source,
        store: ChunkStore,
        *,
        meta_ttl: float = 1.0,
        prefetch: int = 0,
        nursery: trio.Nursery | None = None,
        persist_meta: bool = False,
        stale_after: float = 2.0,
    ) -> None:
        self.upstream = upstream
        self.store = store
        self.meta = _Meta(meta_ttl)
        self._inflight: dict[bytes, _Inflight] = {}
        self._writing: dict[bytes, Buf] = {}  # fetched, on their way into the store
        # Cache-side prefetch (proxy): a read of chunk i+1 right after chunk i fetches ahead.
        self.prefetch_depth = prefetch if nursery is not None else 0
        self.nursery = nursery
        # Per path: (last index read, highest index the prefetcher has looked at).
        self._last_index: dict[bytes, tuple[int, int]] = {}
        self._prefetch_slots = trio.Semaphore(32)
        self.persist_meta = persist_meta
        self.stale_after = stale_after  # with a stale answer at hand, wait no longer upstream
        # After a stale fallback, answer from stale data at once for this long, then probe again.
        self.offline_probe = 5.0
        self._offline_until = 0.0
        self.counters = {
            "hits": 0,
            "misses": 0,
            "collapsed": 0,
            "bytes_served": 0,
            "errors": 0,
            "prefetched": 0,
            "stale_served": 0,
            "store_errors": 0,
        }

    async def _cached(self, kind: str, path: bytes, fetch: Any) -> Any:
        ok, value = self.meta.get(kind, path)
        if not ok:
            value = await self._fetch_meta(kind, path, fetch)
        if isinstance(value, FsError):
            raise FsError(value.errno or errno.EIO)
        return value

    async def _fetch_meta(self, kind: str, path: bytes, fetch: Any) -> Any:
        """Ask upstream; if it is unreachable, answer from the last known (stale) value.

        Answers are also kept in the chunk store (a small record per path), so a proxy that
        restarts while its origins are down still serves what it has cached.
        """
        stale = self.meta.stale(kind, path)
        if stale is None:
            stale = await self._load_meta(kind, path)
        if stale is not None and trio.current_time() < self._offline_until:
            self.counters["stale_served"] += 1  # upstream just failed: don't wait on it again
            return stale
        try:
            if stale is None:
                value = await fetch(path)
            else:
                value = None
                with trio.move_on_after(self.stale_after):
                    value = await fetch(path)
                if value is None:
                    raise FsError(errno.ETIMEDOUT, "upstream too slow")
        except FsError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                value = e  # negative entries are cached too
            elif e.errno in _HOST_ERRNOS and stale is not None:
                self.counters["stale_served"] += 1
                self._offline_until = trio.current_time() + self.offline_probe
                return stale
            else:
                raise
        self._offline_until = 0.0
        self.meta.put(kind, path, value)
        await self._save_meta(kind, path, value)
        return value

    async def _load_meta(self, kind: str, path: bytes) -> Any:
        raw = await self._store_get(_meta_key(kind, path))
        if raw is None:
            return None
        try:
            return _decode_meta(kind, msgpack.unpackb(raw, raw=False))
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
            return None

    async def _save_meta(self, kind: str, path: bytes, value: Any) -> None:
        if self.persist_meta:
            await self._store_put(_meta_key(kind, path), msgpack.packb(_encode_meta(kind, value)))

    async def stat(self, path: bytes) -> Attr:
        attr: Attr = await self._cached("stat", path, self.upstream.stat)
        return attr

    async def listdir(self, path: bytes) -> list[tuple[bytes, Attr]]:
        entries: list[tuple[bytes, Attr]] = await self._cached("list", path, self.upstream.listdir)
        base = path.rstrip(b"/") + b"/"
        for name, attr in entries:  # readdirplus: the children's attributes come for free
            if self.meta.get("stat", base + name)[0] is False:
                self.meta.put("stat", base + name, attr)
        return entries

    async def readlink(self, path: bytes) -> bytes:
        target: bytes = await self._cached("link", path, self.upstream.readlink)
        return target

    async def statfs(self, path: bytes) -> dict[str, int]:
        return await self.upstream.statfs(path)

    def invalidate(self, path: bytes) -> None:
        self.meta.forget(path)

    async def _store_get(self, key: bytes) -> Buf | None:
        """A store failure (a bug, a dying disk) is a miss, never a failed read."""
        try:
            return await self.store.get(key)
        except Exception:
            self.counters["store_errors"] += 1
            log.exception("chunk store lookup failed; treating it as a miss")
            return None

    async def _store_put(self, key: bytes, data: Buf, digest: bytes | None = None) -> None:
        try:
            await self.store.put(key, data, digest)
        except Exception:
            self.counters["store_errors"] += 1
            log.exception("chunk store write failed; the chunk is served uncached")

    async def _put_behind(self, key: bytes, data: Buf, digest: bytes | None) -> None:
        try:
            await self._store_put(key, data, digest)
        finally:
            self._writing.pop(key, None)

    async def read_chunk(self, path: bytes, version: Version, index: int) -> Buf:
        key = chunk_key(path, version, index)
        self._maybe_prefetch(path, version, index)
        data = self._writing.get(key) or await self._store_get(key)
        if data is not None:
            self.counters["hits"] += 1
        else:
            data = await self._fetch(key, path, version, index)
        self.counters["bytes_served"] += len(data)
        return data

    def read_chunk_resident(self, path: bytes, version: Version, index: int) -> Any | None:
        """A hit that can be served at once (a pinned ref whose pages are in the page cache), or
        None: then use :meth:`read_chunk_ref`. Never blocks or awaits: the server calls it from
        a connection's reader task, so such hits cost no task of their own."""
        get_resident = getattr(self.store, "get_resident", None)
        if get_resident is None:
            return None
        ref = get_resident(chunk_key(path, version, index))
        if ref is not None:
            self._maybe_prefetch(path, version, index)
            self.counters["hits"] += 1
            self.counters["bytes_served"] += ref.length
        return ref

    async def read_chunk_ref(self, path: bytes, version: Version, index: int) -> Any:
        """Like :meth:`read_chunk`, but a hit in a store that can pin file regions comes back as a
        pinned ref (``fd``, ``offset``, ``length``, ``digest``, ``release()``) for zero-copy
        sendfile, its bytes hashed now (the unhashed path is :meth:`read_chunk_resident`)."""
        get_ref = getattr(self.store, "get_ref", None)
        if get_ref is None:
            return await self.read_chunk(path, version, index)
        key = chunk_key(path, version, index)
        self._maybe_prefetch(path, version, index)
        pending = self._writing.get(key)
        if pending is not None:  # fetched a moment ago, still being written to the store
            self.counters["hits"] += 1
            self.counters["bytes_served"] += len(pending)
            return pending
        try:
            ref = await get_ref(key)
        except Exception:
            self.counters["store_errors"] += 1
            log.exception("chunk store lookup failed; treating it as a miss")
            ref = None
        if ref is not None:
            self.counters["hits"] += 1
            self.counters["bytes_served"] += ref.length
            return ref
        data = await self._fetch(key, path, version, index)
        self.counters["bytes_served"] += len(data)
        return data

    async def _fetch(self, key: bytes, path: bytes, version: Version, index: int) -> Buf:
        fl = self._inflight.get(key)
        if fl is not None:
            self.counters["collapsed"] += 1
            await fl.done.wait()
            if fl.error is not None:
                raise fl.error
            assert fl.data is not None
            return fl.data
        pending = self._writing.get(key)
        if pending is not None:
            self.counters["hits"] += 1
            return pending
        fl = self._inflight[key] = _Inflight()
        try:
            if self.store.contains(key):
                # It landed while the caller's store lookup was out (or the store can't tell
                # now): look again, as this key's one fetcher, so nobody goes upstream for it.
                found = await self._store_get(key)
                if found is not None:
                    self.counters["hits"] += 1
                    fl.data = found
                    return found
            self.counters["misses"] += 1
            with_digest = getattr(self.upstream, "read_chunk_digest", None)
            if with_digest is not None:  # the reply's checked digest: no second hash here
                data, digest = await with_digest(path, version, index)
            else:
                data, digest = await self.upstream.read_chunk(path, version, index), None
            if self.nursery is not None and len(self._writing) < _MAX_WRITING:
                # Reply first, write to the store behind it; readers meanwhile find it here.
                self._writing[key] = data
                self.nursery.start_soon(self._put_behind, key, data, digest)
            else:
                await self._store_put(key, data, digest)
            fl.data = data
            return data
        except FsError as e:
            self.counters["errors"] += 1
            if e.errno == errno.ESTALE:
                self.invalidate(path)
            fl.error = FsError(e.errno or errno.EIO)
            raise
        except BaseException as e:
            fl.error = FsError(errno.EIO, str(e))
            raise
        finally:
            del self._inflight[key]
            fl.done.set()

    def _maybe_prefetch(self, path: bytes, version: Version, index: int) -> None:
        if not self.prefetch_depth or self.nursery is None:
            return
        last, ahead = self._last_index.get(path, (-2, -1))
        if len(self._last_index) > 10_000:
            self._last_index.clear()
        if index != last + 1:
            self._last_index[path] = (index, index)
            return
        # Sequential: look at the chunks of the window not looked at yet (one per read in the
        # steady state) and start a fetch only for those neither cached nor coming.
        nchunks = (version[1] + CHUNK_SIZE - 1) // CHUNK_SIZE
        hi = min(index + self.prefetch_depth, nchunks - 1)
        for i in range(max(index, ahead) + 1, hi + 1):
            key = chunk_key(path, version, i)
            if key in self._inflight or key in self._writing or self.store.contains(key):
                continue
            self.nursery.start_soon(self._prefetch_bounded, path, version, i)
        self._last_index[path] = (index, max(ahead, hi))

    async def _prefetch_bounded(self, path: bytes, version: Version, index: int) -> None:
        async with self._prefetch_slots:
            await self.prefetch(path, version, index)

    async def prefetch(self, path: bytes, version: Version, index: int) -> bool:
        """Bring a chunk into the cache (for readahead); True if it came from upstream.

        Errors are left to the real read."""
        key = chunk_key(path, version, index)
        if key in self._inflight or key in self._writing or self.store.contains(key):
            return False  # present (or coming): no need to read and verify it just to know
        self.counters["prefetched"] += 1
        try:
            await self._fetch(key, path, version, index)
        except Exception as e:  # a failed prefetch only loses the prefetch; the read will see it
            log.debug("prefetch of %r #%d failed: %s", path, index, e)
            return False
        return True

    def stats(self) -> dict[str, Any]:
        return {**self.counters, "store": self.store.stats(), "upstream": self.upstream.stats()}

    async def aclose(self) -> None:
        await self.store.aclose()
        await self.upstream.aclose()
