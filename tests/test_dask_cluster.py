"""dada on a real Dask cluster of separate processes on loopback: ``dada scheduler`` and two
``dada worker`` subprocesses (more for the kill test), driven by the ``dada`` command and by
``workers.jobs`` in this process.

Checked: the distributed result equals the single-process engine's; a worker SIGKILLed while it
computes a task leaves the result identical; the result cache serves a repeated job without one
task (the workers' own counters say so), misses after a touched input, throws away a corrupt
entry and recomputes; Ctrl-C cancels the job's tasks on the scheduler and a rerun resumes from the
per-line partials; a 19x19 super-grid is stitched tile by tile in row order.

The helpers at the top (``cluster``, ``Cluster``, ``dada``) are shared with the benchmark.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.harness.procs import Proc, Procs, free_port, wait_for, wait_listening
from workers import api, engine
from workers.request import parse_request
from workers.resultcache import ResultCache
from workers.synth import write_eiger_scan, write_repeated_scan

DADA = str(Path(sys.executable).with_name("dada"))


@dataclass
class Cluster:
    procs: Procs
    address: str
    scheduler: Proc
    client: Any  # distributed.Client

    def add_worker(self, name: str, nthreads: int = 1) -> Proc:
        before = len(self.client.scheduler_info()["workers"])
        proc = self.procs.start(
            name,
            [DADA, "worker", "--scheduler", self.address, "--nthreads", str(nthreads)]
            + ["--name", name, "--host", "127.0.0.1"],
        )
        try:
            self.client.wait_for_workers(before + 1, timeout=60)
        except TimeoutError:
            raise proc.fail("did not register with the scheduler") from None
        return proc

    def worker_address(self, name: str) -> str:
        for addr, info in self.client.scheduler_info()["workers"].items():
            if info.get("name") == name:
                return str(addr)
        raise KeyError(name)

    def tasks_run(self) -> int:
        """Line tasks computed by all live workers so far (their own counters)."""
        from workers.jobs import tasks_run

        return sum(self.client.run(tasks_run).values())

    def scheduler_tasks(self) -> int:
        """Tasks the scheduler still knows of (0 when no job holds any)."""
        # a lambda travels by value; a function of this module would need ``tests`` importable
        return int(self.client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)))


@contextmanager
def cluster(logdir: Path, workers: int = 2, nthreads: int = 1) -> Iterator[Cluster]:
    from distributed import Client

    with Procs(logdir) as procs:
        port = free_port()
        sched = procs.start(
            "scheduler",
            [DADA, "scheduler", "--host", "127.0.0.1", "--port", str(port)]
            + ["--dashboard-port", "0"],
        )
        wait_listening(sched, port, timeout=60)
        address = f"tcp://127.0.0.1:{port}"
        with Client(address, timeout=30, direct_to_workers=True) as client:
            c = Cluster(procs, address, sched, client)
            for i in range(workers):
                c.add_worker(f"w{i + 1}", nthreads)
            yield c


def dada(*args: str, ok: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([DADA, *args], capture_output=True, text=True, timeout=timeout)
    if ok:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


# ---- fixtures ------------------------------------------------------------------------------

H, V = 24, 16


@pytest.fixture(scope="module")
def dask(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("dask") / "logs") as c:
        yield c


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Letters, 4 data files of 100 frames."""
    return write_eiger_scan(tmp_path_factory.mktemp("scan"), "s", H, V, shape=(96, 80))


def load_json(path: Path) -> dict[str, np.ndarray]:
    doc = json.loads(path.read_text())
    return {
        name: np.array(np.array(s["data"], dtype=object).astype(float), dtype=np.float64).reshape(
            s["shape"]
        )
        for name, s in doc["signals"].items()
    }


def report(stderr: str) -> dict[str, int]:
    """The numbers of the ``dada stxm -v`` summary line."""
    m = re.search(
        r"(\d+) scan\(s\), (\d+) lines: (\d+) scan\(s\) and (\d+) lines from the result cache, "
        r"(\d+) lines in (\d+) tasks",
        stderr,
    )
    assert m, stderr
    keys = ["scans", "lines", "scans_cached", "lines_cached", "computed", "tasks"]
    return dict(zip(keys, (int(x) for x in m.groups()), strict=True))


# ---- tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"algo": "radial", "radial": "47,33;0,40;16"},
        {"algo": "gridroi", "gridroi": "2,8,10,20;3,2", "roi": "4,2,72,80", "binning": "2,1"},
    ],
    ids=["brightfield", "radial", "gridroi"],
)
def test_distributed_equals_local(
    dask: Cluster, scan: Path, tmp_path: Path, params: dict[str, Any]
) -> None:
    out = tmp_path / "out.json"
    flags = [x for k, v in params.items() for x in (f"--{k}", v)]
    before = dask.tasks_run()
    r = dada(
        "stxm", str(scan), "--horz", str(H), "--vert", str(V), *flags, "--format", "json",
        "-o", str(out), "--scheduler", dask.address, "--no-result-cache",
        "--lines-per-task", "3", "-v", "--progress",
    )  # fmt: skip
    assert report(r.stderr)["tasks"] == 6  # ceil(16 / 3)
    assert f"{H * V}/{H * V}" in r.stderr  # the progress bar (points) went all the way
    assert dask.tasks_run() - before == 6  # ... and the workers ran them
    ref = api.stxm(str(scan), horz=H, vert=V, **params)
    got = load_json(out)
    assert set(got) == set(ref.maps)
    for name, a in ref.maps.items():
        np.testing.assert_array_equal(got[name], a, err_msg=name)
    assert np.nanstd(ref.maps[next(iter(ref.maps))]) > 0  # not a constant map


def test_local_process_and_local_cluster_equal_engine(scan: Path, tmp_path: Path) -> None:
    ref = api.stxm(str(scan), horz=H, vert=V)
    for workers in ("0", "2"):
        out = tmp_path / f"w{workers}.json"
        r = dada(
            "stxm", str(scan), "--horz", str(H), "--vert", str(V), "--format", "json",
            "-o", str(out), "--workers", workers, "--no-result-cache", "-v",
        )  # fmt: skip
        where = "local cluster of 2 processes" if workers == "2" else "this process"
        assert where in r.stderr
        got = load_json(out)
        for name, a in ref.maps.items():
            np.testing.assert_array_equal(got[name], a, err_msg=f"{workers}: {name}")


def test_worker_killed_mid_job_result_identical(dask: Cluster, tmp_path: Path) -> None:
    from workers.jobs import DaskBackend, run_job, tasks_run
    from workers.supergrid import make_grid

    h, v = 20, 12
    heavy = write_eiger_scan(tmp_path, "k", h, v, shape=(384, 384), frames_per_file=60)
    victim = dask.add_worker("victim")
    addr = dask.worker_address("victim")
    killed: list[Any] = []

    def progress(_n: int) -> None:
        if killed:
            return
        busy = dask.client.processing(workers=[addr]).get(addr, ())
        if busy:  # the victim is computing (or holds) a task of this job right now
            dask.procs.stop(victim, sig=signal.SIGKILL)
            killed.append(list(busy))

    grid = make_grid([str(heavy)], {"horz": h, "vert": v}, None)
    before = {a: n for a, n in dask.client.run(tasks_run).items() if a != addr}
    result = run_job(grid, DaskBackend(dask.client), None, lines_per_task=1, progress=progress)
    assert killed, "the victim never had a task: the job was too short to kill it mid-way"
    assert victim.popen.returncode == -signal.SIGKILL
    wait_for(lambda: addr not in dask.client.scheduler_info()["workers"], "victim removed", 30)
    after = dask.client.run(tasks_run)
    survivors = sum(after[a] - before[a] for a in before)
    assert survivors >= 1 and addr not in after
    ref = api.stxm(str(heavy), horz=h, vert=v)
    for name, a in ref.maps.items():
        np.testing.assert_array_equal(result.maps[name], a, err_msg=name)
    assert np.std(ref["Itot"]) > 0


def test_result_cache_hit_miss_touch_corrupt(dask: Cluster, tmp_path: Path) -> None:
    h, v = 12, 8
    scan = write_eiger_scan(tmp_path / "data", "c", h, v, shape=(64, 64), frames_per_file=40)
    rc = tmp_path / "rc"
    out = [tmp_path / f"out{i}.json" for i in range(4)]

    def run(i: int) -> tuple[dict[str, int], int]:
        n0 = dask.tasks_run()
        r = dada(
            "stxm", str(scan), "--horz", str(h), "--vert", str(v), "--format", "json",
            "-o", str(out[i]), "--scheduler", dask.address, "--result-cache", str(rc), "-v",
        )  # fmt: skip
        return report(r.stderr), dask.tasks_run() - n0

    rep, ran = run(0)  # miss: every line computed
    assert (rep["scans_cached"], rep["tasks"], ran) == (0, v, v)
    rep, ran = run(1)  # hit: not one task
    assert (rep["scans_cached"], rep["lines_cached"], rep["tasks"], ran) == (1, v, 0, 0)
    assert out[1].read_bytes() == out[0].read_bytes()

    data_file = scan.with_name("c_data_000002.h5")  # a touched input invalidates
    st = data_file.stat()
    os.utime(data_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    rep, ran = run(2)
    assert (rep["scans_cached"], rep["tasks"], ran) == (0, v, v)
    assert out[2].read_bytes() == out[0].read_bytes()

    request = parse_request(str(scan), {"horz": h, "vert": v})
    version = engine.input_version(request)
    entry = rc / (key := ResultCache.result_key(request, version))[:2] / f"{key}.dres"
    blob = bytearray(entry.read_bytes())
    blob[len(blob) // 2] ^= 0x10  # one flipped bit: discarded and recomputed
    entry.write_bytes(bytes(blob))
    rep, ran = run(3)
    assert (rep["scans_cached"], rep["tasks"], ran) == (0, v, v)
    assert out[3].read_bytes() == out[0].read_bytes()
    assert ResultCache(rc).get_result(request, version) is not None  # rewritten, valid


def test_ctrl_c_cancels_the_jobs_tasks_and_a_rerun_resumes(dask: Cluster, tmp_path: Path) -> None:
    h, v = 25, 80
    one = write_eiger_scan(tmp_path / "one", "one", 1, 1, shape=(1024, 1024))
    big = write_repeated_scan(tmp_path / "big", "big", one.with_name("one_data_000001.h5"), h * v)
    rc = tmp_path / "rc"
    argv = [DADA, "stxm", str(big), "--horz", str(h), "--vert", str(v), "--signal", "Itot"]
    argv += ["--format", "tiff_raw", "--scheduler", dask.address, "--result-cache", str(rc), "-v"]
    p = subprocess.Popen([*argv, "-o", str(tmp_path / "a.tif")], stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(rc.glob("*/*.dres")), "a first line in the result cache", 120)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130 and "dada stxm: cancelled" in err, err
    done = len(list(rc.glob("*/*.dres")))
    assert 0 < done < v  # stopped mid-job
    wait_for(lambda: dask.scheduler_tasks() == 0, "the scheduler to drop the job's tasks", 20)
    n0 = dask.tasks_run()
    r = dada(*argv[1:], "-o", str(tmp_path / "b.tif"))
    rep = report(r.stderr)
    assert rep["lines_cached"] == done and rep["computed"] == v - done
    # Tasks of the cancelled job already running on the 2 worker threads cannot be stopped and
    # may finish (and count) after n0 was read; the rerun itself ran only the missing lines.
    assert v - done <= dask.tasks_run() - n0 <= v - done + 2
    import tifffile

    got = tifffile.imread(tmp_path / "b.tif")
    frame = api.stxm(str(big), horz=1, vert=1, signal="Itot")["Itot"][0, 0]  # frames repeat
    assert got.shape == (v, h) and np.all(got == np.float32(frame))


@pytest.fixture(scope="module")
def grid_scans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("grid")
    for k in range(361):  # flux rises 4% a scan, beyond noise: the tiles' order shows
        write_eiger_scan(d, f"t{k:03d}", 3, 2, shape=(16, 16), seed=k, flux=2e4 * 1.04**k)
    return d


def test_supergrid_19x19_stitched(dask: Cluster, grid_scans: Path, tmp_path: Path) -> None:
    import tifffile

    out = tmp_path / "grid.tif"
    t0 = time.monotonic()
    dada(
        "stxm", str(grid_scans / "t{000..360}_master.h5"), "--grid", "19x19", "--horz", "3",
        "--vert", "2", "--signal", "Itot", "--format", "tiff_raw", "-o", str(out),
        "--scheduler", dask.address, "--no-result-cache", "--lines-per-task", "2",
    )  # fmt: skip
    elapsed = time.monotonic() - t0
    with tifffile.TiffFile(out) as t:
        got = t.asarray()
        meta = json.loads(getattr(t.pages[0], "description", ""))
    assert got.shape == (38, 57)
    assert meta["request"].startswith("grid=19x19 | ")
    means = []
    for k in range(361):
        r, c = divmod(k, 19)
        tile = got[2 * r : 2 * r + 2, 3 * c : 3 * c + 3]
        ref = api.stxm(str(grid_scans / f"t{k:03d}_master.h5"), horz=3, vert=2, signal="Itot")
        np.testing.assert_array_equal(tile, ref["Itot"].astype(np.float32), err_msg=f"tile {k}")
        means.append(float(tile.mean()))
    assert all(np.diff(means) > 0), "tiles out of row order"
    print(f"19x19 super-grid on the cluster: {elapsed:.1f} s")


def test_daemons_stop_on_sigterm_and_a_worker_exits_1_without_its_scheduler(
    tmp_path: Path,
) -> None:
    """What systemd relies on: SIGTERM stops both with status 0; a worker that loses its
    scheduler exits 1 (``Restart=on-failure`` restarts it) and says why."""
    with cluster(tmp_path / "logs", workers=2) as c:
        w1, w2 = c.procs.get("w1"), c.procs.get("w2")
        assert c.procs.stop(w1, sig=signal.SIGTERM) == 0
        assert c.procs.stop(c.scheduler, sig=signal.SIGTERM) == 0
        wait_for(lambda: not w2.alive(), "the orphaned worker to exit", 60)
        assert c.procs.stop(w2) == 1  # (stop: an intended exit, not a crash, for Procs)
        assert "went away" in w2.log_tail(5)
        assert "listening at tcp://127.0.0.1:" in c.scheduler.log.read_text()


@pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/dev/fuse").exists(), reason="FUSE mounts need root"
)
def test_workers_read_a_supergrid_through_a_dadafs_mount(dask: Cluster, tmp_path: Path) -> None:
    """As on the nodes: the workers open the scans under a dadafs mount (origin -> FUSE client
    on loopback); the stitched map equals the engine's on the local files."""
    from tests.harness.tiers import make_key, mount, start_origin

    export = tmp_path / "export"
    for k in range(4):
        write_eiger_scan(export / "run", f"m{k}", 6, 4, shape=(40, 36), seed=k, flux=1e4 * (k + 1))
    with Procs(tmp_path / "logs") as procs:
        key = make_key(tmp_path / "key")
        origin = start_origin(procs, key, {"beam": export})
        mnt = tmp_path / "mnt"
        mount(procs, key, origin, mnt)
        out = tmp_path / "grid.json"
        dada(
            "stxm", str(mnt / "beam/run/m{0..3}_master.h5"), "--grid", "2x2", "--horz", "6",
            "--vert", "4", "--format", "json", "-o", str(out), "--scheduler", dask.address,
            "--no-result-cache",
        )  # fmt: skip
        got = load_json(out)
    for k in range(4):
        r, c = divmod(k, 2)
        ref = api.stxm(str(export / f"run/m{k}_master.h5"), horz=6, vert=4)
        for name, a in ref.maps.items():
            np.testing.assert_array_equal(got[name][4 * r : 4 * r + 4, 6 * c : 6 * c + 6], a)


def test_a_failing_task_is_one_line_error_and_leaves_no_tasks(dask: Cluster, scan: Path) -> None:
    r = dada(
        "stxm", str(scan), "--horz", str(H), "--vert", str(V + 3), "--format", "json",
        "-o", "/dev/null", "--scheduler", dask.address, "--no-result-cache",
        ok=False,
    )  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.startswith("dada stxm: error: scan ") and "needs frames up to" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    wait_for(lambda: dask.scheduler_tasks() == 0, "the scheduler to drop the job's tasks", 20)
