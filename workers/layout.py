"""Resolving dada URLs ``stxm/INSTRUMENT/RUN/DETECTOR/SAMPLE/SCAN`` to files.

Detectors name their files differently and conventions change, so each detector has a list of
path templates in a TOML file, tried in order; the first that exists is the scan::

    root = "/mnt/dadafs/beamline"          # {root} in the templates

    [detector.eiger4m]
    paths = [
      "{root}/{instrument}/{run}/{detector}/{sample}/{sample}_{scan}_master.h5",
      "{root}/{instrument}/{run}/{sample}/{scan}/{sample}_{scan:0>5}_master.h5",
    ]

    [detector.pilatus6m]
    paths = ["{root}/{instrument}/{run}/{detector}/{sample}/{scan}"]   # a folder of CBF files

Template fields: root, instrument, run, detector, sample, scan (strings; use ``{scan:0>5}`` for
zero padding). The file is ``layout=`` of the request, else ``$DADA_LAYOUT``, else
``/etc/dadafs/dada.toml``.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from workers.request import BadParameter

DEFAULT_LAYOUT = "/etc/dadafs/dada.toml"


def layout_file(explicit: str | None) -> Path:
    return Path(explicit or os.environ.get("DADA_LAYOUT") or DEFAULT_LAYOUT)


def resolve_url(url: str, layout: str | None = None) -> Path:
    """The file or folder of scan ``stxm/INSTRUMENT/RUN/DETECTOR/SAMPLE/SCAN``."""
    parts = url.strip("/").split("/")
    if len(parts) != 6 or parts[0] != "stxm":
        raise BadParameter(f"bad dada URL {url!r}: stxm/INSTRUMENT/RUN/DETECTOR/SAMPLE/SCAN/FIRST")
    path = layout_file(layout)
    try:
        config = tomllib.loads(path.read_text())
    except OSError as e:
        raise BadParameter(
            f"cannot read layout {path}: {e.strerror}; set layout= or DADA_LAYOUT"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise BadParameter(f"layout {path} is not valid TOML: {e}") from None
    fields = dict(zip(("instrument", "run", "detector", "sample", "scan"), parts[1:], strict=True))
    detectors = config.get("detector", {})
    det = detectors.get(fields["detector"])
    if not isinstance(det, dict) or not isinstance(det.get("paths"), list):
        known = ", ".join(sorted(detectors)) or "none"
        raise BadParameter(f"detector {fields['detector']!r} not in layout {path}; known: {known}")
    root = str(det.get("root", config.get("root", "")))
    tried = []
    for template in det["paths"]:
        try:
            candidate = Path(str(template).format(root=root, **fields))
        except (KeyError, ValueError, IndexError) as e:
            raise BadParameter(f"bad path template {template!r} in {path}: {e}") from None
        if candidate.exists():
            return candidate
        tried.append(str(candidate))
    raise BadParameter(f"scan {url} not found; tried: {'; '.join(tried)}")
