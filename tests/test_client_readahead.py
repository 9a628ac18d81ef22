"""Issue 4: every readahead path returns the origin's bytes; the client stays within its RAM bound."""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Stack, pattern, start_stack
from tests.harness.procs import Procs

MiB = 1 << 20
SIZE = 23 * MiB + 12345


@pytest.fixture(scope="module", params=["page-cache", "direct-io"])
def rstack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, bytes]]:
    tmp = tmp_path_factory.mktemp("ra")
    export = tmp / "export"
    export.mkdir()
    data = pattern(SIZE, 42)
    (export / "f.bin").write_bytes(data)
    extra = ("--direct-io",) if request.param == "direct-io" else ()
    with Procs(tmp / "logs") as procs:
        yield start_stack(tmp, export, procs, client_extra=extra), data


def _reads(path: Path, plan: list[tuple[int, int]]) -> list[bytes]:
    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        for off, n in plan:
            out.append(os.pread(fd, n, off))
    finally:
        os.close(fd)
    return out


def _check(stack: Stack, data: bytes, plan: list[tuple[int, int]]) -> None:
    for (off, n), got in zip(plan, _reads(stack.root / "f.bin", plan), strict=True):
        assert got == data[off : off + n], (off, n)


def test_sequential_in_many_block_sizes(rstack: tuple[Stack, bytes]) -> None:
    stack, data = rstack
    for bs in (4096, 65536, MiB, 3 * MiB + 1):
        _check(stack, data, [(o, bs) for o in range(0, SIZE, bs)])


def test_backwards(rstack: tuple[Stack, bytes]) -> None:
    stack, data = rstack
    _check(stack, data, [(o, 300_000) for o in range(SIZE - 300_000, -1, -300_000)])


def test_strided(rstack: tuple[Stack, bytes]) -> None:
    stack, data = rstack
    _check(stack, data, [(o, 70_000) for o in range(17, SIZE, 3 * MiB + 7)])


def test_random(rstack: tuple[Stack, bytes]) -> None:
    stack, data = rstack
    rng = random.Random(7)
    _check(
        stack,
        data,
        [(rng.randrange(SIZE), rng.choice([1, 4096, 200_000, 2 * MiB])) for _ in range(300)],
    )


def test_across_chunk_edges_and_past_eof(rstack: tuple[Stack, bytes]) -> None:
    stack, data = rstack
    plan = [(k * MiB - d, 2 * d) for k in range(1, 23) for d in (1, 4096, 700_000)]
    plan += [(SIZE - 10, 100), (SIZE, 10), (SIZE + MiB, 10), (0, SIZE + 5)]
    _check(stack, data, plan)


def test_concurrent_readers_of_one_file(rstack: tuple[Stack, bytes]) -> None:
    stack, data = rstack
    errors: list[str] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        plans = {
            0: [(o, MiB) for o in range(0, SIZE, MiB)],
            1: [(o, 123_457) for o in range(SIZE - 123_457, -1, -123_457)],
        }
        plan = plans.get(seed % 3) or [(rng.randrange(SIZE), 99_999) for _ in range(60)]
        for (off, n), got in zip(plan, _reads(stack.root / "f.bin", plan), strict=True):
            if got != data[off : off + n]:
                errors.append(f"reader {seed}: bytes differ at {off}+{n}")

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_client_rss_stays_under_its_ram_bound(tmp_path: Path, procs: Procs) -> None:
    """Reading 10x the RAM cache (several files, sequential and random) keeps RSS under
    the bound plus a fixed overhead."""
    export = tmp_path / "export"
    export.mkdir()
    for i in range(4):
        (export / f"f{i}.bin").write_bytes(pattern(20 * MiB + i, 100 + i))
    s = start_stack(tmp_path, export, procs, client_extra=("--ram-cache", "8M", "--direct-io"))
    base = _rss(s.mount_proc.pid)
    peak = base
    rng = random.Random(3)
    for _ in range(3):  # 3 x 80 MiB = 30x the cache
        for i in range(4):
            with open(s.root / f"f{i}.bin", "rb") as f:
                while f.read(MiB):
                    pass
                for _ in range(20):
                    f.seek(rng.randrange(20 * MiB))
                    f.read(300_000)
            peak = max(peak, _rss(s.mount_proc.pid))
    # 8 MiB of cache, up to 64 readahead chunks in flight (1 MiB each) and Python's own heap.
    assert peak - base < 8 * MiB + 64 * MiB + 32 * MiB, (base, peak)
