"""Per-core throughput of the dada engine on the real EigerX 4M frame (bitshuffle-LZ4), repeated
into a scan, with decompression alone, h5py's filter path and pyFAI's CSR integrate1d measured
on the same frames in the same run. Run pinned to one core (``taskset``) with
``OMP_NUM_THREADS=1`` by tests/test_bench_workers.py; prints one JSON object.

    python tests/bench_workers.py SCAN_DIR REAL_FILE NFRAMES ROUNDS
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import h5py  # noqa: E402
import numpy as np  # noqa: E402

from workers import engine  # noqa: E402
from workers.formats import open_source  # noqa: E402
from workers.request import Request, parse_request  # noqa: E402
from workers.synth import write_repeated_scan  # noqa: E402

PIXEL = 75e-6
CX, CY = 1035.3, 1083.7  # near the frame's centre
RADIAL = f"{CX},{CY};0,1500;500"


def rate(fn: Callable[[], None], frames: int, rounds: int) -> tuple[float, list[float]]:
    """Median frames per second of ``rounds`` runs of ``fn`` over ``frames`` frames."""
    fn()  # warm: compile, plan, page cache
    fps = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        fps.append(frames / (time.perf_counter() - t0))
    return statistics.median(fps), fps


def main() -> None:
    scan_dir, real, n, rounds = (
        Path(sys.argv[1]),
        Path(sys.argv[2]),
        int(sys.argv[3]),
        int(sys.argv[4]),
    )
    master = write_repeated_scan(scan_dir, "bench", real, n, frames_per_file=max(1, n // 2))
    src = open_source(master)
    buf = np.empty(src.shape, np.uint32)
    out: dict[str, object] = {"frames": n, "rounds": rounds, "shape": list(src.shape)}

    def decompress() -> None:
        for i in range(n):
            src.read_into(i, buf)

    out["decompress"] = rate(decompress, n, rounds)[0]

    with h5py.File(master, "r") as f:
        dsets = [f[f"entry/data/{k}"] for k in sorted(f["entry/data"])]

        def h5py_filter() -> None:
            for ds in dsets:
                for i in range(ds.shape[0]):
                    ds.read_direct(buf, np.s_[i])

        out["h5py_filter"] = rate(h5py_filter, n, rounds)[0]

    algos = {
        "brightfield": {},
        "polarroi": {"polarroi": f"{CX},{CY};100,900;-45,45"},
        "radial500": {"algo": "radial", "radial": RADIAL},
        "gridroi4x4": {"gridroi": "0,0,517,541;4,4"},
    }
    for name, params in algos.items():
        p = {"algo": name.rstrip("0123456789x"), **params}
        req = parse_request(str(master), {"horz": n, "vert": 1, **p})

        def run(req: Request = req) -> None:
            engine.compute(req, threads=1)

        out[name] = rate(run, n, rounds)[0]

    # kernel-only times on one decompressed frame (ms)
    plan = engine.plan(
        parse_request(str(master), {"horz": n, "vert": 1, "algo": "radial", "radial": RADIAL})
    )
    frame = plan.pipeline.load(0, plan.pipeline.new_buffer())
    res = plan.algorithm.new_buffers(1, 1)
    t = []
    for _ in range(max(10, rounds * 5)):
        t0 = time.perf_counter()
        plan.algorithm.process(frame, plan.pipeline.bad, res, (0, 0), {})
        t.append(time.perf_counter() - t0)
    out["radial500_kernel_ms"] = statistics.median(t) * 1e3
    ours_I = res["I"][0, 0].copy()

    # pyFAI CSR integrate1d on the same frames: same centre, same range and bins, same mask
    import pyFAI.detectors
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    h, w = src.shape
    det = pyFAI.detectors.Detector(PIXEL, PIXEL, max_shape=(h, w))
    ai = AzimuthalIntegrator(
        dist=0.2, poni1=(CY + 0.5) * PIXEL, poni2=(CX + 0.5) * PIXEL, detector=det, wavelength=1e-10
    )
    mask = src.read(0) == np.uint32(0xFFFFFFFF)
    kw = dict(
        npt=500,
        unit="r_mm",
        radial_range=(0.0, 1500 * PIXEL * 1e3),
        mask=mask,
        correctSolidAngle=False,
        polarization_factor=None,
    )
    for label, method in (
        ("pyfai_csr_bbox", ("bbox", "csr", "cython")),
        ("pyfai_csr_nosplit", ("no", "csr", "cython")),
    ):

        def integrate(method: tuple[str, str, str] = method) -> None:
            for i in range(n):
                ai.integrate1d(src.read_into(i, buf), method=method, **kw)

        out[label] = rate(integrate, n, rounds)[0]
        t = []
        for _ in range(max(5, rounds * 2)):
            t0 = time.perf_counter()
            r = ai.integrate1d(frame, method=method, **kw)
            t.append(time.perf_counter() - t0)
        out[f"{label}_kernel_ms"] = statistics.median(t) * 1e3
        if label == "pyfai_csr_nosplit":
            ok = np.isfinite(ours_I) & (r.intensity > 0)
            out["radial_vs_pyfai_nosplit_max_rel_diff"] = float(
                np.max(np.abs(ours_I[ok] - r.intensity[ok]) / r.intensity[ok])
            )
    src.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
