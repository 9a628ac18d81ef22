"""Issue 2: h5py (with hdf5plugin) reads EigerX files through the mount exactly as locally."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (registers the bitshuffle filter)
import numpy as np
import pytest

from tests.conftest import SHARED_DATA, start_stack
from tests.harness.procs import Procs
from workers.synth import write_eiger_scan


def frames(master: Path) -> list[np.ndarray]:
    out = []
    with h5py.File(master, "r") as f:
        data = f["entry/data"]
        for name in sorted(data):
            ds = data[name]
            out += [ds[i] for i in range(ds.shape[0])]
    return out


def test_eiger_scan_and_real_frame_through_mount(tmp_path: Path, procs: Procs) -> None:
    export = tmp_path / "export"
    master = write_eiger_scan(export / "scan", "s1", 8, 5, (256, 192), frames_per_file=16)
    real = SHARED_DATA / "eiger4m_bitshuffle.h5"
    if real.exists():
        shutil.copy(real, export / real.name)
    s = start_stack(tmp_path, export, procs)

    via_mount = s.root / "scan" / master.name
    local, mounted = frames(master), frames(via_mount)
    assert len(local) == 40 and len(mounted) == 40
    for a, b in zip(local, mounted, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    with h5py.File(via_mount, "r") as f:
        mask = f["entry/instrument/detector/detectorSpecific/pixel_mask"][()]
        assert mask.any()
    if not real.exists():
        pytest.skip(f"real EigerX frame not found at {real}")
    with h5py.File(real, "r") as a, h5py.File(s.root / real.name, "r") as b:
        fa, fb = a["entry/data/data"][0], b["entry/data/data"][0]
        assert fa.shape == (2167, 2070) and np.array_equal(fa, fb)
        assert (fb == np.iinfo(np.uint32).max).sum() == 251_302
