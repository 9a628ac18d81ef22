"""Frame readers, one module per file format, registered by extension and content (as fabio).

Every reader yields frames in one of two canonical kinds, so the kernels need no per-format code:

* ``uint32`` where the value ``BAD`` (2^32-1) marks a bad or gap pixel (Eiger of any bit depth,
  CBF's -1/-2, signed TIFF's negative values are mapped to it);
* ``float32``/``float64`` where NaN marks a bad pixel.

A scan is a list of frames: one Eiger master (or data) file, a multi-page TIFF, or a folder of
single-frame files taken in name order.
"""

from __future__ import annotations

from pathlib import Path

from workers.formats.base import BAD, FormatError, FrameSource
from workers.formats.cbf import CbfFolder
from workers.formats.eiger import EigerSource
from workers.formats.lz4raw import Lz4Folder
from workers.formats.tiff import TiffSource

#: Readers in the order they are tried.
READERS: tuple[type[FrameSource], ...] = (EigerSource, CbfFolder, TiffSource, Lz4Folder)

__all__ = ["BAD", "READERS", "FormatError", "FrameSource", "open_source"]


def open_source(path: str | Path) -> FrameSource:
    """Open a scan's frames: a file, or a folder of frame files in name order."""
    p = Path(path)
    if not p.exists():
        raise FormatError(f"no such file or folder: {p}")
    for reader in READERS:
        if reader.accepts(p):
            return reader(p)
    names = ", ".join(f"{r.__name__} ({' '.join(r.extensions)})" for r in READERS)
    raise FormatError(f"no reader for {p}; readers: {names}")
