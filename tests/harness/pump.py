"""Traffic endpoints for harness tests, run as processes (so they can run inside namespaces).

``python -m tests.harness.pump sink --listen H:P``     accept one connection, read to EOF
``python -m tests.harness.pump source --to H:P --bytes N``  send N bytes of numbered random blocks
``python -m tests.harness.pump echo --listen H:P``     echo every connection back
``python -m tests.harness.pump ping --to H:P --count N``   one-byte round trips to an echo

Each prints one JSON line: bytes, xxh3-128 of the bytes, seconds (and round-trip times for ping),
so a test can check that what arrived is exactly what was sent and how fast.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import threading
import time

import xxhash

from tests.harness.relay import parse_addr

BLOCK = 1 << 20


def block(seed: int, i: int, base: bytes) -> bytes:
    """Block ``i``: a counter then random bytes, so lost, duplicated or swapped blocks show."""
    return i.to_bytes(8, "little") + seed.to_bytes(8, "little") + base[16:]


def source(to: tuple[str, int], nbytes: int, seed: int) -> dict[str, object]:
    base = random.Random(seed).randbytes(BLOCK)
    h = xxhash.xxh3_128()
    sent = 0
    with socket.create_connection(to) as s:
        t0 = time.perf_counter()
        i = 0
        while sent < nbytes:
            b = block(seed, i, base)[: nbytes - sent]
            s.sendall(b)
            h.update(b)
            sent += len(b)
            i += 1
        s.shutdown(socket.SHUT_WR)
        s.recv(1)  # the sink closes once it has everything: time the delivery, not the buffering
        dt = time.perf_counter() - t0
    return {"bytes": sent, "xxh3": h.hexdigest(), "seconds": dt}


def listener(addr: tuple[str, int]) -> socket.socket:
    srv = socket.socket(socket.AF_INET6 if ":" in addr[0] else socket.AF_INET)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(addr)
    srv.listen(16)
    return srv


def sink(addr: tuple[str, int]) -> dict[str, object]:
    srv = listener(addr)
    conn, _ = srv.accept()
    h = xxhash.xxh3_128()
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    n = 0
    t0 = time.perf_counter()
    while k := conn.recv_into(buf):
        h.update(view[:k])
        n += k
    dt = time.perf_counter() - t0
    conn.close()
    return {"bytes": n, "xxh3": h.hexdigest(), "seconds": dt}


def echo(addr: tuple[str, int]) -> None:
    srv = listener(addr)

    def serve(c: socket.socket) -> None:
        with c:
            while data := c.recv(BLOCK):
                c.sendall(data)

    while True:
        conn, _ = srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def ping(to: tuple[str, int], count: int) -> dict[str, object]:
    rtts = []
    with socket.create_connection(to) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            t0 = time.perf_counter()
            s.sendall(b"x")
            if s.recv(1) != b"x":
                raise SystemExit("ping: echo closed the connection")
            rtts.append(time.perf_counter() - t0)
    return {"count": count, "median_s": statistics.median(rtts), "min_s": min(rtts)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.harness.pump")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("sink", "echo"):
        sub.add_parser(name).add_argument("--listen", type=parse_addr, required=True)
    p = sub.add_parser("source")
    p.add_argument("--to", type=parse_addr, required=True)
    p.add_argument("--bytes", type=int, required=True)
    p.add_argument("--seed", type=int, default=1)
    p = sub.add_parser("ping")
    p.add_argument("--to", type=parse_addr, required=True)
    p.add_argument("--count", type=int, default=20)
    a = ap.parse_args(argv)
    if a.cmd == "sink":
        print(json.dumps(sink(a.listen)), flush=True)
    elif a.cmd == "echo":
        echo(a.listen)
    elif a.cmd == "source":
        print(json.dumps(source(a.to, a.bytes, a.seed)), flush=True)
    else:
        print(json.dumps(ping(a.to, a.count)), flush=True)


if __name__ == "__main__":
    main()
