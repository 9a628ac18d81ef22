"""Command lines: ``dadafsd``, ``dadafsp`` and ``dadafs mount|umount|stats|keygen``."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable, Coroutine
from dataclasses import fields
from pathlib import Path
from typing import Any

import trio

from . import config as C
from .util import ConfigError, fail, parse_size, setup_logging, tune_malloc


def _run(prog: str, fn: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
    """Run a daemon; configuration errors become one line and exit status 2."""
    tune_malloc()
    try:
        trio.run(fn, *args)
    except ConfigError as e:
        fail(prog, str(e))
    except BaseExceptionGroup as eg:
        match, _ = eg.split(ConfigError)
        if match is None:
            raise
        first: BaseException = match
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        fail(prog, str(first))
    except KeyboardInterrupt:
        pass


def _common(p: argparse.ArgumentParser, default_config: Path) -> None:
    p.add_argument("--config", help=f"TOML configuration (default {default_config} if present)")
    p.add_argument("--secret-file", help="shared key file, mode 0600")
    p.add_argument("--debug", action="store_true", default=None, help="log debug messages")


def _serve_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--user", help="drop root for this user after start-up")


def _upstream_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--upstream",
        help="SPEC: a:7071|b:7071;c:7071 ('|' load-balanced group, ';' failover order)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        help="seconds before a read fails with EIO when every upstream is down",
    )
    p.add_argument(
        "--reset-interval", type=float, help="seconds before a failed upstream is tried again"
    )


def _load(cfg: Any, args: argparse.Namespace, default_config: Path) -> Any:
    """The config file, then every flag given (flags are named like the config keys)."""
    C.apply(cfg, C.load_toml(args.config, default_config), args.config or str(default_config))
    given = {f.name: getattr(args, f.name, None) for f in fields(cfg)}
    C.apply(cfg, {k: v for k, v in given.items() if v is not None and v != []}, "command line")
    return cfg


def _need_upstream(cfg: Any) -> None:
    if not cfg.upstream:
        raise ConfigError(
            "no upstream configured (use --upstream SPEC or upstream = in the config)"
        )


def dadafsd_main(argv: list[str] | None = None) -> None:
    default = C.DEFAULT_DIR / "dadafsd.toml"
    p = argparse.ArgumentParser(
        prog="dadafsd", description="dadafs origin daemon: serves export roots read-only"
    )
    _common(p, default)
    _serve_flags(p)
    p.add_argument("--listen", help=f"HOST:PORT (default 0.0.0.0:{C.ORIGIN_PORT})")
    p.add_argument(
        "--export",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="export DIR as NAME (repeatable)",
    )
    args = p.parse_args(argv)
    try:
        cfg = _load(C.OriginConfig(), args, default)
        for e in args.export:
            name, d = C.parse_export(e)
            cfg.exports[name] = d
    except ConfigError as e:
        fail("dadafsd", str(e))
    setup_logging(cfg.debug)
    from .daemons import run_origin

    _run("dadafsd", run_origin, cfg)


def dadafsp_main(argv: list[str] | None = None) -> None:
    default = C.DEFAULT_DIR / "dadafsp.toml"
    p = argparse.ArgumentParser(
        prog="dadafsp", description="dadafs proxy: SSD cache in front of origins"
    )
    _common(p, default)
    _serve_flags(p)
    _upstream_flags(p)
    p.add_argument("--listen", help=f"HOST:PORT (default 0.0.0.0:{C.PROXY_PORT})")
    p.add_argument(
        "--cache",
        action="append",
        default=[],
        metavar="DIR:SIZE",
        help="a cache directory (one per SSD), repeatable",
    )
    p.add_argument("--meta-ttl", type=float, help="seconds metadata are cached (default 1)")
    p.add_argument(
        "--ram-cache", help="RAM cache size when no cache directory is given (default 256M)"
    )
    args = p.parse_args(argv)
    try:
        cfg = _load(C.ProxyConfig(), args, default)
        _need_upstream(cfg)
    except ConfigError as e:
        fail("dadafsp", str(e))
    setup_logging(cfg.debug)
    from .daemons import run_proxy

    _run("dadafsp", run_proxy, cfg)


def _mount(args: argparse.Namespace) -> None:
    default = C.DEFAULT_DIR / "client.toml"
    try:
        cfg = _load(C.ClientConfig(), args, default)
        _need_upstream(cfg)
    except ConfigError as e:
        fail("dadafs mount", str(e))
    setup_logging(cfg.debug)
    from .daemons import run_mount

    _run("dadafs mount", run_mount, cfg, args.mountpoint)


def _umount(args: argparse.Namespace) -> None:
    cmd = ["fusermount3", "-u"] + (["-z"] if args.lazy else []) + [args.mountpoint]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        fail("dadafs umount", r.stderr.strip() or f"cannot unmount {args.mountpoint}")


def _stats(args: argparse.Namespace) -> None:
    from .auth import load_key
    from .stats import fetch_stats

    try:
        from .tls import client_context

        key = load_key(args.secret_file or C.DEFAULT_KEY)
        data = trio.run(fetch_stats, args.addr, key, 10.0, client_context(args.tls_ca or ""))
    except ConfigError as e:
        fail("dadafs stats", str(e))
    json.dump(data, sys.stdout, indent=None if args.compact else 2, sort_keys=True)
    sys.stdout.write("\n")


def _keygen(args: argparse.Namespace) -> None:
    from .auth import generate_key

    p = Path(args.path)
    if p.exists() and not args.force:
        fail("dadafs keygen", f"{p} exists (use --force to replace it)")
    generate_key(p)
    print(f"wrote a new key to {p} (mode 0600); copy it to every tier")


def dadafs_main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="dadafs", description="dadafs client and tools")
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("mount", help="mount dadafs (foreground; notifies systemd when mounted)")
    _common(m, C.DEFAULT_DIR / "client.toml")
    _upstream_flags(m)
    m.add_argument("--ram-cache", help="RAM cache size (default 1G)")
    m.add_argument("--meta-ttl", type=float, help="seconds metadata are cached (default 1)")
    m.add_argument(
        "--allow-other", action="store_true", default=None, help="let other users read the mount"
    )
    m.add_argument(
        "--direct-io",
        action="store_true",
        default=None,
        help="bypass the page cache (1 MiB requests)",
    )
    m.add_argument("mountpoint")
    m.set_defaults(fn=_mount)
    u = sub.add_parser("umount", help="unmount a dadafs mount")
    u.add_argument("--lazy", action="store_true", help="detach now, clean up when no longer busy")
    u.add_argument("mountpoint")
    u.set_defaults(fn=_umount)
    s = sub.add_parser("stats", help="print a running daemon's counters as JSON")
    s.add_argument("--secret-file", help=f"shared key (default {C.DEFAULT_KEY})")
    s.add_argument("--compact", action="store_true", help="one line")
    s.add_argument("--tls-ca", help="CA certificate, for a daemon that serves TLS")
    s.add_argument("addr", help="HOST:PORT of a dadafsd or dadafsp")
    s.set_defaults(fn=_stats)
    k = sub.add_parser("keygen", help="write a new shared key file (mode 0600)")
    k.add_argument("--force", action="store_true")
    k.add_argument("path", nargs="?", default=C.DEFAULT_KEY)
    k.set_defaults(fn=_keygen)
    args = p.parse_args(argv)
    args.fn(args)


__all__ = ["dadafsd_main", "dadafsp_main", "dadafs_main", "parse_size"]
