"""Start the real dadafs tiers (``dadafsd``, ``dadafsp``, ``dadafs mount``) under a ``Procs``.

Command lines are those of DESIGN.md §2. In the host's namespace each daemon gets a free loopback
port; inside a namespace of its own it gets the default port on the address given. A daemon counts
as ready when its port is in LISTEN state (seen through /proc/PID/net, so inside namespaces too),
a mount when it appears in /proc/self/mountinfo (mounts made through ``nsenter --net`` stay in the
host's mount namespace, so everything on the host can read them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.harness.procs import Proc, Procs, free_port, netns_argv, wait_listening, wait_mount

BIN = Path(sys.executable).parent


def make_key(path: Path) -> Path:
    """A fresh 32-byte shared key, mode 0600 (the daemons refuse keys others can read)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:  # hex text, as `dadafs keygen` writes it (load_key strips)
        f.write(os.urandom(32).hex() + "\n")
    return path


def _port(host: str, netns: str | None, default: int) -> int:
    return free_port(host) if netns is None else default


def start_origin(
    procs: Procs,
    key: Path,
    exports: dict[str, Path],
    *,
    host: str = "127.0.0.1",
    netns: str | None = None,
    name: str = "origin",
    extra: Sequence[str] = (),
) -> str:
    """``dadafsd`` exporting ``exports``; returns its HOST:PORT."""
    port = _port(host, netns, 7071)
    argv = [str(BIN / "dadafsd"), "--listen", f"{host}:{port}", "--secret-file", str(key)]
    for export, d in exports.items():
        argv += ["--export", f"{export}={d}"]
    proc = procs.start(name, [*argv, *extra], netns=netns)
    wait_listening(proc, port)
    return f"{host}:{port}"


def start_proxy(
    procs: Procs,
    key: Path,
    upstream: str,
    cache: Path,
    cache_size: str = "4G",
    *,
    host: str = "127.0.0.1",
    netns: str | None = None,
    name: str = "proxy",
    extra: Sequence[str] = (),
) -> str:
    """``dadafsp`` with one cache directory; returns its HOST:PORT."""
    port = _port(host, netns, 7072)
    cache.mkdir(parents=True, exist_ok=True)
    argv = [str(BIN / "dadafsp"), "--listen", f"{host}:{port}", "--upstream", upstream,
            "--cache", f"{cache}:{cache_size}", "--secret-file", str(key)]  # fmt: skip
    proc = procs.start(name, [*argv, *extra], netns=netns)
    wait_listening(proc, port)
    return f"{host}:{port}"


def mount(
    procs: Procs,
    key: Path,
    upstream: str,
    mountpoint: Path,
    *,
    ram_cache: str | None = None,
    netns: str | None = None,
    name: str = "mount",
    extra: Sequence[str] = (),
) -> Proc:
    """``dadafs mount`` in the foreground; returns once the mount is there."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    argv = [str(BIN / "dadafs"), "mount", "--upstream", upstream, "--secret-file", str(key)]
    if ram_cache is not None:
        argv += ["--ram-cache", ram_cache]
    procs.add_mount(mountpoint)
    proc = procs.start(name, [*argv, *extra, str(mountpoint)], netns=netns)
    wait_mount(mountpoint, proc=proc)
    return proc


def stats(addr: str, key: Path, netns: str | None = None) -> dict[str, Any]:
    """``dadafs stats ADDR`` as a dict."""
    argv = netns_argv(
        netns, [str(BIN / "dadafs"), "stats", "--compact", "--secret-file", str(key), addr]
    )
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout
    result: dict[str, Any] = json.loads(out)
    return result
