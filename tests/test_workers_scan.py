"""Whole scans through the engine: ground truth of a generated EigerX scan, line-range partials
merged in any order, threads, dada URLs through a layout file, the request's canonical form."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers import api, engine
from workers.request import BadParameter, Request, parse_request
from workers.result import assemble
from workers.synth import ground_truth, write_eiger_scan

H, V = 36, 14


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_eiger_scan(
        tmp_path_factory.mktemp("scan"), "letters", H, V, shape=(96, 112), frames_per_file=50
    )


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_generated_scan_recovers_its_ground_truth(scan: Path) -> None:
    res = api.stxm(str(scan), horz=H, vert=V, threads=2)
    letters = ground_truth(H, V)
    assert res["Itot"].shape == (V, H)
    assert corr(res["Itot"], 1 - letters) >= 0.99  # transmission
    assert corr(res["comh"], letters) >= 0.99  # the letters deflect the beam
    # with masking off, the gap pixels (2^32-1) swamp every sum
    raw = api.stxm(str(scan), horz=H, vert=V, mask=0, signal="Itot")
    assert raw["Itot"].min() > 1e9 > res["Itot"].max()


def test_partials_in_any_order_equal_the_whole(scan: Path) -> None:
    req = parse_request(
        str(scan),
        {"horz": H, "vert": V, "algo": "radial", "radial": "67,40;0,40;16", "binning": "2,2"},
    )
    whole = engine.run(req, threads=1)
    parts = [engine.compute(req, range(a, b), threads=2) for a, b in ((9, 14), (0, 4), (4, 9))]
    parts = [pickle.loads(pickle.dumps(p)) for p in parts]  # as they travel between processes
    merged = assemble(req, parts)
    for s in ("I", "Isum"):
        np.testing.assert_array_equal(merged.maps[s], whole.maps[s])
    np.testing.assert_array_equal(merged.axes["q"], whole.axes["q"])
    with pytest.raises(ValueError, match=r"lines not computed: \[4, 5, 6, 7, 8\]"):
        assemble(req, parts[:2])
    with pytest.raises(ValueError, match="more than once"):
        assemble(req, [*parts, parts[0]])
    other = req.with_params(binning="1,1")
    with pytest.raises(ValueError, match="does not belong"):
        assemble(other, parts)
    with pytest.raises(ValueError, match="not a non-empty range"):
        engine.compute(req, range(10, 20))


def test_scan_too_short_for_its_shape(scan: Path) -> None:
    from workers.formats import FormatError

    with pytest.raises(FormatError, match=r"needs frames up to 575 but holds 504"):
        engine.compute(parse_request(str(scan), {"horz": H, "vert": 16}))


def test_dada_url_through_a_layout(scan: Path, tmp_path: Path) -> None:
    layout = tmp_path / "dada.toml"
    root = scan.parent.parent
    layout.write_text(
        f'root = "{root}"\n'
        "[detector.eiger]\n"
        'paths = ["{root}/nothing/{sample}_{scan}_master.h5", '
        f'"{{root}}/{scan.parent.name}/{{sample}}_master.h5"]\n'
    )
    url = f"stxm/cSAXS/run1/eiger/letters/7/0?horz={H}&vert={V}&signal=Itot"
    via_url = api.stxm(url, layout=str(layout))
    local = api.stxm(str(scan), horz=H, vert=V, signal="Itot")
    np.testing.assert_array_equal(via_url["Itot"], local["Itot"])
    assert via_url.request.scan == "stxm/cSAXS/run1/eiger/letters/7"
    with pytest.raises(BadParameter, match="detector 'pilatus' not in layout .*; known: eiger"):
        api.stxm(url.replace("/eiger/", "/pilatus/"), layout=str(layout))
    with pytest.raises(BadParameter, match="scan stxm/x/r/eiger/nope/1 not found; tried: "):
        api.stxm("stxm/x/r/eiger/nope/1/0", horz=2, vert=2, layout=str(layout))


def test_first_frame_offsets_the_scan(scan: Path) -> None:
    full = api.stxm(str(scan), horz=H, vert=V, signal="Itot")
    shifted = api.stxm(str(scan), horz=H, vert=V - 2, first=2 * H, signal="Itot")
    np.testing.assert_array_equal(shifted["Itot"], full["Itot"][2:])


# ---- the request ------------------------------------------------------------------------------

PARAMS = st.fixed_dictionaries(
    {"horz": st.integers(1, 50), "vert": st.integers(1, 50)},
    optional={
        "roi": st.tuples(
            st.integers(0, 9), st.integers(0, 9), st.integers(1, 99), st.integers(1, 99)
        ),
        "binning": st.tuples(st.integers(1, 4), st.integers(1, 4)),
        "empty": st.integers(0, 9),
        "stack": st.tuples(st.integers(1, 4), st.sampled_from(["sum", "avg", "min", "max"])),
        "mask": st.sampled_from(["0", "1"]),
        "radial": st.tuples(
            st.floats(-50, 50),
            st.floats(-50, 50),
            st.floats(0, 5),
            st.floats(6, 90),
            st.integers(1, 500),
        ),
    },
)


@settings(max_examples=80, deadline=None)
@given(params=PARAMS)
def test_request_canonical_round_trip(params: dict) -> None:
    if "radial" in params:
        params = {**params, "algo": "radial"}
    req = api.request("/data/scan_master.h5", **params)
    again = parse_request(req.canonical())
    assert again == req and hash(again) == hash(req) and again.key() == req.key()
    assert Request.from_json(req.to_json()) == req
    assert pickle.loads(pickle.dumps(req)) == req


def test_equal_requests_spelled_differently_are_equal() -> None:
    a = parse_request("/d/s.h5?horz=3&vert=2&binning=2&signal=comh,Itot")
    b = parse_request(
        "/d/../d/s.h5", {"vert": "2", "horz": 3, "binning": "2,2", "signal": "Itot,comh"}
    )
    assert a == b and a.canonical() == b.canonical()
    assert a.canonical() == "/d/s.h5?algo=brightfield&binning=2,2&horz=3&signal=Itot,comh&vert=2"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"algo": "dpc"}, "bad algo='dpc': one of brightfield, polarroi, radial, gridroi"),
        ({"signal": "Iq"}, "bad signal='Iq': brightfield gives Itot, Imax, comh, comv"),
        ({"roi": "1,2,3"}, "bad roi='1,2,3': x,y,w,h"),
        ({"binning": "0,2"}, "bad binning='0,2': h,v"),
        ({"stack": "3,median"}, "op one of sum, avg, min, max"),
        ({"algo": "radial"}, "algo=radial needs radial=cenx,ceny;minq,maxq;numq"),
        ({"algo": "radial", "radial": "1,2;5,3;10"}, "0 <= minq < maxq"),
        ({"radial": "1,2;0,3;10"}, "radial= only applies to algo=radial"),
        ({"algo": "gridroi", "gridroi": "0,0,4;2,2"}, "x,y,w,h;nx,ny[;px,py]"),
        ({"colour": "red"}, "unknown parameter 'colour'; valid parameters: algo, signal, horz"),
        ({"horz": "-1"}, "bad horz='-1': an integer >= 1"),
    ],
)
def test_bad_parameters_name_what_is_valid(params: dict, message: str) -> None:
    with pytest.raises(BadParameter) as e:
        parse_request("/d/s.h5", {"horz": 2, "vert": 2, **params})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_input_version_follows_every_input_file(tmp_path: Path) -> None:
    import os

    master = write_eiger_scan(tmp_path, "v", 4, 3, shape=(16, 16), frames_per_file=5)
    req = parse_request(str(master), {"horz": 4, "vert": 3})
    plan = engine.plan(req)
    assert [p.name for p in plan.source.files()] == [
        "v_master.h5", "v_data_000001.h5", "v_data_000002.h5", "v_data_000003.h5"
    ]  # fmt: skip
    v1 = engine.input_version(req)
    assert engine.input_version(req) == v1
    data = tmp_path / "v_data_000002.h5"
    st = data.stat()
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert engine.input_version(req) != v1
