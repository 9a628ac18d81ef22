"""Synthetic EigerX scans with a known ground truth, written as Dectris writes them.

Layout: ``NAME_master.h5`` holds metadata, ``entry/instrument/detector/detectorSpecific/
pixel_mask`` and external links ``entry/data/data_000001 ...`` to ``NAME_data_000001.h5 ...``,
each with ``entry/data/data`` (frames, H, W) uint32, chunked one frame per chunk, compressed
with bitshuffle-LZ4 (HDF5 filter 32008, written through hdf5plugin).

The sample: a text (default "DADA") printed on a transmission mask; the beam is a Gaussian spot
whose flux is multiplied by the transmission ``1 - contrast * letters`` and which a letter
deflects horizontally by ``deflection`` pixels. So a brightfield Itot map recovers the letters,
and so does comh. Gap rows/columns and dead pixels hold 2^32-1 and are flagged in pixel_mask;
a few "noisy" pixels are flagged but hold large real values (only the mask removes them).
Everything is seeded: the same arguments give the same files.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
from PIL import Image, ImageDraw, ImageFont

BAD = np.uint32(0xFFFFFFFF)


def ground_truth(horz: int, vert: int, text: str = "DADA") -> np.ndarray:
    """Letters in [0, 1] (1 = ink) on a vert x horz grid: the text rendered large, box-averaged."""
    scale = 8
    big = Image.new("L", (horz * scale, vert * scale), 0)
    draw = ImageDraw.Draw(big)
    size = max(8, int(vert * scale * 0.8))
    font = ImageFont.load_default(size=size)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    # shrink to fit the width with a margin
    while right - left > horz * scale * 0.9 and size > 8:
        size = int(size * 0.9)
        font = ImageFont.load_default(size=size)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = (horz * scale - (right - left)) / 2 - left
    y = (vert * scale - (bottom - top)) / 2 - top
    draw.text((x, y), text, fill=255, font=font)
    a = np.asarray(big, dtype=np.float64) / 255.0
    return a.reshape(vert, scale, horz, scale).mean(axis=(1, 3))


def detector_mask(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A Dectris-style pixel_mask: bit 0 gaps (a band of rows and of columns between modules),
    bit 1 dead pixels, bit 4 noisy pixels."""
    h, w = shape
    mask = np.zeros(shape, np.uint32)
    gap_rows = slice(h // 2 - 2, h // 2 + 2) if h >= 16 else slice(0, 0)
    gap_cols = slice(w // 3, w // 3 + 2) if w >= 16 else slice(0, 0)
    mask[gap_rows, :] |= 1
    mask[:, gap_cols] |= 1
    n = max(1, h * w // 2000)
    mask[rng.integers(0, h, n), rng.integers(0, w, n)] |= 2
    mask[rng.integers(0, h, n), rng.integers(0, w, n)] |= 16
    return mask


def _data_files(name: str, nframes: int, per_file: int) -> list[tuple[str, int, int]]:
    """Dectris's split of a scan into data files: (file name, first frame, frame count)."""
    return [
        (f"{name}_data_{n:06d}.h5", f0, min(per_file, nframes - f0))
        for n, f0 in enumerate(range(0, nframes, per_file), 1)
    ]


def _link_data_files(master: h5py.File, files: list[tuple[str, int, int]]) -> None:
    """The master's ``entry/data/data_NNNNNN`` external links, one per data file."""
    for n, (fname, _, _) in enumerate(files, 1):
        master[f"entry/data/data_{n:06d}"] = h5py.ExternalLink(fname, "entry/data/data")


def write_eiger_scan(
    directory: Path,
    name: str,
    horz: int,
    vert: int,
    shape: tuple[int, int] = (256, 256),
    *,
    frames_per_file: int = 100,
    seed: int = 0,
    text: str = "DADA",
    flux: float = 2e5,
    contrast: float = 0.6,
    deflection: float = 3.0,
    spot_sigma: float = 6.0,
    background: float = 0.2,
) -> Path:
    """Write a horz x vert scan (one frame per point, line by line); return the master path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = shape
    letters = ground_truth(horz, vert, text)
    mask = detector_mask(shape, rng)
    bad = (mask & 3) != 0
    noisy = (mask & 16) != 0
    cy, cx = 0.42 * (h - 1) + 0.3, 0.6 * (w - 1) - 0.2  # clear of the gaps
    y, x = np.indices(shape, dtype=np.float64)
    nframes = horz * vert
    files = _data_files(name, nframes, frames_per_file)
    for fname, f0, count in files:
        with h5py.File(directory / fname, "w") as f:
            ds = f.create_dataset(
                "entry/data/data",
                shape=(count, h, w),
                dtype=np.uint32,
                chunks=(1, h, w),
                **hdf5plugin.Bitshuffle(cname="lz4"),
            )
            ds.attrs["image_nr_low"] = np.int32(f0 + 1)
            ds.attrs["image_nr_high"] = np.int32(f0 + count)
            for k in range(count):
                j, i = divmod(f0 + k, horz)
                t = 1.0 - contrast * letters[j, i]
                sx = cx + deflection * letters[j, i]
                spot = np.exp(-((x - sx) ** 2 + (y - cy) ** 2) / (2 * spot_sigma**2))
                lam = flux * t * spot / (2 * np.pi * spot_sigma**2) + background
                frame = rng.poisson(lam).astype(np.uint32)
                frame[noisy] = 50_000
                frame[bad] = BAD
                ds[k] = frame
    with h5py.File(directory / f"{name}_master.h5", "w") as m:
        _link_data_files(m, files)
        det = m.create_group("entry/instrument/detector")
        det["description"] = "Dectris EIGER X (synthetic)"
        det["x_pixel_size"] = 75e-6
        det["y_pixel_size"] = 75e-6
        det["bit_depth_image"] = np.uint32(32)
        det["beam_center_x"] = cx
        det["beam_center_y"] = cy
        spec = det.create_group("detectorSpecific")
        spec.create_dataset("pixel_mask", data=mask, **hdf5plugin.Bitshuffle(cname="lz4"))
        spec["nimages"] = np.uint32(nframes)
        spec["ntrigger"] = np.uint32(1)
        spec["x_pixels_in_detector"] = np.uint32(w)
        spec["y_pixels_in_detector"] = np.uint32(h)
        m.attrs["dada_synthetic"] = f"text={text!r} horz={horz} vert={vert} seed={seed}"
    return directory / f"{name}_master.h5"


def write_repeated_scan(
    directory: Path, name: str, source: Path, nframes: int, frames_per_file: int = 1000
) -> Path:
    """An Eiger scan of ``nframes`` copies of frame 0 of a real bitshuffle-LZ4 file, written
    chunk by chunk without recompression (for benchmarks on real detector data)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with h5py.File(source, "r") as src:
        sds = src["entry/data/data"]
        _, chunk = sds.id.read_direct_chunk((0, 0, 0))
        _, h, w = sds.shape
        dcpl = sds.id.get_create_plist()
        filt = dcpl.get_filter(0)
    files = _data_files(name, nframes, frames_per_file)
    for fname, _, count in files:
        with h5py.File(directory / fname, "w") as f:
            ds = f.create_dataset(
                "entry/data/data",
                shape=(count, h, w),
                dtype=np.uint32,
                chunks=(1, h, w),
                compression=filt[0],
                compression_opts=tuple(filt[2]),
            )
            for k in range(count):
                ds.id.write_direct_chunk((k, 0, 0), chunk)
    with h5py.File(directory / f"{name}_master.h5", "w") as m:
        _link_data_files(m, files)
    return directory / f"{name}_master.h5"
