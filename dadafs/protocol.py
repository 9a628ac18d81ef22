"""Wire format: length-prefixed msgpack headers, bulk data as raw bytes after the header.

Frame = ``u32 big-endian header length`` + ``msgpack map`` + ``n`` raw payload bytes, where ``n``
is the header's ``"n"`` entry (absent: no payload). Bulk data never travel inside msgpack, so a
server can ``sendfile(2)`` a chunk straight from a file and a client can ``recv_into`` a
preallocated buffer.

Requests: ``{"id": int, "op": str, ...args}``. Replies: ``{"id": int, "r": result}``, or
``{"id": int, "e": errno}`` for an error of the file, or ``{"id": int, "n": len, "x": xxh3}`` +
data for ``read`` (``x``, the chunk's xxh3-128, whenever the server knows it; clients check it).
A ``read`` with ``"check": true`` (sent again after a mismatch) makes a cache hash the chunk in
its store before serving it. Many requests may be in flight on one connection; replies come in
any order.

Concurrency: one task reads a :class:`Channel`; any number of tasks may send, serialised by the
channel's send lock, so a header and its payload are always adjacent on the wire.

Transport: plain TCP uses the trio socket directly (``recv_into`` preallocated buffers, zero-copy
``sendfile``); with TLS (:mod:`dadafs.tls`) the same frames travel through a ``trio.SSLStream``
and file data are read into memory and encrypted (no zero-copy path exists through user-space TLS).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import struct
import termios
from typing import Any

import msgpack
import trio

from . import auth
from .source import CHUNK_SIZE

VERSION = 1
MAGIC = "dadafs"
HANDSHAKE_TIMEOUT = 10.0
_LEN = struct.Struct(">I")
_RECV_SIZE = 256 * 1024


class ProtocolError(Exception):
    """The peer broke the protocol (garbage, oversized frame, bad handshake): drop it."""


class AuthError(ProtocolError):
    """The peer does not know the shared key."""


_LOWAT = 64 * 1024  # payloads above this are received with SO_RCVLOWAT set to what is missing
_SOCK_BUF = 4 << 20


def tune_socket(sock: trio.socket.SocketType) -> None:
    """Buffers that hold a few whole chunks, so a 1 MiB payload is one send and few receives."""
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, _SOCK_BUF)


class Channel:
    """A framed, authenticated connection over a connected trio socket."""

    def __init__(
        self,
        sock: trio.socket.SocketType,
        *,
        max_header: int,
        max_payload: int,
        tls: trio.SSLStream[trio.SocketStream] | None = None,
    ) -> None:
        self.sock = sock
        self.tls = tls
        self.received = 0  # bytes received so far: the remote side's stall detection reads it
        self._sent_any = False  # bytes of the frame being sent have left (see _abandon_frame)
        self.max_header = max_header
        self.max_payload = max_payload
        self.send_lock = trio.Lock()
        self._buf = bytearray(_RECV_SIZE)
        self._start = 0
        self._end = 0
        self.peer = _peername(sock)
        if tls is None:
            tune_socket(sock)

    # -- receiving ---------------------------------------------------------------------------
    async def _fill(self, need: int) -> None:
        """Make at least ``need`` bytes available in the buffer."""
        if self._end - self._start >= need:
            return
        if self._start:
            n = self._end - self._start
            self._buf[:n] = self._buf[self._start : self._end]
            self._start, self._end = 0, n
        if need > len(self._buf):
            self._buf.extend(bytes(need - len(self._buf)))
        view = memoryview(self._buf)
        while self._end - self._start < need:
            got = await self._recv_into(view[self._end :])
            if not got:
                raise EOFError("connection closed by peer")
            self._end += got

    async def recv_frame(self) -> tuple[dict[str, Any], bytearray | None]:
        await self._fill(4)
        (hlen,) = _LEN.unpack_from(self._buf, self._start)
        if hlen == 0 or hlen > self.max_header:
            raise ProtocolError(f"header of {hlen} bytes (limit {self.max_header})")
        await self._fill(4 + hlen)
        try:
            header = msgpack.unpackb(
                self._buf[self._start + 4 : self._start + 4 + hlen], raw=False, strict_map_key=True
            )
        except Exception as e:  # msgpack raises several types for garbage
            raise ProtocolError(f"undecodable header: {e}") from None
        self._start += 4 + hlen
        if not isinstance(header, dict):
            raise ProtocolError("header is not a map")
        n = header.get("n")
        if n is None:
            return header, None
        if not isinstance(n, int) or n < 0 or n > self.max_payload:
            raise ProtocolError(f"payload of {n!r} bytes (limit {self.max_payload})")
        payload = bytearray(n)
        have = min(n, self._end - self._start)
        payload[:have] = memoryview(self._buf)[self._start : self._start + have]  # one copy
        self._start += have
        view = memoryview(payload)
        pos = have
        # Wake up once when the rest of the payload is there, not once per TCP segment. Bytes the
        # kernel holds back meanwhile still count as progress for stall detection (progress()).
        lowat = self.tls is None and n - pos > _LOWAT
        try:
            while pos < n:
                if lowat:
                    self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, n - pos)
                got = await self._recv_into(view[pos:])
                if not got:
                    raise EOFError("connection closed by peer in a payload")
                pos += got
        finally:
            if lowat:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
        return header, payload

    def progress(self) -> int:
        """Bytes received so far, counting those the kernel holds for us (SO_RCVLOWAT)."""
        if self.tls is not None:
            return self.received
        try:
            raw = fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
        except (OSError, ValueError):  # closed meanwhile (fileno -1)
            return self.received
        return self.received + int(struct.unpack("i", raw)[0])

    async def _recv_into(self, view: memoryview) -> int:
        if self.tls is None:
            got = await self.sock.recv_into(view)
        else:
            data = await self.tls.receive_some(len(view))
            got = len(data)
            view[:got] = data
        self.received += got
        return got

    # -- sending -----------------------------------------------------------------------------
    async def send_frame(
        self, header: dict[str, Any], payload: bytes | bytearray | memoryview | None = None
    ) -> None:
        if payload is not None:
            header["n"] = len(payload)
        raw = msgpack.packb(header, use_bin_type=True)
        async with self.send_lock:
            self._sent_any = False
            try:
                await self._send_all(_LEN.pack(len(raw)) + raw)
                if payload:
                    await self._send_all(payload)
            except BaseException:
                self._abandon_frame()
                raise

    async def send_frame_file(self, header: dict[str, Any], fd: int, offset: int, n: int) -> None:
        """Send a header and ``n`` bytes of file ``fd`` from ``offset`` with zero-copy sendfile."""
        header["n"] = n
        raw = msgpack.packb(header, use_bin_type=True)
        if self.tls is not None:  # no zero-copy through TLS: read, then encrypt and send
            data = os.pread(fd, n, offset)
            if len(data) != n:
                raise OSError(errno.EIO, "file shorter than its cached length")
            async with self.send_lock:
                self._sent_any = False
                try:
                    await self._send_all(_LEN.pack(len(raw)) + raw)
                    await self._send_all(data)
                except BaseException:
                    self._abandon_frame()
                    raise
            return
        async with self.send_lock:
            self._sent_any = False
            try:
                await self._send_all(_LEN.pack(len(raw)) + raw)
                sent = 0
                out = self.sock.fileno()
                while sent < n:
                    try:
                        k = os.sendfile(out, fd, offset + sent, n - sent)
                    except BlockingIOError:
                        await trio.lowlevel.wait_writable(self.sock)
                        continue
                    if k == 0:
                        raise OSError(errno.EIO, "file shorter than its cached length")
                    sent += k
            except BaseException:
                self._abandon_frame()
                raise

    def _abandon_frame(self) -> None:
        """A frame was cut short (cancelled, or an error mid-send): whatever follows on this
        stream would be read as part of it, so the connection is closed instead."""
        if self._sent_any:
            self.close()

    async def _send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.tls is not None:
            self._sent_any = True  # a cancelled TLS send_all leaves the stream broken anyway
            await self.tls.send_all(data)
            return
        view = memoryview(data)
        while view:
            k = await self.sock.send(view)
            self._sent_any = True
            view = view[k:]

    def close(self) -> None:
        self.sock.close()


def _peername(sock: trio.socket.SocketType) -> str:
    try:
        addr = sock.getpeername()
    except OSError:
        return "?"
    if isinstance(addr, tuple):
        return f"{addr[0]}:{addr[1]}"
    return str(addr)


# -- handshake ---------------------------------------------------------------------------------
async def client_handshake(ch: Channel, key: bytes) -> dict[str, Any]:
    """Prove we know the key, check the server does too; returns the server's parameters."""
    nc = auth.new_nonce()
    with trio.fail_after(HANDSHAKE_TIMEOUT):
        await ch.send_frame({"hello": MAGIC, "v": VERSION, "nonce": nc})
        h, _ = await ch.recv_frame()
        if "e" in h:
            raise AuthError(f"server refused: {os.strerror(int(h['e']))}")
        ns = h.get("nonce")
        if h.get("v") != VERSION or not isinstance(ns, bytes) or len(ns) != auth.NONCE_LEN:
            raise ProtocolError(f"incompatible server (protocol version {h.get('v')!r})")
        if not auth.check(auth.proof(key, b"server", ns, nc, VERSION), h.get("proof")):
            raise AuthError("server failed authentication (wrong key?)")
        await ch.send_frame({"proof": auth.proof(key, b"client", nc, ns, VERSION)})
        h, _ = await ch.recv_frame()
        if not h.get("ok"):
            raise AuthError("server refused our key")
    if h.get("chunk") != CHUNK_SIZE:
        raise ProtocolError(f"server chunk size {h.get('chunk')} != ours {CHUNK_SIZE}")
    return h


async def server_handshake(ch: Channel, key: bytes) -> None:
    """Authenticate a connecting peer; raise :class:`AuthError` and tell it if it fails."""
    ns = auth.new_nonce()
    with trio.fail_after(HANDSHAKE_TIMEOUT):
        h, _ = await ch.recv_frame()
        nc = h.get("nonce")
        if h.get("hello") != MAGIC or not isinstance(nc, bytes) or len(nc) != auth.NONCE_LEN:
            raise ProtocolError("not a dadafs hello")
        if h.get("v") != VERSION:
            await ch.send_frame({"e": errno.EPROTONOSUPPORT, "v": VERSION})
            raise ProtocolError(f"peer speaks protocol version {h.get('v')!r}, we {VERSION}")
        await ch.send_frame(
            {"v": VERSION, "nonce": ns, "proof": auth.proof(key, b"server", ns, nc, VERSION)}
        )
        h, _ = await ch.recv_frame()
        if not auth.check(auth.proof(key, b"client", nc, ns, VERSION), h.get("proof")):
            await ch.send_frame({"e": errno.EACCES})
            raise AuthError("peer failed authentication (wrong key?)")
        await ch.send_frame({"ok": True, "v": VERSION, "chunk": CHUNK_SIZE})
