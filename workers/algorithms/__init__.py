"""STXM algorithms, registered by name."""

from __future__ import annotations

from workers.algorithms.base import Algorithm
from workers.algorithms.brightfield import Brightfield
from workers.algorithms.gridroi import GridRoi
from workers.algorithms.polarroi import PolarRoi
from workers.algorithms.radial import Radial

ALGORITHMS: dict[str, type[Algorithm]] = {
    a.name: a for a in (Brightfield, PolarRoi, Radial, GridRoi)
}

__all__ = ["ALGORITHMS", "Algorithm"]
