"""The reader interface and helpers shared by the formats."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np

BAD = np.uint32(0xFFFFFFFF)  # the bad/gap pixel value of canonical uint32 frames


class FormatError(ValueError):
    """A file is missing, unreadable or not of the expected format (one-line message)."""


class FrameSource(ABC):
    """An ordered set of equally shaped frames."""

    extensions: ClassVar[tuple[str, ...]] = ()
    shape: tuple[int, int]
    dtype: np.dtype  # canonical kind: uint32 (BAD marks bad pixels) or float32/float64 (NaN)

    @classmethod
    def sniff(cls, head: bytes) -> bool:
        """Whether a file starting with ``head`` is in this format."""
        return True

    @classmethod
    def matches(cls, path: Path) -> bool:
        name = path.name.lower()
        if not any(name.endswith(ext) for ext in cls.extensions):
            return False
        with open(path, "rb") as f:
            return cls.sniff(f.read(512))

    @classmethod
    def accepts(cls, path: Path) -> bool:
        """Whether this reader opens ``path`` (a file, or a folder of frame files)."""
        if path.is_dir():
            files = frame_files(path, cls.extensions)
            return bool(files) and cls.matches(files[0])
        return cls.matches(path)

    @abstractmethod
    def __init__(self, path: Path) -> None: ...

    @property
    @abstractmethod
    def nframes(self) -> int: ...

    def files(self) -> list[Path]:
        """The files the frames come from (for version keys of result caches)."""
        return []

    def static_mask(self) -> np.ndarray | None:
        """Pixels that are bad in every frame (True = bad), or None."""
        return None

    @abstractmethod
    def read_into(self, index: int, out: np.ndarray) -> np.ndarray:
        """Frame ``index`` as a canonical-kind array, written into ``out`` where possible."""

    def read(self, index: int) -> np.ndarray:
        return self.read_into(index, np.empty(self.shape, self.dtype))

    def check_index(self, index: int) -> None:
        if not 0 <= index < self.nframes:
            raise FormatError(f"frame {index} not in this scan of {self.nframes} frames")

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def frame_files(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    """Files of a folder with one of the extensions, in name order."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and any(p.name.lower().endswith(e) for e in extensions)
    )


def to_canonical(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Map an integer or float frame to its canonical kind (see the package docstring)."""
    if a.dtype.kind == "f":
        return a
    if out is None or out.dtype != np.uint32 or out.shape != a.shape:
        out = np.empty(a.shape, np.uint32)
    if a.dtype.kind == "i":
        np.copyto(out, a, casting="unsafe")
        out[a < 0] = BAD
    elif a.dtype.kind == "u":
        np.copyto(out, a, casting="unsafe")
        if a.dtype.itemsize < 4:
            out[a == np.iinfo(a.dtype).max] = BAD
    else:
        raise FormatError(f"unsupported pixel type {a.dtype}")
    return out


def canonical_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(dtype) if np.dtype(dtype).kind == "f" else np.dtype(np.uint32)
