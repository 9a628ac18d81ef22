"""Benchmark of dada on Dask (``make bench``): a real loopback cluster (``dada scheduler`` and
``dada worker`` subprocesses, one thread each) against the single-process engine, on the same
data in the same run. Figures go to docs/benchmarks.md.

- 1 -> 2 worker processes: frames/s of a 4x4 super-grid of scans of the real EigerX 4M frame
  (repeated; 384 frames), jobs driven by ``workers.jobs.run_job`` from this process;
- end-to-end frames/s of that super-grid job against ``engine.run`` per scan with 2 threads;
- scheduling overhead per task: no-op Dask tasks, and a 19x19 grid of tiny scans (3x2 points of
  16x16 pixels: the task is almost all overhead) on the cluster against this process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import benchlib
from tests.test_dask_cluster import cluster
from workers import engine
from workers.jobs import DaskBackend, LocalBackend, run_job, tasks_run
from workers.supergrid import Grid, make_grid
from workers.synth import write_eiger_scan, write_repeated_scan

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "eiger4m_bitshuffle.h5"
TILES, TH, TV = 16, 8, 3  # 4x4 grid of 8x3-point scans
ROUNDS = 5


def timed(fn: Callable[[], object], rounds: int = ROUNDS) -> list[float]:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


@pytest.mark.bench
@pytest.mark.timeout(1800)
def test_bench_dask(tmp_path: Path) -> None:
    if not REAL.exists():
        pytest.skip(f"real EigerX frame {REAL} absent (shared data not checked out)")
    per_tile = TH * TV
    master = write_repeated_scan(tmp_path / "real", "r", REAL, TILES * per_tile)
    specs = [f"{master}?first={k * per_tile}" for k in range(TILES)]
    grid = make_grid(specs, {"horz": TH, "vert": TV, "signal": "Itot"}, "4x4")
    frames = TILES * per_tile
    tiny_dir = tmp_path / "tiny"
    for k in range(361):
        write_eiger_scan(tiny_dir, f"t{k:03d}", 3, 2, shape=(16, 16), seed=k)
    tiny = make_grid([str(tiny_dir / "t{000..360}_master.h5")], {"horz": 3, "vert": 2}, "19x19")

    def single_process(threads: int) -> Callable[[], object]:
        return lambda: [engine.run(tile, threads=threads) for tile in grid.tiles]

    single_process(2)()  # page cache and JIT warm
    load0 = os.getloadavg()[0]
    with cluster(tmp_path / "logs", workers=2) as c:
        both = DaskBackend(c.client)
        one_worker = DaskBackend(c.client, workers=[c.worker_address("w1")])

        def on(backend: DaskBackend, g: Grid = grid, lines: int = 1) -> Callable[[], object]:
            return lambda: run_job(g, backend, None, lines_per_task=lines)

        for _ in range(2):
            on(both)()  # warm both workers (plans, JIT)
        t: dict[str, list[float]] = {k: [] for k in ("one", "two", "single2", "single1")}
        for _ in range(ROUNDS):  # side by side: every variant in every round
            t["one"] += timed(on(one_worker), 1)
            t["two"] += timed(on(both), 1)
            t["single2"] += timed(single_process(2), 1)
            t["single1"] += timed(single_process(1), 1)

        n_noop = 500
        noop: list[float] = []
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            c.client.gather([c.client.submit(tasks_run, pure=False) for _ in range(n_noop)])
            noop.append((time.perf_counter() - t0) / n_noop)
        tasks = 361
        on(both, tiny, 2)()
        tiny_cluster, tiny_local = [], []
        for _ in range(ROUNDS):
            tiny_cluster += [x / tasks for x in timed(on(both, tiny, 2), 1)]
            here = lambda: run_job(tiny, LocalBackend(2), None, lines_per_task=2)  # noqa: E731
            tiny_local += [x / tasks for x in timed(here, 1)]
    load1 = os.getloadavg()[0]

    med = benchlib.median
    fps = {k: frames / med(v) for k, v in t.items()}
    labels = {
        "one": "super-grid job, cluster, 1 worker process x 1 thread",
        "two": "super-grid job, cluster, 2 worker processes x 1 thread",
        "single2": "single-process engine (`engine.run` per scan), 2 threads, same data",
        "single1": "single-process engine, 1 thread, same data",
    }
    rows: list[list[object]] = [
        [labels[k], f"{fps[k]:.0f}", f"{fps[k] / fps['one']:.2f}x"] for k in labels
    ]
    overhead: list[list[object]] = [
        ["no-op Dask task (submit + gather, 500 at once)", f"{med(noop) * 1e3:.2f} ms"],
        [
            "19x19 grid of 3x2-point 16x16 scans, per task, cluster (2 workers)",
            f"{med(tiny_cluster) * 1e3:.2f} ms",
        ],  # fmt: skip
        ["the same grid, per task, this process (2 threads)", f"{med(tiny_local) * 1e3:.2f} ms"],
    ]
    body = (
        f"A 4x4 super-grid of {TH}x{TV}-point scans of the real EigerX 4M frame (bitshuffle-LZ4, "
        f"repeated: {frames} frames, brightfield Itot), one task per scan line; medians of "
        f"{ROUNDS} rounds, each running every variant in turn (1 worker: the tasks restricted "
        f"to one of the two workers). The machine has {os.cpu_count()} cores shared with other "
        f"work (load average {load0:.1f} before, {load1:.1f} after), so 2 workers can at best "
        "double 1.\n\n"
        + benchlib.table(["what", "frames/s", "vs 1 worker"], rows)
        + f"\nScheduling overhead per task (median of {ROUNDS}); a real task (a line of 4M "
        "frames) takes 0.1-0.5 s:\n\n" + benchlib.table(["what", "per task"], overhead)
    )
    benchlib.write_section(
        "dask", "dada on Dask: workers, scheduling overhead, super-grid", "make bench", body
    )
    assert all(v > 0 for v in fps.values())
