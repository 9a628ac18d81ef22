"""Slow provisioning tests: the playbooks converge real Debian roots, twice.

- The nodes' image: node-image.yml bootstraps a root with mmdebstrap (the control node is
  this machine, connection=local), configures it through the community.general.chroot
  connection (the project's wheel built with `pip wheel`, client and worker units, NFS-root
  initramfs, read-only root), publishes kernel and initramfs; the second run and a check-mode
  run report changed=0.
- The control node: control.yml converges a fresh mmdebstrap root (the "bare machine",
  entered through the chroot connection); then dnsmasq, as installed and configured there,
  runs in a network namespace and a DHCP client in another namespace gets its reservation,
  its boot file (BIOS, UEFI, iPXE) and the boot files over TFTP, and DNS answers.

Everything (roots, namespaces, processes) is removed by the fixtures, also on failure.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_provisioning import ansible, recap

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chroot, namespaces)"),
    pytest.mark.skipif(shutil.which("mmdebstrap") is None, reason="mmdebstrap not installed"),
]

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
H001_MAC = "52:54:00:da:da:01"
UDHCPC_SCRIPT = """#!/bin/sh
# Record the lease (udhcpc passes it in the environment) and configure it.
if [ "$1" = bound ]; then
    env > "$UDHCPC_OUT"
    ip addr replace "$ip/$mask" dev "$interface"
fi
exit 0
"""


def mounted_under(path: Path) -> list[str]:
    prefix = str(path.resolve())
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(prefix)]


def remove_root(path: Path) -> None:
    """rm -rf a chroot, refusing when something is still mounted inside it."""
    if not path.exists():
        return
    left = mounted_under(path)
    if left:
        raise RuntimeError(f"not removing {path}: still mounted: {left}")
    shutil.rmtree(path)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("provisioning")
    try:
        yield path
    finally:
        for child in path.iterdir():
            if child.is_dir() and not child.is_symlink():
                remove_root(child)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def wheelhouse(workdir: Path) -> Path:
    """Empty at first: the dadafs_common role builds it with `pip wheel` on first use."""
    path = workdir / "wheelhouse"
    path.mkdir()
    return path


def write_yaml_vars(path: Path, values: dict[str, object]) -> Path:
    import json

    path.write_text(json.dumps(values))  # JSON is YAML
    return path


def run_playbook(playbook: str, *args: str, timeout: float = 600) -> dict[str, dict[str, int]]:
    result = ansible("ansible-playbook", playbook, *args, timeout=timeout)
    hosts = recap(result.stdout)
    bad = {h: c for h, c in hosts.items() if c.get("failed") or c.get("unreachable")}
    assert not bad, f"{playbook}: {bad}\n{result.stdout[-6000:]}"
    return hosts


def in_root(
    root: Path, *argv: str, proc: bool = False, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run a command chrooted into ROOT; with proc, /proc is mounted there in a private
    mount namespace that disappears with the command."""
    if proc:
        cmd = [
            "unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount -t proc proc "$0/proc" && exec chroot "$0" "$@"', str(root), *argv,
        ]  # fmt: skip
    else:
        cmd = ["chroot", str(root), *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------------------------
# The nodes' image


def test_node_image_converges_through_chroot(workdir: Path, wheelhouse: Path) -> None:
    root = workdir / "nodeimage" / "root"
    tftp = workdir / "tftp"
    master = workdir / "secret" / "secret.key"
    extra = write_yaml_vars(
        workdir / "image-vars.yml",
        {
            "node_image_root": str(root),
            "cluster_wheelhouse": str(wheelhouse),
            "cluster_tftp_root": str(tftp),
            "dadafs_common_secret_master": str(master),
            # mmdebstrap is installed on this machine by `make setup`.
            "node_image_build_packages": [],
        },
    )
    first = run_playbook("node-image.yml", "-e", f"@{extra}", timeout=900)
    assert first["nodeimage"]["changed"] > 10 and first["heinzelfrau"]["changed"] > 0
    second = run_playbook("node-image.yml", "-e", f"@{extra}")
    assert {h: c["changed"] for h, c in second.items()} == {"heinzelfrau": 0, "nodeimage": 0}
    check = run_playbook("node-image.yml", "--check", "-e", f"@{extra}")
    assert {h: c["changed"] for h, c in check.items()} == {"heinzelfrau": 0, "nodeimage": 0}

    # The project's wheel, built by pip wheel, installed in the image's venv and importable.
    assert list(wheelhouse.glob("dadafs-*.whl"))
    for tool in ("dadafs", "dadafsd", "dadafsp", "dada"):
        assert (root / "opt/dadafs/bin" / tool).is_file()
    imported = in_root(
        root,
        "/opt/dadafs/bin/python",
        "-c",
        "import dadafs, workers, pyfuse3, distributed",
        proc=True,
    )
    assert imported.returncode == 0, imported.stderr

    # Units installed, enabled, and verified inside the image.
    etc = root / "etc"
    assert (etc / "systemd/system/remote-fs.target.wants/dadafs-client.service").is_symlink()
    assert (etc / "systemd/system/multi-user.target.wants/dada-worker.service").is_symlink()
    verify = in_root(
        root,
        "systemd-analyze",
        "verify",
        "/etc/systemd/system/dadafs-client.service",
        "/etc/systemd/system/dada-worker.service",
    )
    assert verify.returncode == 0, verify.stderr

    # Configuration from the inventory.
    client = tomllib.loads((etc / "dadafs/client.toml").read_text())
    assert client == {
        "upstream": "heinzelfrau:7071",
        "secret_file": "/etc/dadafs/secret.key",
        "ram_cache": "1G",
        "meta_ttl": 1.0,
        "allow_other": True,
    }
    assert "DADA_SCHEDULER=tcp://heinzelfrau:8786" in (etc / "default/dada-worker").read_text()
    key = etc / "dadafs/secret.key"
    st = key.stat()
    assert st.st_mode & 0o777 == 0o600
    passwd = {
        line.split(":")[0]: line.split(":") for line in (etc / "passwd").read_text().splitlines()
    }
    assert st.st_uid == int(passwd["dadafs"][2])
    assert key.read_text() == master.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}", key.read_text())

    # Diskless, read-only root with its identity from DHCP.
    fstab = (etc / "fstab").read_text()
    assert re.search(r"^tmpfs /tmp tmpfs ", fstab, re.M)
    assert re.search(r"^tmpfs /var/log tmpfs ", fstab, re.M)
    assert not re.search(r"^\S+\s+/\s", fstab, re.M), "the NFS root must not be in fstab"
    assert not (etc / "hostname").exists()
    assert (etc / "machine-id").read_text() == ""
    assert "nameserver 10.42.0.1" in (etc / "resolv.conf").read_text()

    # NFS-root initramfs, published for TFTP.
    # lsinitramfs misreads a path through a symlink: use the file itself.
    initrd = "/" + os.readlink(root / "initrd.img").lstrip("/")
    listing = in_root(root, "lsinitramfs", initrd)
    assert listing.returncode == 0, listing.stderr
    files = listing.stdout.split()
    assert "scripts/nfs" in files and "usr/bin/nfsmount" in files
    assert any(f.endswith("/virtio_net.ko") for f in files)
    unpacked = in_root(
        root,
        "sh",
        "-c",
        f"d=$(mktemp -d) && unmkinitramfs {initrd} $d && cat $d/conf/initramfs.conf; rm -rf $d",
    )
    assert re.search(r"^BOOT=nfs$", unpacked.stdout, re.M), unpacked.stderr
    assert re.search(r"^MODULES=netboot$", unpacked.stdout, re.M)
    assert (tftp / "vmlinuz").read_bytes() == (root / "vmlinuz").read_bytes()
    assert (tftp / "initrd.img").read_bytes() == (root / "initrd.img").read_bytes()


# ---------------------------------------------------------------------------------------------
# The control node


class Namespaces:
    """Two network namespaces joined by a veth pair; removed on close."""

    def __init__(self, tag: str) -> None:
        self.ctl = f"dadafs-p8-{os.getpid()}-{tag}ctl"
        self.cli = f"dadafs-p8-{os.getpid()}-{tag}cli"
        self.ctl_if = f"p8c{os.getpid() % 100000}"
        self.cli_if = f"p8n{os.getpid() % 100000}"
        self.created: list[str] = []

    def sh(self, *argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True, timeout=30)

    def open(self, ctl_ip: str) -> None:
        for ns in (self.ctl, self.cli):
            self.sh("ip", "netns", "add", ns)
            self.created.append(ns)
        self.sh(
            "ip", "link", "add", self.ctl_if, "netns", self.ctl, "type", "veth",
            "peer", "name", self.cli_if, "netns", self.cli,
        )  # fmt: skip
        self.sh("ip", "-n", self.ctl, "addr", "add", ctl_ip, "dev", self.ctl_if)
        for ns, ifname in ((self.ctl, self.ctl_if), (self.cli, self.cli_if)):
            self.sh("ip", "-n", ns, "link", "set", "lo", "up")
            self.sh("ip", "-n", ns, "link", "set", ifname, "up")

    def close(self) -> None:
        for ns in reversed(self.created):
            pids = subprocess.run(
                ["ip", "netns", "pids", ns], capture_output=True, text=True
            ).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.created.clear()


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    ns = Namespaces("a")
    try:
        ns.open("10.42.0.1/24")
        yield ns
    finally:
        ns.close()


@pytest.fixture
def control_root(workdir: Path) -> Iterator[Path]:
    """A bare Debian machine: what mmdebstrap gives, plus Python for Ansible."""
    root = workdir / "control" / "root"
    root.parent.mkdir(parents=True)
    try:
        subprocess.run(
            [
                "mmdebstrap", "--quiet", "--variant=minbase",
                "--include=python3,python3-apt,systemd,systemd-sysv",
                "--skip=cleanup/apt/lists", SUITE, str(root), MIRROR,
            ],
            check=True, timeout=600,
        )  # fmt: skip
        yield root
    finally:
        remove_root(root)


class Dnsmasq:
    """dnsmasq as installed and configured in ROOT, run in a namespace the way Debian's
    dnsmasq.service runs it (the configuration file plus /etc/dnsmasq.d)."""

    def __init__(self, root: Path, netns: str, log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [
                "ip", "netns", "exec", netns, "chroot", str(root), "/usr/sbin/dnsmasq",
                "--keep-in-foreground", "--log-facility=-", "--pid-file=",
                "--conf-file=/etc/dnsmasq.conf",
                "--conf-dir=/etc/dnsmasq.d,.dpkg-dist,.dpkg-old,.dpkg-new",
            ],
            stdout=log.open("w"), stderr=subprocess.STDOUT,
        )  # fmt: skip

    def wait_ready(self) -> None:
        import time

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"dnsmasq exited: {self.log.read_text()}")
            if "TFTP root is" in self.log.read_text():
                return
            time.sleep(0.1)
        raise AssertionError(f"dnsmasq not ready: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def dhcp(ns: Namespaces, out: Path, *extra: str) -> dict[str, str] | None:
    """One DHCP exchange from the client namespace with busybox udhcpc; the lease, or None."""
    script = out.parent / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    out.unlink(missing_ok=True)
    result = subprocess.run(
        [
            "ip", "netns", "exec", ns.cli, "busybox", "udhcpc", "-i", ns.cli_if,
            "-n", "-q", "-f", "-t", "3", "-T", "1", "-O", "hostname", "-O", "domain",
            "-s", str(script), *extra,
        ],
        env={**os.environ, "UDHCPC_OUT": str(out)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if result.returncode != 0:
        return None
    return dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)


def group_id(root: Path, name: str) -> int:
    """The gid of group ``name`` in the chroot's /etc/group."""
    for line in (root / "etc/group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2])
    raise KeyError(name)


def test_control_node_converges_and_serves_dhcp_tftp_dns(
    workdir: Path, wheelhouse: Path, control_root: Path, namespaces: Namespaces
) -> None:
    root = control_root
    inventory = workdir / "control-hosts.yml"
    inventory.write_text(
        "all:\n  children:\n    control:\n      hosts:\n        heinzelfrau:\n"
        "          ansible_connection: community.general.chroot\n"
        f"          ansible_host: {root}\n"
        "          ansible_python_interpreter: /usr/bin/python3\n"
    )
    extra = write_yaml_vars(
        workdir / "control-vars.yml",
        {
            "netboot_interface": namespaces.ctl_if,
            "nfsroot_server": "ganesha",
            "dadafs_proxy_caches": [{"dir": "/srv/dadafs/ssd0", "size": "1G"}],
            "dadafs_common_controller": "localhost",
            "dadafs_common_secret_master": str(workdir / "control-secret" / "secret.key"),
            "cluster_wheelhouse": str(wheelhouse),
        },
    )
    args = ("-i", "inventory/hosts.yml", "-i", str(inventory), "-e", f"@{extra}")
    first = run_playbook("control.yml", *args, timeout=900)
    assert first["heinzelfrau"]["changed"] > 10
    second = run_playbook("control.yml", *args)
    assert second["heinzelfrau"]["changed"] == 0
    check = run_playbook("control.yml", "--check", *args)
    assert check["heinzelfrau"]["changed"] == 0

    # What the other roles left: proxy configuration and cache, NFS export, units enabled.
    proxy = tomllib.loads((root / "etc/dadafs/dadafsp.toml").read_text())
    assert proxy["upstream"] == "homer4a:7070;homer4b:7070"
    assert proxy["cache"] == [{"dir": "/srv/dadafs/ssd0", "size": "1G"}]
    assert (root / "srv/dadafs/ssd0").is_dir()
    ganesha = (root / "etc/ganesha/ganesha.conf").read_text()
    assert "Path = /srv/nodeimage/root;" in ganesha and "Clients = 10.42.0.0/24;" in ganesha
    wants = root / "etc/systemd/system/multi-user.target.wants"
    assert (wants / "dadafsp.service").is_symlink()
    assert (wants / "dada-scheduler.service").is_symlink()
    results = root / "var/cache/dada/results"  # dada stxm's default result cache
    assert results.is_dir() and results.stat().st_mode & 0o7777 == 0o2775
    assert results.stat().st_gid == group_id(root, "dada")

    dnsmasq = Dnsmasq(root, namespaces.ctl, workdir / "dnsmasq.log")
    try:
        dnsmasq.wait_ready()
        subprocess.run(
            ["ip", "-n", namespaces.cli, "link", "set", namespaces.cli_if, "address", H001_MAC],
            check=True,
        )
        lease = dhcp(namespaces, workdir / "lease-bios")
        assert lease is not None, dnsmasq.log.read_text()
        assert lease["ip"] == "10.42.0.101"
        assert lease["hostname"] == "h001"
        assert lease["domain"] == "cluster.dadafs"
        assert lease["siaddr"] == "10.42.0.1"
        assert lease["boot_file"] == "undionly.kpxe"
        uefi = dhcp(namespaces, workdir / "lease-uefi", "-x", "0x5d:0007")
        assert uefi is not None and uefi["boot_file"] == "snponly.efi"
        ipxe = dhcp(namespaces, workdir / "lease-ipxe", "-x", "0xaf:150101")
        assert ipxe is not None and ipxe["boot_file"] == "boot.ipxe"

        def tftp(name: str) -> bytes:
            return subprocess.run(
                ["ip", "netns", "exec", namespaces.cli, "curl", "-sS", "--max-time", "20",
                 f"tftp://10.42.0.1/{name}"],
                check=True, capture_output=True, timeout=30,
            ).stdout  # fmt: skip

        assert tftp("undionly.kpxe") == (root / "usr/lib/ipxe/undionly.kpxe").read_bytes()
        assert tftp("snponly.efi") == (root / "usr/lib/ipxe/snponly.efi").read_bytes()
        script = tftp("boot.ipxe").decode()
        assert script.startswith("#!ipxe")
        assert re.search(
            r"^kernel vmlinuz .*root=/dev/nfs nfsroot=10\.42\.0\.1:/srv/nodeimage/root\S* "
            r"ip=dhcp ro",
            script,
            re.M,
        )

        lookup = subprocess.run(
            ["ip", "netns", "exec", namespaces.cli, "busybox", "nslookup", "-type=A",
             "h024.cluster.dadafs", "10.42.0.1"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert "10.42.0.124" in lookup.stdout, lookup.stdout + lookup.stderr

        # A machine without a reservation gets nothing.
        subprocess.run(
            ["ip", "-n", namespaces.cli, "link", "set", namespaces.cli_if, "address",
             "52:54:00:00:00:99"],
            check=True,
        )  # fmt: skip
        assert dhcp(namespaces, workdir / "lease-stranger") is None
        assert "no address available" in dnsmasq.log.read_text()
    finally:
        dnsmasq.stop()
