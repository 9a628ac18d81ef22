"""Radial integration: I(q) in ``numq`` equal bins over minq <= q < maxq.

Without calibration q is the distance in pixels of a pixel's centre from (cenx, ceny); with a
pyFAI PONI file (``poni=``) pyFAI computes q (or 2theta, or r in mm, per ``unit=``) at every
detector pixel's centre, the map is taken through the same ROI and binning as the frames, and
our own engine does the integration. A pixel falls in bin k = floor((q - minq) / dq),
dq = (maxq - minq) / numq, as a whole (no pixel splitting). Signals: ``I`` the mean of the valid
pixels of a bin (NaN if none), ``Isum`` their sum. The bin index of every pixel is precomputed
(int16, -1 outside) over the bounding window of the annulus, so a frame costs one pass over it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from workers import kernels
from workers.algorithms.base import Algorithm
from workers.preprocess import Bad, Geometry
from workers.request import Request

_PYFAI_UNIT = {"q_nm^-1": "q_nm^-1", "q_A^-1": "q_A^-1", "2th_deg": "2th_deg", "r_mm": "r_mm"}


def q_map(request: Request, geometry: Geometry) -> np.ndarray:
    """q (in the request's unit) at every processed pixel's centre."""
    if request.poni is None:
        assert request.radial is not None
        cx, cy = request.radial[:2]
        y, x = np.indices(geometry.shape, dtype=np.float64)
        return np.asarray(np.hypot(x - cx, y - cy))
    import pyFAI

    ai = pyFAI.load(request.poni)
    raw = ai.array_from_unit(
        shape=geometry.raw_shape, typ="center", unit=_PYFAI_UNIT[request.unit], scale=True
    )
    return geometry.reduce(raw)


def bin_index(q: np.ndarray, q0: float, q1: float, numq: int) -> np.ndarray:
    """Bin of every pixel (int16 where it fits: less memory traffic), -1 outside [q0, q1)."""
    dq = (q1 - q0) / numq
    k = np.floor((q - q0) / dq)
    k[(q < q0) | (q >= q1) | ~np.isfinite(q)] = -1
    return np.minimum(k, numq - 1).astype(np.int16 if numq < 2**15 else np.int32)


class Radial(Algorithm):
    name: ClassVar[str] = "radial"

    def __init__(self, request: Request, geometry: Geometry) -> None:
        super().__init__(request, geometry)
        assert request.radial is not None
        _, _, q0, q1, numq = request.radial
        self.numq = numq
        self.q = q0 + (np.arange(numq) + 0.5) * (q1 - q0) / numq
        bins = bin_index(q_map(request, geometry), q0, q1, numq)
        rows = np.flatnonzero((bins >= 0).any(axis=1))
        cols = np.flatnonzero((bins >= 0).any(axis=0))
        if rows.size:
            self.y0, self.x0 = int(rows[0]), int(cols[0])
            self.bins = np.ascontiguousarray(bins[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])
        else:
            self.y0 = self.x0 = 0
            self.bins = np.full((0, 0), -1, np.int16)

    def extra_shape(self) -> tuple[int, ...]:
        return (self.numq,)

    def process(
        self,
        frame: np.ndarray,
        bad: Bad,
        out: dict[str, np.ndarray],
        at: tuple[int, int],
        scratch: dict[str, Any],
    ) -> None:
        if frame.dtype == np.uint32:
            sums, counts = kernels.bin_sums_u32(
                frame, self.bins, self.y0, self.x0, self.numq, bad.u32, bad.f >= 0
            )
        else:
            sums, counts = kernels.bin_sums(frame, self.bins, self.y0, self.x0, self.numq, np.nan)
        if "I" in out:
            with np.errstate(invalid="ignore", divide="ignore"):
                out["I"][at] = np.where(counts > 0, sums / counts, np.nan)
        if "Isum" in out:
            out["Isum"][at] = sums

    def axes(self) -> dict[str, np.ndarray]:
        return {"q": self.q}
