"""Simple Python entry points (used by ``make demo`` and notebooks)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from workers import engine
from workers.request import Request, parse_request
from workers.result import Result


def request(spec: str, **params: Any) -> Request:
    """A validated request: ``request("scan_master.h5", horz=20, vert=10, algo="radial", ...)``.
    Parameter values take dada's syntax as strings or as Python tuples/numbers."""
    return parse_request(spec, {k: _syntax(v) for k, v in params.items()})


def stxm(
    spec: str,
    *,
    threads: int | None = None,
    progress: Callable[[int], None] | None = None,
    **params: Any,
) -> Result:
    """Compute an STXM map on this machine; ``result.maps[signal]`` are numpy arrays."""
    return engine.run(request(spec, **params), threads=threads, progress=progress)


def _syntax(v: Any) -> Any:
    if isinstance(v, (list, tuple)) and v and all(isinstance(g, (list, tuple)) for g in v):
        return ";".join(",".join(str(x) for x in g) for g in v)
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    return v
