"""``make demo``: the main job on one machine, on generated EigerX-format data.

Generates a scan (HDF5 master + data files, bitshuffle-LZ4, gap pixels 2^32-1, a pixel_mask),
starts the three tiers on loopback with a generated key, mounts, computes a total-intensity map
from the scan *through the mount*, writes a PNG, prints throughput and the proxy's counters, then
unmounts and stops everything, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BIN = Path(sys.executable).parent


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(
    pred: object, what: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        if proc.poll() is not None:
            raise SystemExit(f"demo: {what} failed:\n{log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: timed out waiting for {what}")
        time.sleep(0.05)


def _listening(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def _mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


@contextmanager
def _tiers(work: Path, export: Path) -> Iterator[tuple[Path, str, Path]]:
    """Origin, proxy and mount as real processes; all stopped and unmounted on exit."""
    from dadafs.auth import generate_key

    key = work / "secret.key"
    generate_key(key)
    mnt = work / "mnt"
    mnt.mkdir()
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, argv: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
        log = work / f"{name}.log"
        with open(log, "wb") as err:  # the child keeps its own descriptor
            p = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
            )
        procs.append(p)
        return p, log

    try:
        o_port, p_port = _free_port(), _free_port()
        common = ["--secret-file", str(key), "--config", "/dev/null"]
        o, olog = start(
            "origin",
            [
                str(BIN / "dadafsd"),
                "--listen",
                f"127.0.0.1:{o_port}",
                "--export",
                f"beamline={export}",
                *common,
            ],
        )
        _wait(lambda: _listening(o_port), "the origin (dadafsd)", o, olog)
        p, plog = start(
            "proxy",
            [str(BIN / "dadafsp"), "--listen", f"127.0.0.1:{p_port}", "--upstream", f"127.0.0.1:{o_port}",
             "--cache", f"{work / 'ssd0'}:1G", *common],
        )  # fmt: skip
        _wait(lambda: _listening(p_port), "the proxy (dadafsp)", p, plog)
        m, mlog = start(
            "mount",
            [str(BIN / "dadafs"), "mount", "--upstream", f"127.0.0.1:{p_port}", *common, str(mnt)],
        )
        _wait(lambda: _mounted(mnt), "the mount (dadafs mount)", m, mlog)
        print(f"tiers up: origin 127.0.0.1:{o_port} -> proxy 127.0.0.1:{p_port} -> mount {mnt}")
        yield key, f"127.0.0.1:{p_port}", mnt
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        if _mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="dadafs-demo", description=__doc__)
    ap.add_argument("-o", "--out", default="demo-out", help="where the map and the logs go")
    ap.add_argument("--horz", type=int, default=48)
    ap.add_argument("--vert", type=int, default=24)
    ap.add_argument("--frame", type=int, default=512, help="frame edge in pixels")
    args = ap.parse_args(argv)

    import trio

    from dadafs.auth import load_key
    from dadafs.stats import fetch_stats
    from workers import api, output, synth

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dadafs-demo-"))
    try:
        export = work / "export"
        t0 = time.monotonic()
        master = synth.write_eiger_scan(
            export / "scans", "demo", args.horz, args.vert, (args.frame, args.frame)
        )
        nbytes = sum(f.stat().st_size for f in master.parent.iterdir())
        print(f"generated an EigerX-format scan: {args.horz}x{args.vert} frames of {args.frame}x{args.frame}, "
              f"{nbytes / 1e6:.1f} MB in {time.monotonic() - t0:.1f} s")  # fmt: skip
        with _tiers(work, export) as (key, proxy, mnt):
            path = mnt / "beamline" / "scans" / master.name
            runs = []
            for label in ("cold (origin -> proxy -> client)", "warm (client cache)"):
                t = time.monotonic()
                res = api.stxm(
                    str(path), horz=args.horz, vert=args.vert, algo="brightfield", signal="Itot"
                )
                dt = time.monotonic() - t
                runs.append(dt)
                print(
                    f"map {label}: {args.horz * args.vert / dt:.0f} frames/s, {nbytes / dt / 1e6:.0f} MB/s read"
                )
            png = out / "demo_Itot.png"
            output.write(res, "Itot", "png", png, palette_name="percept", zoom=8)
            s = trio.run(fetch_stats, proxy, load_key(key))
            src = s["source"]
            print(f"map written to {png}")
            print(
                f"throughput: {nbytes / runs[0] / 1e6:.0f} MB/s cold, {nbytes / runs[1] / 1e6:.0f} MB/s warm"
            )
            print(
                "proxy counters:",
                json.dumps({k: src[k] for k in ("hits", "misses", "bytes_served")}),
            )
            truth = synth.ground_truth(args.horz, args.vert)
            import numpy as np

            corr = float(np.corrcoef(res.maps["Itot"].ravel(), truth.ravel())[0, 1])
            print(f"correlation of the map with the scan's ground truth: {abs(corr):.4f}")
        print(f"all tiers stopped, nothing left mounted; logs in {out}")
    except BaseException:
        for name in ("origin", "proxy", "mount"):
            log = work / f"{name}.log"
            if log.exists():
                print(f"--- {name} log (last lines) ---", file=sys.stderr)
                print(
                    "\n".join(log.read_text(errors="replace").splitlines()[-15:]), file=sys.stderr
                )
        raise
    finally:
        for name in ("origin", "proxy", "mount"):
            if (work / f"{name}.log").exists():
                shutil.copy(work / f"{name}.log", out / f"{name}.log")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
    os._exit(0)
