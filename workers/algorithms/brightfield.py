"""Brightfield: total intensity, maximum and centre of mass of the (processed) frame.

Itot and both centres of mass follow from one pass: the row sums give the vertical moment, the
column sums (kept in a small per-thread array) the horizontal one.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from workers import kernels
from workers.algorithms.base import Algorithm, com
from workers.preprocess import Bad


class Brightfield(Algorithm):
    name: ClassVar[str] = "brightfield"

    def process(
        self,
        frame: np.ndarray,
        bad: Bad,
        out: dict[str, np.ndarray],
        at: tuple[int, int],
        scratch: dict[str, Any],
    ) -> None:
        if frame.dtype == np.uint32:
            colsum = scratch.get("colsum")
            if colsum is None or colsum.size != frame.shape[1]:
                colsum = scratch["colsum"] = np.zeros(frame.shape[1], np.uint64)
                scratch["x"] = np.arange(frame.shape[1], dtype=np.float64)
            itot_i, imax_i, sy_i = kernels.brightfield_u32(frame, bad.u32, colsum)
            itot, imax, sy = float(itot_i), float(imax_i), float(sy_i)
            sx = float(np.dot(colsum.astype(np.float64), scratch["x"]))
        else:
            itot, imax, sx, sy = kernels.brightfield_f(frame, np.nan)
            imax = imax if imax != -np.inf else np.nan
        values = {"Itot": itot, "Imax": imax, "comh": com(sx, itot), "comv": com(sy, itot)}
        for s in self.signals:
            out[s][at] = values[s]
