"""TOML configuration of the three programs; command-line flags override the file.

Unknown keys and bad values are configuration errors: one line naming what is valid.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .spec import Spec, parse_spec
from .util import ConfigError, parse_hostport, parse_size

DEFAULT_DIR = Path("/etc/dadafs")
DEFAULT_KEY = str(DEFAULT_DIR / "secret.key")
ORIGIN_PORT = 7070
PROXY_PORT = 7071


@dataclass
class Common:
    secret_file: str = DEFAULT_KEY
    debug: bool = False


@dataclass
class UpstreamOpts:
    upstream: str = ""
    connect_timeout: float = 3.0
    request_timeout: float = 10.0
    timeout: float = 30.0  # a read fails with EIO after this long with every upstream down
    reset_interval: float = 30.0  # a failed upstream is retried after this long
    connections: int = 4
    stall_timeout: float = 2.0  # seconds of too little progress before a connection is pinged
    min_rate: int = 128 << 10  # bytes/s below which a waiting connection counts as stalled
    tls_ca: str = ""  # speak TLS to upstreams, verifying them against this CA file

    def spec(self) -> Spec:
        return parse_spec(self.upstream)


@dataclass
class ServeOpts:
    user: str = ""  # drop root for this user after start-up
    tls_cert: str = ""  # serve TLS only, with this certificate (PEM) ...
    tls_key: str = ""  # ... and key


@dataclass
class OriginConfig(Common, ServeOpts):
    listen: str = f"0.0.0.0:{ORIGIN_PORT}"
    exports: dict[str, str] = field(default_factory=dict)


@dataclass
class CacheDir:
    dir: str
    size: int


@dataclass
class ProxyConfig(Common, ServeOpts, UpstreamOpts):
    listen: str = f"0.0.0.0:{PROXY_PORT}"
    cache: list[CacheDir] = field(default_factory=list)
    meta_ttl: float = 1.0
    ram_cache: int = 256 << 20  # used when no cache directory is configured
    prefetch: int = 4  # chunks fetched ahead of a client reading sequentially


@dataclass
class ClientConfig(Common, UpstreamOpts):
    ram_cache: int = 1 << 30
    meta_ttl: float = 1.0
    allow_other: bool = False
    readahead: int = 16  # chunks in the readahead window at most
    read_ahead_kb: int = 4096  # the kernel's readahead on the mount's bdi
    direct_io: bool = False


def load_toml(path: str | None, default: Path) -> dict[str, Any]:
    """The file's table; a missing *default* file is an empty config, a missing named one an error."""
    p = Path(path) if path else default
    if not p.exists():
        if path:
            raise ConfigError(f"config file {p} does not exist")
        return {}
    try:
        with p.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: {e}") from None
    except OSError as e:
        raise ConfigError(f"cannot read {p}: {e.strerror}") from None


def apply(cfg: Any, table: dict[str, Any], where: str) -> None:
    """Set dataclass fields from a table, converting sizes; unknown keys are errors."""
    names = {f.name: f for f in fields(cfg)}
    for k, v in table.items():
        if k not in names:
            raise ConfigError(f"{where}: unknown key {k!r} (valid: {', '.join(sorted(names))})")
        if k in ("ram_cache", "min_rate"):
            v = parse_size(v)
        elif k == "cache":
            v = [parse_cache(c) for c in (v if isinstance(v, list) else [v])]
        elif k == "exports":
            if not isinstance(v, dict):
                raise ConfigError(f'{where}: exports must be a table of NAME = "DIR"')
            v = {str(a): str(b) for a, b in v.items()}
        else:
            want = type(getattr(cfg, k))
            if want is float and isinstance(v, int):
                v = float(v)
            if not isinstance(v, want):
                raise ConfigError(f"{where}: {k} must be a {want.__name__}, not {v!r}")
        setattr(cfg, k, v)


def parse_cache(v: Any) -> CacheDir:
    """``"DIR:SIZE"`` or ``{dir = "...", size = "..."}``."""
    if isinstance(v, dict):
        if set(v) != {"dir", "size"}:
            raise ConfigError(f"cache entry {v!r}: needs exactly dir and size")
        return CacheDir(str(v["dir"]), parse_size(v["size"]))
    if isinstance(v, str) and ":" in v:
        d, _, s = v.rpartition(":")
        return CacheDir(d, parse_size(s))
    raise ConfigError(f"bad cache {v!r}: expected DIR:SIZE, e.g. /srv/ssd0:1.8T")


def parse_export(v: str) -> tuple[str, str]:
    name, sep, d = v.partition("=")
    if not sep or not name or not d or "/" in name:
        raise ConfigError(f"bad export {v!r}: expected NAME=DIR, e.g. data=/srv/detector")
    return name, d


def check_listen(text: str) -> tuple[str, int]:
    """A listen address; port 0 asks the kernel for a free port."""
    return parse_hostport(text, allow_zero=True)


def check_exports(exports: dict[str, str]) -> None:
    if not exports:
        raise ConfigError(
            "no exports configured (use --export NAME=DIR or [exports] in the config)"
        )
    for name, d in exports.items():
        if not name or "/" in name or name in (".", ".."):
            raise ConfigError(f"bad export name {name!r}")
        if not Path(d).is_dir():
            raise ConfigError(f"export {name}: directory {d} does not exist")
