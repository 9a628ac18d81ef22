"""The shared key and the mutual HMAC challenge-response of the handshake.

Both sides prove knowledge of the key over a nonce the *other* side just chose, so a recorded
handshake cannot be replayed: a server's proof covers the client's fresh nonce and vice versa.
The key itself is never sent nor logged.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

from .util import ConfigError

NONCE_LEN = 32
MIN_KEY_LEN = 16


def load_key(path: str | Path) -> bytes:
    """Read a key file; refuse one readable or writable by group/others, or too short."""
    p = Path(path)
    try:
        st = p.stat()
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read secret file {p}: {e.strerror}") from e
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"secret file {p} is not a regular file")
    if st.st_mode & 0o077:
        raise ConfigError(
            f"secret file {p} is accessible by others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run: chmod 600 {p}"
        )
    key = data.strip()
    if len(key) < MIN_KEY_LEN:
        raise ConfigError(f"secret file {p} holds fewer than {MIN_KEY_LEN} bytes")
    return key


def generate_key(path: str | Path) -> None:
    """Write a new random key (hex text), mode 0600, atomically."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    os.replace(tmp, p)


def new_nonce() -> bytes:
    return os.urandom(NONCE_LEN)


def proof(key: bytes, role: bytes, mine: bytes, theirs: bytes, version: int) -> bytes:
    """HMAC-SHA256 over role, both nonces and the protocol version."""
    msg = role + b"\0" + version.to_bytes(4, "big") + theirs + mine
    return hmac.new(key, msg, hashlib.sha256).digest()


def check(expected: bytes, got: object) -> bool:
    return isinstance(got, bytes) and hmac.compare_digest(expected, got)
