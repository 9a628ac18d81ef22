"""The protocol server: exposes any :class:`~dadafs.source.Source` to authenticated peers.

One task per connection reads requests; each request runs in its own task (at most
``max_inflight`` per connection: beyond that the reader stops reading, which pushes back on the
peer). Replies are sent under the channel's send lock, in completion order. A peer that breaks
the protocol (garbage, an oversized frame, a failed handshake) loses its connection; nothing it
sends can affect other connections.

Limits that bound a daemon's memory whatever peers send: a request header is at most
``MAX_REQUEST_HEADER`` bytes and carries no payload; ``max_inflight`` requests per connection, of
which at most ``MAX_READS_INFLIGHT`` reads (each holds a chunk);
``max_connections`` connections (more are closed at once); an unauthenticated peer is dropped
after the handshake timeout. A request whose arguments are malformed gets EINVAL; an unexpected
exception while serving one request is logged and answered with EIO, never taking the daemon down.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .protocol import HANDSHAKE_TIMEOUT, AuthError, Channel, ProtocolError, server_handshake
from .source import FsError, Source, checksum
from .util import ConfigError

log = logging.getLogger("dadafs.server")

MAX_REQUEST_HEADER = 64 * 1024
MAX_INFLIGHT = 128
MAX_READS_INFLIGHT = 16  # reads hold a chunk each: this bounds a connection's buffers to 16 MiB
MAX_CONNECTIONS = 1024
_MAX_VERSION_FIELD = 1 << 63
_MAX_INDEX = 1 << 40


class Server:
    def __init__(
        self,
        source: Source,
        key: bytes,
        *,
        max_inflight: int = MAX_INFLIGHT,
        max_connections: int = MAX_CONNECTIONS,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.source = source
        self.key = key
        self.max_inflight = max_inflight
        self.max_connections = max_connections
        self.ssl_context = ssl_context
        self.counters = {
            "internal_errors": 0,
            "refused_connections": 0,
            "connections": 0,
            "connections_open": 0,
            "requests": 0,
            "bytes_sent": 0,
            "auth_failures": 0,
            "protocol_errors": 0,
        }
        self.extra_stats: Callable[[], dict[str, Any]] | None = None

    async def listen(
        self, host: str, port: int, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ConfigError(f"cannot listen on {host}:{port}: port in use") from None
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        addrs = [ln.socket.getsockname() for ln in listeners]
        log.info("serving on %s", ", ".join(f"{a[0]}:{a[1]}" for a in addrs))
        task_status.started(addrs)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        sock = stream.socket
        if self.counters["connections_open"] >= self.max_connections:
            self.counters["refused_connections"] += 1
            sock.close()
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tls = None
        if self.ssl_context is not None:
            tls = trio.SSLStream(stream, self.ssl_context, server_side=True)
        ch = Channel(sock, max_header=MAX_REQUEST_HEADER, max_payload=0, tls=tls)
        self.counters["connections"] += 1
        self.counters["connections_open"] += 1
        try:
            try:
                if tls is not None:
                    with trio.fail_after(HANDSHAKE_TIMEOUT):
                        await tls.do_handshake()
                await server_handshake(ch, self.key)
            except AuthError as e:
                self.counters["auth_failures"] += 1
                log.warning("refused %s: %s", ch.peer, e)
                return
            except (ProtocolError, trio.TooSlowError, trio.BrokenResourceError) as e:
                self.counters["protocol_errors"] += 1
                log.warning("dropped %s during handshake: %s", ch.peer, e or type(e).__name__)
                return
            log.debug("peer %s authenticated", ch.peer)
            limit = trio.Semaphore(self.max_inflight)
            reads = trio.Semaphore(MAX_READS_INFLIGHT)
            resident = getattr(self.source, "read_chunk_resident", None)
            async with trio.open_nursery() as nursery:
                try:
                    while True:
                        header, _ = await ch.recv_frame()
                        if resident is not None and await self._serve_resident(
                            ch, header, resident
                        ):
                            continue
                        await limit.acquire()
                        nursery.start_soon(self._request, ch, header, limit, reads)
                except ProtocolError as e:
                    self.counters["protocol_errors"] += 1
                    log.warning("dropped %s: %s", ch.peer, e)
                except (EOFError, OSError, trio.BrokenResourceError):
                    pass
                nursery.cancel_scope.cancel()
        except (EOFError, OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:  # a bug must cost this connection only, never the daemon
            self.counters["internal_errors"] += 1
            log.exception("internal error serving %s", ch.peer)
        finally:
            self.counters["connections_open"] -= 1
            ch.close()

    async def _request(
        self, ch: Channel, h: dict[str, Any], limit: trio.Semaphore, reads: trio.Semaphore
    ) -> None:
        try:
            rid = h.get("id")
            self.counters["requests"] += 1
            try:
                if h.get("op") == "read":
                    async with reads:
                        await self._dispatch(ch, rid, h)
                else:
                    await self._dispatch(ch, rid, h)
            except FsError as e:
                await ch.send_frame({"id": rid, "e": e.errno or errno.EIO})
            except (ProtocolError, TypeError, ValueError, KeyError) as e:
                log.warning("bad request from %s: %s", ch.peer, e)
                await ch.send_frame({"id": rid, "e": errno.EINVAL})
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                raise
            except Exception:
                self.counters["internal_errors"] += 1
                log.exception("internal error in a request from %s", ch.peer)
                await ch.send_frame({"id": rid, "e": errno.EIO})
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            ch.close()  # the reader notices and ends the connection
        finally:
            limit.release()

    async def _serve_resident(
        self, ch: Channel, h: dict[str, Any], resident: Callable[..., Any]
    ) -> bool:
        """Serve a read from the reader task itself when the source has the chunk at hand
        (a hot cache hit: no disk I/O, no upstream); False: give it a task as usual."""
        if h.get("op") != "read" or "check" in h:
            return False
        try:
            path, ver, index = _read_args(h)
        except (ProtocolError, KeyError, TypeError):
            return False  # the task path answers EINVAL
        ref = resident(path, ver, index)
        if ref is None:
            return False
        self.counters["requests"] += 1
        await self._send_ref(ch, h.get("id"), ref)
        return True

    async def _send_ref(self, ch: Channel, rid: Any, ref: Any) -> None:
        """Send a pinned region of a cache file with zero-copy sendfile, then release it."""
        header: dict[str, Any] = {"id": rid}
        digest = getattr(ref, "digest", None)  # a store that keeps the chunk's xxh3 has it
        if isinstance(digest, bytes):
            header["x"] = digest
        try:
            await ch.send_frame_file(header, ref.fd, ref.offset, ref.length)
            self.counters["bytes_sent"] += ref.length
        finally:
            ref.release()

    async def _dispatch(self, ch: Channel, rid: Any, h: dict[str, Any]) -> None:
        op = h.get("op")
        if op == "read":
            path, ver, index = _read_args(h)
            ref_fn = getattr(self.source, "read_chunk_ref", None)
            # A read with "check" (the client saw a bad digest) never takes the resident path, so
            # a cache hashes its copy here.
            res = await (ref_fn or self.source.read_chunk)(path, ver, index)
            if isinstance(res, bytes | bytearray):
                await ch.send_frame({"id": rid, "x": checksum(res)}, res)
                self.counters["bytes_sent"] += len(res)
                return
            await self._send_ref(ch, rid, res)
            return
        handler: Callable[[bytes], Awaitable[Any]] | None = {
            "stat": self._stat,
            "list": self._list,
            "readlink": self.source.readlink,
            "statfs": self.source.statfs,
        }.get(op)  # type: ignore[arg-type]
        if handler is not None:
            await ch.send_frame({"id": rid, "r": await handler(_path(h))})
        elif op == "ping":  # the client's stall detection: answered at once
            await ch.send_frame({"id": rid, "r": True})
        elif op == "stats":
            await ch.send_frame({"id": rid, "r": self.stats()})
        else:
            raise ProtocolError(f"unknown op {op!r}")

    async def _stat(self, path: bytes) -> list[int]:
        return (await self.source.stat(path)).to_wire()

    async def _list(self, path: bytes) -> list[Any]:
        return [[n, a.to_wire()] for n, a in await self.source.listdir(path)]

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "pid": os.getpid(),
            "server": dict(self.counters),
            "source": self.source.stats(),
        }
        if self.extra_stats is not None:
            out.update(self.extra_stats())
        return out


def _read_args(h: dict[str, Any]) -> tuple[bytes, tuple[int, int, int], int]:
    path, version, index = _path(h), h["v"], h["i"]
    if not (
        isinstance(version, list)
        and len(version) == 3
        and all(type(v) is int and -_MAX_VERSION_FIELD <= v < _MAX_VERSION_FIELD for v in version)
        and type(index) is int
        and 0 <= index < _MAX_INDEX
    ):
        raise ProtocolError("bad read arguments")
    return path, (version[0], version[1], version[2]), index


def _path(h: dict[str, Any]) -> bytes:
    p = h.get("p")
    if not isinstance(p, bytes):
        raise ProtocolError("path must be bytes")
    return p
