"""Running a job (one scan or a super-grid) line-wise, on a Dask cluster or in this process.

A job is a :class:`~workers.supergrid.Grid` of scan requests. :func:`run_job` asks the result
cache for each scan's whole result, then for each missing scan for its per-line partials, and
turns the lines still missing into tasks of at most ``lines_per_task`` consecutive lines. A
backend runs the tasks (:class:`DaskBackend` on a ``distributed.Client``, :class:`LocalBackend`
on a thread pool); every finished task is stored in the cache line by line at once, so a job
stopped half-way (Ctrl-C, a crash) resumes where it was. When all lines of a scan are in, its
partials are assembled (in line order, whatever order they came in), the whole result is stored
and the per-line entries dropped. Finally the tiles are stitched.

Tasks carry only the request (scan path + parameters) and a line range: workers open the scan's
path themselves (``/mnt/dadafs/...``) and frames never pass through the scheduler or the client.
Input versions (size, mtime of every input file) are computed where the data are read: on a
worker for a cluster, in this process otherwise.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from workers import engine
from workers.request import Request
from workers.result import Partial, Result
from workers.resultcache import ResultCache
from workers.supergrid import Grid, stitch

# ---- what runs on a worker ---------------------------------------------------------------

_count_lock = threading.Lock()
TASKS_RUN = 0  # line tasks computed by this process (read from tests with Client.run)


def compute_lines(request: Request, start: int, stop: int) -> Partial:
    """One task: scan lines ``start .. stop-1`` of ``request`` (one engine thread: the Dask
    worker runs ``nthreads`` tasks at once)."""
    global TASKS_RUN
    part = engine.compute(request, range(start, stop))
    with _count_lock:
        TASKS_RUN += 1
    return part


def tasks_run() -> int:
    return TASKS_RUN


def input_versions(requests: Sequence[Request]) -> list[str]:
    """The input version of each request (one task for a batch of scans)."""
    return [engine.input_version(r) for r in requests]


# ---- backends ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    scan: int  # index into the job's distinct requests
    request: Request
    start: int
    stop: int

    @property
    def points(self) -> int:
        return (self.stop - self.start) * self.request.horz


class Backend(Protocol):
    where: str

    def versions(self, requests: Sequence[Request]) -> list[str]: ...

    def run(self, tasks: Sequence[Task], done: Callable[[Task, Partial], None]) -> None: ...


class LocalBackend:
    """Tasks on a pool of ``threads`` threads of this process (the engine releases the GIL)."""

    def __init__(self, threads: int) -> None:
        self.threads = max(1, threads)
        self.where = f"this process, {self.threads} threads"

    def versions(self, requests: Sequence[Request]) -> list[str]:
        return input_versions(requests)

    def run(self, tasks: Sequence[Task], done: Callable[[Task, Partial], None]) -> None:
        pool = cf.ThreadPoolExecutor(self.threads, thread_name_prefix="dada")
        try:
            futures = {pool.submit(compute_lines, t.request, t.start, t.stop): t for t in tasks}
            for f in cf.as_completed(futures):
                done(futures[f], f.result())
        finally:  # also on Ctrl-C or a failed task: queued tasks are dropped
            pool.shutdown(wait=True, cancel_futures=True)


class DaskBackend:
    """Tasks on a Dask cluster through ``client``; Ctrl-C or a failure cancels the job's tasks."""

    def __init__(self, client: Any, batch: int = 64, workers: list[str] | None = None) -> None:
        self.client = client
        self.batch = batch
        self.workers = workers  # restrict the line tasks to these worker addresses (or names)
        self.where = f"the cluster at {client.scheduler.address}"

    def versions(self, requests: Sequence[Request]) -> list[str]:
        batches = [requests[i : i + self.batch] for i in range(0, len(requests), self.batch)]
        futures = self.client.map(
            input_versions, batches, pure=False, key=_keys("version", batches)
        )
        try:
            return [v for vs in self.client.gather(futures) for v in vs]
        finally:
            self.client.cancel(futures)

    def run(self, tasks: Sequence[Task], done: Callable[[Task, Partial], None]) -> None:
        from distributed import KilledWorker, as_completed

        job = uuid.uuid4().hex[:8]
        futures = {
            self.client.submit(
                compute_lines,
                t.request,
                t.start,
                t.stop,
                key=f"dada-lines-{job}-{t.scan}-{t.start}-{t.stop}",
                workers=self.workers,
            ): t
            for t in tasks
        }
        try:  # results are fetched concurrently by the client's event loop, handed over in batches
            for batch in as_completed(list(futures), with_results=True).batches():
                for f, part in batch:
                    done(futures[f], part)
                    f.release()
        except KilledWorker as e:  # the same task was running on 3 workers that died
            raise OSError(
                f"giving up on a task that was running on workers that died: {e}"
            ) from None
        finally:  # a no-op when all are done; otherwise Ctrl-C or a task's error
            self.client.cancel(list(futures))


def _keys(prefix: str, items: Sequence[Any]) -> list[str]:
    job = uuid.uuid4().hex[:8]
    return [f"dada-{prefix}-{job}-{i}" for i in range(len(items))]


# ---- the job -------------------------------------------------------------------------------


@dataclass
class JobReport:
    scans: int = 0
    scans_cached: int = 0
    lines: int = 0
    lines_cached: int = 0
    tasks: int = 0
    seconds: float = 0.0
    where: str = ""
    cache: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        computed = self.lines - self.lines_cached
        return (
            f"{self.scans} scan(s), {self.lines} lines: {self.scans_cached} scan(s) and "
            f"{self.lines_cached} lines from the result cache, {computed} lines in {self.tasks} "
            f"tasks on {self.where}, {self.seconds:.2f} s"
        )


def split_lines(missing: Sequence[int], per_task: int) -> list[range]:
    """Runs of consecutive line numbers, cut into ranges of at most ``per_task`` lines."""
    out: list[range] = []
    for line in missing:
        last = out[-1] if out else None
        if last is not None and last.stop == line and len(last) < per_task:
            out[-1] = range(last.start, line + 1)
        else:
            out.append(range(line, line + 1))
    return out


def run_job(
    grid: Grid,
    backend: Backend,
    cache: ResultCache | None = None,
    *,
    lines_per_task: int = 1,
    progress: Callable[[int], None] | None = None,
    report: JobReport | None = None,
) -> Result:
    """Compute (or fetch from ``cache``) every tile of ``grid`` and stitch them."""
    t0 = time.perf_counter()
    rep = report if report is not None else JobReport()
    rep.where = backend.where
    tick = progress or (lambda _n: None)
    distinct = list(dict.fromkeys(grid.tiles))
    versions = backend.versions(distinct) if cache is not None else [""] * len(distinct)
    results: list[Result | None] = [None] * len(distinct)
    parts: list[list[Partial]] = [[] for _ in distinct]
    left = [r.vert for r in distinct]
    tasks: list[Task] = []
    rep.scans, rep.lines = len(distinct), sum(left)
    for k, (req, ver) in enumerate(zip(distinct, versions, strict=True)):
        if cache is not None:
            results[k] = cache.get_result(req, ver)
            if results[k] is not None:
                rep.scans_cached += 1
                rep.lines_cached += req.vert
                tick(req.vert * req.horz)
                continue
        missing = []
        for line in range(req.vert):
            hit = cache.get_line(req, ver, line) if cache is not None else None
            if hit is None:
                missing.append(line)
            else:
                parts[k].append(hit)
                left[k] -= 1
                rep.lines_cached += 1
                tick(req.horz)
        tasks += [Task(k, req, r.start, r.stop) for r in split_lines(missing, lines_per_task)]
        if not missing:
            results[k] = _finish(req, ver, parts[k], cache)
    rep.tasks = len(tasks)

    def done(task: Task, part: Partial) -> None:
        k = task.scan
        if cache is not None:
            cache.put_partial(task.request, versions[k], part)
        parts[k].append(part)
        left[k] -= len(part.lines)
        if left[k] == 0:
            results[k] = _finish(task.request, versions[k], parts[k], cache)
            parts[k] = []
        tick(task.points)

    if tasks:
        backend.run(tasks, done)
    by_request = {r: res for r, res in zip(distinct, results, strict=True)}
    out = stitch(grid, [_check(by_request[t]) for t in grid.tiles])
    rep.seconds = time.perf_counter() - t0
    if cache is not None:
        rep.cache = vars(cache.stats).copy()
    return out


def _finish(
    request: Request, version: str, parts: list[Partial], cache: ResultCache | None
) -> Result:
    result = engine.assemble(request, parts)
    if cache is not None:
        cache.put_result(result, version)
        cache.drop_lines(request, version)
    return result


def _check(result: Result | None) -> Result:
    if result is None:
        raise RuntimeError("a scan of the job was not computed")  # a bug, not bad input
    return result
