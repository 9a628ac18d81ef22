"""The executor: compute a request's signals for a range of scan lines.

``compute(request, lines)`` returns a :class:`~workers.result.Partial`; ``assemble(request,
partials)`` places partials into a :class:`~workers.result.Result`. Distribution (Dask) calls
``compute`` per line range on many workers and ``assemble`` once.

Per scan point: each of its frames is read into a per-thread buffer (bitshuffle-LZ4 decompressed
straight into it), pre-processed, and handed to the algorithm, which computes every requested
signal in one pass while the frame is hot in cache. Scan points are spread over ``threads``
threads; decompression (ctypes) and the kernels (numba ``nogil``) release the GIL, so the threads
run in parallel. Plans (opened source, masks, index arrays) are cached per request.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.algorithms import ALGORITHMS, Algorithm
from workers.formats import FormatError, FrameSource, open_source
from workers.layout import resolve_url
from workers.preprocess import Pipeline
from workers.request import URL_PREFIX, Request
from workers.result import Partial, Result
from workers.result import assemble as assemble

__all__ = [
    "Plan",
    "assemble",
    "compute",
    "execute",
    "input_version",
    "make_plan",
    "plan",
    "run",
    "scan_path",
]


def scan_path(request: Request) -> Path:
    """The file or folder holding the request's frames."""
    if request.scan.startswith(URL_PREFIX):
        return resolve_url(request.scan, request.layout)
    return Path(request.scan)


@dataclass
class Plan:
    """Everything prepared once per request: the open source, pre-processing, algorithm."""

    request: Request
    source: FrameSource
    pipeline: Pipeline
    algorithm: Algorithm


_plans: OrderedDict[tuple[str, tuple[int, int, int]], Plan] = OrderedDict()
_plans_lock = threading.Lock()
_PLANS_KEPT = 4


def make_plan(request: Request, source: FrameSource) -> Plan:
    """A plan for frames from any source (also one held in memory)."""
    pipeline = Pipeline(request, source)
    return Plan(request, source, pipeline, ALGORITHMS[request.algo](request, pipeline.geometry))


def plan(request: Request) -> Plan:
    """The plan of a request, cached per request and version (inode, size, mtime) of its file
    or folder; reopened when the files no longer hold every frame of the scan (still growing)."""
    path = scan_path(request)
    try:
        st = path.stat()
    except OSError as e:
        raise FormatError(f"cannot open scan {path}: {e.strerror}") from None
    key = (request.key(), (st.st_ino, st.st_size, st.st_mtime_ns))
    with _plans_lock:
        p = _plans.get(key)
        if p is not None and p.source.nframes >= request.first + request.nframes:
            _plans.move_to_end(key)
            return p
    source = open_source(path)
    try:
        p = make_plan(request, source)
    except BaseException:
        source.close()
        raise
    with _plans_lock:
        old = _plans.pop(key, None)
        _plans[key] = p
        while len(_plans) > _PLANS_KEPT:
            _plans.popitem(last=False)[1].source.close()
    if old is not None:
        old.source.close()
    return p


def input_version(request: Request) -> str:
    """A digest of the (path, inode, size, mtime) of every file the request's frames come from:
    with :meth:`Request.key` it keys a result cache, and changes when any input file does."""
    h = hashlib.sha256()
    for f in plan(request).source.files():
        st = f.stat()
        h.update(f"{f}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def compute(
    request: Request,
    lines: range | None = None,
    *,
    threads: int = 1,
    progress: Callable[[int], None] | None = None,
) -> Partial:
    """Signals of scan lines ``lines`` (default all); ``progress(n)`` after each n points."""
    return execute(plan(request), lines, threads=threads, progress=progress)


def execute(
    p: Plan,
    lines: range | None = None,
    *,
    threads: int = 1,
    progress: Callable[[int], None] | None = None,
) -> Partial:
    """:func:`compute` on a prepared plan."""
    request = p.request
    lines = range(request.vert) if lines is None else lines
    if lines.step != 1 or lines.start < 0 or lines.stop > request.vert or not len(lines):
        raise ValueError(f"lines {lines} not a non-empty range within 0..{request.vert}")
    last = request.frame_index(lines.stop - 1, request.horz - 1, request.frames_per_point - 1)
    if last >= p.source.nframes:
        raise FormatError(
            f"scan {request.scan} needs frames up to {last} but holds {p.source.nframes}"
        )
    out = p.algorithm.new_buffers(len(lines), request.horz)
    points = [(j, i) for j in lines for i in range(request.horz)]
    nthreads = max(1, min(threads, len(points)))
    cursor = iter(range(len(points)))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        bufs = [p.pipeline.new_buffer() for _ in range(request.frames_per_point)]
        scratch: dict[str, Any] = {}
        while not errors:
            with lock:
                k = next(cursor, None)
            if k is None:
                return
            j, i = points[k]
            try:
                frames = [
                    p.pipeline.load(request.frame_index(j, i, s), bufs[s])
                    for s in range(request.frames_per_point)
                ]
                frame = p.pipeline.process(frames)
                p.algorithm.process(frame, p.pipeline.bad, out, (j - lines.start, i), scratch)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(e)
                return
            if progress is not None:
                progress(1)

    if nthreads == 1:
        work()
    else:
        pool = [threading.Thread(target=work, daemon=True) for _ in range(nthreads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    if errors:
        raise errors[0]
    return Partial(key=request.key(), lines=lines, maps=out, axes=p.algorithm.axes())


def run(
    request: Request, *, threads: int | None = None, progress: Callable[[int], None] | None = None
) -> Result:
    """The whole scan on this machine."""
    n = threads if threads is not None else (os.cpu_count() or 1)
    return assemble(request, [compute(request, threads=n, progress=progress)])
