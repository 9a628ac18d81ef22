"""Upstream SPEC, CVMFS style: ``a:7070|b:7070;c:7070``.

``|`` separates members of a load-balanced group, ``;`` separates groups tried in failover order.
"""

from __future__ import annotations

import re

from .util import ConfigError, parse_hostport

_HOST_RE = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})$")

Spec = list[list[tuple[str, int]]]


def parse_spec(text: str) -> Spec:
    """Parse a SPEC into groups of (host, port); one clear error for anything else."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("empty upstream SPEC (expected e.g. 'p1:7071|p2:7071;p3:7071')")
    groups: Spec = []
    for g in text.strip().split(";"):
        members = []
        for m in g.split("|"):
            m = m.strip()
            if not _HOST_RE.match(m):
                raise ConfigError(
                    f"bad upstream {m!r} in SPEC {text!r}: each member is HOST:PORT, "
                    "'|' separates a load-balanced group, ';' failover groups"
                )
            members.append(parse_hostport(m))
        groups.append(members)
    return groups


def format_spec(spec: Spec) -> str:
    return ";".join("|".join(f"{h}:{p}" for h, p in g) for g in spec)
