"""Grid ROI: Itot, comh, comv for each rectangle of a grid.

``gridroi=x,y,w,h;nx,ny[;px,py]``: nx x ny cells of w x h pixels, cell (i, j) with its top-left
pixel at (x + i*px, y + j*py); the pitch (px, py) defaults to (w, h), so the cells tile a
rectangle. Coordinates are those of the processed frame; centres of mass are in frame
coordinates (not relative to the cell). Maps have shape (vert, horz, ny, nx).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from workers import kernels
from workers.algorithms.base import Algorithm
from workers.preprocess import Bad, Geometry
from workers.request import BadParameter, Request


class GridRoi(Algorithm):
    name: ClassVar[str] = "gridroi"

    def __init__(self, request: Request, geometry: Geometry) -> None:
        super().__init__(request, geometry)
        assert request.gridroi is not None
        x, y, w, h, nx, ny, px, py = request.gridroi
        fh, fw = geometry.shape
        right, bottom = x + (nx - 1) * px + w, y + (ny - 1) * py + h
        if right > fw or bottom > fh:
            raise BadParameter(
                f"gridroi={x},{y},{w},{h};{nx},{ny};{px},{py} reaches column {right} and row "
                f"{bottom}, outside the {fw}x{fh} frame (width x height)"
            )
        self.nx, self.ny = nx, ny
        self.rects = np.array(
            [[x + i * px, y + j * py, w, h] for j in range(ny) for i in range(nx)], np.int64
        )

    def extra_shape(self) -> tuple[int, ...]:
        return (self.ny, self.nx)

    def process(
        self,
        frame: np.ndarray,
        bad: Bad,
        out: dict[str, np.ndarray],
        at: tuple[int, int],
        scratch: dict[str, Any],
    ) -> None:
        if frame.dtype == np.uint32:
            m = kernels.rect_moments_u32(frame, self.rects, bad.u32)
        else:
            m = kernels.rect_moments(frame, self.rects, np.nan)
        m = m.reshape(self.ny, self.nx, 3)
        itot = m[..., 0]
        with np.errstate(invalid="ignore", divide="ignore"):
            values = {"Itot": itot, "comh": m[..., 1] / itot, "comv": m[..., 2] / itot}
        for s in self.signals:
            out[s][at] = np.where(itot != 0, values[s], np.nan) if s != "Itot" else itot

    def axes(self) -> dict[str, np.ndarray]:
        return {"cells": self.rects.reshape(self.ny, self.nx, 4)}
