"""The algorithm interface (LiberTEM style): an algorithm declares its result buffers, says how
to process one pre-processed frame into them, and how partial results merge. The executor
(:mod:`workers.engine`) is separate and knows nothing about particular algorithms."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from workers.preprocess import Bad, Geometry
from workers.request import ALGO_SIGNALS, Request


class Algorithm(ABC):
    name: ClassVar[str]

    def __init__(self, request: Request, geometry: Geometry) -> None:
        self.request = request
        self.geometry = geometry
        self.signals = request.signals

    @classmethod
    def all_signals(cls) -> tuple[str, ...]:
        return ALGO_SIGNALS[cls.name]

    def extra_shape(self) -> tuple[int, ...]:
        """Per-scan-point shape of every signal (``()`` for a scalar per point)."""
        return ()

    def new_buffers(self, lines: int, points: int) -> dict[str, np.ndarray]:
        """Result buffers for ``lines`` x ``points`` scan points, NaN until written."""
        shape = (lines, points, *self.extra_shape())
        return {s: np.full(shape, np.nan, np.float64) for s in self.signals}

    @abstractmethod
    def process(
        self,
        frame: np.ndarray,
        bad: Bad,
        out: dict[str, np.ndarray],
        at: tuple[int, int],
        scratch: dict[str, Any],
    ) -> None:
        """Compute every requested signal of one frame in one pass and write them to
        ``out[signal][at]``. ``scratch`` is a per-thread dict for reusable work arrays."""

    def axes(self) -> dict[str, np.ndarray]:
        """Coordinates of the extra axes (e.g. ``q`` bin centres)."""
        return {}

    @staticmethod
    def merge(dest: dict[str, np.ndarray], src: dict[str, np.ndarray], start: int) -> None:
        """Merge a partial result covering lines ``start..`` into ``dest``: per-point maps of
        disjoint lines, so merging is placement."""
        for name, arr in src.items():
            dest[name][start : start + arr.shape[0]] = arr


def com(s: float, itot: float) -> float:
    return s / itot if itot != 0 else np.nan
