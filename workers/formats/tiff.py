"""TIFF frames through tifffile: a folder of single-image files in name order, or one
multi-page file (one frame per page). Signed integer images mark bad pixels with negative values
(as Pilatus TIFFs do); unsigned 8/16-bit images with their maximum value; floats with NaN."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import tifffile

from workers.formats.base import FormatError, FrameSource, frame_files, to_canonical


class TiffSource(FrameSource):
    extensions: ClassVar[tuple[str, ...]] = (".tif", ".tiff")

    @classmethod
    def sniff(cls, head: bytes) -> bool:
        return head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

    def __init__(self, path: Path) -> None:
        self._pages: list[tuple[Path, int]] = []
        files = frame_files(path, self.extensions) if path.is_dir() else [path]
        try:
            for f in files:
                with tifffile.TiffFile(f) as tf:
                    self._pages += [(f, i) for i in range(len(tf.pages))]
            first = self._load(0)
        except (OSError, ValueError, tifffile.TiffFileError) as e:
            raise FormatError(f"cannot read {path} as TIFF: {e}") from None
        if first.ndim != 2:
            raise FormatError(f"{path}: TIFF pages are not 2-D images")
        self.shape = (int(first.shape[0]), int(first.shape[1]))
        self.dtype = np.dtype(first.dtype if first.dtype.kind == "f" else np.uint32)

    def files(self) -> list[Path]:
        return sorted({f for f, _ in self._pages})

    @property
    def nframes(self) -> int:
        return len(self._pages)

    def _load(self, index: int) -> np.ndarray:
        f, page = self._pages[index]
        return np.asarray(tifffile.imread(f, key=page))

    def read_into(self, index: int, out: np.ndarray) -> np.ndarray:
        self.check_index(index)
        data = self._load(index)
        if data.shape != self.shape:
            raise FormatError(f"frame {index}: shape {data.shape}, scan has {self.shape}")
        return to_canonical(data, out)
