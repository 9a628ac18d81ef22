"""Issue 2: three real daemons and a real FUSE mount over a real tree; the mount equals the origin."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
import xxhash

from tests.conftest import ODD_NAMES, Stack


def digest(path: bytes | Path) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def walk(root: Path) -> dict[bytes, os.stat_result]:
    out = {}
    for d, dirs, files in os.walk(os.fsencode(root)):
        for n in dirs + files:
            p = os.path.join(d, n)
            out[os.path.relpath(p, os.fsencode(root))] = os.lstat(p)
    return out


def test_every_entry_and_byte_agrees(stack: Stack) -> None:
    """Names, sizes, modes, mtimes of every entry, and every file's bytes, equal the origin's."""
    origin = walk(stack.export)
    mounted = walk(stack.root)
    assert set(mounted) == set(origin)
    assert len(origin) > 10_000
    for rel, st in origin.items():
        m = mounted[rel]
        assert (m.st_mode, m.st_size, m.st_mtime_ns) == (st.st_mode, st.st_size, st.st_mtime_ns), (
            rel
        )
        if stat.S_ISREG(st.st_mode):
            a = os.path.join(os.fsencode(stack.export), rel)
            b = os.path.join(os.fsencode(stack.root), rel)
            if st.st_size < (1 << 20):
                with open(a, "rb") as fa, open(b, "rb") as fb:
                    assert fa.read() == fb.read(), rel
            else:
                assert digest(a) == digest(b), rel


def test_large_files_total_over_1gib(stack: Stack) -> None:
    sizes = [p.stat().st_size for p in stack.root.glob("big*.bin")]
    assert sum(sizes) >= 1 << 30
    assert all(s % (1 << 20) for s in sizes)  # not multiples of the chunk size


def test_reads_at_odd_offsets_and_past_eof(stack: Stack) -> None:
    src = (stack.export / "big2.bin").read_bytes()
    with open(stack.root / "big2.bin", "rb") as f:
        for off, n in [
            (0, 1),
            ((1 << 20) - 3, 10),
            (5 * (1 << 20) + 17, 3 << 20),
            (len(src) - 5, 100),
        ]:
            f.seek(off)
            assert f.read(n) == src[off : off + n]
        f.seek(len(src) + 10)
        assert f.read(10) == b""


def test_directory_of_10000_entries(stack: Stack) -> None:
    names = sorted(os.listdir(stack.root / "many"))
    assert names == sorted(os.listdir(stack.export / "many"))
    assert len(names) == 10_000


def test_symlinks_are_shown_as_they_are(stack: Stack) -> None:
    for rel in ["a/b/c/d/rel-link", "abs-link-outside", "rel-link-outside", "loop"]:
        assert os.readlink(stack.root / rel) == os.readlink(stack.export / rel)
    # A link inside the export resolves (by the kernel, on the client) to the same file.
    assert (stack.root / "a/b/c/d/rel-link").read_bytes() == (
        stack.export / "small.bin"
    ).read_bytes()
    # A link climbing out of the export resolves inside the mount, where nothing is: the
    # origin's file outside the export root is never served.
    with pytest.raises(FileNotFoundError):
        (stack.root / "rel-link-outside").read_bytes()
    with pytest.raises(OSError) as e:
        (stack.root / "loop").read_bytes()
    assert e.value.errno == errno.ELOOP


def test_odd_names(stack: Stack) -> None:
    got = set(os.listdir(os.fsencode(stack.root / "odd")))
    assert got == set(ODD_NAMES)
    for i, n in enumerate(ODD_NAMES):
        with open(os.path.join(os.fsencode(stack.root / "odd"), n), "rb") as f:
            assert f.read() == b"odd %d\n" % i


@pytest.mark.parametrize(
    "action",
    [
        lambda r: os.open(r / "small.bin", os.O_RDWR),
        lambda r: os.open(r / "new-file", os.O_WRONLY | os.O_CREAT, 0o644),
        lambda r: os.unlink(r / "small.bin"),
        lambda r: os.rename(r / "small.bin", r / "moved"),
        lambda r: os.chmod(r / "small.bin", 0o777),
        lambda r: os.mkdir(r / "newdir"),
        lambda r: os.truncate(r / "small.bin", 0),
        lambda r: os.symlink("x", r / "newlink"),
        lambda r: os.utime(r / "small.bin", None),
    ],
    ids=["write", "create", "unlink", "rename", "chmod", "mkdir", "truncate", "symlink", "utime"],
)
def test_every_write_gets_erofs(stack: Stack, action: object) -> None:
    with pytest.raises(OSError) as e:
        action(stack.root)  # type: ignore[operator]
    assert e.value.errno == errno.EROFS
    assert (stack.export / "small.bin").stat().st_size == 3 * (1 << 20) + 5


def test_statfs(stack: Stack) -> None:
    s = os.statvfs(stack.mnt)
    assert s.f_blocks > 0 and s.f_namemax >= 255
    assert s.f_flag & os.ST_RDONLY


def test_proxy_stats_count_hits_and_misses(stack: Stack) -> None:
    from tests.harness.tiers import stats

    (stack.root / "a/b/c/d/leaf.dat").read_bytes()
    s = stats(stack.proxy, stack.key)
    src = s["source"]
    assert src["misses"] > 0 and src["bytes_served"] > 0
    assert src["store"]["entries"] > 0
    assert src["upstream"]["upstreams"][0]["state"] == "up"
    o = stats(stack.origin, stack.key)
    assert o["source"]["bytes_served"] > 0
