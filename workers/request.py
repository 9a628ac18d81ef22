"""The canonical analysis request: a scan and every parameter that changes the result.

A :class:`Request` is frozen, hashable, picklable and has one canonical text form
(:meth:`Request.canonical`), so it can key a result cache and travel to Dask workers.
Execution knobs that do not change the numbers (threads, progress bars) are *not* part of it.

Parameters come in dada's syntax, from URL query strings or command-line flags alike
(``roi=x,y,w,h``, ``radial=cenx,ceny;minq,maxq;numq`` ...); :func:`parse_request` validates them
and raises :class:`BadParameter` with one line naming what is valid.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

#: Algorithms and their signals, in canonical order (the first is the default signal set's head).
ALGO_SIGNALS: dict[str, tuple[str, ...]] = {
    "brightfield": ("Itot", "Imax", "comh", "comv"),
    "polarroi": ("Itot", "Imean", "comh", "comv"),
    "radial": ("I", "Isum"),
    "gridroi": ("Itot", "comh", "comv"),
}
STACK_OPS = ("sum", "avg", "min", "max")
RADIAL_UNITS = ("r_px", "q_nm^-1", "q_A^-1", "2th_deg", "r_mm")
URL_PREFIX = "stxm/"


class BadParameter(ValueError):
    """A request parameter is malformed or out of range; the message is one line."""


@dataclass(frozen=True)
class Request:
    """Everything that determines an STXM result. Build it with :func:`parse_request`."""

    scan: str  # absolute path of a master file / frame folder, or "stxm/INSTR/RUN/DET/SAMPLE/SCAN"
    horz: int
    vert: int
    algo: str = "brightfield"
    signals: tuple[str, ...] = ()  # canonical: all requested signals in the algorithm's order
    first: int = 0  # 0-based index of the scan's first frame in its file set
    mask: bool = True
    roi: tuple[int, int, int, int] | None = None  # x, y, w, h
    binning: tuple[int, int] | None = None  # h, v
    empty: int | None = None  # frame index to divide by
    diff: int | None = None  # frame index to subtract
    stack: tuple[int, str] | None = None  # N frames per scan point, op
    polarroi: tuple[float, float, float, float, float, float] | None = None
    radial: tuple[float, float, float, float, int] | None = None  # cenx, ceny, minq, maxq, numq
    gridroi: tuple[int, int, int, int, int, int, int, int] | None = None  # x,y,w,h,nx,ny,px,py
    poni: str | None = None  # pyFAI calibration file (radial only)
    unit: str = "r_px"  # radial axis unit
    layout: str | None = None  # layout TOML resolving dada URLs

    # ---- derived -----------------------------------------------------------------------
    @property
    def frames_per_point(self) -> int:
        return self.stack[0] if self.stack else 1

    @property
    def nframes(self) -> int:
        return self.horz * self.vert * self.frames_per_point

    def frame_index(self, line: int, col: int, k: int = 0) -> int:
        """File-set index of frame ``k`` of scan point (line, col)."""
        return self.first + (line * self.horz + col) * self.frames_per_point + k

    # ---- canonical forms ---------------------------------------------------------------
    def to_params(self) -> dict[str, str]:
        """Parameters in dada syntax, defaults left out (the inverse of :func:`parse_request`)."""
        out: dict[str, str] = {}
        default = _DEFAULT
        for f in fields(self):
            if f.name == "scan":
                continue
            value = getattr(self, f.name)
            if f.name not in ("horz", "vert", "algo", "signals") and value == getattr(
                default, f.name
            ):
                continue
            out[_FLAG_OF.get(f.name, f.name)] = _FORMAT[f.name](value)
        return out

    def canonical(self) -> str:
        """``SCAN?k=v&...`` with keys sorted: equal requests give equal strings."""
        query = "&".join(
            f"{k}={urllib.parse.quote(v, safe=',;.-_^')}"
            for k, v in sorted(self.to_params().items())
        )
        return f"{self.scan}?{query}"

    def key(self) -> str:
        """A short stable digest of :meth:`canonical` (hex SHA-256, 32 characters)."""
        return hashlib.sha256(self.canonical().encode()).hexdigest()[:32]

    def to_json(self) -> str:
        """``{"scan": ..., "params": {...}}`` with the canonical parameter strings."""
        return json.dumps({"scan": self.scan, "params": self.to_params()}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Request:
        raw = json.loads(text)
        return parse_request(raw["scan"], raw["params"])

    def with_params(self, **params: Any) -> Request:
        """A copy with some parameters changed, validated like the original."""
        merged: dict[str, Any] = {**self.to_params(), **params}
        if "layout" not in merged and self.layout:
            merged["layout"] = self.layout
        return parse_request(self.scan, merged)


# ---- parsing -------------------------------------------------------------------------------


def _bad(name: str, value: object, valid: str) -> BadParameter:
    return BadParameter(f"bad {name}={value!r}: {valid}")


def _numbers(name: str, text: object, groups: tuple[int, ...], valid: str) -> list[list[float]]:
    """Split ``a,b;c,d`` into groups of the given sizes (any listed size is accepted)."""
    if isinstance(text, (list, tuple)):
        try:
            flat = [float(x) for x in text]
        except (TypeError, ValueError):
            raise _bad(name, text, valid) from None
        if len(flat) not in groups or any(not math.isfinite(x) for x in flat):
            raise _bad(name, text, valid)
        return [flat]
    parts = [p for p in str(text).replace(" ", "").split(";")]
    try:
        out = [[float(x) for x in p.split(",")] for p in parts]
    except ValueError:
        raise _bad(name, text, valid) from None
    if sum(len(g) for g in out) not in groups or any(not math.isfinite(x) for g in out for x in g):
        raise _bad(name, text, valid)
    return out


def _ints(name: str, text: object, n: tuple[int, ...], valid: str) -> tuple[int, ...]:
    flat = [x for g in _numbers(name, text, n, valid) for x in g]
    if len(flat) not in n or any(x != int(x) for x in flat):
        raise _bad(name, text, valid)
    return tuple(int(x) for x in flat)


def _p_int(name: str, lo: int) -> Callable[[object], int]:
    def parse(v: object) -> int:
        valid = f"an integer >= {lo}"
        try:
            i = int(str(v))
        except ValueError:
            raise _bad(name, v, valid) from None
        if i < lo:
            raise _bad(name, v, valid)
        return i

    return parse


def _p_bool(v: object) -> bool:
    s = str(v).lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise _bad("mask", v, "one of 1, 0, true, false, on, off")


def _p_roi(v: object) -> tuple[int, int, int, int]:
    valid = "x,y,w,h: four integers, x,y >= 0, w,h >= 1"
    x, y, w, h = _ints("roi", v, (4,), valid)
    if x < 0 or y < 0 or w < 1 or h < 1:
        raise _bad("roi", v, valid)
    return (x, y, w, h)


def _p_binning(v: object) -> tuple[int, int]:
    valid = "h,v (or n): integers >= 1"
    b = _ints("binning", v, (1, 2), valid)
    h, vv = (b[0], b[0]) if len(b) == 1 else b
    if h < 1 or vv < 1:
        raise _bad("binning", v, valid)
    return (h, vv)


def _p_stack(v: object) -> tuple[int, str]:
    valid = f"N,op with N >= 1 and op one of {', '.join(STACK_OPS)}"
    parts = list(v) if isinstance(v, (list, tuple)) else str(v).replace(" ", "").split(",")
    if len(parts) != 2 or str(parts[1]) not in STACK_OPS:
        raise _bad("stack", v, valid)
    try:
        n = int(str(parts[0]))
    except ValueError:
        raise _bad("stack", v, valid) from None
    if n < 1:
        raise _bad("stack", v, valid)
    return (n, str(parts[1]))


def _p_polarroi(v: object) -> tuple[float, float, float, float, float, float]:
    valid = "cenx,ceny;minq,maxq;minphi,maxphi (q in pixels, 0 <= minq < maxq; phi in degrees)"
    flat = [x for g in _numbers("polarroi", v, (6,), valid) for x in g]
    cx, cy, q0, q1, p0, p1 = flat
    if not 0 <= q0 < q1:
        raise _bad("polarroi", v, valid)
    return (cx, cy, q0, q1, p0, p1)


def _p_radial(v: object) -> tuple[float, float, float, float, int]:
    """``cenx,ceny;minq,maxq;numq``; with a PONI calibration ``minq,maxq;numq`` (centre 0,0)."""
    valid = "cenx,ceny;minq,maxq;numq (0 <= minq < maxq, numq an integer >= 1)"
    flat = [x for g in _numbers("radial", v, (3, 5), valid) for x in g]
    cx, cy, q0, q1, n = flat if len(flat) == 5 else [0.0, 0.0, *flat]
    if not (0 <= q0 < q1) or n != int(n) or n < 1:
        raise _bad("radial", v, valid)
    return (cx, cy, q0, q1, int(n))


def _p_gridroi(v: object) -> tuple[int, int, int, int, int, int, int, int]:
    valid = "x,y,w,h;nx,ny[;px,py]: integers, x,y >= 0, w,h,nx,ny >= 1, pitch px,py >= 1"
    g = _ints("gridroi", v, (6, 8), valid)
    x, y, w, h, nx, ny = g[:6]
    px, py = g[6:] if len(g) == 8 else (w, h)
    if min(x, y) < 0 or min(w, h, nx, ny, px, py) < 1:
        raise _bad("gridroi", v, valid)
    return (x, y, w, h, nx, ny, px, py)


def _p_unit(v: object) -> str:
    if str(v) not in RADIAL_UNITS:
        raise _bad("unit", v, f"one of {', '.join(RADIAL_UNITS)}")
    return str(v)


def _p_path(v: object) -> str:
    return os.path.abspath(str(v))


def _f(x: float) -> str:
    x = float(x)
    return str(int(x)) if x == int(x) and abs(x) < 1e15 else repr(x)


def _fmt_groups(sizes: tuple[int, ...]) -> Callable[[tuple[Any, ...]], str]:
    def fmt(v: tuple[Any, ...]) -> str:
        out, i = [], 0
        for s in sizes:
            out.append(",".join(_f(x) for x in v[i : i + s]))
            i += s
        return ";".join(out)

    return fmt


_PARSE: dict[str, Callable[[object], Any]] = {
    "horz": _p_int("horz", 1),
    "vert": _p_int("vert", 1),
    "first": _p_int("first", 0),
    "mask": _p_bool,
    "roi": _p_roi,
    "binning": _p_binning,
    "empty": _p_int("empty", 0),
    "diff": _p_int("diff", 0),
    "stack": _p_stack,
    "polarroi": _p_polarroi,
    "radial": _p_radial,
    "gridroi": _p_gridroi,
    "poni": _p_path,
    "unit": _p_unit,
    "layout": _p_path,
}
_FORMAT: dict[str, Callable[[Any], str]] = {
    "horz": str,
    "vert": str,
    "first": str,
    "algo": str,
    "signals": ",".join,
    "mask": lambda b: "1" if b else "0",
    "roi": _fmt_groups((4,)),
    "binning": _fmt_groups((2,)),
    "empty": str,
    "diff": str,
    "stack": lambda s: f"{s[0]},{s[1]}",
    "polarroi": _fmt_groups((2, 2, 2)),
    "radial": _fmt_groups((2, 2, 1)),
    "gridroi": _fmt_groups((4, 2, 2)),
    "poni": str,
    "unit": str,
    "layout": str,
}
_FLAG_OF = {"signals": "signal"}
VALID_PARAMS = ("algo", "signal", *_PARSE)
_ALGO_PARAM = {"polarroi": "polarroi", "radial": "radial", "gridroi": "gridroi"}


def split_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Split ``SCAN?k=v&...`` into the scan part and its query parameters."""
    path, _, query = spec.partition("?")
    params: dict[str, str] = {}
    for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if k in params:
            raise BadParameter(f"parameter {k!r} given twice in {spec!r}")
        params[k] = v
    return path, params


def parse_request(spec: str, params: Mapping[str, Any] | None = None) -> Request:
    """Build a validated :class:`Request` from a scan spec (with optional ``?query``) and
    parameters; ``params`` (e.g. command-line flags) override the query. ``None`` values are
    ignored. For a dada URL ``stxm/INSTR/RUN/DET/SAMPLE/SCAN/FIRST`` the last part sets ``first``.
    """
    path, query = split_spec(spec)
    merged: dict[str, Any] = dict(query)
    merged.update({k: v for k, v in (params or {}).items() if v is not None})
    unknown = sorted(set(merged) - set(VALID_PARAMS))
    if unknown:
        raise BadParameter(
            f"unknown parameter {unknown[0]!r}; valid parameters: {', '.join(VALID_PARAMS)}"
        )
    if path.startswith(URL_PREFIX):
        parts = path.strip("/").split("/")
        if len(parts) not in (6, 7) or not all(parts):
            raise BadParameter(
                f"bad dada URL {path!r}: stxm/INSTRUMENT/RUN/DETECTOR/SAMPLE/SCAN/FIRST"
            )
        if len(parts) == 7:
            if "first" in merged and str(merged["first"]) != parts[6]:
                raise BadParameter(f"first frame given twice: {parts[6]} in the URL and first=")
            merged["first"] = parts[6]
        scan = "/".join(parts[:6])
    elif path:
        scan = os.path.abspath(path)
    else:
        raise BadParameter(
            "empty scan: give a path or a dada URL stxm/INSTR/RUN/DET/SAMPLE/SCAN/FIRST"
        )

    algo = str(merged.pop("algo", "brightfield"))
    if algo not in ALGO_SIGNALS:
        raise _bad("algo", algo, f"one of {', '.join(ALGO_SIGNALS)}")
    for name in ("horz", "vert"):
        if name not in merged:
            raise BadParameter(
                f"missing {name}: the scan's points per line (horz) and lines (vert)"
            )
    values: dict[str, Any] = {k: _PARSE[k](v) for k, v in merged.items() if k != "signal"}

    valid_signals = ALGO_SIGNALS[algo]
    raw_sig = merged.get("signal")
    if raw_sig is None or raw_sig == "" or raw_sig == "all":
        signals = valid_signals
    else:
        wanted = (
            [str(s) for s in raw_sig]
            if isinstance(raw_sig, (list, tuple))
            else str(raw_sig).replace(" ", "").split(",")
        )
        for s in wanted:
            if s not in valid_signals:
                raise _bad("signal", s, f"{algo} gives {', '.join(valid_signals)}")
        signals = tuple(s for s in valid_signals if s in wanted)

    needed = _ALGO_PARAM.get(algo)
    if needed and needed not in values:
        syntax = {
            "polarroi": "cenx,ceny;minq,maxq;minphi,maxphi",
            "radial": "cenx,ceny;minq,maxq;numq",
            "gridroi": "x,y,w,h;nx,ny[;px,py]",
        }[needed]
        raise BadParameter(f"algo={algo} needs {needed}={syntax}")
    for other in _ALGO_PARAM.values():
        if other in values and other != needed:
            raise BadParameter(f"{other}= only applies to algo={other}, not algo={algo}")
    if algo != "radial" and ("poni" in values or "unit" in values):
        raise BadParameter(f"poni= and unit= only apply to algo=radial, not algo={algo}")
    if "unit" in values and values["unit"] != "r_px" and "poni" not in values:
        raise BadParameter(f"unit={values['unit']} needs a poni= calibration; without one: r_px")
    if "poni" in values and not os.path.isfile(values["poni"]):
        raise BadParameter(f"bad poni={values['poni']!r}: no such file")
    if "poni" in values and "unit" not in values:
        values["unit"] = "q_nm^-1"
    raw_radial = merged.get("radial")
    n_radial = (
        len(str(raw_radial).replace(";", ",").split(",")) if isinstance(raw_radial, str) else 5
    )
    if "radial" in values and "poni" in values and n_radial == 5 and values["radial"][:2] != (0, 0):
        raise BadParameter(
            "with poni= the centre comes from the calibration: radial=minq,maxq;numq"
        )
    if "radial" in values and "poni" not in values and n_radial == 3:
        raise BadParameter(
            "radial=minq,maxq;numq needs poni=; without it: radial=cenx,ceny;minq,maxq;numq"
        )
    return Request(scan=scan, algo=algo, signals=signals, **values)


_DEFAULT = Request(scan="", horz=1, vert=1)
