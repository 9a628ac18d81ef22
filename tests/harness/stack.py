"""Data sets and a running origin+proxy ``Stack`` for the client benchmarks.

Data are random (incompressible) bytes from a seeded generator, written with their xxh3-128 so
every read through a mount can be checked against the origin's bytes. Sizes scale with the
environment variable ``DADAFS_BENCH_SCALE`` (default 1) so a quick run can use less disk and time.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xxhash

from tests.harness import tiers
from tests.harness.procs import Proc, Procs

SCALE = float(os.environ.get("DADAFS_BENCH_SCALE", "1"))
REPEATS = int(os.environ.get("DADAFS_BENCH_REPEATS", "3"))
PIECE = 16 << 20


def scaled(nbytes: int) -> int:
    """``nbytes`` times the benchmark scale, at least 1 MiB."""
    return max(1 << 20, int(nbytes * SCALE))


def make_file(path: Path, size: int, seed: int) -> str:
    """Write ``size`` seeded random bytes to ``path``; return their xxh3-128."""
    rng = np.random.default_rng(seed)
    h = xxhash.xxh3_128()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            b = rng.bytes(min(PIECE, left))
            f.write(b)
            h.update(b)
            left -= len(b)
    return h.hexdigest()


def gbps(nbytes: int, seconds: float) -> float:
    """Decimal GB/s."""
    return nbytes / seconds / 1e9


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def fmt_runs(xs: list[float], digits: int = 2) -> str:
    return ", ".join(f"{x:.{digits}f}" for x in xs)


@dataclass
class Stack:
    """An origin exporting ``data`` as ``data`` and a proxy in front of it, on one host or in one
    namespace; ``mount`` adds clients (their files appear under ``<mountpoint>/data``)."""

    root: Path
    key: Path
    procs: Procs
    data: Path
    origin: str
    proxy: str
    netns: str | None = None

    @classmethod
    def start(
        cls,
        root: Path,
        procs: Procs,
        *,
        netns: str | None = None,
        proxy_host: str = "127.0.0.1",
        cache_size: str = "16G",
    ) -> Stack:
        data = root / "export"
        data.mkdir(parents=True, exist_ok=True)
        key = tiers.make_key(root / "key")
        origin = tiers.start_origin(procs, key, {"data": data}, netns=netns)
        proxy = tiers.start_proxy(
            procs, key, origin, root / "cache", cache_size, host=proxy_host, netns=netns
        )
        return cls(root, key, procs, data, origin, proxy, netns)

    def mount(
        self,
        name: str,
        *,
        upstream: str | None = None,
        netns: str | None = None,
        ram_cache: str | None = None,
        extra: tuple[str, ...] = (),
    ) -> tuple[Path, Proc]:
        mp = self.root / "mnt" / name
        proc = tiers.mount(
            self.procs,
            self.key,
            upstream or self.proxy,
            mp,
            ram_cache=ram_cache,
            netns=netns,
            name=f"mount-{name}",
            extra=extra,
        )
        return mp / "data", proc

    def unmount(self, proc: Proc) -> None:
        self.procs.stop(proc, timeout=10)


def machine_note() -> str:
    """One line on the machine's state, since other work shares its cores during a run."""
    load = os.getloadavg()[0]
    return f"{os.cpu_count()} CPU cores, load average {load:.1f} when the measurement began."
