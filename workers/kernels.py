"""Compiled per-frame loops (numba, ``nogil`` so engine threads run them in parallel).

Every kernel reads the frame exactly once, skipping bad pixels on the fly: a pixel is bad when
its value equals ``bad`` (2^32-1 for uint32 frames; pass -1.0 to disable) or is NaN (float
frames). So the engine never builds a masked copy of a frame: the static mask is written into
the frame as the bad value (a few slice assignments), and dynamic bad pixels cost one compare.
Sums accumulate in float64, which is exact for integer counts up to 2^53 per sum.
"""

from __future__ import annotations

import numba
import numpy as np

_jit = numba.njit(nogil=True, cache=True, fastmath=False, boundscheck=False)


@_jit
def brightfield_u32(
    frame: np.ndarray, bad: np.uint32, colsum: np.ndarray
) -> tuple[np.uint64, np.uint32, np.uint64]:
    """uint32 frames: (Itot, Imax, sum of y*I) in exact integers; column sums into ``colsum``
    (uint64, for sum of x*I). Pixels equal to ``bad`` count as 0 (pass 0 to disable masking).
    Integer arithmetic lets LLVM vectorise the loop: about 5x faster than float64."""
    h, w = frame.shape
    itot = np.uint64(0)
    sy = np.uint64(0)
    imax = np.uint32(0)
    colsum[:] = 0
    for j in range(h):
        row = np.uint64(0)
        rmax = np.uint32(0)
        r = frame[j]
        for i in range(w):
            v = r[i]
            x = np.uint32(0) if v == bad else v
            row += x
            colsum[i] += x
            rmax = max(x, rmax)
        itot += row
        sy += row * np.uint64(j)
        imax = max(imax, rmax)
    return itot, imax, sy


@_jit
def brightfield_f(frame: np.ndarray, bad: float) -> tuple[float, float, float, float]:
    """Float frames: (Itot, Imax, sum of x*I, sum of y*I) over valid pixels (Imax -inf if none)."""
    h, w = frame.shape
    itot = 0.0
    imax = -np.inf
    sx = 0.0
    sy = 0.0
    for j in range(h):
        row = 0.0
        rowx = 0.0
        for i in range(w):
            v = float(frame[j, i])
            if not (v == bad or v != v):
                row += v
                rowx += v * i
                imax = v if v > imax else imax
        itot += row
        sx += rowx
        sy += row * j
    return itot, imax, sx, sy


@_jit
def bin_sums(
    frame: np.ndarray, bins: np.ndarray, y0: int, x0: int, nbins: int, bad: float
) -> tuple[np.ndarray, np.ndarray]:
    """Sum and count of valid pixels per bin; ``bins`` (int32, -1 = none) covers the frame
    window starting at row ``y0``, column ``x0``."""
    sums = np.zeros(nbins, np.float64)
    counts = np.zeros(nbins, np.int64)
    bh, bw = bins.shape
    for j in range(bh):
        for i in range(bw):
            b = bins[j, i]
            if b >= 0:
                v = float(frame[y0 + j, x0 + i])
                if not (v == bad or v != v):
                    sums[b] += v
                    counts[b] += 1
    return sums, counts


@_jit
def bin_sums_u32(
    frame: np.ndarray, bins: np.ndarray, y0: int, x0: int, nbins: int, bad: np.uint32, check: bool
) -> tuple[np.ndarray, np.ndarray]:
    """uint32 frames: :func:`bin_sums` in integers (pixels equal to ``bad`` skipped if
    ``check``)."""
    sums = np.zeros(nbins, np.uint64)
    counts = np.zeros(nbins, np.int64)
    bh, bw = bins.shape
    for j in range(bh):
        r = frame[y0 + j, x0 : x0 + bw]
        br = bins[j]
        for i in range(bw):
            b = br[i]
            if b >= 0:
                v = r[i]
                if not (check and v == bad):
                    sums[b] += v
                    counts[b] += 1
    return sums.astype(np.float64), counts


@_jit
def segment_moments_u32(
    frame: np.ndarray,
    rows: np.ndarray,
    starts: np.ndarray,
    stops: np.ndarray,
    bad: np.uint32,
    check: bool,
) -> tuple[float, float, float, float]:
    """uint32 frames: :func:`segment_moments` in integers."""
    s = np.uint64(0)
    n = np.uint64(0)
    sx = np.uint64(0)
    sy = np.uint64(0)
    for k in range(rows.size):
        j = rows[k]
        x0 = starts[k]
        r = frame[j, x0 : stops[k]]
        row = np.uint64(0)
        rowx = np.uint64(0)
        cnt = np.uint64(0)
        for i in range(r.size):
            v = r[i]
            ok = not (check and v == bad)
            t = v if ok else np.uint32(0)
            row += t
            rowx += np.uint64(t) * np.uint64(i)
            cnt += np.uint64(1) if ok else np.uint64(0)
        rowx += row * np.uint64(x0)
        s += row
        sx += rowx
        n += cnt
        sy += row * np.uint64(j)
    return float(s), float(n), float(sx), float(sy)


@_jit
def segment_moments(
    frame: np.ndarray, rows: np.ndarray, starts: np.ndarray, stops: np.ndarray, bad: float
) -> tuple[float, float, float, float]:
    """(sum, valid count, sum of x*I, sum of y*I) over row segments ``frame[row, start:stop]``."""
    s = 0.0
    n = 0.0
    sx = 0.0
    sy = 0.0
    for k in range(rows.size):
        j = rows[k]
        row = 0.0
        for i in range(starts[k], stops[k]):
            v = float(frame[j, i])
            if not (v == bad or v != v):
                row += v
                sx += v * i
                n += 1.0
        s += row
        sy += row * j
    return s, n, sx, sy


@_jit
def rect_moments_u32(frame: np.ndarray, rects: np.ndarray, bad: np.uint32) -> np.ndarray:
    """uint32 frames: for each rectangle (x, y, w, h) its (sum, sum of x*I, sum of y*I); the
    horizontal moment from per-column sums, as in :func:`brightfield_u32`."""
    out = np.zeros((rects.shape[0], 3), np.float64)
    colsum = np.zeros(frame.shape[1], np.uint64)
    for k in range(rects.shape[0]):
        x, y, w, h = rects[k, 0], rects[k, 1], rects[k, 2], rects[k, 3]
        s = np.uint64(0)
        sy = np.uint64(0)
        c = colsum[:w]  # views indexed from 0: no negative-index checks, so LLVM vectorises
        c[:] = 0
        for j in range(y, y + h):
            row = np.uint64(0)
            r = frame[j, x : x + w]
            for i in range(w):
                v = r[i]
                t = np.uint32(0) if v == bad else v
                row += t
                c[i] += t
            s += row
            sy += row * np.uint64(j)
        sx = 0.0
        for i in range(w):
            sx += float(c[i]) * (x + i)
        out[k, 0] = s
        out[k, 1] = sx
        out[k, 2] = sy
    return out


@_jit
def rect_moments(frame: np.ndarray, rects: np.ndarray, bad: float) -> np.ndarray:
    """For each rectangle (x, y, w, h): (sum, sum of x*I, sum of y*I) of its valid pixels."""
    out = np.zeros((rects.shape[0], 3), np.float64)
    for k in range(rects.shape[0]):
        x, y, w, h = rects[k, 0], rects[k, 1], rects[k, 2], rects[k, 3]
        s = 0.0
        sx = 0.0
        sy = 0.0
        for j in range(y, y + h):
            row = 0.0
            rowx = 0.0
            for i in range(x, x + w):
                v = float(frame[j, i])
                t = 0.0 if (v == bad or v != v) else v
                row += t
                rowx += t * i
            s += row
            sx += rowx
            sy += row * j
        out[k, 0] = s
        out[k, 1] = sx
        out[k, 2] = sy
    return out


@_jit
def bin_frame(frame: np.ndarray, bh: int, bv: int, bad: float) -> np.ndarray:
    """Sum of the valid pixels of each bh x bv block (remainders dropped); NaN if none valid."""
    h, w = frame.shape
    oh = h // bv
    ow = w // bh
    out = np.zeros((oh, ow), np.float64)
    cnt = np.zeros((oh, ow), np.int32)
    for j in range(oh * bv):
        oj = j // bv
        for i in range(ow * bh):
            v = float(frame[j, i])
            if not (v == bad or v != v):
                out[oj, i // bh] += v
                cnt[oj, i // bh] += 1
    for oj in range(oh):
        for oi in range(ow):
            if cnt[oj, oi] == 0:
                out[oj, oi] = np.nan
    return out


@_jit
def to_float(frame: np.ndarray, bad: float) -> np.ndarray:
    """A float64 copy with bad pixels as NaN."""
    h, w = frame.shape
    out = np.empty((h, w), np.float64)
    for j in range(h):
        for i in range(w):
            v = float(frame[j, i])
            out[j, i] = np.nan if v == bad else v
    return out
