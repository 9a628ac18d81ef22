"""Pre-processing, in dada's order: bad/gap pixels masked, ROI, binning, empty-beam division,
difference with a frame, stack operation over the frames of one scan point.

Two paths. Fast (no binning, empty, difference or stack): the frame stays the decompressed
uint32 buffer, the static mask is written into it as the bad value, the ROI is a view, and the
kernels skip bad pixels as they read. Otherwise each frame becomes a float64 array with NaN for
bad pixels (binning sums valid pixels of a block; a block with none is NaN; remainders dropped).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workers import kernels
from workers.formats import BAD, FrameSource
from workers.request import BadParameter, Request


@dataclass(frozen=True)
class Geometry:
    """The processed frame: its shape and how it maps to detector pixels."""

    shape: tuple[int, int]  # (rows, columns) after ROI and binning
    raw_shape: tuple[int, int]
    roi: tuple[int, int, int, int]  # x, y, w, h in detector pixels (the full frame if no ROI)
    binning: tuple[int, int]  # h, v

    def reduce(self, raw_map: np.ndarray) -> np.ndarray:
        """A per-detector-pixel map (e.g. q from a PONI file) taken to processed pixels: the ROI,
        then the mean over each binning block."""
        x, y, w, h = self.roi
        bh, bv = self.binning
        a = np.asarray(raw_map, dtype=np.float64)[y : y + h, x : x + w]
        oh, ow = self.shape
        a = a[: oh * bv, : ow * bh].reshape(oh, bv, ow, bh)
        return np.asarray(a.mean(axis=(1, 3)))


@dataclass(frozen=True)
class Bad:
    """The bad-pixel value given to kernels, per frame kind."""

    u32: np.uint32  # for uint32 kernels (0 disables: a 0 pixel adds nothing to sums)
    f: float  # for float kernels on uint32 frames (-1.0 disables); NaN is always bad


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous [start, stop) runs of True."""
    d = np.diff(np.concatenate(([0], flags.astype(np.int8), [0])))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist(), strict=True))


class Pipeline:
    """Pre-processing for one request on one source; shared read-only by the engine threads."""

    def __init__(self, request: Request, source: FrameSource) -> None:
        self.request = request
        self.source = source
        rh, rw = source.shape
        x, y, w, h = request.roi or (0, 0, rw, rh)
        if x + w > rw or y + h > rh:
            raise BadParameter(
                f"roi={x},{y},{w},{h} outside the {rw}x{rh} frame (width x height): "
                f"need x+w <= {rw} and y+h <= {rh}"
            )
        bh, bv = request.binning or (1, 1)
        if bh > w or bv > h:
            raise BadParameter(f"binning={bh},{bv} larger than the {w}x{h} image it bins")
        self.geometry = Geometry((h // bv, w // bh), (rh, rw), (x, y, w, h), (bh, bv))
        self.u32 = source.dtype == np.uint32
        self.bad = Bad(BAD if request.mask else np.uint32(0), float(BAD) if request.mask else -1.0)
        self._mask_rows: list[tuple[int, int]] = []
        self._mask_cols: list[tuple[int, int]] = []
        self._mask_rest = np.empty(0, np.intp)
        mask = source.static_mask() if request.mask else None
        if mask is not None and mask.any():
            rows, cols = np.asarray(mask.all(axis=1)), np.asarray(mask.all(axis=0))
            self._mask_rows, self._mask_cols = _runs(rows), _runs(cols)
            rest = mask & ~rows[:, None] & ~cols[None, :]
            self._mask_rest = np.flatnonzero(rest)
        self.fast = not (request.binning or request.empty is not None or request.diff is not None)
        self.fast = self.fast and request.frames_per_point == 1
        self._empty: np.ndarray | None = None
        self._diff: np.ndarray | None = None
        if request.empty is not None:
            e = self._to_float(self.load(request.empty, self.new_buffer()))
            self._empty = np.where(e > 0, e, np.nan)
        if request.diff is not None:
            self._diff = self._divide(self._to_float(self.load(request.diff, self.new_buffer())))

    # ---- per frame ------------------------------------------------------------------
    def new_buffer(self) -> np.ndarray:
        return np.empty(self.source.shape, self.source.dtype)

    def load(self, index: int, buf: np.ndarray) -> np.ndarray:
        """Frame ``index`` with the static mask applied, as a view of the ROI."""
        frame = self.source.read_into(index, buf)
        if self._mask_rows or self._mask_cols or self._mask_rest.size:
            value = BAD if frame.dtype == np.uint32 else np.nan
            for a, b in self._mask_rows:
                frame[a:b, :] = value
            for a, b in self._mask_cols:
                frame[:, a:b] = value
            frame.reshape(-1)[self._mask_rest] = value
        x, y, w, h = self.geometry.roi
        return frame[y : y + h, x : x + w]

    def _to_float(self, frame: np.ndarray) -> np.ndarray:
        bh, bv = self.geometry.binning
        bad = self.bad.f if frame.dtype == np.uint32 else np.nan
        if (bh, bv) != (1, 1):
            return kernels.bin_frame(frame, bh, bv, bad)
        if frame.dtype == np.uint32:
            return kernels.to_float(frame, bad)
        return frame.astype(np.float64)

    def _divide(self, f: np.ndarray) -> np.ndarray:
        if self._empty is None:
            return f
        return np.asarray(f / self._empty)

    def process(self, frames: list[np.ndarray]) -> np.ndarray:
        """The frames of one scan point (already loaded) to the algorithm's input frame."""
        if self.fast:
            return frames[0]
        fs = [self._divide(self._to_float(f)) for f in frames]
        if self._diff is not None:
            fs = [f - self._diff for f in fs]
        if len(fs) == 1:
            return fs[0]
        op = self.request.stack[1] if self.request.stack else "sum"
        stacked = np.stack(fs)
        if op == "sum":
            return np.asarray(stacked.sum(axis=0))
        if op == "avg":
            return np.asarray(stacked.mean(axis=0))
        if op == "min":
            return np.asarray(stacked.min(axis=0))
        return np.asarray(stacked.max(axis=0))
