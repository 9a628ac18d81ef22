"""``dada show``: one pre-processed frame, a stack operation over frames, or a grid of frames."""

from __future__ import annotations

from typing import Any

import numpy as np

from workers import engine
from workers.request import BadParameter, parse_request


def as_float(frame: np.ndarray, mask: bool) -> np.ndarray:
    """A frame of either canonical kind as float64 with NaN for bad pixels."""
    if frame.dtype == np.uint32:
        out = frame.astype(np.float64)
        if mask:
            out[frame == np.uint32(0xFFFFFFFF)] = np.nan
        return out
    return np.asarray(frame, dtype=np.float64)


def show_image(spec: str, multi: tuple[int, int] | None = None, **params: Any) -> np.ndarray:
    """The image ``dada show`` renders. ``params`` are request parameters (``first`` is the
    frame, ``stack=N,op`` combines N frames, roi/binning/mask/empty/diff pre-process);
    ``multi=(columns, rows)`` tiles that many consecutive frames (or stacks) with a 1-pixel
    NaN border between tiles."""
    cols, rows = multi or (1, 1)
    if cols < 1 or rows < 1:
        raise BadParameter(f"bad multi={cols},{rows}: columns,rows >= 1")
    request = parse_request(spec, {**params, "horz": cols, "vert": rows})
    p = engine.plan(request)
    last = request.frame_index(rows - 1, cols - 1, request.frames_per_point - 1)
    if last >= p.source.nframes:
        raise BadParameter(f"frame {last} not in this scan of {p.source.nframes} frames")
    h, w = p.pipeline.geometry.shape
    out = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan)
    for j in range(rows):
        for i in range(cols):
            bufs = [p.pipeline.new_buffer() for _ in range(request.frames_per_point)]
            frames = [
                p.pipeline.load(request.frame_index(j, i, k), bufs[k])
                for k in range(request.frames_per_point)
            ]
            img = as_float(p.pipeline.process(frames), request.mask)
            out[j * (h + 1) : j * (h + 1) + h, i * (w + 1) : i * (w + 1) + w] = img
    return out
