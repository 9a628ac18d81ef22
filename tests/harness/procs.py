"""Real processes for tests and benchmarks, with guaranteed clean-up.

``Procs`` is a context manager: every process it starts runs in its own session (so the whole
process group can be signalled by the leader's id), writes stdout+stderr to a log file, and is
stopped (SIGTERM, then SIGKILL) when the context ends, in reverse start order, also when the test
fails. Mount points registered with ``add_mount`` are lazily unmounted at the end if their owner
left them behind (a SIGKILLed FUSE daemon leaves a dead mount).

Waiting helpers poll ``/proc``: ``wait_listening`` reads ``/proc/PID/net/tcp{,6}``, which shows the
sockets of the process's own network namespace, so it works for daemons inside namespaces too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType


class ProcessFailed(RuntimeError):
    """A managed process died or did not become ready; the message ends with its log tail."""


@dataclass
class Proc:
    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log: Path
    stopped: bool = field(default=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def fail(self, what: str) -> ProcessFailed:
        state = "running" if self.alive() else f"exited with {self.popen.returncode}"
        return ProcessFailed(
            f"{self.name} ({state}): {what}\n--- {self.log} ---\n{self.log_tail()}"
        )


def netns_argv(netns: str | None, argv: Sequence[str]) -> list[str]:
    """Run ``argv`` in network namespace ``netns`` (only the network: mounts stay shared).

    ``nsenter --net`` is used instead of ``ip netns exec`` because the latter also unshares the
    mount namespace, which would hide a FUSE mount made inside from everybody else.
    """
    if netns is None:
        return list(argv)
    return ["nsenter", f"--net=/run/netns/{netns}", "--", *argv]


def _sigterm_to_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


class Procs:
    """Starts processes and stops every one of them (and their mounts) on exit."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[Proc] = []
        self.mounts: list[Path] = []
        logdir.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> Procs:
        # A run stopped with SIGTERM (timeout(1), CI cancelling) must still clean up: turn the
        # signal into SystemExit so ``finally`` blocks and ``__exit__`` run.
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _sigterm_to_exit)
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        netns: str | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Proc:
        full = netns_argv(netns, argv)
        log = self.logdir / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                full,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=None if env is None else {**os.environ, **env},
                cwd=cwd,
            )
        proc = Proc(name, full, popen, log)
        self.procs.append(proc)
        return proc

    def get(self, name: str) -> Proc:
        """The most recent process started as ``name``."""
        for proc in reversed(self.procs):
            if proc.name == name:
                return proc
        raise KeyError(f"no process named {name!r}")

    def add_mount(self, path: Path) -> None:
        self.mounts.append(path)

    def stop(self, proc: Proc, timeout: float = 5.0, sig: int = signal.SIGTERM) -> int:
        """Signal the process group of ``proc`` and wait; SIGKILL after ``timeout``."""
        if not proc.stopped:
            proc.stopped = True
            for s in (sig, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, s)
                try:
                    proc.popen.wait(timeout)
                    break
                except subprocess.TimeoutExpired:
                    continue
            # The leader may be gone while children of its group linger; make sure they die.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        return proc.popen.wait()

    def close(self) -> None:
        """Stop everything. Raises if clean-up failed, or if a process had died on its own with
        an error status (a crashed daemon: its log tail is in the message); deaths by SIGKILL or
        SIGTERM count as intended (fault tests kill daemons on purpose)."""
        errors: list[str] = []
        crashed: list[str] = []
        for proc in reversed(self.procs):
            rc = proc.popen.poll()
            if not proc.stopped and rc not in (None, 0, -signal.SIGKILL, -signal.SIGTERM):
                crashed.append(str(proc.fail("died on its own")))
            try:
                self.stop(proc)
            except Exception as e:  # keep cleaning up the others
                errors.append(f"{proc.name}: {e}")
        for mnt in reversed(self.mounts):
            if is_mounted(mnt):
                unmount(mnt)
            if is_mounted(mnt):
                errors.append(f"{mnt} still mounted")
        self.procs.clear()
        self.mounts.clear()
        if errors:
            raise RuntimeError("clean-up incomplete: " + "; ".join(errors))
        if crashed:
            raise ProcessFailed("\n".join(crashed))


def wait_for(
    pred: Callable[[], bool], what: str, timeout: float = 20.0, proc: Proc | None = None
) -> None:
    """Poll ``pred`` until true; fail early (with the log) if ``proc`` dies meanwhile."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        if pred():
            return
        if proc is not None and not proc.alive():
            raise proc.fail(f"died while waiting for {what}")
        if time.monotonic() > deadline:
            if proc is not None:
                raise proc.fail(f"timed out after {timeout:g} s waiting for {what}")
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def listening_ports(pid: int) -> set[int]:
    """TCP ports in LISTEN state in the network namespace of process ``pid``."""
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 3 and cols[3] == "0A":
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def wait_listening(proc: Proc, port: int, timeout: float = 20.0) -> None:
    wait_for(lambda: port in listening_ports(proc.pid), f"port {port}", timeout, proc)


def wait_port(host: str, port: int, timeout: float = 20.0, proc: Proc | None = None) -> None:
    """Wait until ``host:port`` accepts a TCP connection from this (the host's) namespace."""

    def connects() -> bool:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return True
        except OSError:
            return False

    wait_for(connects, f"{host}:{port}", timeout, proc)


def mountpoints() -> set[str]:
    out: set[str] = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mnt = line.split()[4]
        out.add(mnt.encode().decode("unicode_escape"))
    return out


def is_mounted(path: Path) -> bool:
    """Whether ``path`` is a mount point, from mountinfo alone: no syscall touches the path, so a
    hung or dead FUSE mount cannot block the caller."""
    return os.path.abspath(path) in mountpoints()


def wait_mount(path: Path, timeout: float = 20.0, proc: Proc | None = None) -> None:
    wait_for(lambda: is_mounted(path), f"mount on {path}", timeout, proc)


def unmount(path: Path) -> None:
    """Detach a (possibly dead) FUSE or other mount; quiet if it is not mounted."""
    for argv in (["fusermount3", "-u", "-z", str(path)], ["umount", "-l", str(path)]):
        if not is_mounted(path):
            return
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the kernel's choice)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time consumed so far by process ``pid`` (all its threads)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
