"""Polar ROI: the pixels whose centres lie at distance minq <= q < maxq from (cenx, ceny) and at
angle phi in the sector from minphi to maxphi (degrees, counter-clockwise in x/y coordinates,
i.e. from +x towards +y; the sector may cross +-180 or 0: 170..-170 is 20 degrees wide).

phi = degrees(atan2(y - ceny, x - cenx)); a pixel is in the sector when
(phi - minphi) mod 360 < span, span = (maxphi - minphi) mod 360, or always if
|maxphi - minphi| >= 360. The region is precomputed as row segments, so a frame costs one
pass over just those pixels. Signals: Itot (sum), Imean (sum / valid pixels), comh, comv.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from workers import kernels
from workers.algorithms.base import Algorithm, com
from workers.preprocess import Bad, Geometry
from workers.request import Request


def polar_region(
    shape: tuple[int, int], params: tuple[float, float, float, float, float, float]
) -> np.ndarray:
    """Boolean mask of the polar ROI on a frame of ``shape`` (the definition above)."""
    cx, cy, q0, q1, p0, p1 = params
    y, x = np.indices(shape, dtype=np.float64)
    q = np.hypot(x - cx, y - cy)
    region = (q >= q0) & (q < q1)
    if abs(p1 - p0) < 360:
        phi = np.degrees(np.arctan2(y - cy, x - cx))
        span = np.mod(p1 - p0, 360.0)
        region &= np.mod(phi - p0, 360.0) < span
    return np.asarray(region)


class PolarRoi(Algorithm):
    name: ClassVar[str] = "polarroi"

    def __init__(self, request: Request, geometry: Geometry) -> None:
        super().__init__(request, geometry)
        assert request.polarroi is not None
        region = polar_region(geometry.shape, request.polarroi)
        d = np.diff(np.pad(region.astype(np.int8), ((0, 0), (1, 1))), axis=1)
        r_on, c_on = np.nonzero(d == 1)
        r_off, c_off = np.nonzero(d == -1)
        self.rows = r_on.astype(np.int64)
        self.starts = c_on.astype(np.int64)
        self.stops = c_off.astype(np.int64)
        assert np.array_equal(r_on, r_off)

    def process(
        self,
        frame: np.ndarray,
        bad: Bad,
        out: dict[str, np.ndarray],
        at: tuple[int, int],
        scratch: dict[str, Any],
    ) -> None:
        if frame.dtype == np.uint32:
            s, n, sx, sy = kernels.segment_moments_u32(
                frame, self.rows, self.starts, self.stops, bad.u32, bad.f >= 0
            )
        else:
            s, n, sx, sy = kernels.segment_moments(
                frame, self.rows, self.starts, self.stops, np.nan
            )
        values = {
            "Itot": s,
            "Imean": s / n if n else np.nan,
            "comh": com(sx, s),
            "comv": com(sy, s),
        }
        for name in self.signals:
            out[name][at] = values[name]
