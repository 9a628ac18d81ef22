"""A user-space TCP relay that delays every byte by a fixed one-way latency.

This kernel has no ``netem``, so tests add latency by putting this relay between two tiers:
``python -m tests.harness.relay --listen A:P --to B:Q --delay-ms N``. Each accepted connection is
paired with a new connection to the target; each direction is a pipeline of two threads: a reader
that stamps every chunk it receives with ``arrival + delay`` and queues it, and a writer that sends
each chunk once its time has come. Reading never waits for writing (only for a bound on the bytes
held, ``--max-buffer``), so the relay keeps a link full whatever the delay: throughput is limited
by ``max_buffer / delay``, not by round trips. Half-closes and resets are passed on.
``--rate-mbit`` additionally paces each direction (a slow upstream, for fault tests).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from types import FrameType

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Params:
    delay: float  # seconds, each direction
    max_buffer: int  # bytes held per direction at most
    rate: float | None = None  # bytes per second per direction, None: unlimited


class Direction:
    """Bytes from ``src`` to ``dst``, each chunk released ``delay`` seconds after it arrived."""

    def __init__(self, src: socket.socket, dst: socket.socket, p: Params):
        self.src, self.dst, self.delay, self.rate = src, dst, p.delay, p.rate
        self.max_chunks = max(2, p.max_buffer // CHUNK)
        self.free: list[bytearray] = []
        self.allocated = 0
        # (due time, buffer, length); a buffer of None marks the end of the stream.
        self.queue: collections.deque[tuple[float, bytearray | None, int]] = collections.deque()
        self.cond = threading.Condition()
        self.failed = False
        self.bytes = 0
        self.t0 = 0.0

    def _buffer(self) -> bytearray | None:
        with self.cond:
            while not self.free and self.allocated >= self.max_chunks and not self.failed:
                self.cond.wait()
            if self.failed:
                return None
            if self.free:
                return self.free.pop()
            self.allocated += 1
        return bytearray(CHUNK)

    def read_loop(self) -> None:
        while True:
            buf = self._buffer()
            if buf is None:
                return
            try:
                n = self.src.recv_into(buf)
            except OSError:
                self.abort()
                return
            with self.cond:
                self.queue.append((time.monotonic() + self.delay, buf if n else None, n))
                self.cond.notify_all()
            if n == 0:
                return

    def write_loop(self) -> None:
        while True:
            with self.cond:
                while not self.queue and not self.failed:
                    self.cond.wait()
                if self.failed:
                    return
                due, buf, n = self.queue.popleft()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if buf is None:
                with contextlib.suppress(OSError):
                    self.dst.shutdown(socket.SHUT_WR)
                return
            try:
                self.send(memoryview(buf)[:n])
            except OSError:
                self.abort()
                return
            with self.cond:
                self.free.append(buf)
                self.cond.notify_all()

    def send(self, data: memoryview) -> None:
        """Send ``data``; with a rate limit, in slices of 10 ms paced to that rate."""
        if self.rate is None:
            self.dst.sendall(data)
            self.bytes += len(data)
            return
        if self.bytes == 0:
            self.t0 = time.monotonic()
        step = max(1024, int(self.rate / 100))
        for off in range(0, len(data), step):
            piece = data[off : off + step]
            self.dst.sendall(piece)
            self.bytes += len(piece)
            wait = self.t0 + self.bytes / self.rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)

    def abort(self) -> None:
        """A reset on either side: reset the other side too (SO_LINGER 0) and stop both loops."""
        with self.cond:
            self.failed = True
            self.cond.notify_all()
        for s in (self.src, self.dst):
            with contextlib.suppress(OSError):
                s.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
                s.shutdown(socket.SHUT_RDWR)


def serve_connection(client: socket.socket, target: tuple[str, int], p: Params) -> None:
    try:
        upstream = socket.create_connection(target)
    except OSError:
        client.close()
        return
    for s in (client, upstream):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    dirs = [
        Direction(client, upstream, p),
        Direction(upstream, client, p),
    ]
    threads = [
        threading.Thread(target=f, daemon=True) for d in dirs for f in (d.read_loop, d.write_loop)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.close()
    upstream.close()


def parse_addr(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.harness.relay", description=__doc__)
    ap.add_argument("--listen", type=parse_addr, required=True, metavar="HOST:PORT")
    ap.add_argument("--to", type=parse_addr, required=True, metavar="HOST:PORT")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay per direction")
    ap.add_argument(
        "--rate-mbit", type=float, help="limit each direction of each connection (a slow upstream)"
    )
    ap.add_argument("--max-buffer", type=int, default=64 << 20, help="bytes held per direction")
    args = ap.parse_args(argv)
    if args.delay_ms < 0:
        ap.error("--delay-ms must not be negative")
    if args.rate_mbit is not None and args.rate_mbit <= 0:
        ap.error("--rate-mbit must be positive")

    def stop(_sig: int, _frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    srv = socket.socket(socket.AF_INET6 if ":" in args.listen[0] else socket.AF_INET)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(args.listen)
    srv.listen(128)
    print(f"relay {args.listen[0]}:{args.listen[1]} -> {args.to[0]}:{args.to[1]} "
          f"delay {args.delay_ms} ms", flush=True)  # fmt: skip
    params = Params(
        args.delay_ms / 1000.0,
        args.max_buffer,
        None if args.rate_mbit is None else args.rate_mbit * 1e6 / 8,
    )
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve_connection, args=(conn, args.to, params), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
