"""Security of the tiers: mutual HMAC (replays fail, keys never logged), TLS between tiers,
privileges dropped after start-up, ``allow_other`` only when configured. Real daemons and mounts."""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio

from dadafs import auth
from dadafs.local import LocalSource
from dadafs.protocol import MAGIC, VERSION, AuthError, Channel, client_handshake
from dadafs.server import Server
from dadafs.source import CHUNK_SIZE
from tests.harness import tiers
from tests.harness.procs import Procs, wait_for

KEY = b"s" * 32


def frame(h: dict[str, Any]) -> bytes:
    raw = msgpack.packb(h, use_bin_type=True)
    return struct.pack(">I", len(raw)) + raw


def recv_frame(s: socket.socket) -> dict[str, Any]:
    def exactly(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            got = s.recv(n - len(buf))
            if not got:
                raise EOFError("closed")
            buf += got
        return buf

    (n,) = struct.unpack(">I", exactly(4))
    return dict(msgpack.unpackb(exactly(n)))


# -- handshake ------------------------------------------------------------------------------------
def test_replayed_client_handshake_is_refused(tmp_path: Path) -> None:
    """An eavesdropper who recorded a client's hello and proof cannot replay them."""
    (tmp_path / "f").write_bytes(b"data")

    def session(addr: tuple[str, int]) -> None:
        # A legitimate client, recording what it sends.
        s = socket.create_connection(addr, timeout=5)
        nc = auth.new_nonce()
        hello = frame({"hello": MAGIC, "v": VERSION, "nonce": nc})
        s.sendall(hello)
        ns = recv_frame(s)["nonce"]
        proof = frame({"proof": auth.proof(KEY, b"client", nc, ns, VERSION)})
        s.sendall(proof)
        assert recv_frame(s).get("ok")
        s.close()
        # The replay: same bytes, new connection, new server nonce.
        r = socket.create_connection(addr, timeout=5)
        r.sendall(hello)
        assert recv_frame(r)["nonce"] != ns
        r.sendall(proof)
        assert recv_frame(r).get("e") == errno.EACCES
        assert r.recv(10) == b""
        r.close()

    async def main() -> None:
        async with trio.open_nursery() as n:
            server = Server(LocalSource({b"data": tmp_path}), KEY)
            addrs = await n.start(server.listen, "127.0.0.1", 0)
            await trio.to_thread.run_sync(session, ("127.0.0.1", addrs[0][1]))
            assert server.counters["auth_failures"] == 1
            n.cancel_scope.cancel()

    trio.run(main)


def test_replayed_server_handshake_is_refused() -> None:
    """A fake server replaying a real server's recorded answer fails the client's check."""
    recorded: list[bytes] = []

    async def record(stream: trio.SocketStream) -> None:
        # Answer like a real server once (we know the key here) and remember the bytes.
        data = await stream.receive_some(4096)
        nc = msgpack.unpackb(data[4:])["nonce"]
        ns = auth.new_nonce()
        answer = frame({"v": VERSION, "nonce": ns, "proof": auth.proof(KEY, b"server", ns, nc, VERSION)})  # fmt: skip
        if not recorded:
            recorded.append(answer)
        await stream.send_all(recorded[0])
        try:
            await stream.receive_some(4096)  # the client's proof (only a convinced client sends it)
            await stream.send_all(frame({"ok": True, "v": VERSION, "chunk": CHUNK_SIZE}))
        except trio.BrokenResourceError:
            pass

    async def main() -> None:
        async with trio.open_nursery() as n:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            port = listeners[0].socket.getsockname()[1]
            n.start_soon(trio.serve_listeners, record, listeners)
            for attempt in range(2):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                ch = Channel(stream.socket, max_header=1 << 16, max_payload=0)
                if attempt == 0:  # the genuine answer passes the server check ...
                    assert (await client_handshake(ch, KEY))["ok"]
                else:  # ... its replay to a new client does not
                    with pytest.raises(AuthError, match="server failed authentication"):
                        await client_handshake(ch, KEY)
                ch.close()
            n.cancel_scope.cancel()

    trio.run(main)


def test_keys_never_appear_in_logs(tmp_path: Path, procs: Procs) -> None:
    export = tmp_path / "export"
    export.mkdir()
    (export / "f").write_bytes(os.urandom(3 << 20))
    keyfile = tiers.make_key(tmp_path / "key")
    key = auth.load_key(keyfile)  # the key as the daemons use it
    wrong = tiers.make_key(tmp_path / "wrong")
    origin = tiers.start_origin(procs, keyfile, {"data": export}, extra=("--debug",))
    proxy = tiers.start_proxy(procs, keyfile, origin, tmp_path / "c", "1G", extra=("--debug",))
    mnt = tmp_path / "mnt"
    tiers.mount(procs, keyfile, proxy, mnt, extra=("--debug",))
    assert (mnt / "data" / "f").read_bytes() == (export / "f").read_bytes()
    bad = subprocess.run(
        [str(tiers.BIN / "dadafs"), "stats", "--secret-file", str(wrong), proxy],
        capture_output=True,
    )
    assert bad.returncode != 0 and b"failed authentication" in bad.stderr
    procs.stop(procs.get("mount"))
    forms = [key, key.hex().encode(), repr(key).encode(), key[:12], wrong.read_bytes()[:12]]
    logs = b"".join(p.log.read_bytes() for p in procs.procs) + bad.stderr + bad.stdout
    assert b"authentication" in logs  # the refusal was logged, without the keys
    for form in forms:
        assert form not in logs


# -- TLS ------------------------------------------------------------------------------------------
def make_certs(d: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl), plus a foreign CA."""
    d.mkdir()

    def ossl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    for ca in ("ca", "other-ca"):
        ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={ca}",
             "-keyout", f"{ca}.key", "-out", f"{ca}.pem")  # fmt: skip
    ossl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-keyout", "server.key", "-out", "server.csr")  # fmt: skip
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    ossl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-days", "2", "-extfile", "ext", "-out", "server.pem")  # fmt: skip
    return {n: d / n for n in ("ca.pem", "other-ca.pem", "server.pem", "server.key")}


def write_toml(path: Path, **kv: str) -> Path:
    path.write_text("".join(f'{k} = "{v}"\n' for k, v in kv.items()))
    return path


def test_tls_between_all_tiers(tmp_path: Path, procs: Procs) -> None:
    certs = make_certs(tmp_path / "certs")
    export = tmp_path / "export"
    export.mkdir()
    data = os.urandom(5 << 20)
    (export / "f").write_bytes(data)
    key = tiers.make_key(tmp_path / "key")
    serve = dict(tls_cert=str(certs["server.pem"]), tls_key=str(certs["server.key"]))
    origin = tiers.start_origin(
        procs,
        key,
        {"data": export},
        extra=("--config", str(write_toml(tmp_path / "o.toml", **serve))),
    )
    ptoml = write_toml(tmp_path / "p.toml", tls_ca=str(certs["ca.pem"]), **serve)
    proxy = tiers.start_proxy(
        procs, key, origin, tmp_path / "c", "1G", extra=("--config", str(ptoml))
    )
    ctoml = write_toml(tmp_path / "c.toml", tls_ca=str(certs["ca.pem"]))
    mnt = tmp_path / "mnt"
    tiers.mount(procs, key, proxy, mnt, extra=("--config", str(ctoml)))
    assert (mnt / "data" / "f").read_bytes() == data
    # `dadafs stats` speaks TLS to a TLS daemon when given the CA.
    out = subprocess.run(
        [str(tiers.BIN / "dadafs"), "stats", "--compact", "--secret-file", str(key),
         "--tls-ca", str(certs["ca.pem"]), proxy],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    assert json.loads(out)["source"]["bytes_served"] >= len(data)

    # A plain-TCP peer gets no dadafs frame from a TLS server: a TLS alert record (0x15) or a close.
    host, port = proxy.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(frame({"hello": MAGIC, "v": VERSION, "nonce": auth.new_nonce()}))
        s.settimeout(12)
        reply = s.recv(100)
        assert reply == b"" or reply[0] == 0x15, reply
    # A client trusting another CA does not talk to it: EIO after its timeout, nothing read.
    wrong = write_toml(tmp_path / "w.toml", tls_ca=str(certs["other-ca.pem"]))
    mnt2 = tmp_path / "mnt2"
    tiers.mount(
        procs, key, proxy, mnt2, name="wrongca", extra=("--config", str(wrong), "--timeout", "2")
    )
    with pytest.raises(OSError) as e:
        (mnt2 / "data" / "f").read_bytes()
    assert e.value.errno == errno.EIO
    assert "CERTIFICATE_VERIFY_FAILED" in procs.get("wrongca").log.read_text()


def test_tls_config_errors_are_one_line(tmp_path: Path) -> None:
    cfg = write_toml(tmp_path / "o.toml", tls_cert=str(tmp_path / "missing.pem"), tls_key="k")
    key = tiers.make_key(tmp_path / "key")
    r = subprocess.run(
        [str(tiers.BIN / "dadafsd"), "--config", str(cfg), "--secret-file", str(key),
         "--listen", "127.0.0.1:0", "--export", f"d={tmp_path}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"dadafsd: error: tls_cert {tmp_path / 'missing.pem'} does not exist or is not a file"
    ]


# -- privileges -----------------------------------------------------------------------------------
def ids(pid: int) -> dict[str, list[int]]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("Uid", "Gid", "Groups", "NoNewPrivs"):
            out[k] = [int(x) for x in v.split()]
    return out


def runs_as_nobody(pid: int) -> bool:
    return ids(pid)["Uid"] == [65534] * 4


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Path]:
    """A directory every user can traverse (tmp_path's parents are private to root)."""
    d = Path(f"/tmp/dadafs-sec-{os.getpid()}-{tmp_path.name}")
    d.mkdir(mode=0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")
def test_daemons_drop_privileges(tmp_path: Path, procs: Procs) -> None:
    export = tmp_path / "export"  # below a root-only directory: opened before dropping
    export.mkdir(mode=0o755)
    (export / "public").write_bytes(b"for everyone\n")
    (export / "public").chmod(0o644)
    (export / "private").write_bytes(b"root only\n")
    (export / "private").chmod(0o600)
    key = tiers.make_key(tmp_path / "key")
    origin = tiers.start_origin(procs, key, {"data": export}, extra=("--user", "nobody"))
    cache = tmp_path / "cache"
    proxy = tiers.start_proxy(procs, key, origin, cache, "1G", extra=("--user", "nobody"))
    for name in ("origin", "proxy"):
        pid = procs.get(name).pid
        wait_for(functools.partial(runs_as_nobody, pid), f"{name} running as nobody")
        st = ids(pid)
        assert st["Gid"] == [65534] * 4 and st["Groups"] == [65534] and st["NoNewPrivs"] == [1]
    assert cache.stat().st_uid == 65534
    mnt = tmp_path / "mnt"
    tiers.mount(procs, key, proxy, mnt)
    assert (mnt / "data" / "public").read_bytes() == b"for everyone\n"
    with pytest.raises(OSError) as e:  # the origin, as nobody, may not read it: a file error
        (mnt / "data" / "private").read_bytes()
    assert e.value.errno == errno.EACCES
    assert "dropped privileges to nobody" in procs.get("origin").log.read_text()


def test_unknown_user_is_a_config_error(tmp_path: Path) -> None:
    key = tiers.make_key(tmp_path / "key")
    r = subprocess.run(
        [str(tiers.BIN / "dadafsd"), "--user", "no-such-user-x", "--secret-file", str(key),
         "--listen", "127.0.0.1:0", "--export", f"d={tmp_path}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 2 and "user 'no-such-user-x' does not exist" in r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount and switch users")
@pytest.mark.parametrize("allow_other", [False, True])
def test_allow_other_only_when_configured(
    world: Path, tmp_path: Path, procs: Procs, allow_other: bool
) -> None:
    export = tmp_path / "export"
    export.mkdir()
    (export / "f").write_bytes(b"shared\n")
    (export / "f").chmod(0o644)
    key = tiers.make_key(tmp_path / "key")
    origin = tiers.start_origin(procs, key, {"data": export})
    mnt = world / "mnt"
    tiers.mount(procs, key, origin, mnt, extra=("--allow-other",) if allow_other else ())
    opts = subprocess.run(
        ["findmnt", "-n", "-o", "OPTIONS", str(mnt)], capture_output=True, text=True
    ).stdout
    assert ("allow_other" in opts) == allow_other
    other = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat", str(mnt / "data" / "f")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if allow_other:
        assert other.returncode == 0 and other.stdout == "shared\n"
    else:
        assert other.returncode != 0 and "Permission denied" in other.stderr
