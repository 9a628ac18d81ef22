"""Shared fixtures: a real origin tree, real daemons and a real FUSE mount, always cleaned up."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness.procs import Proc, Procs
from tests.harness.tiers import make_key, mount, start_origin, start_proxy

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MiB = 1 << 20


def pattern(size: int, seed: int) -> bytes:
    """Deterministic, incompressible-looking bytes (fast: numpy's generator)."""
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


ODD_NAMES = [
    b"with space",
    b"new\nline",
    b"latin1-\xe9t\xe9",  # not UTF-8
    b"\xff\xfe\xfd-raw-bytes",
    "unicode-Ωμέγα-🧪".encode(),
    b"-leading-dash",
    b"x" * 255,
]


def build_tree(root: Path, big: bool = True) -> None:
    """An export: large files (sizes not multiples of 1 MiB), 10 000 small files, nesting,
    symlinks (inside and pointing outside), odd names."""
    root.mkdir(parents=True, exist_ok=True)
    if big:
        for name, size, seed in [
            ("big1.bin", 600 * MiB + 7, 1),
            ("big2.bin", 300 * MiB + 12345, 2),
            ("big3.bin", 150 * MiB - 1, 3),
        ]:
            (root / name).write_bytes(pattern(size, seed))
    (root / "small.bin").write_bytes(pattern(3 * MiB + 5, 4))
    (root / "empty").write_bytes(b"")
    many = root / "many"
    many.mkdir()
    for i in range(10_000):
        (many / f"f{i:05d}.txt").write_bytes(b"file %d\n" % i * (i % 7 + 1))
    deep = root / "a" / "b" / "c" / "d"
    deep.mkdir(parents=True)
    (deep / "leaf.dat").write_bytes(pattern(MiB + 1, 5))
    os.chmod(deep / "leaf.dat", 0o640)
    os.symlink("../../../../small.bin", deep / "rel-link")
    os.symlink("/etc/passwd", root / "abs-link-outside")
    os.symlink("../../outside-secret", root / "rel-link-outside")
    os.symlink("loop", root / "loop")
    odd = root / "odd"
    odd.mkdir()
    for i, n in enumerate(ODD_NAMES):
        with open(os.path.join(os.fsencode(odd), n), "wb") as f:
            f.write(b"odd %d\n" % i)


@dataclass
class Stack:
    procs: Procs
    key: Path
    export: Path
    origin: str
    proxy: str
    mnt: Path
    mount_proc: Proc
    cache: Path

    @property
    def root(self) -> Path:
        return self.mnt / "data"


def start_stack(
    tmp: Path, export: Path, procs: Procs, *, client_extra: tuple[str, ...] = ()
) -> Stack:
    key = make_key(tmp / "secret.key")
    origin = start_origin(procs, key, {"data": export})
    cache = tmp / "cache"
    proxy = start_proxy(procs, key, origin, cache, "2G", extra=("--meta-ttl", "1"))
    mnt = tmp / "mnt"
    proc = mount(procs, key, proxy, mnt, ram_cache="256M", extra=("--meta-ttl", "1", *client_extra))
    return Stack(procs, key, export, origin, proxy, mnt, proc, cache)


@pytest.fixture(scope="session")
def big_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("origin")
    (base / "outside-secret").write_bytes(b"SECRET outside the export\n")
    build_tree(base / "export")
    return base / "export"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, big_tree: Path) -> Iterator[Stack]:
    """Origin + proxy (SSD cache) + mount over ``big_tree``, shared by read-only tests."""
    tmp = tmp_path_factory.mktemp("stack")
    with Procs(tmp / "logs") as procs:
        yield start_stack(tmp, big_tree, procs)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    with Procs(tmp_path / "logs") as p:
        yield p
