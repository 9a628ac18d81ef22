"""Dectris Pilatus CBF (byte-offset) frames through fabio, one file per frame, optionally
gzip-wrapped (``.cbf.gz``). Gap pixels hold -1, bad pixels -2: both become ``BAD``."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import fabio
import numpy as np

from workers.formats.base import FormatError, FrameSource, frame_files, to_canonical


class CbfFolder(FrameSource):
    extensions: ClassVar[tuple[str, ...]] = (".cbf", ".cbf.gz", ".cbf.bz2")

    @classmethod
    def sniff(cls, head: bytes) -> bool:
        # plain CBF starts with "###CBF"; compressed files are checked by extension only
        return head.startswith(b"###CBF") or head[:2] in (b"\x1f\x8b", b"BZ")

    def __init__(self, path: Path) -> None:
        self.files_ = frame_files(path, self.extensions) if path.is_dir() else [path]
        first = self._load(0)
        if first.ndim != 2:
            raise FormatError(f"{self.files_[0]}: not a 2-D image")
        self.shape = (int(first.shape[0]), int(first.shape[1]))
        self.dtype = np.dtype(np.float32 if first.dtype.kind == "f" else np.uint32)

    def files(self) -> list[Path]:
        return list(self.files_)

    @property
    def nframes(self) -> int:
        return len(self.files_)

    def _load(self, index: int) -> np.ndarray:
        try:
            with fabio.open(str(self.files_[index])) as img:
                return np.asarray(img.data)
        except (OSError, ValueError) as e:
            raise FormatError(f"cannot read {self.files_[index]} as CBF: {e}") from None

    def read_into(self, index: int, out: np.ndarray) -> np.ndarray:
        self.check_index(index)
        data = self._load(index)
        if data.shape != self.shape:
            raise FormatError(f"{self.files_[index]}: shape {data.shape}, scan has {self.shape}")
        return to_canonical(data, out)
