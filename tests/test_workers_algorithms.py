"""Every algorithm and pre-processing step against a plain numpy reference, on hypothesis-made
frames and parameters. Frames go through the real engine (``make_plan`` + ``execute``) from an
in-memory source; file formats are tested in test_workers_formats.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from workers.engine import execute, make_plan
from workers.formats.memory import ArraySource
from workers.request import BadParameter, parse_request
from workers.result import assemble

BAD = np.uint32(0xFFFFFFFF)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---- plain numpy references ------------------------------------------------------------------


def ref_frame(raw: np.ndarray, mask: np.ndarray | None, p: dict[str, Any]) -> np.ndarray:
    """Mask -> ROI -> binning, as float64 with NaN for bad pixels."""
    f = raw.astype(np.float64)
    if p.get("mask") != (0,):
        f[raw == BAD] = np.nan
        if mask is not None:
            f[mask] = np.nan
    if "roi" in p:
        x, y, w, h = p["roi"]
        f = f[y : y + h, x : x + w]
    if "binning" in p:
        bh, bv = p["binning"]
        oh, ow = f.shape[0] // bv, f.shape[1] // bh
        blocks = f[: oh * bv, : ow * bh].reshape(oh, bv, ow, bh)
        valid = np.isfinite(blocks).any(axis=(1, 3))
        f = np.where(valid, np.nansum(blocks, axis=(1, 3)), np.nan)
    return f


def ref_brightfield(f: np.ndarray) -> dict[str, float]:
    y, x = np.mgrid[: f.shape[0], : f.shape[1]]
    ok = np.isfinite(f)
    itot = float(f[ok].sum())
    return {
        "Itot": itot,
        "Imax": float(f[ok].max()) if ok.any() else np.nan,
        "comh": float((f[ok] * x[ok]).sum() / itot) if itot else np.nan,
        "comv": float((f[ok] * y[ok]).sum() / itot) if itot else np.nan,
    }


def ref_sector(phi: np.ndarray, p0: float, p1: float) -> np.ndarray:
    """phi in the sector from p0 counter-clockwise to p1, written with explicit cases."""
    if abs(p1 - p0) >= 360:
        return np.ones(phi.shape, bool)
    lo = p0 % 360
    hi = lo + (p1 - p0) % 360
    a = phi % 360
    return ((a >= lo) & (a < hi)) | ((a + 360 >= lo) & (a + 360 < hi))


def run_engine(frames: np.ndarray, mask: np.ndarray | None, params: dict[str, Any]):
    n = frames.shape[0]
    req = parse_request("/mem", {"horz": n, "vert": 1, **params})
    plan = make_plan(req, ArraySource(frames, mask))
    return assemble(req, [execute(plan, threads=2)])


# ---- strategies -------------------------------------------------------------------------------


@st.composite
def scene(draw: st.DrawFn, min_side: int = 1, max_side: int = 24) -> tuple[np.ndarray, Any]:
    """A stack of 1-3 uint32 frames with dynamic bad pixels, and maybe a static mask."""
    h = draw(st.integers(min_side, max_side))
    w = draw(st.integers(min_side, max_side))
    n = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, draw(st.sampled_from([2, 50, 100_000])), (n, h, w)).astype(np.uint32)
    frames[rng.random(frames.shape) < draw(st.sampled_from([0.0, 0.05, 0.3]))] = BAD
    mask = rng.random((h, w)) < 0.1 if draw(st.booleans()) else None
    if mask is not None and draw(st.booleans()):
        mask[rng.integers(0, h), :] = True  # a full gap row
        mask[:, rng.integers(0, w)] = True  # and column
    return frames, mask


@st.composite
def roi_binning(draw: st.DrawFn, shape: tuple[int, int]) -> dict[str, Any]:
    h, w = shape
    p: dict[str, Any] = {}
    if draw(st.booleans()):
        x = draw(st.integers(0, w - 1))
        y = draw(st.integers(0, h - 1))
        p["roi"] = (x, y, draw(st.integers(1, w - x)), draw(st.integers(1, h - y)))
    rw, rh = (p["roi"][2], p["roi"][3]) if "roi" in p else (w, h)
    if draw(st.booleans()):
        p["binning"] = (draw(st.integers(1, min(4, rw))), draw(st.integers(1, min(4, rh))))
    if draw(st.integers(0, 4)) == 0:
        p["mask"] = (0,)  # masking off: 2^32-1 counts as a value
    return p


def close(a: Any, b: Any) -> bool:
    return bool(np.allclose(a, b, rtol=1e-9, atol=1e-9, equal_nan=True))


# ---- tests ------------------------------------------------------------------------------------


@SETTINGS
@given(data=st.data())
def test_brightfield_with_mask_roi_binning(data: st.DataObject) -> None:
    frames, mask = data.draw(scene())
    p = data.draw(roi_binning(frames.shape[1:]))
    params = {k: ",".join(map(str, v)) for k, v in p.items()}
    res = run_engine(frames, mask, params)
    for k in range(frames.shape[0]):
        ref = ref_brightfield(ref_frame(frames[k], mask, p))
        for s, v in ref.items():
            got = res.maps[s][0, k]
            if s == "Imax" and ref["Itot"] == 0 and "binning" not in p:
                continue  # all-zero or all-bad: the uint32 kernel reports 0 where numpy says 0/NaN
            assert close(got, v), (s, got, v)


def test_brightfield_com_of_a_known_spot() -> None:
    frame = np.zeros((1, 40, 50), np.uint32)
    frame[0, 13, 31] = 1000  # x=31, y=13
    res = run_engine(frame, None, {})
    assert res.maps["comh"][0, 0] == 31 and res.maps["comv"][0, 0] == 13
    y, x = np.indices((40, 50))
    spot = np.exp(-((x - 21.25) ** 2 + (y - 17.5) ** 2) / 8) * 1e6
    res = run_engine(spot.astype(np.uint32)[None], None, {})
    assert abs(res.maps["comh"][0, 0] - 21.25) < 0.01
    assert abs(res.maps["comv"][0, 0] - 17.5) < 0.01


@SETTINGS
@given(data=st.data())
def test_empty_diff_and_stack(data: st.DataObject) -> None:
    frames, mask = data.draw(scene())
    h, w = frames.shape[1:]
    extra = np.random.default_rng(1).integers(1, 30, (3, h, w)).astype(np.uint32)
    stack = np.concatenate([extra, frames, frames[::-1]])  # frames 0..2: empty/diff candidates
    p = data.draw(roi_binning((h, w)))
    params: dict[str, Any] = {k: ",".join(map(str, v)) for k, v in p.items()}
    use_empty = data.draw(st.booleans())
    use_diff = data.draw(st.booleans())
    n = data.draw(st.integers(1, 2))
    op = data.draw(st.sampled_from(["sum", "avg", "min", "max"]))
    if use_empty:
        params["empty"] = 0
    if use_diff:
        params["diff"] = 1
    params["stack"] = f"{n},{op}"
    params["first"] = 3
    npoints = (stack.shape[0] - 3) // n
    req = parse_request("/mem", {"horz": npoints, "vert": 1, **params})
    res = assemble(req, [execute(make_plan(req, ArraySource(stack, mask)))])

    def pre(k: int) -> np.ndarray:
        f = ref_frame(stack[k], mask, p)
        if use_empty:
            e = ref_frame(stack[0], mask, p)
            f = f / np.where(e > 0, e, np.nan)
        return f

    for pt in range(npoints):
        fs = [pre(3 + pt * n + k) for k in range(n)]
        if use_diff:
            fs = [f - pre(1) for f in fs]
        ops: dict[str, Callable[..., np.ndarray]] = {
            "sum": np.sum,
            "avg": np.mean,
            "min": np.min,
            "max": np.max,
        }
        combined = ops[op](fs, axis=0)
        ref = ref_brightfield(combined)
        for s in ("Itot", "comh", "comv"):
            assert close(res.maps[s][0, pt], ref[s]), (s, res.maps[s][0, pt], ref[s])


@SETTINGS
@given(data=st.data())
def test_polarroi_against_reference(data: st.DataObject) -> None:
    frames, mask = data.draw(scene(min_side=4))
    p = data.draw(roi_binning(frames.shape[1:]))
    fh, fw = ref_frame(frames[0], mask, p).shape
    cx = data.draw(st.floats(-5, fw + 5)) + 0.137
    cy = data.draw(st.floats(-5, fh + 5)) + 0.291
    q0 = data.draw(st.floats(0, 10))
    q1 = q0 + data.draw(st.floats(0.5, 30))
    p0 = data.draw(st.sampled_from([-180.0, -170.0, -10.0, 0.0, 45.0, 170.0, 179.0]))
    p1 = p0 + data.draw(st.sampled_from([10.0, 20.0, 90.0, 200.0, 360.0]))
    if data.draw(st.booleans()) and p1 > 180:
        p1 -= 360  # the same sector written across +-180 (e.g. 170..-170)
    params = {k: ",".join(map(str, v)) for k, v in p.items()}
    params["algo"] = "polarroi"
    params["polarroi"] = f"{cx!r},{cy!r};{q0!r},{q1!r};{p0!r},{p1!r}"
    res = run_engine(frames, mask, params)
    for k in range(frames.shape[0]):
        f = ref_frame(frames[k], mask, p)
        y, x = np.mgrid[: f.shape[0], : f.shape[1]]
        q = np.hypot(x - cx, y - cy)
        phi = np.degrees(np.arctan2(y - cy, x - cx))
        region = (q >= q0) & (q < q1) & ref_sector(phi, p0, p1) & np.isfinite(f)
        itot = f[region].sum()
        assert close(res.maps["Itot"][0, k], itot)
        assert close(res.maps["Imean"][0, k], itot / region.sum() if region.any() else np.nan)
        if itot:
            assert close(res.maps["comh"][0, k], (f[region] * x[region]).sum() / itot)
            assert close(res.maps["comv"][0, k], (f[region] * y[region]).sum() / itot)


def test_polarroi_sector_across_180_and_0() -> None:
    frame = np.ones((1, 41, 41), np.uint32)
    c = "20.0,20.0"
    full = run_engine(frame, None, {"algo": "polarroi", "polarroi": f"{c};1,15;-180,180"})
    left = run_engine(frame, None, {"algo": "polarroi", "polarroi": f"{c};1,15;90,-90"})
    right = run_engine(frame, None, {"algo": "polarroi", "polarroi": f"{c};1,15;-90,90"})
    assert left.maps["Itot"][0, 0] + right.maps["Itot"][0, 0] == full.maps["Itot"][0, 0]
    assert left.maps["comh"][0, 0] < 20 < right.maps["comh"][0, 0]  # across 180 / across 0
    # half-open sectors: the column x=20 below the centre (phi=90) belongs to "left" only
    assert 20 < left.maps["comv"][0, 0] < 20.5 and 19.5 < right.maps["comv"][0, 0] < 20


@SETTINGS
@given(data=st.data())
def test_radial_against_histogram(data: st.DataObject) -> None:
    frames, mask = data.draw(scene(min_side=3))
    p = data.draw(roi_binning(frames.shape[1:]))
    fh, fw = ref_frame(frames[0], mask, p).shape
    cx = data.draw(st.floats(-3, fw + 3)) + 0.173
    cy = data.draw(st.floats(-3, fh + 3)) + 0.311
    q0 = data.draw(st.floats(0, 5))
    q1 = q0 + data.draw(st.floats(1, 40))
    nq = data.draw(st.integers(1, 50))
    params = {k: ",".join(map(str, v)) for k, v in p.items()}
    params.update(algo="radial", radial=f"{cx!r},{cy!r};{q0!r},{q1!r};{nq}")
    res = run_engine(frames, mask, params)
    edges = np.linspace(q0, q1, nq + 1)
    for k in range(frames.shape[0]):
        f = ref_frame(frames[k], mask, p)
        y, x = np.mgrid[: f.shape[0], : f.shape[1]]
        q = np.hypot(x - cx, y - cy)
        ok = np.isfinite(f)
        # pixels within rounding of a bin edge may fall either side: leave such cases out
        assume(np.abs(q[..., None] - edges).min() > 1e-9)
        counts, _ = np.histogram(q[ok], bins=edges)
        sums, _ = np.histogram(q[ok], bins=edges, weights=f[ok])
        assert close(res.maps["Isum"][0, k], sums)
        with np.errstate(invalid="ignore", divide="ignore"):
            assert close(res.maps["I"][0, k], np.where(counts > 0, sums / counts, np.nan))
    np.testing.assert_allclose(res.axes["q"], (edges[:-1] + edges[1:]) / 2)


def test_radial_bin_counts_of_a_flat_frame() -> None:
    frame = np.ones((1, 101, 101), np.uint32)
    res = run_engine(frame, None, {"algo": "radial", "radial": "50.3,50.1;0,50;25"})
    y, x = np.indices((101, 101))
    counts, _ = np.histogram(np.hypot(x - 50.3, y - 50.1), bins=25, range=(0, 50))
    np.testing.assert_array_equal(res.maps["Isum"][0, 0], counts)
    np.testing.assert_array_equal(res.maps["I"][0, 0], np.ones(25))


@SETTINGS
@given(data=st.data())
def test_gridroi_against_reference(data: st.DataObject) -> None:
    frames, mask = data.draw(scene(min_side=2))
    p = data.draw(roi_binning(frames.shape[1:]))
    fh, fw = ref_frame(frames[0], mask, p).shape
    w = data.draw(st.integers(1, fw))
    h = data.draw(st.integers(1, fh))
    px = data.draw(st.integers(1, fw))
    py = data.draw(st.integers(1, fh))
    nx = data.draw(st.integers(1, max(1, (fw - w) // px + 1)))
    ny = data.draw(st.integers(1, max(1, (fh - h) // py + 1)))
    x0 = data.draw(st.integers(0, fw - ((nx - 1) * px + w)))
    y0 = data.draw(st.integers(0, fh - ((ny - 1) * py + h)))
    params = {k: ",".join(map(str, v)) for k, v in p.items()}
    params.update(algo="gridroi", gridroi=f"{x0},{y0},{w},{h};{nx},{ny};{px},{py}")
    res = run_engine(frames, mask, params)
    assert res.maps["Itot"].shape == (1, frames.shape[0], ny, nx)
    for k in range(frames.shape[0]):
        f = ref_frame(frames[k], mask, p)
        for j in range(ny):
            for i in range(nx):
                cell = np.full(f.shape, np.nan)
                ys, xs = slice(y0 + j * py, y0 + j * py + h), slice(x0 + i * px, x0 + i * px + w)
                cell[ys, xs] = f[ys, xs]
                ref = ref_brightfield(cell)
                for s in ("Itot", "comh", "comv"):
                    expect = ref[s] if (s == "Itot" or ref["Itot"]) else np.nan
                    assert close(res.maps[s][0, k, j, i], expect), (s, j, i)


def test_gridroi_outside_frame_is_one_clear_line() -> None:
    with pytest.raises(BadParameter, match=r"outside the 10x8 frame"):
        run_engine(
            np.ones((1, 8, 10), np.uint32), None, {"algo": "gridroi", "gridroi": "0,0,5,5;3,1"}
        )


def test_float_frames_use_nan_as_bad() -> None:
    f = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    f[0, 1, 1] = np.nan
    res = run_engine(f, None, {})
    ref = ref_brightfield(f[0].astype(np.float64))
    for s, v in ref.items():
        assert close(res.maps[s][0, 0], v)


def test_masking_off_keeps_bad_values() -> None:
    f = np.ones((1, 2, 2), np.uint32)
    f[0, 0, 0] = BAD
    mask = np.array([[False, True], [False, False]])
    on = run_engine(f, mask, {})
    off = run_engine(f, mask, {"mask": "0"})
    assert on.maps["Itot"][0, 0] == 2
    assert off.maps["Itot"][0, 0] == 3 + float(BAD)


@pytest.mark.parametrize("unit", ["2th_deg", "q_nm^-1"])
def test_radial_with_poni_calibration(tmp_path: Any, unit: str) -> None:
    import pyFAI.detectors
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    h, w, pix, dist, wl = 40, 50, 75e-6, 0.05, 1e-10
    det = pyFAI.detectors.Detector(pix, pix, max_shape=(h, w))
    poni1, poni2 = 20.3 * pix, 25.1 * pix
    AzimuthalIntegrator(dist=dist, poni1=poni1, poni2=poni2, detector=det, wavelength=wl).save(
        str(tmp_path / "geo.poni")
    )
    frames = np.random.default_rng(2).integers(0, 1000, (2, h, w)).astype(np.uint32)
    frames[0, 3, 4] = BAD
    # independent geometry: flat detector normal to the beam, pixel centres at (i + 0.5) * pix
    y, x = np.mgrid[:h, :w]
    tth = np.arctan(np.hypot((x + 0.5) * pix - poni2, (y + 0.5) * pix - poni1) / dist)
    value = np.degrees(tth) if unit == "2th_deg" else 4 * np.pi / (wl * 1e9) * np.sin(tth / 2)
    lo, hi = float(value.min()) * 0.999, float(value.max()) * 0.9  # no pixel on an edge
    params = {
        "algo": "radial",
        "poni": str(tmp_path / "geo.poni"),
        "unit": unit,
        "radial": f"{lo!r},{hi!r};17",
    }
    res = run_engine(frames, None, params)
    edges = np.linspace(lo, hi, 18)
    for k in range(2):
        f = ref_frame(frames[k], None, {})
        ok = np.isfinite(f)
        counts, _ = np.histogram(value[ok], bins=edges)
        sums, _ = np.histogram(value[ok], bins=edges, weights=f[ok])
        np.testing.assert_allclose(res.maps["Isum"][0, k], sums)
        np.testing.assert_allclose(res.maps["I"][0, k], sums / counts)


def test_radial_poni_syntax() -> None:
    with pytest.raises(BadParameter, match="radial=minq,maxq;numq needs poni="):
        parse_request("/d", {"horz": 1, "vert": 1, "algo": "radial", "radial": "0,1;5"})
    with pytest.raises(BadParameter, match="unit=2th_deg needs a poni= calibration"):
        parse_request(
            "/d", {"horz": 1, "vert": 1, "algo": "radial", "radial": "1,1;0,1;5", "unit": "2th_deg"}
        )
