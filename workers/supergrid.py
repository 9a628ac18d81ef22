"""Super-grids: many scans stitched into one map, as the original system's 19 x 19 grids.

A job names its scans with one or more specs; each is a plain path, a glob (``scans/*_master.h5``,
sorted by name), or a dada URL, and any spec may carry numeric ranges ``{A..B}`` (inclusive; a
zero-padded ``A`` pads the numbers alike: ``{007..009}``). With ``--grid COLSxROWS`` the scans
fill the grid row by row from the top left: scan ``k`` is tile ``(k // COLS, k % COLS)``; the
stitched map has ``ROWS * vert`` lines of ``COLS * horz`` points. Fewer scans than tiles leave
the last tiles NaN (a grid still being measured); more is an error. Every scan gets the same
flags; a spec's own ``?query`` may still set its own ``first`` (or any parameter), but all tiles
must agree on ``horz``, ``vert``, the algorithm, the signals and the shape of extra axes.

The grid's canonical text is ``grid=COLSxROWS`` and the tiles' canonical requests, joined by
`` | `` on one line (so the ``#`` header of ascii output stays one line): it is what output
files record as their request.
"""

from __future__ import annotations

import glob
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from workers.request import URL_PREFIX, BadParameter, Request, parse_request
from workers.result import Result

_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")


@dataclass(frozen=True)
class Grid:
    """Scans (tiles) laid out row by row on a ``cols x rows`` grid."""

    tiles: tuple[Request, ...]
    cols: int
    rows: int

    @property
    def horz(self) -> int:
        return self.cols * self.tiles[0].horz

    @property
    def vert(self) -> int:
        return self.rows * self.tiles[0].vert

    @property
    def signals(self) -> tuple[str, ...]:
        return self.tiles[0].signals

    def canonical(self) -> str:
        return " | ".join([f"grid={self.cols}x{self.rows}", *(t.canonical() for t in self.tiles)])

    def key(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()[:32]


def parse_grid(text: str) -> tuple[int, int]:
    """``COLSxROWS`` -> (cols, rows)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise BadParameter(f"bad grid={text!r}: COLSxROWS, integers >= 1 (e.g. 19x19)")
    return int(m.group(1)), int(m.group(2))


def expand_ranges(spec: str) -> list[str]:
    """``a{1..3}b`` -> ``a1b a2b a3b``; several ranges multiply out, the first varies slowest."""
    m = _RANGE.search(spec)
    if m is None:
        return [spec]
    a, b = m.group(1), m.group(2)
    lo, hi = int(a), int(b)
    if hi < lo:
        raise BadParameter(f"bad range {m.group(0)!r} in {spec!r}: {{A..B}} with A <= B")
    width = len(a) if a.startswith("0") and len(a) > 1 else 0
    out = []
    for n in range(lo, hi + 1):
        out += expand_ranges(spec[: m.start()] + f"{n:0{width}d}" + spec[m.end() :])
    return out


def expand_specs(specs: Sequence[str]) -> list[str]:
    """Scan specs with ranges and globs expanded (globs sorted by name; dada URLs not globbed)."""
    out: list[str] = []
    for spec in specs:
        for one in expand_ranges(spec):
            path, sep, query = one.partition("?")
            if path.startswith(URL_PREFIX) or not glob.has_magic(path):
                out.append(one)
                continue
            found = sorted(glob.glob(path))
            if not found:
                raise BadParameter(f"no scan matches {path!r}")
            out += [f"{p}{sep}{query}" for p in found]
    return out


def make_grid(specs: Sequence[str], params: Mapping[str, Any], grid: str | None) -> Grid:
    """The job of ``dada stxm SPEC... [--grid COLSxROWS]``: one scan is a 1x1 grid."""
    names = expand_specs(specs)
    if grid is None:
        if len(names) != 1:
            raise BadParameter(
                f"{len(names)} scans given: stitch them with --grid COLSxROWS, or give one"
            )
        cols, rows = 1, 1
    else:
        cols, rows = parse_grid(grid)
        if len(names) > cols * rows:
            raise BadParameter(f"{len(names)} scans do not fit a {cols}x{rows} grid")
    tiles = tuple(parse_request(n, params) for n in names)
    ref = tiles[0]
    for t in tiles[1:]:
        for what, a, b in [
            ("horz", t.horz, ref.horz),
            ("vert", t.vert, ref.vert),
            ("algo", t.algo, ref.algo),
            ("signal", t.signals, ref.signals),
            ("radial bins", _extra(t), _extra(ref)),
        ]:
            if a != b:
                raise BadParameter(
                    f"tiles of a grid must agree on {what}: {t.scan} has {a}, {ref.scan} has {b}"
                )
    return Grid(tiles=tiles, cols=cols, rows=rows)


def _extra(r: Request) -> tuple[int, ...]:
    if r.radial is not None:
        return (r.radial[4],)
    if r.gridroi is not None:
        return (r.gridroi[5], r.gridroi[4])
    return ()


def stitch(grid: Grid, results: Sequence[Result]) -> Result:
    """Place each tile's maps into one map; the result's ``request`` is the :class:`Grid`
    (it has ``canonical()``, all the writers use)."""
    if len(grid.tiles) == 1 and grid.cols == grid.rows == 1:
        return results[0]
    h, v = grid.tiles[0].horz, grid.tiles[0].vert
    maps: dict[str, np.ndarray] = {}
    axes = results[0].axes
    for k, res in enumerate(results):
        for name, arr in res.axes.items():
            if name not in axes or not np.array_equal(arr, axes[name], equal_nan=True):
                raise BadParameter(f"tile {grid.tiles[k].scan} has another {name} axis")
        row, col = divmod(k, grid.cols)
        for name, a in res.maps.items():
            if name not in maps:
                dtype = np.result_type(a.dtype, np.float64)
                maps[name] = np.full((grid.vert, grid.horz, *a.shape[2:]), np.nan, dtype=dtype)
            maps[name][row * v : (row + 1) * v, col * h : (col + 1) * h] = a
    return Result(request=cast(Request, grid), maps=maps, axes=dict(axes))
