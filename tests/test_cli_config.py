"""Bad configuration: each daemon exits non-zero with one clear line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def run(argv: list[str], timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


@pytest.fixture
def key(tmp_path: Path) -> Path:
    k = tmp_path / "k"
    k.write_text("0123456789abcdef0123456789abcdef\n")
    k.chmod(0o600)
    return k


def one_line_error(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_missing_export_dir(key: Path, tmp_path: Path) -> None:
    r = run([str(BIN / "dadafsd"), "--config", "/dev/null", "--secret-file", str(key),
             "--listen", "127.0.0.1:0", "--export", f"d={tmp_path / 'nope'}"])  # fmt: skip
    one_line_error(r, "does not exist")


def test_key_readable_by_others(key: Path, tmp_path: Path) -> None:
    key.chmod(0o644)
    r = run([str(BIN / "dadafsd"), "--config", "/dev/null", "--secret-file", str(key),
             "--listen", "127.0.0.1:0", "--export", f"d={tmp_path}"])  # fmt: skip
    one_line_error(r, "chmod 600")


def test_missing_key(tmp_path: Path) -> None:
    r = run([str(BIN / "dadafsp"), "--config", "/dev/null", "--secret-file", str(tmp_path / "none"),
             "--upstream", "a:1"])  # fmt: skip
    one_line_error(r, "secret file")


def test_port_in_use(key: Path, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run([str(BIN / "dadafsd"), "--config", "/dev/null", "--secret-file", str(key),
                 "--listen", f"127.0.0.1:{port}", "--export", f"d={tmp_path}"])  # fmt: skip
    one_line_error(r, "port in use")


@pytest.mark.parametrize(
    "spec", ["a:7070||b:7070", "a:7070;", "nohost", "a:99999", "a:70;b 70", ""]
)
def test_unknown_upstream_syntax(key: Path, tmp_path: Path, spec: str) -> None:
    r = run([str(BIN / "dadafsp"), "--config", "/dev/null", "--secret-file", str(key), "--upstream", spec,
             "--listen", "127.0.0.1:0"])  # fmt: skip
    one_line_error(r)
    line = r.stderr.strip()
    assert "upstream" in line or f"'{spec}'" in line, line


def test_bad_toml_and_unknown_key(key: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("listen = \n")
    one_line_error(run([str(BIN / "dadafsd"), "--config", str(cfg)]), str(cfg))
    cfg.write_text(
        f'secret_file = "{key}"\nlisten = "127.0.0.1:0"\ncolour = "blue"\n[exports]\nd = "{tmp_path}"\n'
    )
    one_line_error(run([str(BIN / "dadafsd"), "--config", str(cfg)]), "unknown key 'colour'")


def test_bad_cache_size(key: Path, tmp_path: Path) -> None:
    r = run([str(BIN / "dadafsp"), "--config", "/dev/null", "--secret-file", str(key), "--upstream", "a:1",
             "--cache", f"{tmp_path}:lots"])  # fmt: skip
    one_line_error(r, "size")


def test_mount_on_missing_dir_and_bad_key(key: Path, tmp_path: Path) -> None:
    r = run([str(BIN / "dadafs"), "mount", "--config", "/dev/null", "--secret-file", str(key),
             "--upstream", "127.0.0.1:9", str(tmp_path / "nope")])  # fmt: skip
    one_line_error(r, "mountpoint", "nope")


def test_config_file_and_flag_override(key: Path, tmp_path: Path) -> None:
    """Flags override the file: the file's export dir is missing but the flag names a good one."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'secret_file = "{key}"\nlisten = "127.0.0.1:1"\n[exports]\nd = "{tmp_path}"\n')
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen([str(BIN / "dadafsd"), "--config", str(cfg), "--listen", f"127.0.0.1:{port}"],
                         stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert p.stderr is not None
        line = p.stderr.readline()
        assert f"127.0.0.1:{port}" in line, line
    finally:
        p.terminate()
        assert p.wait(10) == 0
    assert os.WEXITSTATUS(0) == 0
