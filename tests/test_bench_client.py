"""Benchmarks of issue 4 (dadafs client throughput), run by ``make bench``; each writes its section
of docs/benchmarks.md. All tiers are the real daemons; every figure is a median of
``DADAFS_BENCH_REPEATS`` runs (default 3) measured in the same run as what it is compared with,
and every byte read through dadafs is checked against the origin's xxh3-128.

Targets (issue 4): hot read ≥ 2 GB/s, ≥ 1.5x NFS, ≥ 5x sshfs; one client on a 1 Gbit link ≥ 94 %
of line rate; cold read through proxy and origin with 1 ms added round trip ≥ 80 % of hot;
2000 files of 2.5 MB ≥ 70 % of the large-file bandwidth; ``ls -l`` of 10 000 entries ≤ 0.5 s cold
and ≤ 0.05 s warm.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import benchlib
from tests.harness import baselines, tiers
from tests.harness.netns import Topology
from tests.harness.procs import Procs, cpu_seconds, free_port, netns_argv, wait_listening
from tests.harness.stack import (
    REPEATS,
    SCALE,
    Stack,
    fmt_runs,
    gbps,
    machine_note,
    make_file,
    med,
    scaled,
)

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

pytestmark = [
    pytest.mark.bench,
    pytest.mark.timeout(3600),
    pytest.mark.skipif(os.geteuid() != 0, reason="FUSE mounts and namespaces need root"),
]


def cmd(test: str) -> str:
    env = "".join(
        f"{k}={os.environ[k]} "
        for k in ("DADAFS_BENCH_SCALE", "DADAFS_BENCH_REPEATS")
        if k in os.environ
    )
    return f"{env}.venv/bin/python -m pytest -m bench -s tests/test_bench_client.py::{test}"


def met(ok: bool) -> str:
    return "met" if ok else "**missed**"


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    with Procs(tmp_path / "logs") as p:
        yield p


@pytest.fixture
def stack(tmp_path: Path, procs: Procs) -> Stack:
    return Stack.start(tmp_path / "stack", procs)


def read_checked(path: Path, size: int) -> float:
    n, seconds = baselines.read_file(path)
    assert n == size, f"{path}: read {n} bytes, expected {size}"
    return seconds


def warm_proxy(stack: Stack, files: dict[str, str], netns: str | None = None) -> None:
    """Read every file once through a throw-away mount (fills the proxy) and check its bytes."""
    mp, proc = stack.mount("warm", netns=netns)
    for rel, digest in files.items():
        assert baselines.hash_file(mp / rel) == digest, f"wrong bytes in {rel} through dadafs"
    stack.unmount(proc)


# ---------------------------------------------------------------------------------------- hot


def test_hot_read_vs_nfs_sshfs_page_cache(tmp_path: Path, stack: Stack, procs: Procs) -> None:
    # 2 GiB: the sequential-read benchmark of "dadafs end to end" (hot in the proxy, client cold,
    # against the local page cache in the same run) and the baselines of the client issue.
    size = scaled(2 << 30)
    digest = make_file(stack.data / "big.bin", size, seed=1)
    warm_proxy(stack, {"big.bin": digest})
    nfs = baselines.start_ganesha(procs, tmp_path / "nfs", stack.data)
    assert baselines.nfs_hash(nfs, "big.bin") == (digest, size)
    ssh = baselines.start_sshd(procs, tmp_path / "ssh")
    sshfs = tmp_path / "sshfs"
    baselines.mount_sshfs(procs, ssh, stack.data, sshfs)
    assert baselines.hash_file(sshfs / "big.bin") == digest

    kinds = ("dadafs", "dadafs --direct-io", "nfs", "sshfs", "page cache")
    t: dict[str, list[float]] = {k: [] for k in kinds}
    note = machine_note()
    proxy = procs.get("proxy")
    cpu_client, cpu_proxy = [], []
    for i in range(REPEATS):  # interleaved, so load from others hits every path alike
        mp, proc = stack.mount(f"hot{i}")
        c0, p0 = cpu_seconds(proc.pid), cpu_seconds(proxy.pid)
        t["dadafs"].append(read_checked(mp / "big.bin", size))
        cpu_client.append((cpu_seconds(proc.pid) - c0) / (size / 1e9))
        cpu_proxy.append((cpu_seconds(proxy.pid) - p0) / (size / 1e9))
        assert baselines.hash_file(mp / "big.bin") == digest
        stack.unmount(proc)
        mp, proc = stack.mount(f"hotdio{i}", extra=("--direct-io",))
        t["dadafs --direct-io"].append(read_checked(mp / "big.bin", size))
        stack.unmount(proc)
        t["nfs"].append(baselines.nfs_cat(nfs, "big.bin"))
        t["sshfs"].append(read_checked(sshfs / "big.bin", size))
        t["page cache"].append(baselines.page_cache_read(stack.data / "big.bin")[1])

    rate = {k: [gbps(size, s) for s in v] for k, v in t.items()}
    m = {k: med(v) for k, v in rate.items()}
    rows: list[list[object]] = [
        [k, f"{m[k]:.2f}", fmt_runs(rate[k]), f"{m['dadafs'] / m[k]:.2f}x"] for k in rate
    ]
    ratio_nfs, ratio_sshfs = m["dadafs"] / m["nfs"], m["dadafs"] / m["sshfs"]
    body = (
        f"{note} "
        f"One reader, 1 MiB `read`s of a {size / 2**20:.0f} MiB random file, loopback. dadafs: "
        "data hot in the proxy's cache, a fresh client mount per run (client cold); by default "
        "through the page cache with the mount's `read_ahead_kb` raised, `--direct-io` sends the "
        "kernel's 1 MiB requests straight to the client. NFS: "
        "nfs-ganesha 4.3 (VFS FSAL, NFSv4) read with libnfs `nfs-cat` to /dev/null. sshfs: "
        "sshfs 3.7 to a private sshd on loopback. Page cache: the origin's file read twice. "
        "CPU per GB read through dadafs (default mode, median): client "
        f"{med(cpu_client):.2f} s, proxy {med(cpu_proxy):.2f} s.\n\n"
        + benchlib.table(["path", "GB/s (median)", "runs", "dadafs / this"], rows)
        + "\n"
        + benchlib.table(
            ["target", "measured", ""],
            [
                ["≥ 2 GB/s", f"{m['dadafs']:.2f} GB/s", met(m["dadafs"] >= 2.0)],
                ["≥ 1.5x NFS", f"{ratio_nfs:.2f}x", met(ratio_nfs >= 1.5)],
                ["≥ 5x sshfs", f"{ratio_sshfs:.2f}x", met(ratio_sshfs >= 5.0)],
            ],
        )
    )
    benchlib.write_section(
        "client-hot",
        "Client: hot read vs NFS, sshfs, page cache",
        cmd("test_hot_read_vs_nfs_sshfs_page_cache"),
        body,
    )


# ---------------------------------------------------------------------------------- 1 Gbit link


def test_one_client_on_shaped_1gbit_link(tmp_path: Path) -> None:
    rate_bit = 1_000_000_000
    size = scaled(512 << 20)
    with Topology() as topo, Procs(tmp_path / "logs") as procs:
        srv, cli = topo.namespace("srv"), topo.namespace("cli")
        link = topo.link(srv, "10.61.0.1", cli, "10.61.0.2")
        topo.shape_link(link, rate_bit)
        stack = Stack.start(tmp_path / "stack", procs, netns=srv, proxy_host="10.61.0.1")
        digest = make_file(stack.data / "big.bin", size, seed=2)
        warm_proxy(stack, {"big.bin": digest}, netns=srv)  # over srv's own address: not shaped

        # What plain TCP gets through the same shaped link, for reference.
        sink = procs.start(
            "sink", [PY, "-m", "tests.harness.pump", "sink", "--listen", "10.61.0.2:7000"],
            netns=cli, cwd=ROOT,
        )  # fmt: skip
        wait_listening(sink, 7000)
        src = netns_argv(srv, [PY, "-m", "tests.harness.pump", "source", "--to", "10.61.0.2:7000",
                               "--bytes", str(256 << 20)])  # fmt: skip
        out = subprocess.run(src, cwd=ROOT, capture_output=True, text=True, check=True).stdout
        tcp = float(json.loads(out.strip().splitlines()[-1])["seconds"])
        tcp_frac = 8 * (256 << 20) / tcp / rate_bit

        secs = []
        note = machine_note()
        for i in range(REPEATS):
            mp, proc = stack.mount(f"c{i}", netns=cli)
            secs.append(read_checked(mp / "big.bin", size))
            assert baselines.hash_file(mp / "big.bin") == digest
            stack.unmount(proc)
    frac = [8 * size / s / rate_bit for s in secs]
    body = (
        f"{note} "
        f"Proxy (data hot) and origin in one namespace, the client in another, joined by a veth "
        f"pair shaped with `tc tbf` to 1 Gbit/s in both directions (MTU 1500). One reader of a "
        f"{size / 2**20:.0f} MiB file through a fresh mount per run. Plain TCP (one stream, "
        f"Python sender) through the same link reaches {tcp_frac:.1%} of the rate: that is "
        f"the ceiling after IP/TCP headers.\n\n"
        + benchlib.table(
            ["what", "fraction of 1 Gbit/s (median)", "runs", "target ≥ 94 %"],
            [
                [
                    "dadafs read",
                    f"{med(frac):.1%}",
                    fmt_runs([f * 100 for f in frac], 1) + " %",
                    met(med(frac) >= 0.94),
                ],
                ["plain TCP", f"{tcp_frac:.1%}", "1 run", ""],
            ],
        )  # fmt: skip
    )
    benchlib.write_section(
        "client-1gbit",
        "Client: one client on a 1 Gbit link",
        cmd("test_one_client_on_shaped_1gbit_link"),
        body,
    )


# --------------------------------------------------------------------------- cold vs hot, latency


def test_cold_read_through_proxy_and_origin_with_1ms_rtt(tmp_path: Path, procs: Procs) -> None:
    size = scaled(512 << 20)
    root = tmp_path / "stack"
    data = root / "export"
    digest = make_file(data / "big.bin", size, seed=3)
    key = tiers.make_key(tmp_path / "key")
    origin = tiers.start_origin(procs, key, {"data": data})
    relay_port = free_port()
    relay = procs.start(
        "relay",
        [
            PY,
            "-m",
            "tests.harness.relay",
            "--listen",
            f"127.0.0.1:{relay_port}",
            "--to",
            origin,
            "--delay-ms",
            "0.5",
        ],  # fmt: skip
        cwd=ROOT,
    )
    wait_listening(relay, relay_port)
    cold, hot = [], []
    note = machine_note()
    for i in range(REPEATS):
        proxy = tiers.start_proxy(
            procs, key, f"127.0.0.1:{relay_port}", tmp_path / f"cache{i}", name=f"proxy{i}"
        )
        st = Stack(root, key, procs, data, origin, proxy)
        mp, proc = st.mount(f"cold{i}")
        cold.append(read_checked(mp / "big.bin", size))
        assert baselines.hash_file(mp / "big.bin") == digest
        st.unmount(proc)
        mp, proc = st.mount(f"hot{i}")
        hot.append(read_checked(mp / "big.bin", size))
        st.unmount(proc)
        procs.stop(procs.get(f"proxy{i}"))
        shutil.rmtree(tmp_path / f"cache{i}")
    c, h = med([gbps(size, s) for s in cold]), med([gbps(size, s) for s in hot])
    body = (
        f"{note} "
        "Client → proxy on loopback; proxy → origin through the delaying relay "
        "(`tests/harness/relay.py`, 0.5 ms each way = 1 ms added round trip). Cold: a fresh "
        "proxy with an empty cache and a fresh mount (the origin's file is in its page cache); "
        f"hot: a second fresh mount on the now-filled proxy. {size / 2**20:.0f} MiB, one reader.\n\n"
        + benchlib.table(
            ["read", "GB/s (median)", "runs"],
            [
                [
                    "cold (proxy fetches from origin)",
                    f"{c:.2f}",
                    fmt_runs([gbps(size, s) for s in cold]),
                ],
                ["hot (proxy has it)", f"{h:.2f}", fmt_runs([gbps(size, s) for s in hot])],
            ],
        )  # fmt: skip
        + f"\ncold / hot = {c / h:.2f} (target ≥ 0.80: {met(c / h >= 0.8)}).\n"
    )
    benchlib.write_section(
        "client-cold", "Client: cold read through proxy and origin, 1 ms RTT",
        cmd("test_cold_read_through_proxy_and_origin_with_1ms_rtt"), body,
    )  # fmt: skip


# ------------------------------------------------------------------------- many files vs one


def test_many_cbf_sized_files_vs_large_file(stack: Stack) -> None:
    nfiles = max(10, int(2000 * SCALE))
    fsize = 2_500_000
    files = {f"frames/frame_{i:05d}.cbf": make_file(stack.data / "frames" / f"frame_{i:05d}.cbf",
                                                     fsize, seed=1000 + i) for i in range(nfiles)}  # fmt: skip
    big = nfiles * fsize
    files["big.bin"] = make_file(stack.data / "big.bin", big, seed=4)
    warm_proxy(stack, files)
    t_big, t_small = [], []
    note = machine_note()
    for i in range(REPEATS):
        mp, proc = stack.mount(f"big{i}")
        t_big.append(read_checked(mp / "big.bin", big))
        stack.unmount(proc)
        mp, proc = stack.mount(f"small{i}")
        t0 = time.perf_counter()
        for rel in files:
            if rel.startswith("frames/"):
                n, _ = baselines.read_file(mp / rel)
                assert n == fsize
        t_small.append(time.perf_counter() - t0)
        stack.unmount(proc)
    b, s = med([gbps(big, x) for x in t_big]), med([gbps(big, x) for x in t_small])
    body = (
        f"{note} "
        f"{nfiles} files of 2.5 MB (the size of a Pilatus CBF frame; random bytes) read one after "
        f"the other by one reader, against one {big / 1e9:.1f} GB file; data hot in the proxy, "
        "a fresh mount per run.\n\n"
        + benchlib.table(
            ["read", "GB/s (median)", "runs"],
            [
                [f"{nfiles} x 2.5 MB", f"{s:.2f}", fmt_runs([gbps(big, x) for x in t_small])],
                ["one large file", f"{b:.2f}", fmt_runs([gbps(big, x) for x in t_big])],
            ],
        )  # fmt: skip
        + f"\nsmall / large = {s / b:.2f} (target ≥ 0.70: {met(s / b >= 0.7)}).\n"
    )
    benchlib.write_section(
        "client-small-files", f"Client: {nfiles} CBF-sized files vs one large file",
        cmd("test_many_cbf_sized_files_vs_large_file"), body,
    )  # fmt: skip


# ------------------------------------------------------------------------------------- ls -l


def ls_l(path: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    out = subprocess.run(
        ["ls", "-l", str(path)],
        capture_output=True,
        check=True,
        env={"LC_ALL": "C", "PATH": os.environ["PATH"]},
    ).stdout
    return time.perf_counter() - t0, out.count(b"\n")


TTL = ("--meta-ttl", "60")  # so "warm" means cached however long the cold listing took


def test_ls_l_of_10000_entries(tmp_path: Path, stack: Stack, procs: Procs) -> None:
    n = 10_000
    d = stack.data / "many"
    d.mkdir()
    for i in range(n):
        (d / f"img_{i:05d}.cbf").write_bytes(b"x" * (i % 97))
    cold_all, cold_client, warm, local = [], [], [], []
    note = machine_note()
    for i in range(REPEATS):
        # Everything cold: a new proxy with an empty cache, a new mount.
        proxy = tiers.start_proxy(
            procs, stack.key, stack.origin, tmp_path / f"lscache{i}", name=f"lsproxy{i}"
        )
        mp, proc = stack.mount(f"ls-all{i}", upstream=proxy, extra=TTL)
        dt, lines = ls_l(mp / "many")
        assert lines == n + 1
        cold_all.append(dt)
        warm.append(ls_l(mp / "many")[0])  # within the metadata TTL
        stack.unmount(proc)
        # Client cold, proxy warm.
        mp, proc = stack.mount(f"ls-client{i}", upstream=proxy, extra=TTL)
        cold_client.append(ls_l(mp / "many")[0])
        stack.unmount(proc)
        procs.stop(procs.get(f"lsproxy{i}"))
        local.append(ls_l(d)[0])
    rows: list[list[object]] = [
        ["cold (new proxy, new mount)", f"{med(cold_all):.3f}", fmt_runs(cold_all, 3), "≤ 0.5 s", met(med(cold_all) <= 0.5)],
        ["client cold, proxy warm", f"{med(cold_client):.3f}", fmt_runs(cold_client, 3), "≤ 0.5 s", met(med(cold_client) <= 0.5)],
        ["warm (again, within the TTL)", f"{med(warm):.3f}", fmt_runs(warm, 3), "≤ 0.05 s", met(med(warm) <= 0.05)],
        ["local directory (reference)", f"{med(local):.3f}", fmt_runs(local, 3), "", ""],
    ]  # fmt: skip
    body = (
        f"{note} "
        f"`ls -l` (LC_ALL=C, output captured) of a directory of {n} files through a mount; "
        "wall time of the whole command. The mounts use `--meta-ttl 60`, so the warm listing "
        "(run right after the cold one) finds every entry still valid.\n\n"
        + benchlib.table(["case", "seconds (median)", "runs", "target", ""], rows)
    )
    benchlib.write_section(
        "client-ls", "Client: ls -l of 10 000 entries", cmd("test_ls_l_of_10000_entries"), body
    )
