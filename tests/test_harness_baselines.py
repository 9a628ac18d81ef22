"""Fast tests of the baselines of the benchmarks: nfs-ganesha read with nfs-cat, sshfs to a
private sshd, the page cache: each delivers the file's exact bytes and is gone afterwards."""

from __future__ import annotations

import errno
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import baselines
from tests.harness.procs import Procs, is_mounted, listening_ports, wait_for

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="servers and FUSE mounts need root"),
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("ganesha.nfsd", "nfs-cat", "sshfs", "ssh-keygen")),
        reason="baseline tools missing: make setup installs them (tools/apt-packages.txt)",
    ),
]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "export"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "file.bin").write_bytes(os.urandom(3 << 20) + b"tail")
    return d


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    with Procs(tmp_path / "logs") as p:
        yield p


def test_ganesha_serves_exact_bytes_and_stops(tmp_path: Path, data: Path, procs: Procs) -> None:
    server = baselines.start_ganesha(procs, tmp_path / "nfs", data)
    digest, n = baselines.nfs_hash(server, "sub/file.bin")
    assert (digest, n) == (baselines.hash_file(data / "sub" / "file.bin"), (3 << 20) + 4)
    assert baselines.nfs_cat(server, "sub/file.bin") > 0
    (proc,) = procs.procs
    procs.close()
    assert not proc.alive() and server.port not in listening_ports(os.getpid())


def test_sshfs_mount_reads_exact_bytes_and_is_unmounted(
    tmp_path: Path, data: Path, procs: Procs
) -> None:
    server = baselines.start_sshd(procs, tmp_path / "ssh")
    mnt = tmp_path / "mnt"
    baselines.mount_sshfs(procs, server, data, mnt)
    path = mnt / "sub" / "file.bin"
    assert baselines.hash_file(path) == baselines.hash_file(data / "sub" / "file.bin")
    n, seconds = baselines.read_file(path)
    assert n == (3 << 20) + 4 and seconds > 0
    with pytest.raises(OSError):
        (mnt / "new").write_bytes(b"x")  # mounted read-only
    started = list(procs.procs)
    procs.close()
    assert not is_mounted(mnt)
    assert [p.name for p in started] == ["sshd", "sshfs"]
    assert not any(p.alive() for p in started)


def test_page_cache_read_counts_every_byte(data: Path) -> None:
    n, seconds = baselines.page_cache_read(data / "sub" / "file.bin")
    assert n == (3 << 20) + 4 and seconds > 0


def test_a_dead_fuse_mount_is_detached_at_clean_up(tmp_path: Path, data: Path) -> None:
    """A FUSE daemon killed with SIGKILL leaves 'Transport endpoint is not connected' behind."""
    mnt = tmp_path / "mnt"
    with Procs(tmp_path / "logs") as procs:
        server = baselines.start_sshd(procs, tmp_path / "ssh")
        baselines.mount_sshfs(procs, server, data, mnt)
        os.kill(procs.get("sshfs").pid, signal.SIGKILL)
        wait_for(lambda: not procs.get("sshfs").alive(), "sshfs to die")
        with pytest.raises(OSError) as e:
            os.listdir(mnt)
        assert e.value.errno == errno.ENOTCONN
        assert is_mounted(mnt)
    assert not is_mounted(mnt)
    assert os.listdir(mnt) == []
