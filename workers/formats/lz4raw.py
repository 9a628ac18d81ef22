"""Raw LZ4 frame files: a folder of ``*.lz4`` files in name order, each one frame's pixels
(C order) compressed as one LZ4 frame (``lz4.frame``, the format of the ``lz4`` command line
tool). The folder's ``info.json`` gives ``{"shape": [H, W], "dtype": "<u4"}``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import lz4.frame
import numpy as np

from workers.formats.base import FormatError, FrameSource, frame_files, to_canonical

LZ4_MAGIC = b"\x04\x22\x4d\x18"


class Lz4Folder(FrameSource):
    extensions: ClassVar[tuple[str, ...]] = (".lz4",)

    @classmethod
    def sniff(cls, head: bytes) -> bool:
        return head[:4] == LZ4_MAGIC

    @classmethod
    def accepts(cls, path: Path) -> bool:
        folder = path if path.is_dir() else path.parent
        return (folder / "info.json").is_file() and super().accepts(path)

    def __init__(self, path: Path) -> None:
        folder = path if path.is_dir() else path.parent
        self.files_ = frame_files(folder, self.extensions) if path.is_dir() else [path]
        try:
            info = json.loads((folder / "info.json").read_text())
            self.shape = (int(info["shape"][0]), int(info["shape"][1]))
            self.raw_dtype = np.dtype(info["dtype"])
        except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
            raise FormatError(f"{folder}/info.json: needs shape [H, W] and dtype ({e})") from None
        self.dtype = np.dtype(self.raw_dtype if self.raw_dtype.kind == "f" else np.uint32)

    def files(self) -> list[Path]:
        return list(self.files_)

    @property
    def nframes(self) -> int:
        return len(self.files_)

    def read_into(self, index: int, out: np.ndarray) -> np.ndarray:
        self.check_index(index)
        try:
            raw = lz4.frame.decompress(self.files_[index].read_bytes())
        except (OSError, RuntimeError) as e:
            raise FormatError(f"cannot read {self.files_[index]} as LZ4: {e}") from None
        expect = self.shape[0] * self.shape[1] * self.raw_dtype.itemsize
        if len(raw) != expect:
            raise FormatError(f"{self.files_[index]}: {len(raw)} bytes, expected {expect}")
        data = np.frombuffer(raw, dtype=self.raw_dtype).reshape(self.shape)
        if data.dtype == out.dtype and data.dtype.kind == "u" and data.dtype.itemsize == 4:
            np.copyto(out, data)
            return out
        return to_canonical(data, out)


def write_frame(path: Path, frame: np.ndarray) -> None:
    """Write one frame file (and keep the folder's info.json in step)."""
    info = path.parent / "info.json"
    meta = {"shape": list(frame.shape), "dtype": frame.dtype.str}
    if not info.exists():
        info.write_text(json.dumps(meta))
    path.write_bytes(lz4.frame.compress(np.ascontiguousarray(frame).tobytes()))
