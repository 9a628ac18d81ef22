"""The result cache (real files in a directory) and the job layer in this process: round trips,
corrupt and truncated entries, the byte bound with least-recently-used eviction, atomic writes,
resuming from per-line partials, super-grid specs (ranges, globs, grids) and stitching."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from workers import api, engine, output
from workers.jobs import JobReport, LocalBackend, run_job, split_lines
from workers.request import BadParameter, parse_request
from workers.resultcache import ResultCache, parse_size
from workers.supergrid import expand_ranges, expand_specs, make_grid, parse_grid
from workers.synth import write_eiger_scan

H, V = 6, 5


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("scans")
    return [
        write_eiger_scan(d, f"s{k}", H, V, shape=(32, 24), seed=k, flux=1e4 * (k + 1))
        for k in range(4)
    ]


def entry(cache: ResultCache, key: str) -> Path:
    return cache.dir / key[:2] / f"{key}.dres"


def test_result_and_partial_round_trip(scans: list[Path], tmp_path: Path) -> None:
    req = parse_request(str(scans[0]), {"horz": H, "vert": V, "algo": "radial",
                                        "radial": "14,13;0,12;5"})  # fmt: skip
    res = engine.run(req, threads=1)
    cache = ResultCache(tmp_path / "rc", 1 << 20)
    assert cache.get_result(req, "v1") is None
    cache.put_result(res, "v1")
    got = cache.get_result(req, "v1")
    assert got is not None and got.request == req
    for name, a in res.maps.items():
        np.testing.assert_array_equal(got.maps[name], a)
    np.testing.assert_array_equal(got.axes["q"], res.axes["q"])
    assert cache.get_result(req, "v2") is None  # another input version: another entry
    part = engine.compute(req, range(1, 4))
    cache.put_partial(req, "v1", part)
    lines = [cache.get_line(req, "v1", j) for j in range(V)]
    assert [p is not None for p in lines] == [False, True, True, True, False]
    back = engine.assemble(req, [engine.compute(req, range(0, 1)), engine.compute(req, range(4, 5))]
                           + [p for p in lines if p is not None])  # fmt: skip
    for name, a in res.maps.items():
        np.testing.assert_array_equal(back.maps[name], a)
    cache.drop_lines(req, "v1")
    assert all(cache.get_line(req, "v1", j) is None for j in range(V))
    assert not list((tmp_path / "rc" / "tmp").iterdir())  # every write renamed into place


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "other_request"])
def test_corrupt_entry_is_discarded(scans: list[Path], tmp_path: Path, damage: str) -> None:
    req = parse_request(str(scans[0]), {"horz": H, "vert": V})
    other = parse_request(str(scans[1]), {"horz": H, "vert": V})
    cache = ResultCache(tmp_path / "rc", 1 << 20)
    cache.put_result(engine.run(req, threads=1), "v")
    path = entry(cache, ResultCache.result_key(req, "v"))
    blob = bytearray(path.read_bytes())
    if damage == "flip":
        blob[-3] ^= 0x01
    elif damage == "truncate":
        del blob[len(blob) // 2 :]
    elif damage == "empty":
        blob = bytearray()
    else:  # a valid entry of another request under this key (a misplaced file)
        cache.put_result(engine.run(other, threads=1), "v")
        blob = bytearray(entry(cache, ResultCache.result_key(other, "v")).read_bytes())
    path.write_bytes(bytes(blob))
    assert cache.get_result(req, "v") is None
    assert cache.stats.corrupt == 1 and not path.exists()


def test_bounded_with_lru_eviction(scans: list[Path], tmp_path: Path) -> None:
    reqs = [parse_request(str(s), {"horz": H, "vert": V}) for s in scans]
    results = [engine.run(r, threads=1) for r in reqs]
    probe = ResultCache(tmp_path / "probe", 1 << 20)
    probe.put_result(results[0], "v")
    size = probe.total_bytes()
    cache = ResultCache(tmp_path / "rc", 3 * size + size // 2)  # room for three
    for k in range(3):
        cache.put_result(results[k], "v")
        os.utime(entry(cache, cache.result_key(reqs[k], "v")), ns=(k, k))  # distinct ages
    assert cache.get_result(reqs[0], "v") is not None  # a hit makes entry 0 the youngest
    cache.put_result(results[3], "v")
    assert cache.total_bytes() <= cache.max_bytes
    present = [cache.get_result(r, "v") is not None for r in reqs]
    assert present == [True, False, True, True]  # entry 1, least recently used, went
    assert cache.stats.evicted == 1
    # a second process's view of the same directory keeps the bound too
    other = ResultCache(tmp_path / "rc", 2 * size + size // 2)
    other.put_result(results[1], "v")
    assert other.total_bytes() <= other.max_bytes


def test_parse_size() -> None:
    assert parse_size("10G") == 10 << 30 and parse_size("512M") == 512 << 20
    assert parse_size("4096") == 4096 and parse_size("1.5K") == 1536
    with pytest.raises(BadParameter, match="bad size"):
        parse_size("ten")


def test_job_resumes_from_line_partials_in_this_process(scans: list[Path], tmp_path: Path) -> None:
    grid = make_grid([str(scans[0])], {"horz": H, "vert": V}, None)
    req = grid.tiles[0]
    cache = ResultCache(tmp_path / "rc", 1 << 20)
    version = engine.input_version(req)
    cache.put_partial(req, version, engine.compute(req, range(1, 3)))  # as if stopped half-way
    rep = JobReport()
    res = run_job(grid, LocalBackend(2), cache, lines_per_task=2, report=rep)
    assert (rep.lines_cached, rep.tasks) == (2, 2)  # lines 0 and 3..4 were computed
    ref = api.stxm(str(scans[0]), horz=H, vert=V)
    for name, a in ref.maps.items():
        np.testing.assert_array_equal(res.maps[name], a)
    rep2 = JobReport()
    run_job(grid, LocalBackend(2), cache, report=rep2)
    assert (rep2.scans_cached, rep2.tasks) == (1, 0)
    assert all(cache.get_line(req, version, j) is None for j in range(V))  # dropped once whole


def test_split_lines() -> None:
    assert split_lines([0, 1, 2, 3, 4], 2) == [range(0, 2), range(2, 4), range(4, 5)]
    assert split_lines([0, 2, 3, 7], 5) == [range(0, 1), range(2, 4), range(7, 8)]
    assert split_lines([], 3) == []


def test_specs_ranges_globs_grid(scans: list[Path]) -> None:
    assert expand_ranges("a{8..10}b") == ["a8b", "a9b", "a10b"]
    assert expand_ranges("t{008..010}") == ["t008", "t009", "t010"]
    assert expand_ranges("{1..2}{1..2}") == ["11", "12", "21", "22"]
    assert expand_ranges("stxm/i/r/d/s/{1..2}/0?horz=3") == [
        "stxm/i/r/d/s/1/0?horz=3",
        "stxm/i/r/d/s/2/0?horz=3",
    ]
    d = scans[0].parent
    assert expand_specs([f"{d}/s*_master.h5?first=0"]) == [f"{s}?first=0" for s in scans]
    with pytest.raises(BadParameter, match="no scan matches"):
        expand_specs([f"{d}/none*.h5"])
    with pytest.raises(BadParameter, match="A <= B"):
        expand_ranges("{3..1}")
    assert parse_grid("19x19") == (19, 19) and parse_grid("4X2") == (4, 2)
    for bad in ("19", "0x3", "axb"):
        with pytest.raises(BadParameter, match="COLSxROWS"):
            parse_grid(bad)
    with pytest.raises(BadParameter, match="--grid"):
        make_grid([str(s) for s in scans], {"horz": H, "vert": V}, None)
    with pytest.raises(BadParameter, match="do not fit"):
        make_grid([str(s) for s in scans], {"horz": H, "vert": V}, "3x1")
    with pytest.raises(BadParameter, match="agree on vert"):
        make_grid([f"{scans[0]}?vert={V}", f"{scans[1]}?vert=4"], {"horz": H}, "2x1")


def test_grid_stitched_with_nan_for_missing_tiles(scans: list[Path], tmp_path: Path) -> None:
    grid = make_grid([str(s) for s in scans[:3]], {"horz": H, "vert": V, "signal": "Itot"}, "2x2")
    res = run_job(grid, LocalBackend(2), None, lines_per_task=3)
    assert res["Itot"].shape == (2 * V, 2 * H)
    for k in range(3):
        r, c = divmod(k, 2)
        ref = api.stxm(str(scans[k]), horz=H, vert=V, signal="Itot")["Itot"]
        np.testing.assert_array_equal(res["Itot"][r * V : (r + 1) * V, c * H : (c + 1) * H], ref)
    assert np.isnan(res["Itot"][V:, H:]).all()
    assert res.request.canonical().startswith(f"grid=2x2 | {grid.tiles[0].canonical()} | ")
    output.write(res, "Itot", "ascii", tmp_path / "grid.txt")  # the writers take a grid too
    text = (tmp_path / "grid.txt").read_text().splitlines()
    header = [line for line in text if line.startswith("#")]
    assert header[0] == f"# request {res.request.canonical()}"
    assert len(text) - len(header) == 2 * V
