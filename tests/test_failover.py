"""Failover of the protocol client (``RemoteSource``) against real servers on loopback.

Every server here is the real ``Server`` over a real ``LocalSource`` (or a real ``RemoteSource``,
for a proxy-like middle tier) on a real TCP port; the misbehaving peers (reset, silent, stalling)
are raw sockets doing exactly that. Host failures must move a request on; file errors must not.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio

from dadafs import auth
from dadafs.local import LocalSource
from dadafs.protocol import VERSION
from dadafs.remote import RemoteSource
from dadafs.server import Server
from dadafs.source import CHUNK_SIZE, FsError, checksum
from dadafs.spec import parse_spec
from tests.conftest import pattern

KEY = b"k" * 32


def run(fn: Callable[[], Awaitable[None]]) -> None:
    trio.run(fn)


@pytest.fixture
def export(tmp_path: Path) -> Path:
    d = tmp_path / "export"
    d.mkdir()
    (d / "file.bin").write_bytes(pattern(3 * CHUNK_SIZE + 17, 1))
    return d


class Tier:
    """A real server on a loopback port that can be stopped (connections and all) and restarted."""

    def __init__(self, nursery: trio.Nursery, source: Any, port: int = 0) -> None:
        self.nursery = nursery
        self.source = source
        self.port = port
        self.server = Server(source, KEY)
        self.scope: trio.CancelScope | None = None

    async def start(self) -> Tier:
        self.server = Server(self.source, KEY)

        async def serve(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            with trio.CancelScope() as scope:
                self.scope = scope
                await self.server.listen("127.0.0.1", self.port, task_status=task_status)

        addrs = await self.nursery.start(serve)
        self.port = addrs[0][1]
        return self

    def stop(self) -> None:
        assert self.scope is not None
        self.scope.cancel()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def requests(self) -> int:
        return int(self.server.counters["requests"])


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def remote(spec: str, **kw: Any) -> AsyncIterator[RemoteSource]:
    async with trio.open_nursery() as n:
        r = RemoteSource(parse_spec(spec), KEY, n, **kw)
        try:
            yield r
        finally:
            await r.aclose()
            n.cancel_scope.cancel()


async def read_all(r: RemoteSource, path: bytes) -> bytes:
    a = await r.stat(path)
    out = bytearray()
    for i in range((a.size + CHUNK_SIZE - 1) // CHUNK_SIZE):
        out += await r.read_chunk(path, a.version, i)
    return bytes(out)


def state(r: RemoteSource, addr: str) -> dict[str, Any]:
    ups = r.stats()["upstreams"]
    return next(u for u in ups if u["endpoint"] == addr)


def test_load_spreads_over_a_group(export: Path) -> None:
    async def main() -> None:
        async with trio.open_nursery() as n:
            a = await Tier(n, LocalSource({b"data": export})).start()
            b = await Tier(n, LocalSource({b"data": export})).start()
            async with remote(f"{a.addr}|{b.addr}") as r:
                for _ in range(200):
                    await r.stat(b"/data/file.bin")
            assert a.requests >= 60 and b.requests >= 60, (a.requests, b.requests)
            n.cancel_scope.cancel()

    run(main)


def test_refused_fails_over_to_next_group_and_file_is_identical(export: Path) -> None:
    async def main() -> None:
        async with trio.open_nursery() as n:
            b = await Tier(n, LocalSource({b"data": export})).start()
            dead = f"127.0.0.1:{closed_port()}"
            async with remote(f"{dead};{b.addr}") as r:
                assert await read_all(r, b"/data/file.bin") == (export / "file.bin").read_bytes()
                s = state(r, dead)
                assert s["state"] == "down" and s["failures"] >= 1
                assert "refused" in s["last_error"].lower() or "connect" in s["last_error"].lower()
            n.cancel_scope.cancel()

    run(main)


async def _raw_listener(
    nursery: trio.Nursery, handle: Callable[[trio.SocketStream], Awaitable[None]]
) -> int:
    """A hand-made server for misbehaving peers. The client under test drops connections it has
    given up on, so a reset seen by the fake is the expected end of a conversation, not an error."""

    async def guarded(stream: trio.SocketStream) -> None:
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError, EOFError):
            await handle(stream)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = int(listeners[0].socket.getsockname()[1])
    nursery.start_soon(trio.serve_listeners, guarded, listeners)
    return port


def test_reset_and_silent_hosts_fail_over(export: Path) -> None:
    async def reset(stream: trio.SocketStream) -> None:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.socket.close()  # RST

    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async def main() -> None:
        async with trio.open_nursery() as n:
            rst = await _raw_listener(n, reset)
            mute = await _raw_listener(n, silent)
            good = await Tier(n, LocalSource({b"data": export})).start()
            spec = f"127.0.0.1:{rst};127.0.0.1:{mute};{good.addr}"
            async with remote(spec, connect_timeout=0.5) as r:
                t0 = time.monotonic()
                await r.stat(b"/data/file.bin")
                took = time.monotonic() - t0
                assert 0.4 < took < 3.5, took  # the silent host cost its connect timeout (0.5 s)
                assert state(r, f"127.0.0.1:{rst}")["state"] == "down"
                assert state(r, f"127.0.0.1:{mute}")["state"] == "down"
            n.cancel_scope.cancel()

    run(main)


async def _fake_server_handshake(stream: trio.SocketStream) -> tuple[bytes, Any]:
    """The server side of the real handshake, done by hand (so the fake can misbehave later)."""
    buf = b""

    async def frame() -> dict[str, Any]:
        nonlocal buf
        while True:
            if len(buf) >= 4:
                (n,) = struct.unpack(">I", buf[:4])
                if len(buf) >= 4 + n:
                    h = msgpack.unpackb(buf[4 : 4 + n])
                    buf = buf[4 + n :]
                    return dict(h)
            more = await stream.receive_some(65536)
            if not more:
                raise EOFError("client closed the connection")
            buf += more

    async def send(h: dict[str, Any]) -> None:
        raw = msgpack.packb(h, use_bin_type=True)
        await stream.send_all(struct.pack(">I", len(raw)) + raw)

    hello = await frame()
    ns = auth.new_nonce()
    await send({"v": VERSION, "nonce": ns, "proof": auth.proof(KEY, b"server", ns, hello["nonce"], VERSION)})  # fmt: skip
    await frame()
    await send({"ok": True, "v": VERSION, "chunk": CHUNK_SIZE})
    return ns, frame


def test_stalled_transfer_below_min_rate_fails_over(export: Path) -> None:
    """A peer that starts a chunk and then trickles bytes is a host failure: the ping is queued
    behind the crawling payload and never answered."""

    async def crawl(stream: trio.SocketStream) -> None:
        _, frame = await _fake_server_handshake(stream)
        while True:
            h = await frame()
            if h.get("op") == "stat":  # answer metadata from the real tree, like a real origin
                st = (export / "file.bin").stat()
                a = [st.st_ino, st.st_mode, 1, 0, 0, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
                raw = msgpack.packb({"id": h["id"], "r": a})
                await stream.send_all(struct.pack(">I", len(raw)) + raw)
            elif h.get("op") == "read":
                raw = msgpack.packb({"id": h["id"], "n": CHUNK_SIZE})
                await stream.send_all(struct.pack(">I", len(raw)) + raw)
                while True:  # 1 KiB/s
                    await stream.send_all(b"\0" * 1024)
                    await trio.sleep(1)

    async def main() -> None:
        async with trio.open_nursery() as n:
            slow = await _raw_listener(n, crawl)
            good = await Tier(n, LocalSource({b"data": export})).start()
            async with remote(f"127.0.0.1:{slow};{good.addr}", stall_timeout=0.5) as r:
                a = await r.stat(b"/data/file.bin")
                t0 = time.monotonic()
                data = await r.read_chunk(b"/data/file.bin", a.version, 1)
                took = time.monotonic() - t0
                assert (
                    bytes(data) == (export / "file.bin").read_bytes()[CHUNK_SIZE : 2 * CHUNK_SIZE]
                )
                assert took < 4.0, took  # far below request_timeout (10 s): the stall was seen
                assert "stalled" in state(r, f"127.0.0.1:{slow}")["last_error"]
            n.cancel_scope.cancel()

    run(main)


def test_slow_but_alive_upstream_is_not_a_stall(export: Path) -> None:
    """A middle tier waiting on its own slow upstream answers pings: no false failover."""

    class Slow(LocalSource):
        async def read_chunk(self, path: bytes, version: Any, index: int) -> Any:
            await trio.sleep(1.6)
            return await super().read_chunk(path, version, index)

    async def main() -> None:
        async with trio.open_nursery() as n:
            slow = await Tier(n, Slow({b"data": export})).start()
            spare = await Tier(n, LocalSource({b"data": export})).start()
            async with remote(f"{slow.addr};{spare.addr}", stall_timeout=0.4) as r:
                a = await r.stat(b"/data/file.bin")
                await r.read_chunk(b"/data/file.bin", a.version, 0)
                assert state(r, slow.addr)["failures"] == 0
                assert spare.requests == 0
            n.cancel_scope.cancel()

    run(main)


def test_file_errors_never_fail_over(tmp_path: Path, export: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "only-here").write_bytes(b"x")
    (export / "dir").mkdir()

    async def main() -> None:
        async with trio.open_nursery() as n:
            a = await Tier(n, LocalSource({b"data": export})).start()
            b = await Tier(n, LocalSource({b"data": other})).start()
            async with remote(f"{a.addr};{b.addr}") as r:
                cases = [
                    (r.stat(b"/data/only-here"), errno.ENOENT),
                    (r.stat(b"/data/../secret"), errno.EACCES),
                    (r.readlink(b"/data/file.bin"), errno.EINVAL),
                    (r.listdir(b"/data/file.bin"), errno.ENOTDIR),
                    (r.read_chunk(b"/data/dir", (1, 2, 3), 0), errno.EISDIR),
                ]
                for coro, want in cases:
                    with pytest.raises(FsError) as e:
                        await coro
                    assert e.value.errno == want
                assert b.requests == 0 and state(r, a.addr)["failures"] == 0
            n.cancel_scope.cancel()

    run(main)


def test_every_path_down_eio_after_timeout_then_recovers(export: Path) -> None:
    port = closed_port()

    async def main() -> None:
        async with trio.open_nursery() as n:
            addr = f"127.0.0.1:{port}"
            async with remote(f"{addr};127.0.0.1:{closed_port()}", timeout=1.5) as r:
                t0 = time.monotonic()
                with pytest.raises(FsError) as e:
                    await r.stat(b"/data/file.bin")
                took = time.monotonic() - t0
                assert e.value.errno == errno.EIO and 1.4 < took < 3.5, took
                # The upstream comes back: the very next request is served, no restart needed.
                await Tier(n, LocalSource({b"data": export}), port).start()
                assert (await r.stat(b"/data/file.bin")).size == (
                    export / "file.bin"
                ).stat().st_size
            n.cancel_scope.cancel()

    run(main)


def test_eio_of_a_middle_tier_moves_on_to_the_next(export: Path) -> None:
    """A proxy whose origins are all down answers EIO; the client asks the next proxy."""

    async def main() -> None:
        async with trio.open_nursery() as n:
            cut_off = RemoteSource(parse_spec(f"127.0.0.1:{closed_port()}"), KEY, n, timeout=0.3)
            p1 = await Tier(n, cut_off).start()
            p2 = await Tier(n, LocalSource({b"data": export})).start()
            async with remote(f"{p1.addr};{p2.addr}") as r:
                assert await read_all(r, b"/data/file.bin") == (export / "file.bin").read_bytes()
                assert p1.requests >= 1 and state(r, p1.addr)["state"] == "up"
            n.cancel_scope.cancel()

    run(main)


def test_returns_to_preferred_group_after_reset_interval(export: Path) -> None:
    async def main() -> None:
        async with trio.open_nursery() as n:
            p1 = await Tier(n, LocalSource({b"data": export})).start()
            p2 = await Tier(n, LocalSource({b"data": export})).start()
            async with remote(f"{p1.addr};{p2.addr}", reset_interval=1.0) as r:
                await r.stat(b"/data/file.bin")
                assert p1.requests == 1 and p2.requests == 0
                p1.stop()
                await trio.sleep(0.1)
                await r.stat(b"/data/file.bin")
                assert p2.requests == 1
                await p1.start()  # back on the same port, counters fresh
                await r.stat(b"/data/file.bin")
                assert p1.requests == 0 and p2.requests == 2  # still within the reset interval
                await trio.sleep(1.1)
                await r.stat(b"/data/file.bin")
                assert p1.requests == 1 and p2.requests == 2
            n.cancel_scope.cancel()

    run(main)


def test_cancelled_request_keeps_its_connection(export: Path) -> None:
    class Slow(LocalSource):
        async def stat(self, path: bytes) -> Any:
            if path.endswith(b"slow"):
                await trio.sleep(0.5)
            return await super().stat(path)

    (export / "slow").write_bytes(b"s")

    async def main() -> None:
        async with trio.open_nursery() as n:
            a = await Tier(n, Slow({b"data": export})).start()
            async with remote(a.addr, pool=1) as r:
                await r.stat(b"/data/file.bin")
                with trio.move_on_after(0.1):
                    await r.stat(b"/data/slow")
                await trio.sleep(0.6)  # the abandoned reply arrives and is dropped
                await r.stat(b"/data/file.bin")
                s = state(r, a.addr)
                assert s["failures"] == 0 and a.server.counters["connections"] == 1
            n.cancel_scope.cancel()

    run(main)


def test_handshake_fields_are_checked_by_the_client(export: Path) -> None:
    """A server with another key is a host failure (authentication), never a silent success."""

    async def main() -> None:
        async with trio.open_nursery() as n:
            other = Tier(n, LocalSource({b"data": export}))
            await other.start()
            other.server.key = b"z" * 32
            async with remote(other.addr, timeout=0.5) as r:
                with pytest.raises(FsError) as e:
                    await r.stat(b"/data/file.bin")
                assert e.value.errno == errno.EIO
                assert "authentication" in state(r, other.addr)["last_error"]
            n.cancel_scope.cancel()

    run(main)


def test_damaged_chunk_is_never_returned(export: Path) -> None:
    """A chunk whose bytes do not match the checksum in its reply is asked for once more with
    "check" (a cache then re-hashes its copy); damaged again, it is a host failure."""
    good_bytes = (export / "file.bin").read_bytes()[:CHUNK_SIZE]
    requests: list[dict[str, Any]] = []

    async def damaging(stream: trio.SocketStream) -> None:
        _, frame = await _fake_server_handshake(stream)
        while True:
            h = await frame()
            requests.append(h)
            bad = bytearray(good_bytes)
            bad[12345] ^= 0x40  # one flipped bit
            raw = msgpack.packb({"id": h["id"], "n": len(bad), "x": checksum(good_bytes)})
            await stream.send_all(struct.pack(">I", len(raw)) + raw + bytes(bad))

    async def main() -> None:
        async with trio.open_nursery() as n:
            bad = await _raw_listener(n, damaging)
            good = await Tier(n, LocalSource({b"data": export})).start()
            version = (export / "file.bin").stat()
            v = (version.st_ino, version.st_size, version.st_mtime_ns)
            async with remote(f"127.0.0.1:{bad};{good.addr}") as r:
                assert bytes(await r.read_chunk(b"/data/file.bin", v, 0)) == good_bytes
                assert r.stats()["checksum_failures"] == 2
                assert [q.get("check") for q in requests] == [None, True]
                assert "checksum" in state(r, f"127.0.0.1:{bad}")["last_error"]
            n.cancel_scope.cancel()

    run(main)
