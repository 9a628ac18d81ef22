"""Dectris EigerX HDF5: a master file whose ``entry/data/data_NNNNNN`` are external links to data
files (or a single file with ``entry/data/data``), frames chunked one per chunk.

Fast path: for bitshuffle-LZ4 (filter 32008) chunks of one frame, ``read_direct_chunk`` into a
reused byte buffer and decompress with :mod:`workers.formats.bslz4`, bypassing the HDF5 filter
pipeline. Anything else reads through h5py with the hdf5plugin filters.
Bad pixels: ``entry/instrument/detector/detectorSpecific/pixel_mask`` (non-zero) and the value
2^n-1 of an n-bit image.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import ClassVar

import h5py
import hdf5plugin  # noqa: F401 - registers filter 32008 and friends for the fallback path
import numpy as np

from workers.formats import bslz4
from workers.formats.base import FormatError, FrameSource, to_canonical

BSLZ4 = 32008
MASK_PATH = "entry/instrument/detector/detectorSpecific/pixel_mask"
_DATA_RE = re.compile(r"^data_\d{6}$")


class EigerSource(FrameSource):
    extensions: ClassVar[tuple[str, ...]] = (".h5", ".hdf5", ".nxs")

    @classmethod
    def sniff(cls, head: bytes) -> bool:
        return head[:8] == b"\x89HDF\r\n\x1a\n"

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._file = h5py.File(path, "r")
        except OSError as e:
            raise FormatError(f"cannot open {path} as HDF5: {e}") from None
        group = self._file.get("entry/data")
        if not isinstance(group, h5py.Group):
            raise FormatError(f"{path}: no entry/data group (not an Eiger master or data file)")
        names = ["data"] if "data" in group else sorted(n for n in group if _DATA_RE.match(n))
        self._datasets: list[h5py.Dataset] = []
        for name in names:
            try:
                ds = group[name]
            except KeyError:  # an external link whose data file is not written (yet)
                break
            if not isinstance(ds, h5py.Dataset) or ds.ndim != 3:
                raise FormatError(f"{path}: entry/data/{name} is not a 3-D frame stack")
            self._datasets.append(ds)
        if not self._datasets:
            raise FormatError(f"{path}: no frames in entry/data")
        first = self._datasets[0]
        self.shape = (int(first.shape[1]), int(first.shape[2]))
        self.raw_dtype = first.dtype
        if first.dtype.kind not in "uif":
            raise FormatError(f"{path}: unsupported pixel type {first.dtype}")
        self.dtype = np.dtype(np.float32 if first.dtype.kind == "f" else np.uint32)
        self._files = [path] + sorted(
            {Path(d.file.filename) for d in self._datasets} - {Path(self._file.filename)}
        )
        self._starts = np.cumsum([0] + [int(d.shape[0]) for d in self._datasets])
        self._fast = [self._is_fast(d) for d in self._datasets]
        self._local = threading.local()

    def _is_fast(self, ds: h5py.Dataset) -> bool:
        if ds.chunks != (1, *self.shape) or ds.dtype != self.raw_dtype:
            return False
        plist = ds.id.get_create_plist()
        filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
        return filters == [BSLZ4] and ds.dtype.kind in "ui"

    def files(self) -> list[Path]:
        return list(self._files)

    @property
    def nframes(self) -> int:
        return int(self._starts[-1])

    def static_mask(self) -> np.ndarray | None:
        m = self._file.get(MASK_PATH)
        if not isinstance(m, h5py.Dataset):
            return None
        mask = np.asarray(m[()]) != 0
        if mask.shape != self.shape:
            raise FormatError(f"{self.path}: pixel_mask {mask.shape} does not match {self.shape}")
        return mask

    def locate(self, index: int) -> tuple[h5py.Dataset, int, bool]:
        self.check_index(index)
        k = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self._datasets[k], index - int(self._starts[k]), self._fast[k]

    def read_into(self, index: int, out: np.ndarray) -> np.ndarray:
        ds, local, fast = self.locate(index)
        if fast and self.raw_dtype == np.uint32 and out.dtype == np.uint32:
            chunk = self._chunk_buffer(ds)
            mask, view = ds.id.read_direct_chunk((local, 0, 0), out=chunk)
            if mask & 1:  # filter skipped for this chunk: stored raw
                np.copyto(out, np.frombuffer(view, dtype=self.raw_dtype).reshape(self.shape))
            else:
                bslz4.decompress_into(view, out)
            return out
        if fast:
            raw = np.empty(self.shape, self.raw_dtype)
            bslz4.decompress_into(ds.id.read_direct_chunk((local, 0, 0))[1], raw)
        else:
            raw = np.asarray(ds[local])
        return to_canonical(raw, out)

    def _chunk_buffer(self, ds: h5py.Dataset) -> np.ndarray:
        """A per-thread byte buffer large enough for any chunk of this dataset."""
        need = self.shape[0] * self.shape[1] * ds.dtype.itemsize + 4096
        buf: np.ndarray | None = getattr(self._local, "chunk", None)
        if buf is None or buf.size < need:
            # LZ4 worst case: slightly larger than the raw frame, plus block headers
            buf = np.empty(need + need // 64 + 65536, np.uint8)
            self._local.chunk = buf
        return buf

    def close(self) -> None:
        self._file.close()
