"""Frames held in memory (a numpy stack): for notebooks, tests and frames that arrive by
other means than files. Not registered for paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from workers.formats.base import FrameSource, canonical_dtype, to_canonical


class ArraySource(FrameSource):
    def __init__(self, frames: np.ndarray | Path, mask: np.ndarray | None = None) -> None:
        stack = np.asarray(frames)
        if stack.ndim != 3:
            raise ValueError(f"frames must be a (n, H, W) stack, got shape {stack.shape}")
        self.frames = stack
        self.shape = (int(stack.shape[1]), int(stack.shape[2]))
        self.dtype = canonical_dtype(stack.dtype)
        self._mask = None if mask is None else np.asarray(mask, dtype=bool)

    @property
    def nframes(self) -> int:
        return int(self.frames.shape[0])

    def static_mask(self) -> np.ndarray | None:
        return self._mask

    def read_into(self, index: int, out: np.ndarray) -> np.ndarray:
        self.check_index(index)
        f = self.frames[index]
        if f.dtype == out.dtype:
            np.copyto(out, f)
            return out
        return to_canonical(f, out)
