"""The baselines dadafs is measured against, run as real servers on this machine.

- NFS: nfs-ganesha (user space, VFS FSAL, NFSv4 only so it needs no rpcbind) serving one directory
  read-only, read with libnfs's ``nfs-cat``.
- sshfs: a private ``sshd`` on loopback with its own host key and an authorized user key, all in a
  temporary directory, mounted with ``sshfs`` in the foreground.
- the local page cache: a plain read of a file that was just read.

Servers are started through a ``Procs`` so they are stopped (and sshfs unmounted) at the end.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import xxhash

from tests.harness.procs import Procs, free_port, wait_listening, wait_mount

READ_SIZE = 1 << 20


def read_file(path: Path, bufsize: int = READ_SIZE) -> tuple[int, float]:
    """Read ``path`` sequentially into one reused buffer; return (bytes, seconds)."""
    buf = bytearray(bufsize)
    n = 0
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while k := f.readinto(buf):
            n += k
    return n, time.perf_counter() - t0


def hash_file(path: Path) -> str:
    h = xxhash.xxh3_128()
    buf = bytearray(READ_SIZE)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while k := f.readinto(buf):
            h.update(view[:k])
    return h.hexdigest()


def page_cache_read(path: Path) -> tuple[int, float]:
    """A read served by the page cache: the file is read once to load it, then timed."""
    read_file(path)
    return read_file(path)


# ----------------------------------------------------------------------------------------- NFS


@dataclass(frozen=True)
class NfsServer:
    host: str
    port: int
    pseudo: str

    def url(self, rel: str) -> str:
        return f"nfs://{self.host}{self.pseudo}/{rel.lstrip('/')}?version=4&nfsport={self.port}"


GANESHA_CONF = """\
NFS_CORE_PARAM {{
  Bind_Addr = {host};
  NFS_Port = {port};
  Protocols = 4;
  Enable_NLM = false;
  Enable_RQUOTA = false;
  Enable_UDP = false;
}}
NFSV4 {{ Graceless = true; RecoveryBackend = fs; RecoveryRoot = "{recovery}"; }}
NFS_KRB5 {{ Active_krb5 = false; }}
EXPORT {{
  Export_Id = 1;
  Path = "{export}";
  Pseudo = "{pseudo}";
  Access_Type = RO;
  Squash = No_Root_Squash;
  Protocols = 4;
  Transports = TCP;
  SecType = sys;
  FSAL {{ Name = VFS; }}
}}
"""


def start_ganesha(
    procs: Procs, workdir: Path, export: Path, host: str = "127.0.0.1", netns: str | None = None
) -> NfsServer:
    """nfs-ganesha in the foreground serving ``export`` read-only as ``/data`` (NFSv4, no rpcbind:
    it logs that it cannot register with the portmapper, which NFSv4 clients do not need)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "recovery").mkdir(exist_ok=True)
    port = free_port(host) if netns is None else 2049
    conf = workdir / "ganesha.conf"
    conf.write_text(
        GANESHA_CONF.format(
            host=host,
            port=port,
            recovery=workdir / "recovery",
            export=export.resolve(),
            pseudo="/data",
        )
    )
    proc = procs.start(
        "ganesha",
        [
            "ganesha.nfsd",
            "-F",
            "-f",
            str(conf),
            "-L",
            "STDERR",
            "-N",
            "NIV_EVENT",
            "-p",
            str(workdir / "ganesha.pid"),
        ],  # fmt: skip
        netns=netns,
    )
    wait_listening(proc, port)
    return NfsServer(host, port, "/data")


def nfs_cat(server: NfsServer, rel: str) -> float:
    """Seconds ``nfs-cat`` takes to read ``rel`` to /dev/null (``nfs_hash`` checks the bytes)."""
    t0 = time.perf_counter()
    with open(os.devnull, "wb") as null:
        subprocess.run(["nfs-cat", server.url(rel)], stdout=null, check=True)
    return time.perf_counter() - t0


def nfs_hash(server: NfsServer, rel: str) -> tuple[str, int]:
    """xxh3-128 and length of the bytes ``nfs-cat`` delivers for ``rel``."""
    h = xxhash.xxh3_128()
    n = 0
    with subprocess.Popen(["nfs-cat", server.url(rel)], stdout=subprocess.PIPE) as p:
        assert p.stdout is not None
        while chunk := p.stdout.read(READ_SIZE):
            h.update(chunk)
            n += len(chunk)
    if p.returncode != 0:
        raise RuntimeError(f"nfs-cat {server.url(rel)} exited with {p.returncode}")
    return h.hexdigest(), n


# --------------------------------------------------------------------------------------- sshfs


@dataclass(frozen=True)
class SshServer:
    host: str
    port: int
    user: str
    key: Path
    known_hosts: Path


SSHD_CONF = """\
Port {port}
ListenAddress {host}
HostKey {host_key}
PidFile {workdir}/sshd.pid
AuthorizedKeysFile {workdir}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
LogLevel ERROR
"""


def start_sshd(procs: Procs, workdir: Path, host: str = "127.0.0.1") -> SshServer:
    """A private sshd on ``host`` that lets the current user in with a key made here."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name in ("host_key", "user_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(workdir / name)], check=True
        )
    (workdir / "authorized_keys").write_text((workdir / "user_key.pub").read_text())
    port = free_port(host)
    host_pub = (workdir / "host_key.pub").read_text().split()
    (workdir / "known_hosts").write_text(f"[{host}]:{port} {host_pub[0]} {host_pub[1]}\n")
    conf = workdir / "sshd_config"
    conf.write_text(
        SSHD_CONF.format(port=port, host=host, host_key=workdir / "host_key", workdir=workdir)
    )
    # sshd's privilege-separation directory (Debian's unit creates it as RuntimeDirectory).
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    proc = procs.start("sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", str(conf)])
    wait_listening(proc, port)
    user = pwd.getpwuid(os.getuid()).pw_name
    return SshServer(host, port, user, workdir / "user_key", workdir / "known_hosts")


def mount_sshfs(procs: Procs, server: SshServer, remote_dir: Path, mountpoint: Path) -> None:
    """Mount ``remote_dir`` of ``server`` read-only on ``mountpoint`` (sshfs in the foreground)."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    opts = ",".join(
        [
            "ro",
            f"port={server.port}",
            f"IdentityFile={server.key}",
            f"UserKnownHostsFile={server.known_hosts}",
            "StrictHostKeyChecking=yes",
            "BatchMode=yes",
            "Compression=no",
        ]
    )
    procs.add_mount(mountpoint)
    proc = procs.start(
        "sshfs",
        [
            "sshfs",
            "-f",
            "-o",
            opts,
            f"{server.user}@{server.host}:{remote_dir.resolve()}",
            str(mountpoint),
        ],
    )
    wait_mount(mountpoint, proc=proc)
