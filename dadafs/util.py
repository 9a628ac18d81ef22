"""Small shared pieces: sizes, journald-friendly logging, sd_notify, clean exits."""

from __future__ import annotations

import logging
import os
import re
import socket
import sys

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:I?B)?\s*$", re.I)


class ConfigError(ValueError):
    """Bad configuration: the daemon prints one line and exits non-zero."""


def parse_size(text: str | int) -> int:
    """``"1G"``, ``"1.8T"``, ``"512MiB"``, ``"4096"`` -> bytes (binary units)."""
    if isinstance(text, int):
        if text < 0:
            raise ConfigError(f"size must not be negative: {text}")
        return text
    m = _SIZE_RE.match(text)
    if not m:
        raise ConfigError(f"bad size {text!r} (examples: 4096, 64M, 1G, 1.8T)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class _JournalFormatter(logging.Formatter):
    """``<N>message``: journald reads the syslog priority prefix from a service's stderr."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        return f"<{prio}>{record.name}: {super().format(record)}"


def setup_logging(debug: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if sys.stderr.isatty():
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(_JournalFormatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)


def sd_notify(state: str) -> bool:
    """Tell systemd (``Type=notify``) about our state; a no-op outside systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        s.sendall(state.encode())
    return True


def fail(prog: str, msg: str) -> None:
    """One clear line on stderr, exit status 2."""
    print(f"{prog}: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def parse_hostport(
    text: str, default_port: int | None = None, *, allow_zero: bool = False
) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``host`` (with a default port); port 0 only if allowed."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_s = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port_s = text.split(":")
    else:
        host, port_s = text, ""
    if not host:
        raise ConfigError(f"bad address {text!r}: expected HOST:PORT")
    if not port_s:
        if default_port is None:
            raise ConfigError(f"bad address {text!r}: expected HOST:PORT")
        return host, default_port
    if not port_s.isdigit() or not (0 if allow_zero else 1) <= int(port_s) < 65536:
        raise ConfigError(f"bad port in {text!r}")
    return host, int(port_s)


def tune_malloc() -> None:
    """Keep freed chunk-sized buffers in the heap for reuse.

    Every chunk is a fresh 1 MiB buffer. glibc serves that size with mmap by default, so each one
    costs 256 page faults and a zeroing by the kernel; with these thresholds freed buffers are
    reused instead. Harmless where glibc (or mallopt) is absent.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 32 << 20)
        libc.mallopt(m_trim_threshold, 256 << 20)
    except (OSError, AttributeError):
        return
