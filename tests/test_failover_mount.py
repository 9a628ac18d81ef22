"""Failover seen by a reader of a real FUSE mount: real dadafsd/dadafsp/dadafs processes.

A tier is killed with SIGKILL in the middle of a read; the reader must get identical bytes with no
error and no long pause. With every path down reads fail with EIO after the configured timeout,
the mount stays and serves again once an upstream is back. A client killed with SIGKILL leaves a
dead mount that the next ``dadafs mount`` clears by itself.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import xxhash

from tests.harness import tiers
from tests.harness.procs import Procs, is_mounted, wait_listening, wait_mount
from tests.harness.stack import make_file

MiB = 1 << 20


def restart(procs: Procs, name: str) -> None:
    """Start ``name`` again with the argv it had (same port, same cache)."""
    old = procs.get(name)
    port = int(old.argv[old.argv.index("--listen") + 1].rsplit(":", 1)[1])
    wait_listening(procs.start(name, old.argv), port)


def timed_read(path: Path, on_offset: tuple[int, Callable[[], object]]) -> tuple[str, float]:
    """Read ``path`` in 1 MiB pieces; call the callback once ``on_offset`` bytes are read.
    Returns the xxh3-128 and the longest wait for one piece (after the callback)."""
    h = xxhash.xxh3_128()
    worst = 0.0
    done, fired = 0, False
    with open(path, "rb", buffering=0) as f:
        while True:
            t0 = time.monotonic()
            b = f.read(MiB)
            dt = time.monotonic() - t0
            if fired:
                worst = max(worst, dt)
            if not b:
                break
            h.update(b)
            done += len(b)
            if not fired and done >= on_offset[0]:
                on_offset[1]()
                fired = True
    return h.hexdigest(), worst


def read_through_kill(
    procs: Procs, path: Path, at: int, victim: str, label: str, digest: str
) -> None:
    """Read ``path`` whole, SIGKILLing process ``victim`` once ``at`` bytes are in: the bytes
    must be right and no 1 MiB piece may wait more than 2 s (the pause is printed)."""
    got, worst = timed_read(path, (at, lambda: procs.stop(procs.get(victim), sig=signal.SIGKILL)))
    assert got == digest
    print(f"\n{label} SIGKILLed mid-read: longest pause {worst:.3f} s")
    assert worst <= 2.0, f"reader paused {worst:.2f} s"


def assert_failed_over(tier: str, key: Path, down: str, up: str) -> None:
    """``tier`` marked its upstream ``down`` down and read from ``up`` instead."""
    ups = {u["endpoint"]: u for u in tiers.stats(tier, key)["source"]["upstream"]["upstreams"]}
    assert ups[down]["state"] == "down" and ups[up]["bytes"] > 0


def test_client_fails_over_when_proxy_killed_mid_read_and_returns(
    tmp_path: Path, procs: Procs
) -> None:
    export = tmp_path / "export"
    digest = make_file(export / "scan.h5", 96 * MiB + 333, seed=7)
    digest2 = make_file(export / "later.h5", 8 * MiB + 1, seed=8)
    key = tiers.make_key(tmp_path / "key")
    origin = tiers.start_origin(procs, key, {"data": export})
    p1 = tiers.start_proxy(procs, key, origin, tmp_path / "c1", "1G", name="p1")
    p2 = tiers.start_proxy(procs, key, origin, tmp_path / "c2", "1G", name="p2")
    mnt = tmp_path / "mnt"
    tiers.mount(procs, key, f"{p1};{p2}", mnt, extra=("--reset-interval", "3"))

    read_through_kill(procs, mnt / "data" / "scan.h5", 24 * MiB, "p1", "proxy p1", digest)
    assert tiers.stats(p2, key)["server"]["bytes_sent"] > 0

    restart(procs, "p1")
    time.sleep(3.5)  # the client's reset interval: p1 is tried again
    assert xxhash.xxh3_128((mnt / "data" / "later.h5").read_bytes()).hexdigest() == digest2
    assert tiers.stats(p1, key)["server"]["bytes_sent"] >= 8 * MiB


def test_proxy_fails_over_between_origins_exporting_the_same_data(
    tmp_path: Path, procs: Procs
) -> None:
    export = tmp_path / "export"
    digest = make_file(export / "scan.h5", 96 * MiB + 5, seed=9)
    key = tiers.make_key(tmp_path / "key")
    o1 = tiers.start_origin(procs, key, {"data": export}, name="o1")
    o2 = tiers.start_origin(procs, key, {"data": export}, name="o2")
    proxy = tiers.start_proxy(procs, key, f"{o1};{o2}", tmp_path / "cache", "1G")
    mnt = tmp_path / "mnt"
    tiers.mount(procs, key, proxy, mnt)
    read_through_kill(procs, mnt / "data" / "scan.h5", 24 * MiB, "o1", "origin o1", digest)
    assert_failed_over(proxy, key, down=o1, up=o2)


def test_every_path_down_gives_eio_after_timeout_and_the_mount_recovers(
    tmp_path: Path, procs: Procs
) -> None:
    export = tmp_path / "export"
    (export / "scan").mkdir(parents=True)
    files = {f"f{i}.bin": os.urandom(2 * MiB + i) for i in range(3)}
    for n, b in files.items():
        (export / "scan" / n).write_bytes(b)
    key = tiers.make_key(tmp_path / "key")
    origin = tiers.start_origin(procs, key, {"data": export})
    proxy = tiers.start_proxy(procs, key, origin, tmp_path / "cache", "1G")
    mnt = tmp_path / "mnt"
    tiers.mount(procs, key, proxy, mnt, extra=("--timeout", "3", "--meta-ttl", "60"))
    scan = mnt / "data" / "scan"
    assert sorted(os.listdir(scan)) == sorted(files)
    assert (scan / "f0.bin").read_bytes() == files["f0.bin"]

    procs.stop(procs.get("proxy"), sig=signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(OSError) as e:
        (scan / "f1.bin").read_bytes()
    took = time.monotonic() - t0
    assert e.value.errno == errno.EIO
    print(f"\nevery path down: EIO after {took:.2f} s (timeout 3 s)")
    assert 2.5 < took < 6.0, f"EIO after {took:.1f} s with timeout = 3 s"
    assert (scan / "f0.bin").read_bytes() == files["f0.bin"]  # cached data are still served
    assert is_mounted(mnt) and os.path.isdir(scan)  # no "Transport endpoint is not connected"

    restart(procs, "proxy")
    assert (scan / "f1.bin").read_bytes() == files["f1.bin"]
    assert (scan / "f2.bin").read_bytes() == files["f2.bin"]


def test_mount_after_client_was_sigkilled_needs_no_cleanup(tmp_path: Path, procs: Procs) -> None:
    export = tmp_path / "export"
    export.mkdir()
    (export / "x").write_bytes(b"hello")
    key = tiers.make_key(tmp_path / "key")
    origin = tiers.start_origin(procs, key, {"data": export})
    mnt = tmp_path / "mnt"
    first = tiers.mount(procs, key, origin, mnt, name="m1")
    assert (mnt / "data" / "x").read_bytes() == b"hello"
    procs.stop(first, sig=signal.SIGKILL)
    with pytest.raises(OSError) as e:
        os.listdir(mnt)
    assert e.value.errno == errno.ENOTCONN  # the dead mount a killed client leaves
    second = procs.start(
        "m2",
        [str(tiers.BIN / "dadafs"), "mount", "--upstream", origin, "--secret-file", str(key),
         str(mnt)],
    )  # fmt: skip
    wait_mount(mnt, proc=second)
    deadline = time.monotonic() + 10
    while True:
        try:
            assert (mnt / "data" / "x").read_bytes() == b"hello"
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert "clearing a stale mount" in second.log.read_text()
    mounts = subprocess.run(["findmnt", "-n", "-o", "TARGET", str(mnt)], capture_output=True)
    assert mounts.stdout.decode().count(str(mnt)) == 1  # replaced, not stacked


def test_proxy_fails_over_between_upstream_proxies(tmp_path: Path, procs: Procs) -> None:
    """proxy -> proxy: an edge proxy with upstream ``b;c`` (two proxies over one origin)."""
    export = tmp_path / "export"
    digest = make_file(export / "scan.h5", 64 * MiB + 11, seed=10)
    key = tiers.make_key(tmp_path / "key")
    origin = tiers.start_origin(procs, key, {"data": export})
    b = tiers.start_proxy(procs, key, origin, tmp_path / "cb", "1G", name="b")
    c = tiers.start_proxy(procs, key, origin, tmp_path / "cc", "1G", name="c")
    edge = tiers.start_proxy(procs, key, f"{b};{c}", tmp_path / "ce", "1G", name="edge")
    mnt = tmp_path / "mnt"
    tiers.mount(procs, key, edge, mnt)
    read_through_kill(procs, mnt / "data" / "scan.h5", 16 * MiB, "b", "upstream proxy b", digest)
    assert_failed_over(edge, key, down=b, up=c)
