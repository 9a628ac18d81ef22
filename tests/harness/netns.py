"""Network namespaces, veth links, tbf shaping and iptables packet loss for tests.

A ``Topology`` owns everything it creates. Names carry the creating process id
(``dadafs-h-<pid>-t<k>-<label>`` for namespaces, ``v<pid hex>t<k>n<i>a|b`` for interfaces, k
counting the topologies of one process), so parallel runs
never collide, and leftovers of a run that was killed are recognisable: the next ``Topology``
removes namespaces whose creator is dead. Veths are created directly inside their namespaces and
every qdisc and iptables rule lives inside a namespace, so deleting the namespaces (after killing
the processes still in them) removes all of it; ``close`` checks that nothing is left.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

PREFIX = "dadafs-h"
_instances = itertools.count()
NETNS_DIR = Path("/run/netns")


class NetnsError(RuntimeError):
    pass


def sh(*argv: str) -> str:
    """Run a command; raise ``NetnsError`` with its first stderr line on failure."""
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        msg = (r.stderr.strip() or r.stdout.strip() or "failed").splitlines()[0]
        raise NetnsError(f"{' '.join(argv)}: {msg}")
    return r.stdout


def in_ns(ns: str, *argv: str) -> str:
    return sh("nsenter", f"--net={NETNS_DIR / ns}", "--", *argv)


def list_namespaces() -> list[str]:
    return [line.split()[0] for line in sh("ip", "netns", "list").splitlines() if line.strip()]


def ns_pids(ns: str) -> list[int]:
    return [int(p) for p in sh("ip", "netns", "pids", ns).split()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def delete_namespace(ns: str, timeout: float = 5.0) -> None:
    """Kill the processes left inside ``ns`` (all were started into it by a harness) and delete it."""
    deadline = time.monotonic() + timeout
    while (pids := ns_pids(ns)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
    if pids:
        raise NetnsError(f"processes {pids} survive in namespace {ns}")
    sh("ip", "netns", "del", ns)


def cleanup_stale() -> list[str]:
    """Delete harness namespaces whose creating process no longer exists; return their names."""
    removed = []
    for ns in list_namespaces():
        parts = ns.split("-")
        if not ns.startswith(PREFIX + "-") or len(parts) < 4 or not parts[2].isdigit():
            continue
        if not _pid_alive(int(parts[2])):
            delete_namespace(ns)
            removed.append(ns)
    return removed


@dataclass(frozen=True)
class Endpoint:
    ns: str
    ifname: str
    addr: str


@dataclass(frozen=True)
class Link:
    a: Endpoint
    b: Endpoint


class Topology:
    """Namespaces and links of one test; a context manager that removes all of them."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.tag = f"t{next(_instances)}"  # several topologies of one process never collide
        self.namespaces: list[str] = []
        self.links: list[Link] = []
        cleanup_stale()

    def __enter__(self) -> Topology:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def namespace(self, label: str) -> str:
        if not label.isalnum():
            raise NetnsError(f"namespace label must be alphanumeric: {label!r}")
        ns = f"{PREFIX}-{self.pid}-{self.tag}-{label}"
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    def link(self, ns_a: str, addr_a: str, ns_b: str, addr_b: str, prefixlen: int = 24) -> Link:
        """A veth pair between two namespaces, addressed and up."""
        i = len(self.links)
        if i > 999:
            raise NetnsError("at most 1000 links per topology (interface names have 15 characters)")
        a = Endpoint(ns_a, f"v{self.pid:x}{self.tag}n{i}a", addr_a)
        b = Endpoint(ns_b, f"v{self.pid:x}{self.tag}n{i}b", addr_b)
        sh("ip", "link", "add", a.ifname, "netns", a.ns, "type", "veth",
           "peer", "name", b.ifname, "netns", b.ns)  # fmt: skip
        link = Link(a, b)
        self.links.append(link)
        for ep in (a, b):
            sh("ip", "-n", ep.ns, "addr", "add", f"{ep.addr}/{prefixlen}", "dev", ep.ifname)
            sh("ip", "-n", ep.ns, "link", "set", ep.ifname, "up")
        return link

    def shape(self, ep: Endpoint, rate_bit: int, latency_ms: int = 20) -> None:
        """Token-bucket limit on what ``ep`` sends. The bucket holds 4 ms of traffic (at least
        256 KiB, so GSO packets of 64 KiB always fit)."""
        burst = max(rate_bit // 8 // 250, 256 * 1024)
        sh("tc", "-n", ep.ns, "qdisc", "replace", "dev", ep.ifname, "root", "tbf",
           "rate", f"{rate_bit}bit", "burst", str(burst), "latency", f"{latency_ms}ms")  # fmt: skip

    def shape_link(self, link: Link, rate_bit: int) -> None:
        """Both directions of ``link`` limited to ``rate_bit``, like a real full-duplex line."""
        self.shape(link.a, rate_bit)
        self.shape(link.b, rate_bit)

    def drop(self, ep: Endpoint, probability: float, direction: str = "in") -> None:
        """Drop packets on ``ep`` at random with ``probability`` (iptables ``statistic``):
        ``in`` what arrives there, ``out`` what leaves, ``both``. Rules stay until the namespace
        goes; ``undrop`` removes them earlier."""
        if not 0.0 <= probability <= 1.0:
            raise NetnsError(f"drop probability must be within [0, 1]: {probability}")
        for chain, flag in self._chains(direction):
            in_ns(ep.ns, "iptables", "-w", "-A", chain, flag, ep.ifname, *self._stat(probability))

    def undrop(self, ep: Endpoint, probability: float, direction: str = "in") -> None:
        for chain, flag in self._chains(direction):
            in_ns(ep.ns, "iptables", "-w", "-D", chain, flag, ep.ifname, *self._stat(probability))

    @staticmethod
    def _chains(direction: str) -> list[tuple[str, str]]:
        table = {"in": [("INPUT", "-i")], "out": [("OUTPUT", "-o")]}
        table["both"] = table["in"] + table["out"]
        if direction not in table:
            raise NetnsError(f"direction must be in, out or both: {direction!r}")
        return table[direction]

    @staticmethod
    def _stat(probability: float) -> list[str]:
        return ["-m", "statistic", "--mode", "random", "--probability", f"{probability:.6f}",
                "-j", "DROP"]  # fmt: skip

    def dropped(self, ep: Endpoint) -> int:
        """Packets dropped so far by the ``drop`` rules on ``ep`` (both directions)."""
        total = 0
        for chain in ("INPUT", "OUTPUT"):
            out = in_ns(ep.ns, "iptables", "-w", "-L", chain, "-v", "-x", "-n")
            total += sum(
                int(ln.split()[0]) for ln in out.splitlines() if ep.ifname in ln and "DROP" in ln
            )
        return total

    def route(self, ns: str, dest: str, via: str) -> None:
        sh("ip", "-n", ns, "route", "add", dest, "via", via)

    def forward(self, ns: str) -> None:
        """Let ``ns`` route between its interfaces."""
        in_ns(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")

    def close(self) -> None:
        errors = []
        for ns in reversed(self.namespaces):
            try:
                delete_namespace(ns)
            except NetnsError as e:
                errors.append(str(e))
        self.namespaces.clear()
        self.links.clear()
        left = [ns for ns in list_namespaces() if ns.startswith(f"{PREFIX}-{self.pid}-{self.tag}-")]
        if errors or left:
            raise NetnsError(f"clean-up incomplete: {errors} {left}")
