"""A scan read through a real dadafs mount (``dadafsd`` origin + ``dadafs mount`` FUSE client on
loopback) gives exactly the maps of the same scan read locally: Eiger master with external links
to data files, a folder of CBF frames, a dada URL whose layout points into the mount, and the
``dada`` command on the mounted path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fabio.cbfimage import CbfImage

from tests.harness.procs import Procs, free_port, wait_listening, wait_mount
from workers import api
from workers.synth import write_eiger_scan

BIN = Path(sys.executable).parent
H, V = 12, 5

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="FUSE mounts need root"),
    pytest.mark.skipif(not Path("/dev/fuse").exists(), reason="no /dev/fuse"),
    pytest.mark.skipif(shutil.which("fusermount3") is None, reason="fuse3 not installed"),
]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(local export dir, the same dir seen through the mount)."""
    export = tmp_path / "export"
    write_eiger_scan(export / "eiger", "s", H, V, shape=(48, 60), frames_per_file=20)
    frames = np.random.default_rng(9).integers(-2, 900, (H * V, 30, 26)).astype(np.int32)
    (export / "pilatus").mkdir()
    for i, f in enumerate(frames):
        CbfImage(data=f).write(str(export / "pilatus" / f"p_{i + 1:05d}.cbf"))
    key = tmp_path / "key"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(32))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with Procs(tmp_path / "logs") as procs:
        port = free_port()
        origin = procs.start(
            "dadafsd",
            [
                str(BIN / "dadafsd"),
                "--listen",
                f"127.0.0.1:{port}",
                "--export",
                f"beam={export}",
                "--secret-file",
                str(key),
            ],
        )
        wait_listening(origin, port)
        procs.add_mount(mnt)
        client = procs.start(
            "mount",
            [
                str(BIN / "dadafs"),
                "mount",
                "--upstream",
                f"127.0.0.1:{port}",
                "--secret-file",
                str(key),
                str(mnt),
            ],
        )
        wait_mount(mnt, proc=client)
        yield export, mnt / "beam"


def test_scan_through_dadafs_mount_equals_local(served: tuple[Path, Path], tmp_path: Path) -> None:
    local, mounted = served
    for sub, params in (
        ("eiger/s_master.h5", {"algo": "radial", "radial": "30,20;0,25;10", "threads": 2}),
        ("eiger/s_master.h5", {"binning": "2,2", "roi": "3,3,40,40"}),
        ("pilatus", {"algo": "gridroi", "gridroi": "0,0,13,15;2,2"}),
    ):
        a = api.stxm(str(mounted / sub), horz=H, vert=V, **params)
        b = api.stxm(str(local / sub), horz=H, vert=V, **params)
        assert a.maps.keys() == b.maps.keys()
        for s in a.maps:
            np.testing.assert_array_equal(a[s], b[s])
        assert np.isfinite(a[next(iter(a.maps))]).any()

    layout = tmp_path / "dada.toml"
    layout.write_text(
        f'root = "{mounted.parent}"\n[detector.eiger]\n'
        'paths = ["{root}/{instrument}/{detector}/{sample}_master.h5"]\n'
    )
    via_url = api.stxm(f"stxm/beam/run7/eiger/s/1/0?horz={H}&vert={V}", layout=str(layout))
    local_bf = api.stxm(str(local / "eiger/s_master.h5"), horz=H, vert=V)
    for s in local_bf.maps:
        np.testing.assert_array_equal(via_url[s], local_bf[s])

    out = tmp_path / "m.tif"
    r = subprocess.run([str(BIN / "dada"), "stxm", str(mounted / "eiger/s_master.h5"), "--horz",
                        str(H), "--vert", str(V), "--signal", "comh", "--format", "tiff_raw",
                        "-o", str(out)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    import tifffile

    np.testing.assert_array_equal(tifffile.imread(out), local_bf["comh"].astype(np.float32))
