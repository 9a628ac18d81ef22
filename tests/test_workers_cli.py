"""The real ``dada`` command in a subprocess: every output format read back and compared with
the Python API's result, ``dada show``, and one-line errors for bad parameters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from workers import api
from workers.synth import write_eiger_scan

DADA = str(Path(sys.executable).with_name("dada"))
H, V = 16, 6


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_eiger_scan(tmp_path_factory.mktemp("cli"), "c", H, V, shape=(64, 72))


def dada(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([DADA, *args], capture_output=True, text=True, timeout=120)
    if ok:
        assert r.returncode == 0, r.stderr
    return r


def test_tiff_raw_brightfield(scan: Path, tmp_path: Path) -> None:
    out = tmp_path / "itot.tif"
    dada(
        "stxm",
        str(scan),
        "--horz",
        str(H),
        "--vert",
        str(V),
        "--signal",
        "Itot",
        "--format",
        "tiff_raw",
        "-o",
        str(out),
    )
    ref = api.stxm(str(scan), horz=H, vert=V, signal="Itot")["Itot"]
    with tifffile.TiffFile(out) as t:
        got = t.asarray()
        meta = json.loads(getattr(t.pages[0], "description", ""))
    assert got.dtype == np.float32 and got.shape == (V, H)
    np.testing.assert_array_equal(got, ref.astype(np.float32))
    assert meta["signal"] == "Itot" and meta["request"].endswith("signal=Itot&vert=6")


def test_tiff_raw_radial_is_a_stack_of_q_planes(scan: Path, tmp_path: Path) -> None:
    out = tmp_path / "radial.tif"
    spec = f"{scan}?algo=radial&radial=43,27;0,30;12&horz={H}&vert={V}"
    dada("stxm", spec, "--signal", "I", "--format", "tiff_raw", "-o", str(out))
    ref = api.stxm(str(scan), horz=H, vert=V, algo="radial", radial="43,27;0,30;12")
    got = tifffile.imread(out)
    assert got.shape == (12, V, H)
    np.testing.assert_array_equal(got, np.moveaxis(ref["I"], 2, 0).astype(np.float32))


def test_json_holds_all_signals_and_flags_override_url(scan: Path, tmp_path: Path) -> None:
    out = tmp_path / "bf.json"
    dada(
        "stxm",
        f"{scan}?horz={H}&vert=99&roi=0,0,10,10",
        "--vert",
        str(V),
        "--roi",
        "8,4,50,40",
        "--binning",
        "2,3",
        "--format",
        "json",
        "-o",
        str(out),
    )
    doc = json.loads(out.read_text())
    ref = api.stxm(str(scan), horz=H, vert=V, roi="8,4,50,40", binning="2,3")
    assert sorted(doc["signals"]) == ["Imax", "Itot", "comh", "comv"]
    for s, d in doc["signals"].items():
        assert d["shape"] == [V, H]
        np.testing.assert_allclose(np.array(d["data"], dtype=float), ref[s], rtol=1e-15)


def test_ascii_gridroi_blocks(scan: Path, tmp_path: Path) -> None:
    out = tmp_path / "grid.txt"
    dada(
        "stxm",
        str(scan),
        "--horz",
        str(H),
        "--vert",
        str(V),
        "--algo",
        "gridroi",
        "--gridroi",
        "0,0,32,30;2,2",
        "--signal",
        "Itot",
        "--format",
        "ascii",
        "-o",
        str(out),
    )
    ref = api.stxm(
        str(scan), horz=H, vert=V, algo="gridroi", gridroi="0,0,32,30;2,2", signal="Itot"
    )["Itot"]
    text = out.read_text()
    assert text.count("# plane") == 4
    blocks = [b for b in text.split("\n\n")]
    for k, block in enumerate(blocks):
        rows = [line for line in block.splitlines() if not line.startswith("#")]
        got = np.array([[float(x) for x in r.split()] for r in rows])
        np.testing.assert_allclose(got, ref[:, :, k // 2, k % 2], rtol=1e-8)


@pytest.mark.parametrize("palette", ["gray", "wb", "percept", "hot"])
def test_png_palettes_and_scales(scan: Path, tmp_path: Path, palette: str) -> None:
    out = tmp_path / f"{palette}.png"
    dada(
        "stxm",
        str(scan),
        "--horz",
        str(H),
        "--vert",
        str(V),
        "--signal",
        "Itot",
        "--format",
        "png",
        "--palette",
        palette,
        "--scale",
        "log",
        "--zoom",
        "3",
        "-o",
        str(out),
    )
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape == (V * 3, H * 3, 3)
    ref = api.stxm(str(scan), horz=H, vert=V, signal="Itot")["Itot"]
    lum = img[::3, ::3].astype(float).sum(axis=2)
    # brighter map values are lighter (darker for wb) pixels: rank correlation
    r = np.corrcoef(np.argsort(np.argsort(lum.ravel())), np.argsort(np.argsort(ref.ravel())))[0, 1]
    assert (r < -0.9) if palette == "wb" else (r > 0.9)


def test_png_cmin_cmax_clip(scan: Path, tmp_path: Path) -> None:
    out = tmp_path / "clip.png"
    ref = api.stxm(str(scan), horz=H, vert=V, signal="Itot")["Itot"]
    mid = float(np.median(ref))
    dada(
        "stxm",
        str(scan),
        "--horz",
        str(H),
        "--vert",
        str(V),
        "--signal",
        "Itot",
        "--format",
        "png",
        "--cmin",
        str(mid),
        "--cmax",
        str(mid + 1),
        "--zoom",
        "1",
        "-o",
        str(out),
    )
    img = np.asarray(Image.open(out).convert("L"))
    assert set(np.unique(img[ref <= mid])) == {0} and set(np.unique(img[ref >= mid + 1])) == {255}


def test_show_frame_stack_and_multi(scan: Path, tmp_path: Path) -> None:
    one, stack, multi = tmp_path / "one.tif", tmp_path / "stack.tif", tmp_path / "multi.png"
    dada("show", str(scan), "--frame", "3", "--format", "tiff_raw", "-o", str(one))
    dada(
        "show",
        str(scan),
        "--frame",
        "3",
        "--stack",
        "4,max",
        "--format",
        "tiff_raw",
        "-o",
        str(stack),
    )
    dada(
        "show", str(scan), "--multi", "3,2", "--roi", "10,10,20,16", "--zoom", "1", "-o", str(multi)
    )
    import h5py

    with h5py.File(scan) as f:
        frames = f["entry/data/data_000001"][3:7].astype(np.float64)
    frames[frames == 2**32 - 1] = np.nan
    with h5py.File(scan) as f:
        mask = f["entry/instrument/detector/detectorSpecific/pixel_mask"][()] != 0
    frames[:, mask] = np.nan
    np.testing.assert_array_equal(tifffile.imread(one), frames[0].astype(np.float32))
    np.testing.assert_array_equal(tifffile.imread(stack), frames.max(axis=0).astype(np.float32))
    assert Image.open(multi).size == (3 * 21 - 1, 2 * 17 - 1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--algo", "dpc"], "bad algo='dpc': one of brightfield, polarroi, radial, gridroi"),
        (["--signal", "Iq"], "bad signal='Iq': brightfield gives Itot, Imax, comh, comv"),
        (["--roi", "0,0,500,10"], "roi=0,0,500,10 outside the 72x64 frame (width x height)"),
        (["--roi", "0,0;5"], "bad roi='0,0;5': x,y,w,h: four integers"),
        (
            ["--format", "bmp"],
            "invalid choice: 'bmp' (choose from 'tiff_raw', 'json', 'ascii', 'png')",
        ),
        (["--algo", "radial", "--radial", "1,2,3"], "cenx,ceny;minq,maxq;numq"),
        (
            ["--signal", "Itot,comh"],
            "format png writes one signal, got Itot,comh; use --format json",
        ),
    ],
)
def test_bad_parameters_give_one_line(
    scan: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    base = ["stxm", str(scan), "--horz", str(H), "--vert", str(V), "-o", str(tmp_path / "x.png")]
    if "--format" not in args:
        base += ["--format", "png"]
    r = dada(*base, *args, ok=False)
    assert r.returncode == 2
    assert message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "x.png").exists()


def test_progress_bar_and_url_only_parameters(scan: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    r = dada(
        "stxm",
        f"{scan}?horz={H}&vert={V}&algo=polarroi&polarroi=40,30;2,20;170,-170",
        "--format",
        "json",
        "--progress",
        "-o",
        str(out),
    )
    assert f"{H * V}/{H * V}" in r.stderr and "100%" in r.stderr
    doc = json.loads(out.read_text())
    assert "polarroi=40,30;2,20;170,-170" in doc["request"]
    ref = api.stxm(str(scan), horz=H, vert=V, algo="polarroi", polarroi="40,30;2,20;170,-170")
    np.testing.assert_allclose(np.array(doc["signals"]["Itot"]["data"], float), ref["Itot"])
    quiet = dada(
        "stxm", str(scan), "--horz", str(H), "--vert", str(V), "--format", "json", "-o", str(out)
    )
    assert quiet.stderr == ""  # no terminal, no bar
