"""Running the tiers: origin = server(local), proxy = server(cache(remote)), mount = fuse(cache(remote)).

Each runner validates everything it can before it serves (export dirs, key file mode, listen
address), notifies systemd READY once serving, and stops cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import trio

from .auth import load_key
from .cache import CacheSource, ChunkStore, RamStore
from .config import ClientConfig, OriginConfig, ProxyConfig, check_exports, check_listen
from .local import LocalSource
from .privileges import chown_tree, drop_privileges, resolve_user
from .remote import RemoteSource
from .server import Server
from .tls import client_context, server_context
from .util import ConfigError, sd_notify

log = logging.getLogger("dadafs")


def _signals() -> Any:
    """Catch SIGINT/SIGTERM from the very start, so a stop during start-up is clean too."""
    return trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM)


async def _until_signal(signals: Any, cancel: trio.CancelScope) -> None:
    async for sig in signals:
        log.info("got %s, stopping", signal.Signals(sig).name)
        sd_notify("STOPPING=1")
        cancel.cancel()
        return


def _remote(cfg: Any, key: bytes, nursery: trio.Nursery) -> RemoteSource:
    return RemoteSource(
        cfg.spec(),
        key,
        nursery,
        pool=cfg.connections,
        connect_timeout=cfg.connect_timeout,
        request_timeout=cfg.request_timeout,
        timeout=cfg.timeout,
        reset_interval=cfg.reset_interval,
        stall_timeout=cfg.stall_timeout,
        min_rate=cfg.min_rate,
        ssl_context=client_context(cfg.tls_ca),
    )


async def run_origin(cfg: OriginConfig) -> None:
    host, port = check_listen(cfg.listen)
    check_exports(cfg.exports)
    key = load_key(cfg.secret_file)
    ssl_ctx = server_context(cfg.tls_cert, cfg.tls_key)
    source = LocalSource({n.encode(): Path(d) for n, d in cfg.exports.items()})
    server = Server(source, key, ssl_context=ssl_ctx)
    with _signals() as signals, trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_until_signal, signals, scope)
            await nursery.start(server.listen, host, port)
            if cfg.user:  # export roots and the port are open: root is no longer needed
                drop_privileges(cfg.user)
            exports = ", ".join(f"{n}={d}" for n, d in sorted(cfg.exports.items()))
            log.info("origin exports %s", exports)
            sd_notify("READY=1")
    await source.aclose()


def _proxy_store(cfg: ProxyConfig) -> ChunkStore:
    if not cfg.cache:
        log.warning("no cache directory configured: caching %d bytes in RAM only", cfg.ram_cache)
        return RamStore(cfg.ram_cache)
    from .diskstore import DiskStore

    for c in cfg.cache:
        try:
            Path(c.dir).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cache directory {c.dir}: {e.strerror}") from None
    if cfg.user and os.geteuid() == 0:  # the cache directories become the user's
        uid, gid = resolve_user(cfg.user)
        for c in cfg.cache:
            chown_tree(Path(c.dir), uid, gid)
    return DiskStore([(Path(c.dir), c.size) for c in cfg.cache])


async def run_proxy(cfg: ProxyConfig) -> None:
    host, port = check_listen(cfg.listen)
    cfg.spec()
    key = load_key(cfg.secret_file)
    ssl_ctx = server_context(cfg.tls_cert, cfg.tls_key)
    store = _proxy_store(cfg)
    with _signals() as signals, trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_until_signal, signals, scope)
            remote = _remote(cfg, key, nursery)
            cache = CacheSource(
                remote,
                store,
                meta_ttl=cfg.meta_ttl,
                prefetch=cfg.prefetch,
                nursery=nursery,
                persist_meta=bool(cfg.cache),  # a restarted proxy serves what it has, origins down
            )
            server = Server(cache, key, ssl_context=ssl_ctx)
            await nursery.start(server.listen, host, port)
            if cfg.user:
                drop_privileges(cfg.user)
            log.info("proxy for %s", remote.spec_text)
            sd_notify("READY=1")
    await cache.aclose()


# -- the client mount ------------------------------------------------------------------------
def _mountinfo() -> list[tuple[str, str]]:
    """(major:minor, mount point) of every mount, octal escapes (``\\040``) undone."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            mp = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[4])
            out.append((parts[2], mp))
    return out


def _is_mounted(mountpoint: str) -> bool:
    real = os.path.realpath(mountpoint)
    return any(mp == real for _, mp in _mountinfo())


def _mount_dev(real: str) -> str | None:
    """``major:minor`` of the mount at the resolved path ``real`` (from mountinfo: no stat into ourselves)."""
    devs = [dev for dev, mp in _mountinfo() if mp == real]
    return devs[-1] if devs else None  # the last mount on a path is the visible one


def clear_stale_mount(mountpoint: str) -> None:
    """A client killed with SIGKILL leaves 'Transport endpoint is not connected': unmount it."""
    try:
        os.statvfs(mountpoint)  # never answered from cached attributes, unlike stat
        return
    except OSError as e:
        if e.errno not in (107, 5):  # ENOTCONN, EIO
            raise ConfigError(f"mountpoint {mountpoint}: {e.strerror}") from None
    log.warning("clearing a stale mount at %s left by a killed client", mountpoint)
    subprocess.run(["fusermount3", "-u", "-z", mountpoint], check=False, capture_output=True)
    if _is_mounted(mountpoint):
        subprocess.run(["umount", "-l", mountpoint], check=False, capture_output=True)


def check_mountpoint(mountpoint: str) -> None:
    clear_stale_mount(mountpoint)
    if not os.path.isdir(mountpoint):
        raise ConfigError(f"mountpoint {mountpoint} is not a directory")
    if _is_mounted(mountpoint):
        raise ConfigError(
            f"{mountpoint} is already a mount point (dadafs umount {mountpoint} first)"
        )


def _set_readahead(mountpoint: str, kb: int) -> None:
    dev = _mount_dev(mountpoint)
    if not dev or kb <= 0:
        return
    try:
        Path(f"/sys/class/bdi/{dev}/read_ahead_kb").write_text(str(kb))
    except OSError as e:
        log.info("could not raise readahead of %s to %d KiB: %s", mountpoint, kb, e.strerror)


async def _raise_readahead_later(mountpoint: str, kb: int) -> None:
    # The kernel sets the bdi's readahead from FUSE's INIT reply, sent once the main loop runs.
    await trio.sleep(0.3)
    _set_readahead(mountpoint, kb)


async def run_mount(cfg: ClientConfig, mountpoint: str) -> None:
    spec = cfg.spec()
    key = load_key(cfg.secret_file)
    check_mountpoint(mountpoint)
    # Resolve now: once mounted, a stat of the mountpoint would call into ourselves.
    mountpoint = os.path.realpath(mountpoint)
    with _signals() as signals:
        await _mount_and_serve(cfg, spec, key, mountpoint, signals)


async def _mount_and_serve(
    cfg: ClientConfig, spec: Any, key: bytes, mountpoint: str, signals: Any
) -> None:
    import pyfuse3

    from .fuse import DadaFuse, FuseOptions

    async with trio.open_nursery() as nursery:
        remote = _remote(cfg, key, nursery)
        await _probe(remote, spec)
        cache = CacheSource(remote, RamStore(cfg.ram_cache), meta_ttl=cfg.meta_ttl)
        ops = DadaFuse(
            cache,
            nursery,
            FuseOptions(
                meta_ttl=cfg.meta_ttl, readahead_max=cfg.readahead, direct_io=cfg.direct_io
            ),
        )
        options = set(pyfuse3.default_options) | {"fsname=dadafs", "subtype=dadafs", "ro"}
        if cfg.allow_other:
            options.add("allow_other")
        pyfuse3.init(ops, mountpoint, options)
        try:
            nursery.start_soon(_raise_readahead_later, mountpoint, cfg.read_ahead_kb)
            log.info("mounted %s from %s", mountpoint, remote.spec_text)
            sd_notify("READY=1")
            nursery.start_soon(_until_signal, signals, nursery.cancel_scope)
            await pyfuse3.main()
        finally:
            pyfuse3.close(unmount=True)
            log.info("unmounted %s", mountpoint)
            nursery.cancel_scope.cancel()


async def _probe(remote: RemoteSource, spec: Any) -> None:
    """Refuse to mount with a key the upstream rejects; mount anyway if it is only unreachable."""
    from .protocol import AuthError

    for group in remote.groups:
        for ep in group:
            try:
                conn = await remote._connect(ep)
            except AuthError as e:
                raise ConfigError(f"upstream {ep.name} refused us: {e}") from None
            except (OSError, trio.TooSlowError) as e:
                log.warning("upstream %s unreachable (%s); mounting anyway", ep.name, e)
                continue
            ep.conns.append(conn)
            return
