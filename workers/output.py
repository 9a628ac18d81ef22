"""Writers of maps (and frames): ``tiff_raw``, ``json``, ``ascii``, ``png``.

- ``tiff_raw``: 32-bit float TIFF. A 2-D map is one page of vert x horz; a map with extra axes
  (radial: numq; gridroi: ny, nx) is one multi-page TIFF holding a 3-D array of
  (planes, vert, horz), one plane per q bin / per cell in row order. The page description holds
  JSON with the request and the axes.
- ``json``: one object ``{"request", "signals": {name: {"shape", "data"}}, "axes"}``, every
  requested signal, NaN as null.
- ``ascii``: whitespace-separated numbers, one scan line per text line, ``#`` header lines; a
  map with extra axes is written as one block per plane, blocks separated by an empty line.
- ``png``: 8-bit palette image (palettes ``gray``, ``wb`` (white to black), ``percept``
  (perceptually uniform: CIELAB lightness linear from dark blue to light yellow), ``hot``),
  ``lin`` or ``log`` scale, clipped to ``cmin``..``cmax`` (default: the finite data range; for
  log the smallest positive value), NaN drawn black (``wb``: red), scaled up by an integer
  ``zoom`` (default: to about 512 pixels). Extra axes: plane ``plane`` (default: the sum over
  the extra axes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image

from workers.request import BadParameter
from workers.result import Result

FORMATS = ("tiff_raw", "json", "ascii", "png")
PALETTES = ("gray", "wb", "percept", "hot")
SCALES = ("lin", "log")


def _lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """CIELAB (D65) to sRGB in [0, 1], clipped."""
    L, a, b = lab[:, 0], lab[:, 1], lab[:, 2]
    fy = (L + 16) / 116
    fx = fy + a / 500
    fz = fy - b / 200

    def finv(t: np.ndarray) -> np.ndarray:
        return np.where(t > 6 / 29, t**3, 3 * (6 / 29) ** 2 * (t - 4 / 29))

    xyz = np.stack([0.95047 * finv(fx), finv(fy), 1.08883 * finv(fz)], axis=1)
    m = np.array([[3.2406, -1.5372, -0.4986], [-0.9689, 1.8758, 0.0415], [0.0557, -0.2040, 1.0570]])
    rgb = np.clip(xyz @ m.T, 0, 1)
    return np.asarray(np.where(rgb <= 0.0031308, 12.92 * rgb, 1.055 * rgb ** (1 / 2.4) - 0.055))


def palette(name: str) -> np.ndarray:
    """256 x 3 uint8 colour table."""
    t = np.linspace(0.0, 1.0, 256)
    if name == "gray":
        rgb = np.stack([t, t, t], axis=1)
    elif name == "wb":
        rgb = np.stack([1 - t, 1 - t, 1 - t], axis=1)
    elif name == "hot":
        rgb = np.stack(
            [np.clip(3 * t, 0, 1), np.clip(3 * t - 1, 0, 1), np.clip(3 * t - 2, 0, 1)], axis=1
        )
    elif name == "percept":
        L = 12 + 83 * t  # lightness rises linearly: equal data steps look equal
        hue = np.radians(290 - 200 * t)  # blue -> magenta/red -> yellow
        chroma = 45 * np.sin(np.pi * (0.15 + 0.7 * t))
        rgb = _lab_to_srgb(np.stack([L, chroma * np.cos(hue), chroma * np.sin(hue)], axis=1))
    else:
        raise BadParameter(f"bad palette={name!r}: one of {', '.join(PALETTES)}")
    return np.asarray(np.round(rgb * 255), dtype=np.uint8)


def to_png(
    image: np.ndarray,
    path: Path,
    *,
    palette_name: str = "gray",
    scale: str = "lin",
    cmin: float | None = None,
    cmax: float | None = None,
    zoom: int | None = None,
) -> None:
    """Render a 2-D array to an 8-bit PNG."""
    if scale not in SCALES:
        raise BadParameter(f"bad scale={scale!r}: one of {', '.join(SCALES)}")
    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 2:
        raise BadParameter(f"png needs a 2-D image, got shape {a.shape}")
    lut = palette(palette_name)
    finite = a[np.isfinite(a)]
    if scale == "log":
        finite = finite[finite > 0]
    lo = float(cmin) if cmin is not None else (float(finite.min()) if finite.size else 0.0)
    hi = float(cmax) if cmax is not None else (float(finite.max()) if finite.size else 1.0)
    if scale == "log":
        if lo <= 0 or hi <= 0:
            raise BadParameter(f"log scale needs cmin, cmax > 0 (got {lo:g}, {hi:g})")
        a, lo, hi = np.log10(np.where(a > 0, a, np.nan)), np.log10(lo), np.log10(hi)
    span = hi - lo if hi > lo else 1.0
    with np.errstate(invalid="ignore"):
        idx = np.clip(np.round((a - lo) / span * 255), 0, 255)
    nan = ~np.isfinite(idx)
    rgb = lut[np.where(nan, 0, idx).astype(np.intp)]
    rgb[nan] = (255, 0, 0) if palette_name == "wb" else (0, 0, 0)
    z = zoom if zoom else max(1, 512 // max(a.shape))
    if z > 1:
        rgb = np.repeat(np.repeat(rgb, z, axis=0), z, axis=1)
    Image.fromarray(np.ascontiguousarray(rgb), "RGB").save(path, format="PNG")


def _planes(a: np.ndarray) -> np.ndarray:
    """(vert, horz, *extra) -> (planes, vert, horz)."""
    v, h = a.shape[:2]
    return np.moveaxis(a.reshape(v, h, -1), 2, 0)


def _clean(x: Any) -> Any:
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return None if isinstance(x, float) and not np.isfinite(x) else x


def write(
    result: Result,
    signals: list[str] | str,
    fmt: str,
    path: str | Path,
    *,
    palette_name: str = "gray",
    scale: str = "lin",
    cmin: float | None = None,
    cmax: float | None = None,
    zoom: int | None = None,
    plane: int | None = None,
) -> None:
    """Write the given signal(s) of a result; ``json`` takes several, the others one."""
    names = [signals] if isinstance(signals, str) else list(signals)
    for s in names:
        if s not in result.maps:
            raise BadParameter(f"bad signal={s!r}: this result has {', '.join(result.maps)}")
    if fmt not in FORMATS:
        raise BadParameter(f"bad format={fmt!r}: one of {', '.join(FORMATS)}")
    if fmt != "json" and len(names) != 1:
        raise BadParameter(f"format {fmt} writes one signal; got {', '.join(names)}")
    path = Path(path)
    meta = {
        "request": result.request.canonical(),
        "axes": {k: np.asarray(v).tolist() for k, v in result.axes.items()},
    }
    if fmt == "json":
        doc = {
            **meta,
            "signals": {
                s: {"shape": list(result.maps[s].shape), "data": _clean(result.maps[s].tolist())}
                for s in names
            },
        }
        path.write_text(json.dumps(doc, allow_nan=False))
        return
    a = result.maps[names[0]]
    if fmt == "tiff_raw":
        data = a.astype(np.float32) if a.ndim == 2 else _planes(a).astype(np.float32)
        tifffile.imwrite(
            path,
            data,
            photometric="minisblack",
            description=json.dumps({**meta, "signal": names[0]}),
        )
    elif fmt == "ascii":
        write_ascii(a, path, header=[f"request {meta['request']}", f"signal {names[0]}"])
    else:
        if a.ndim > 2:
            planes = _planes(a)
            if plane is None:
                a = np.nansum(planes, axis=0)
            elif 0 <= plane < planes.shape[0]:
                a = planes[plane]
            else:
                raise BadParameter(f"bad plane={plane}: 0..{planes.shape[0] - 1}")
        to_png(a, path, palette_name=palette_name, scale=scale, cmin=cmin, cmax=cmax, zoom=zoom)


def write_ascii(a: np.ndarray, path: Path, header: list[str]) -> None:
    lines = [f"# {h}" for h in header] + [f"# shape {' '.join(map(str, a.shape))}"]
    blocks = [a] if a.ndim == 2 else list(_planes(a))
    for k, block in enumerate(blocks):
        if k:
            lines.append("")
        if len(blocks) > 1:
            lines.append(f"# plane {k}")
        lines += [" ".join(f"{x:.9g}" for x in row) for row in block]
    path.write_text("\n".join(lines) + "\n")


def write_image(image: np.ndarray, fmt: str, path: str | Path, **png: Any) -> None:
    """Write one 2-D image (a frame, for ``dada show``)."""
    path = Path(path)
    if fmt == "png":
        to_png(image, path, **png)
    elif fmt == "tiff_raw":
        tifffile.imwrite(path, image.astype(np.float32), photometric="minisblack")
    elif fmt == "json":
        doc = {"shape": list(image.shape), "data": _clean(image.tolist())}
        path.write_text(json.dumps(doc, allow_nan=False))
    elif fmt == "ascii":
        write_ascii(image, path, header=["frame"])
    else:
        raise BadParameter(f"bad format={fmt!r}: one of {', '.join(FORMATS)}")
