"""The remote source: the protocol client to upstream endpoints, with failover.

Each endpoint keeps a small pool of connections; a request goes to a member of the first group
that has a live member (round-robin inside a group: ``a|b`` spreads load), and on a *host* failure
to the next member and then the next group (``;``). Host failures are: connection refused, reset
or closed (a SIGKILLed peer), connect/handshake timeout, a request unanswered for
``request_timeout``, a connection that stalls (see below), a broken protocol. An ``EIO`` reply
(the upstream's own upstreams are down, or its disk failed) also moves the request on to the next
upstream, but does not mark the host down. Errors of the file itself (ENOENT, EACCES, ... in the
reply) never cause failover. A failed host is skipped for ``reset_interval`` seconds, after which
requests try it again (so traffic returns to the preferred group). When every host is down, a
request keeps retrying until ``timeout`` after it began and then fails with EIO: it never hangs.

Integrity: a read reply carries the xxh3-128 of its chunk (``"x"``) whenever the upstream knows it
(always for data it sends from memory; for zero-copy hits when its store records the digest).
A chunk that does not match is a host failure: it is never returned, and the request is retried.

Stall detection: while requests wait on a connection, a watchdog looks every ``stall_timeout``
seconds at how many bytes arrived; below ``min_rate`` bytes/s it sends a ``ping``. A peer that is
only slow to answer (its own upstream is slow) answers the ping at once; a dead link, a hung peer
or a transfer crawling below the rate does not, and the connection fails as a host failure.

Concurrency: every connection has one reader task and one watchdog task (in the nursery given to
:class:`RemoteSource`) that route replies to waiting requests by id; requests send under the
channel's send lock. A request abandoned by its caller (cancelled) leaves its id behind; its late
reply is read and dropped.
"""

from __future__ import annotations

import errno
import itertools
import logging
import ssl
from dataclasses import dataclass, field
from typing import Any

import trio

from .protocol import Channel, ProtocolError, client_handshake
from .source import CHUNK_SIZE, Attr, Buf, FsError, Version, checksum
from .spec import Spec, format_spec

log = logging.getLogger("dadafs.remote")

MAX_REPLY_HEADER = 256 << 20  # a listing of a very large directory travels in one header
MAX_REPLY_PAYLOAD = CHUNK_SIZE


class HostError(Exception):
    """The host (not the file) failed: try another."""


@dataclass
class _Reply:
    event: trio.Event = field(default_factory=trio.Event)
    header: dict[str, Any] | None = None
    payload: bytearray | None = None
    error: BaseException | None = None


class _Conn:
    def __init__(self, ch: Channel, name: str) -> None:
        self.ch = ch
        self.name = name
        self.pending: dict[int, _Reply] = {}
        self.next_id = 1
        self.dead: BaseException | None = None

    async def reader(self) -> None:
        try:
            while True:
                header, payload = await self.ch.recv_frame()
                rid = header.get("id", -1)
                rep = self.pending.pop(rid, None)
                if rep is None:
                    if isinstance(rid, int) and 0 < rid < self.next_id:
                        continue  # the reply to a request its caller abandoned
                    raise ProtocolError(f"reply to unknown request {rid!r}")
                rep.header, rep.payload = header, payload
                rep.event.set()
        except (
            OSError,
            EOFError,
            ProtocolError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
        ) as e:
            self.fail(e)

    async def watchdog(self, window: float, min_rate: float) -> None:
        """Fail the connection when requests wait and neither data nor a ping reply arrive."""
        last = self.ch.progress()
        while self.dead is None:
            await trio.sleep(window)
            now = self.ch.progress()
            got, last = now - last, now
            if not self.pending or got >= min_rate * window:
                continue
            ping = _Reply()
            rid = self._new_id()
            self.pending[rid] = ping
            with trio.move_on_after(window):
                try:
                    await self.ch.send_frame({"id": rid, "op": "ping"})
                    await ping.event.wait()
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
                    self.fail(e)
                    return
            self.pending.pop(rid, None)
            if not ping.event.is_set():
                self.fail(
                    HostError(f"stalled: {got} bytes in {window:g} s and no answer to a ping")
                )
                return
            last = self.ch.progress()

    def _new_id(self) -> int:
        rid = self.next_id
        self.next_id += 1
        return rid

    def fail(self, exc: BaseException) -> None:
        if self.dead is None:
            self.dead = exc
        for rep in self.pending.values():
            rep.error = exc
            rep.event.set()
        self.pending.clear()
        self.ch.close()

    async def call(self, header: dict[str, Any]) -> tuple[dict[str, Any], bytearray | None]:
        if self.dead is not None:
            raise HostError(f"{self.name}: {self.dead}")
        rid = self._new_id()
        header["id"] = rid
        rep = _Reply()
        self.pending[rid] = rep
        try:
            await self.ch.send_frame(header)
            await rep.event.wait()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
            self.fail(e)
            raise HostError(f"{self.name}: {e}") from None
        finally:
            self.pending.pop(rid, None)
        if rep.error is not None:
            raise HostError(f"{self.name}: {rep.error}")
        assert rep.header is not None
        return rep.header, rep.payload


class _Endpoint:
    def __init__(self, host: str, port: int, pool: int) -> None:
        self.host, self.port = host, port
        self.name = f"{host}:{port}"
        self.pool_size = pool
        self.conns: list[_Conn] = []
        self.rr = itertools.count()
        self.down_until = 0.0
        self.lock = trio.Lock()
        self.counters = {"requests": 0, "failures": 0, "bytes": 0}
        self.last_error = ""

    def state(self) -> str:
        return "down" if self.down_until > trio.current_time() else "up"


class RemoteSource:
    """A :class:`~dadafs.source.Source` that forwards every call upstream."""

    def __init__(
        self,
        spec: Spec,
        key: bytes,
        nursery: trio.Nursery,
        *,
        pool: int = 4,
        connect_timeout: float = 3.0,
        request_timeout: float = 10.0,
        timeout: float = 30.0,
        reset_interval: float = 30.0,
        stall_timeout: float = 2.0,
        min_rate: float = 128 * 1024,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.spec_text = format_spec(spec)
        self.groups = [[_Endpoint(h, p, pool) for h, p in g] for g in spec]
        self._group_rr = [itertools.count() for _ in self.groups]
        self.key = key
        self.nursery = nursery
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.timeout = timeout
        self.reset_interval = reset_interval
        self.stall_timeout = stall_timeout
        self.min_rate = min_rate
        self.ssl_context = ssl_context
        self.counters = {"failovers": 0, "eio_timeouts": 0, "checksum_failures": 0}
        self.down_since: float | None = None  # when a request last failed with all hosts down

    async def _connect(self, ep: _Endpoint) -> _Conn:
        with trio.fail_after(self.connect_timeout):
            stream = await trio.open_tcp_stream(ep.host, ep.port)
            sock = stream.socket
            try:
                tls = None
                if self.ssl_context is not None:
                    tls = trio.SSLStream(stream, self.ssl_context, server_hostname=ep.host)
                    try:
                        await tls.do_handshake()
                    except trio.BrokenResourceError as e:  # trio wraps the ssl error
                        why = e.__cause__ or e
                        raise ConnectionError(f"TLS with {ep.name} failed: {why}") from None
                ch = Channel(
                    sock, max_header=MAX_REPLY_HEADER, max_payload=MAX_REPLY_PAYLOAD, tls=tls
                )
                await client_handshake(ch, self.key)
            except BaseException:
                sock.close()
                raise
        conn = _Conn(ch, ep.name)
        self.nursery.start_soon(conn.reader)
        self.nursery.start_soon(conn.watchdog, self.stall_timeout, self.min_rate)
        return conn

    async def _conn_for(self, ep: _Endpoint) -> _Conn:
        """A live pooled connection (round-robin), opening one while the pool is not full."""
        live = [c for c in ep.conns if c.dead is None]
        if len(live) < ep.pool_size:
            async with ep.lock:
                live = [c for c in ep.conns if c.dead is None]
                if len(live) < ep.pool_size:
                    conn = await self._connect(ep)
                    # Others may have failed and cleared the pool while we connected.
                    ep.conns = [c for c in ep.conns if c.dead is None] + [conn]
                    return conn
        return live[next(ep.rr) % len(live)]

    def _candidates(self) -> list[_Endpoint]:
        """Endpoints not marked down: groups in failover order, each rotated (load spreading)."""
        now = trio.current_time()
        out: list[_Endpoint] = []
        for g, rr in zip(self.groups, self._group_rr, strict=True):
            start = next(rr) % len(g)
            out += [ep for ep in g[start:] + g[:start] if ep.down_until <= now]
        return out

    def _mark_down(self, ep: _Endpoint, e: BaseException) -> None:
        ep.counters["failures"] += 1
        ep.last_error = str(e) or type(e).__name__
        ep.down_until = trio.current_time() + self.reset_interval
        for c in ep.conns:
            c.fail(e)
        ep.conns.clear()
        self.counters["failovers"] += 1
        log.warning("upstream %s failed (%s); trying the next one", ep.name, ep.last_error)

    async def call(self, header: dict[str, Any]) -> tuple[dict[str, Any], bytearray | None]:
        """Send a request to the first healthy upstream; raise FsError for a file error.

        Once a request has failed with every upstream down, later requests try every upstream
        once and fail at once (no new wait of ``timeout`` per read) until one answers again.
        """
        with trio.move_on_after(self.timeout):
            result = await self._call(header, once=self.down_since is not None)
            self.down_since = None
            return result
        self.counters["eio_timeouts"] += 1
        self.down_since = trio.current_time()
        log.warning("no upstream of %s answered in %g s: EIO", self.spec_text, self.timeout)
        raise FsError(errno.EIO, f"no upstream of {self.spec_text} answered in {self.timeout:g} s")

    async def _call(
        self, header: dict[str, Any], once: bool = False
    ) -> tuple[dict[str, Any], bytearray | None]:
        delay = 0.05
        if once:  # everything was down: probe every host now, ignoring their reset intervals
            for g in self.groups:
                for ep in g:
                    ep.down_until = 0.0
        while True:
            eio = False
            for ep in self._candidates():
                try:
                    with trio.fail_after(self.request_timeout):
                        conn = await self._conn_for(ep)
                        ep.counters["requests"] += 1
                        reply, payload = await conn.call(dict(header))
                        bad = _bad_digest(reply, payload)
                        if bad:
                            # A cache upstream serves hot chunks without hashing them (the
                            # receiver checks): ask once more with "check", so that it hashes
                            # the chunk, drops a bad copy and fetches it again.
                            self.counters["checksum_failures"] += 1
                            ep.counters["requests"] += 1
                            reply, payload = await conn.call({**header, "check": True})
                            bad = _bad_digest(reply, payload)
                except (HostError, OSError, ProtocolError, trio.TooSlowError) as e:
                    self._mark_down(ep, e)
                    continue
                if "e" in reply:
                    err = int(reply["e"]) if isinstance(reply["e"], int) else errno.EPROTO
                    if err == errno.EIO:  # its upstreams or its disk failed: ask the next one
                        ep.last_error = "replied EIO"
                        eio = True
                        continue
                    raise FsError(err)
                if payload is not None:
                    if bad:
                        # Damaged again after a check: never pass the bytes on; try elsewhere.
                        self.counters["checksum_failures"] += 1
                        self._mark_down(ep, HostError(f"{ep.name}: chunk checksum mismatch"))
                        continue
                    ep.counters["bytes"] += len(payload)
                return reply, payload
            if eio:
                raise FsError(errno.EIO)
            if once:
                raise FsError(errno.EIO, f"every upstream of {self.spec_text} is still down")
            # Every host is marked down: probe them again soon rather than waiting out the reset.
            now = trio.current_time()
            for g in self.groups:
                for ep in g:
                    ep.down_until = min(ep.down_until, now + delay)
            await trio.sleep(delay)
            delay = min(delay * 2, 1.0)

    # -- the Source interface ----------------------------------------------------------------
    async def stat(self, path: bytes) -> Attr:
        r, _ = await self.call({"op": "stat", "p": path})
        return Attr.from_wire(r["r"])

    async def listdir(self, path: bytes) -> list[tuple[bytes, Attr]]:
        r, _ = await self.call({"op": "list", "p": path})
        try:
            return [(bytes(n), Attr.from_wire(a)) for n, a in r["r"]]
        except (TypeError, ValueError) as e:
            raise FsError(errno.EPROTO, f"malformed listing: {e}") from None

    async def readlink(self, path: bytes) -> bytes:
        r, _ = await self.call({"op": "readlink", "p": path})
        return bytes(r["r"])

    async def statfs(self, path: bytes) -> dict[str, int]:
        r, _ = await self.call({"op": "statfs", "p": path})
        return dict(r["r"])

    async def read_chunk(self, path: bytes, version: Version, index: int) -> Buf:
        return (await self.read_chunk_digest(path, version, index))[0]

    async def read_chunk_digest(
        self, path: bytes, version: Version, index: int
    ) -> tuple[Buf, bytes | None]:
        """The chunk and, when the upstream sent one, its xxh3-128 (already checked against the
        bytes), so a cache can store it without hashing the chunk again."""
        reply, payload = await self.call({"op": "read", "p": path, "v": list(version), "i": index})
        if payload is None:
            raise FsError(errno.EPROTO, "read reply without data")
        digest = reply.get("x")
        return payload, digest if isinstance(digest, bytes) else None

    async def remote_stats(self) -> dict[str, Any]:
        r, _ = await self.call({"op": "stats"})
        return dict(r["r"])

    def stats(self) -> dict[str, Any]:
        ups = []
        for gi, g in enumerate(self.groups):
            for ep in g:
                ups.append(
                    {
                        "endpoint": ep.name,
                        "group": gi,
                        "state": ep.state(),
                        "last_error": ep.last_error,
                        **ep.counters,
                    }
                )
        return {
            "kind": "remote",
            "spec": self.spec_text,
            **self.counters,
            "upstream_bytes": sum(u["bytes"] for u in ups),
            "upstreams": ups,
        }

    async def aclose(self) -> None:
        for g in self.groups:
            for ep in g:
                for c in ep.conns:
                    c.fail(EOFError("closed"))
                ep.conns.clear()


def _bad_digest(reply: dict[str, Any], payload: bytearray | None) -> bool:
    """Whether the reply has a payload and a digest (xxh3-128) that the payload does not match."""
    digest = reply.get("x")
    return payload is not None and digest is not None and checksum(payload) != digest
