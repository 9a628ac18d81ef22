"""Writes benchmark figures into docs/benchmarks.md, one section per benchmark.

Each benchmark owns the text between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``;
re-running it replaces only its own section, so benchmarks of different parts coexist.
"""

from __future__ import annotations

import datetime as dt
import platform
import re
import statistics
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nFigures written by `make bench`; each section names the command that produced it.\n"


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def write_section(name: str, title: str, command: str, body: str) -> None:
    """Replace (or append) section ``name`` of docs/benchmarks.md."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    host = f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}"
    section = (
        f"<!-- bench:{name} -->\n## {title}\n\n"
        f"Measured {stamp} on {host}; produced by `{command}`.\n\n{body.rstrip()}\n"
        f"<!-- /bench:{name} -->\n"
    )
    text = DOC.read_text() if DOC.exists() else HEADER
    pat = re.compile(
        rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->\n", re.S
    )
    text = (
        pat.sub(lambda _m: section, text) if pat.search(text) else text.rstrip() + "\n\n" + section
    )
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)


def table(headers: list[str], rows: list[list[object]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out) + "\n"
