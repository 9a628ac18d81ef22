"""Partial results (a range of scan lines) and assembled results (the whole scan).

Both are plain data: numpy arrays by signal name plus the request's key, so they pickle
cheaply for Dask and can be merged in any order. Map axes are ``(line, point, *extra)``:
``extra`` is ``(numq,)`` for radial and ``(ny, nx)`` for gridroi, empty otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from workers.request import Request


@dataclass
class Partial:
    """Signals for scan lines ``lines.start .. lines.stop-1`` of one request."""

    key: str  # Request.key() of the request it answers
    lines: range
    maps: dict[str, np.ndarray]  # signal -> (len(lines), horz, *extra)
    axes: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. "q": bin centres


@dataclass
class Result:
    """Signals for the whole scan: ``maps[signal]`` has shape ``(vert, horz, *extra)``."""

    request: Request
    maps: dict[str, np.ndarray]
    axes: dict[str, np.ndarray] = field(default_factory=dict)

    def __getitem__(self, signal: str) -> np.ndarray:
        return self.maps[signal]


def assemble(request: Request, partials: Iterable[Partial]) -> Result:
    """Place partial results into full maps; every line must be covered exactly once."""
    key = request.key()
    covered = np.zeros(request.vert, dtype=np.int32)
    maps: dict[str, np.ndarray] = {}
    axes: dict[str, np.ndarray] = {}
    for part in partials:
        if part.key != key:
            raise ValueError(f"partial for request {part.key} does not belong to {key}")
        if part.lines.step != 1 or part.lines.start < 0 or part.lines.stop > request.vert:
            raise ValueError(f"partial lines {part.lines} outside 0..{request.vert}")
        covered[part.lines.start : part.lines.stop] += 1
        for name, arr in part.maps.items():
            if name not in maps:
                maps[name] = np.full((request.vert, *arr.shape[1:]), np.nan, dtype=arr.dtype)
            maps[name][part.lines.start : part.lines.stop] = arr
        axes.update(part.axes)
    missing = np.flatnonzero(covered == 0)
    twice = np.flatnonzero(covered > 1)
    if missing.size:
        raise ValueError(f"lines not computed: {missing.tolist()[:10]}")
    if twice.size:
        raise ValueError(f"lines computed more than once: {twice.tolist()[:10]}")
    return Result(request=request, maps=maps, axes=axes)
