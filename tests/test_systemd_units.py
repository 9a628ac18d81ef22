"""The systemd units in systemd/: `systemd-analyze verify` clean, and the properties the
cluster relies on (notify daemons, mount ordering, restart policy, a FUSE mount that the
host can see).

`systemd-analyze verify` checks that every Exec*= binary exists, so the units are verified
inside a scratch root that holds the host's systemd units and copies of the project's real
entry points (from the venv) at the path the units use, /opt/dadafs/bin.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT_DIR = REPO / "systemd"
UNITS = [
    "dadafsd.service",
    "dadafsp.service",
    "dadafs-client.service",
    "dada-scheduler.service",
    "dada-worker.service",
]
ENTRY_POINTS = ["dadafsd", "dadafsp", "dadafs", "dada"]
# Options that give a service its own mount namespace, which would hide a FUSE mount.
NAMESPACING = {
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "PrivateMounts",
    "ReadOnlyPaths",
    "ReadWritePaths",
    "InaccessiblePaths",
    "TemporaryFileSystem",
    "BindPaths",
    "BindReadOnlyPaths",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectProc",
    "RootDirectory",
    "RootImage",
    "MountAPIVFS",
}

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed"
)


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file as ordered (key, value) lists; keys may repeat."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        if current is None or "=" not in line:
            raise ValueError(f"{path.name}: cannot parse line {raw!r}")
        key, value = line.split("=", 1)
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


@pytest.fixture(scope="module")
def scratch_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("unitroot")
    try:
        (root / "usr/lib/systemd").mkdir(parents=True)
        shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
        (root / "usr/bin").mkdir(parents=True)
        (root / "bin").symlink_to("usr/bin")
        (root / "lib").symlink_to("usr/lib")
        shutil.copy2("/usr/bin/mkdir", root / "usr/bin/mkdir")
        bindir = root / "opt/dadafs/bin"
        bindir.mkdir(parents=True)
        venv_bin = Path(sys.executable).parent
        for name in ENTRY_POINTS:
            shutil.copy2(venv_bin / name, bindir / name)
        (root / "etc/systemd/system").mkdir(parents=True)
        for name in UNITS:
            shutil.copy2(UNIT_DIR / name, root / "etc/systemd/system" / name)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def verify(root: Path, unit: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", f"etc/systemd/system/{unit}"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_unit_directory_holds_exactly_the_units() -> None:
    assert sorted(p.name for p in UNIT_DIR.glob("*.service")) == sorted(UNITS)


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_analyze_verify_clean(scratch_root: Path, unit: str) -> None:
    result = verify(scratch_root, unit)
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


def test_verify_catches_a_broken_unit(scratch_root: Path) -> None:
    """The check above can fail: a misspelt key and a missing binary are both reported."""
    broken = scratch_root / "etc/systemd/system/broken.service"
    text = (UNIT_DIR / "dadafsd.service").read_text()
    broken.write_text(text.replace("Type=notify", "Typ=notify").replace("dadafsd ", "nosuchd "))
    try:
        result = verify(scratch_root, "broken.service")
        assert "Unknown key" in result.stderr
        assert "nosuchd" in result.stderr
    finally:
        broken.unlink()


@pytest.mark.parametrize("unit", UNITS)
def test_restart_on_failure_and_network_ordering(unit: str) -> None:
    parsed = parse_unit(UNIT_DIR / unit)
    assert values(parsed, "Service", "Restart") == ["on-failure"]
    assert "network-online.target" in " ".join(values(parsed, "Unit", "After"))
    assert "network-online.target" in " ".join(values(parsed, "Unit", "Wants"))
    assert values(parsed, "Install", "WantedBy"), "unit cannot be enabled"


@pytest.mark.parametrize(
    ("unit", "command"),
    [
        ("dadafsd.service", "/opt/dadafs/bin/dadafsd --config /etc/dadafs/dadafsd.toml"),
        ("dadafsp.service", "/opt/dadafs/bin/dadafsp --config /etc/dadafs/dadafsp.toml"),
        (
            "dadafs-client.service",
            "/opt/dadafs/bin/dadafs mount --config /etc/dadafs/client.toml /mnt/dadafs",
        ),
        ("dada-scheduler.service", "/opt/dadafs/bin/dada scheduler --port ${DADA_SCHEDULER_PORT}"),
        (
            "dada-worker.service",
            "/opt/dadafs/bin/dada worker --scheduler ${DADA_SCHEDULER}"
            " --nthreads ${DADA_WORKER_NTHREADS}",
        ),
    ],
)
def test_command_lines_follow_the_design(unit: str, command: str) -> None:
    assert values(parse_unit(UNIT_DIR / unit), "Service", "ExecStart") == [command]


@pytest.mark.parametrize("unit", ["dadafsd.service", "dadafsp.service", "dadafs-client.service"])
def test_daemons_are_type_notify(unit: str) -> None:
    assert values(parse_unit(UNIT_DIR / unit), "Service", "Type") == ["notify"]


def test_client_mount_stays_visible_to_the_host() -> None:
    service = dict(parse_unit(UNIT_DIR / "dadafs-client.service"))["Service"]
    used = {k for k, v in service if v.lower() not in ("no", "false", "")}
    assert not used & NAMESPACING, f"namespacing options hide the FUSE mount: {used & NAMESPACING}"
    assert ("DeviceAllow", "/dev/fuse rw") in service


def test_worker_needs_the_mount() -> None:
    unit = parse_unit(UNIT_DIR / "dada-worker.service")
    assert values(unit, "Unit", "RequiresMountsFor") == ["/mnt/dadafs"]
    assert "dadafs-client.service" in values(unit, "Unit", "Requires")
    assert "dadafs-client.service" in " ".join(values(unit, "Unit", "After"))


def test_parse_unit_rejects_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "bad.service"
    bad.write_text("[Unit]\nthis is not a key value line\n")
    with pytest.raises(ValueError, match="cannot parse"):
        parse_unit(bad)
