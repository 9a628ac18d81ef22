"""Export confinement: whatever path a peer sends, nothing outside an export root is ever read.

Hypothesis builds paths from ``..``, ``.``, empty components (``//``), symlink chains, links to
absolute targets and to parents, NUL bytes, over-long names and random bytes, and sends each to the
origin's ``LocalSource`` (every operation: stat, list, readlink, read) and, for a sample, over the
wire through a real server. Every answer must describe an entry inside the export (its inode is
one of the export's) and every byte read must be a file of the export, never the secret beside it.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dadafs.local import LocalSource
from dadafs.remote import RemoteSource
from dadafs.server import Server
from dadafs.source import CHUNK_SIZE, Attr, FsError
from dadafs.spec import parse_spec

SECRET = b"TOP-SECRET-outside-the-export-0123456789"
KEY = b"c" * 32


def build(base: Path) -> Path:
    (base / "outside-secret").write_bytes(SECRET)
    (base / "outside-dir").mkdir()
    (base / "outside-dir" / "s").write_bytes(SECRET)
    exp = base / "export"
    (exp / "dir" / "sub").mkdir(parents=True)
    (exp / "file").write_bytes(b"inside file\n")
    (exp / "dir" / "sub" / "deep").write_bytes(b"deep inside\n" * 1000)
    os.symlink("/etc/passwd", exp / "abs")
    os.symlink(str(base / "outside-secret"), exp / "abs-secret")
    os.symlink("../outside-secret", exp / "rel-secret")
    os.symlink("..", exp / "up")
    os.symlink("/", exp / "slash")
    os.symlink(str(base / "outside-dir"), exp / "dir" / "outdir")
    os.symlink("c2", exp / "c1")  # a chain ending outside
    os.symlink("dir/c3", exp / "c2")
    os.symlink("../../outside-secret", exp / "dir" / "c3")
    os.symlink("loop", exp / "loop")
    os.symlink("sub/deep", exp / "dir" / "inlink")  # a link that stays inside
    os.mkfifo(exp / "fifo")  # opening it for reading must not block
    return exp


@pytest.fixture(scope="module")
def tree(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LocalSource, set[int], set[bytes]]]:
    exp = build(tmp_path_factory.mktemp("confine"))
    inodes = {os.lstat(exp).st_ino, 1}  # 1: the synthetic namespace root
    contents: set[bytes] = set()
    for root, dirs, files in os.walk(exp):
        for n in dirs + files:
            p = os.path.join(root, n)
            inodes.add(os.lstat(p).st_ino)
            if os.path.isfile(p) and not os.path.islink(p):
                contents.add(Path(p).read_bytes())
    src = LocalSource({b"data": exp, b"other": exp / "dir"})
    yield src, inodes, contents
    trio.run(src.aclose)


COMPONENTS = [b"..", b".", b"", b"data", b"other", b"dir", b"sub", b"deep", b"file", b"abs",
              b"abs-secret", b"rel-secret", b"up", b"slash", b"outdir", b"c1", b"c2", b"c3",
              b"loop", b"inlink", b"fifo", b"outside-secret", b"s", b"etc", b"passwd",
              b"x" * 256, b"a\0b", b"\0", b"%2e%2e", b".. ", b"\xff\xfe"]  # fmt: skip
component = st.one_of(st.sampled_from(COMPONENTS), st.binary(min_size=1, max_size=12))
paths = st.builds(
    lambda lead, parts, sep: lead + sep.join(parts),
    st.sampled_from([b"/", b"//", b"/data/", b"/other/", b"", b"data/", b"/data/../"]),
    st.lists(component, max_size=8),
    st.sampled_from([b"/", b"//", b"/./"]),
)


def check_attr(a: Attr, inodes: set[int]) -> None:
    assert a.ino in inodes, f"attributes of inode {a.ino}, not in the export"


def probe(src: LocalSource, path: bytes, inodes: set[int], contents: set[bytes]) -> None:
    version = (0, 0, 0)
    try:
        a = src._stat_sync(path)
        check_attr(a, inodes)
        version = a.version
    except FsError:
        pass
    try:
        for name, a in src._listdir_sync(path):
            check_attr(a, inodes)
            assert b"/" not in name
    except FsError:
        pass
    with contextlib.suppress(FsError):
        src._readlink_sync(path)  # a target is only text: nothing is followed
    for index in (0, 1):
        try:
            data = src._read_sync(path, version, index)
        except FsError:
            continue
        assert SECRET not in data
        assert any(data == c[index * CHUNK_SIZE : (index + 1) * CHUNK_SIZE] for c in contents)


@settings(
    max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(path=paths)
def test_no_path_leaves_the_export(
    tree: tuple[LocalSource, set[int], set[bytes]], path: bytes
) -> None:
    src, inodes, contents = tree
    probe(src, path, inodes, contents)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(path=st.binary(max_size=300))
def test_random_bytes_paths(tree: tuple[LocalSource, set[int], set[bytes]], path: bytes) -> None:
    src, inodes, contents = tree
    probe(src, b"/" + path, inodes, contents)


def test_known_escapes_are_refused(tree: tuple[LocalSource, set[int], set[bytes]]) -> None:
    src, _, _ = tree
    for path, want in [
        (b"/data/../outside-secret", errno.EACCES),
        (b"/data/rel-secret", errno.ENOENT),  # a link is shown, never followed, when read
        (b"/data/c1", errno.ENOENT),
        (b"/data/up/outside-secret", errno.ENOTDIR),
        (b"/data/slash/etc/passwd", errno.ENOTDIR),
        (b"/data/dir/outdir/s", errno.ENOTDIR),
        (b"/data/a\0b", errno.EINVAL),
        (b"/data/" + b"x" * 256, errno.ENAMETOOLONG),
        (b"/data/" + b"a/" * 3000, errno.EINVAL),
        (b"relative", errno.EINVAL),
    ]:
        with pytest.raises(FsError) as e:
            src._read_sync(path, (0, 0, 0), 0)
        assert e.value.errno == want, path
    assert src._readlink_sync(b"/data/abs-secret").endswith(b"outside-secret")
    with pytest.raises(FsError):  # a FIFO is refused at once instead of blocking a thread
        src._read_sync(b"/data/fifo", src._stat_sync(b"/data/fifo").version, 0)


def test_escapes_over_the_wire(tree: tuple[LocalSource, set[int], set[bytes]]) -> None:
    """The same through a real server and client: the server passes paths on untouched."""
    src, inodes, _ = tree

    async def main() -> None:
        async with trio.open_nursery() as n:
            server = Server(src, KEY)
            addrs = await n.start(server.listen, "127.0.0.1", 0)
            r = RemoteSource(parse_spec(f"127.0.0.1:{addrs[0][1]}"), KEY, n, timeout=2)
            for path in [b"/data/../outside-secret", b"/data/up/outside-secret", b"/data/c1",
                         b"/data//dir/./outdir/s", b"/data/slash/etc/passwd"]:  # fmt: skip
                with pytest.raises(FsError) as e:
                    await r.read_chunk(path, (0, 0, 0), 0)
                assert e.value.errno in (errno.EACCES, errno.ENOENT, errno.ENOTDIR, errno.ESTALE)
            check_attr(await r.stat(b"/data/dir/inlink"), inodes)
            assert server.counters["requests"] >= 6 and server.counters["protocol_errors"] == 0
            await r.aclose()
            n.cancel_scope.cancel()

    trio.run(main)
