"""Frame readers against reference reads (h5py with the HDF5 filter, fabio, tifffile), on the
real detector files in ../shared/data and on files written here in each format."""

from __future__ import annotations

from pathlib import Path

import fabio
import h5py
import hdf5plugin
import numpy as np
import pytest
import tifffile
from fabio.cbfimage import CbfImage

from workers.formats import BAD, FormatError, bslz4, open_source
from workers.formats.cbf import CbfFolder
from workers.formats.eiger import EigerSource
from workers.formats.lz4raw import Lz4Folder, write_frame
from workers.formats.tiff import TiffSource
from workers.synth import write_eiger_scan

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
EIGER = DATA / "eiger4m_bitshuffle.h5"
CBF = DATA / "DLS_I03_smargon_0001.cbf.gz"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real detector file {path} absent (shared data not checked out)")
    return path


def test_real_eiger_frame_equals_h5py_read() -> None:
    with h5py.File(need(EIGER), "r") as f:
        ref = f["entry/data/data"][0]
        _, chunk = f["entry/data/data"].id.read_direct_chunk((0, 0, 0))
    with open_source(EIGER) as src:
        assert isinstance(src, EigerSource)
        assert src.shape == (2167, 2070) and src.nframes == 1 and src.dtype == np.uint32
        assert src._fast == [True]  # the read_direct_chunk + bitshuffle path
        frame = src.read(0)
    np.testing.assert_array_equal(frame, ref)
    assert int((frame == BAD).sum()) == 251302
    np.testing.assert_array_equal(bslz4.decompress_reference(chunk, ref.shape, ref.dtype), ref)


def test_real_cbf_frame_equals_fabio_read() -> None:
    ref = fabio.open(str(need(CBF))).data
    with open_source(CBF) as src:
        assert isinstance(src, CbfFolder)
        frame = src.read(0)
    assert frame.shape == ref.shape == (2527, 2463)
    good = ref >= 0
    np.testing.assert_array_equal(frame[good], ref[good])
    assert np.all(frame[~good] == BAD)
    assert int((ref == -1).sum()) + int((ref == -2).sum()) == int((frame == BAD).sum())


def test_bslz4_rejects_a_wrong_buffer() -> None:
    with h5py.File(need(EIGER), "r") as f:
        _, chunk = f["entry/data/data"].id.read_direct_chunk((0, 0, 0))
    with pytest.raises(ValueError, match="output buffer"):
        bslz4.decompress_into(chunk, np.empty((10, 10), np.uint32))


def test_synthetic_master_reads_like_h5py_across_data_files(tmp_path: Path) -> None:
    master = write_eiger_scan(tmp_path, "s", 7, 3, shape=(40, 48), frames_per_file=5)
    with h5py.File(master, "r") as m:
        names = sorted(m["entry/data"])
        assert names == ["data_000001", "data_000002", "data_000003", "data_000004", "data_000005"]
        link = m["entry/data"].get("data_000002", getlink=True)
        assert isinstance(link, h5py.ExternalLink) and link.filename == "s_data_000002.h5"
        ds = m["entry/data/data_000001"]
        assert ds.chunks == (1, 40, 48)
        assert ds.id.get_create_plist().get_filter(0)[0] == 32008
        ref = np.concatenate([m[f"entry/data/{n}"][()] for n in names])
        pixel_mask = m["entry/instrument/detector/detectorSpecific/pixel_mask"][()]
    with open_source(master) as src:
        assert src.nframes == 21 and src.shape == (40, 48)
        out = np.empty(src.shape, np.uint32)
        for i in range(src.nframes):
            np.testing.assert_array_equal(src.read_into(i, out), ref[i])
        np.testing.assert_array_equal(src.static_mask(), pixel_mask != 0)
        assert np.all(ref[:, (pixel_mask & 1) != 0] == BAD)  # gaps hold 2^32-1
        with pytest.raises(FormatError, match="frame 21 not in this scan of 21"):
            src.read(21)


def test_growing_scan_counts_only_written_data_files(tmp_path: Path) -> None:
    master = write_eiger_scan(tmp_path, "g", 4, 2, shape=(16, 16), frames_per_file=3)
    (tmp_path / "g_data_000003.h5").unlink()  # the detector has not written it yet
    with open_source(master) as src:
        assert src.nframes == 6


@pytest.mark.parametrize("dtype", [np.uint16, np.uint8])
def test_eiger_narrow_pixels_map_their_max_to_bad(tmp_path: Path, dtype: type) -> None:
    frames: np.ndarray = np.random.default_rng(3).integers(0, 50, (2, 9, 11)).astype(dtype)
    frames[0, 2, 3] = np.iinfo(dtype).max
    with h5py.File(tmp_path / "n.h5", "w") as f:
        f.create_dataset(
            "entry/data/data", data=frames, chunks=(1, 9, 11), **hdf5plugin.Bitshuffle(cname="lz4")
        )
    with open_source(tmp_path / "n.h5") as src:
        got = src.read(0)
    assert got.dtype == np.uint32 and got[2, 3] == BAD
    expect = frames[0].astype(np.uint32)
    expect[2, 3] = BAD
    np.testing.assert_array_equal(got, expect)


def test_eiger_fallback_path_for_other_compression(tmp_path: Path) -> None:
    frames = np.random.default_rng(4).integers(0, 1000, (3, 20, 30)).astype(np.uint32)
    with h5py.File(tmp_path / "z.h5", "w") as f:
        f.create_dataset("entry/data/data", data=frames, chunks=(1, 10, 30), compression="gzip")
    with open_source(tmp_path / "z.h5") as src:
        assert isinstance(src, EigerSource) and src._fast == [False]
        for i in range(3):
            np.testing.assert_array_equal(src.read(i), frames[i])


def test_cbf_folder_in_name_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    frames = rng.integers(-2, 500, (3, 12, 10)).astype(np.int32)
    for i, f in enumerate(frames):
        CbfImage(data=f).write(str(tmp_path / f"img_{i + 1:05d}.cbf"))
    with open_source(tmp_path) as src:
        assert isinstance(src, CbfFolder) and src.nframes == 3
        for i in range(3):
            ref = fabio.open(str(tmp_path / f"img_{i + 1:05d}.cbf")).data
            expect = np.where(ref < 0, BAD, ref).astype(np.uint32)
            np.testing.assert_array_equal(src.read(i), expect)


def test_tiff_folder_and_multipage(tmp_path: Path) -> None:
    frames = np.random.default_rng(6).integers(0, 2**20, (4, 7, 9)).astype(np.int32)
    frames[1, 0, 0] = -1
    (tmp_path / "dir").mkdir()
    for i, f in enumerate(frames):
        tifffile.imwrite(tmp_path / "dir" / f"f{i:03d}.tif", f)
    tifffile.imwrite(tmp_path / "stack.tiff", frames, photometric="minisblack")
    for path in (tmp_path / "dir", tmp_path / "stack.tiff"):
        with open_source(path) as src:
            assert isinstance(src, TiffSource) and src.nframes == 4
            for i in range(4):
                expect = np.where(frames[i] < 0, BAD, frames[i]).astype(np.uint32)
                np.testing.assert_array_equal(src.read(i), expect)


def test_float_tiff_keeps_nan(tmp_path: Path) -> None:
    f = np.arange(20, dtype=np.float32).reshape(4, 5)
    f[1, 1] = np.nan
    tifffile.imwrite(tmp_path / "f.tif", f)
    with open_source(tmp_path / "f.tif") as src:
        got = src.read(0)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, f)


def test_lz4_folder(tmp_path: Path) -> None:
    frames = np.random.default_rng(7).integers(0, 2**31, (3, 8, 6)).astype(np.uint32)
    for i, f in enumerate(frames):
        write_frame(tmp_path / f"frame_{i:04d}.lz4", f)
    with open_source(tmp_path) as src:
        assert isinstance(src, Lz4Folder) and src.nframes == 3
        for i in range(3):
            np.testing.assert_array_equal(src.read(i), frames[i])


def test_unknown_and_disguised_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "x.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(FormatError, match="no reader for .*x.h5; readers: EigerSource"):
        open_source(tmp_path / "x.h5")
    with pytest.raises(FormatError, match="no such file"):
        open_source(tmp_path / "missing.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["something"] = 1
    with pytest.raises(FormatError, match="no entry/data group"):
        open_source(tmp_path / "other.h5")
