"""Optional TLS between tiers: ``ssl`` contexts from certificate and key paths in configuration.

TLS is added *under* the dadafs handshake, not instead of it: the HMAC challenge-response with the
shared key still authenticates both peers; TLS adds confidentiality and integrity on the wire and
lets a client check the upstream's certificate. A server with ``tls_cert``/``tls_key`` accepts only
TLS; a client (or proxy) with ``tls_ca`` speaks TLS to every upstream and verifies its certificate
against that CA, host name included. Plain TCP keeps its zero-copy paths (``recv_into``,
``sendfile``); TLS costs a copy and the encryption.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from .util import ConfigError


def _readable(path: str, what: str) -> None:
    if not Path(path).is_file():
        raise ConfigError(f"{what} {path} does not exist or is not a file")


def server_context(cert: str, key: str) -> ssl.SSLContext | None:
    """The listening side's context, or None when no certificate is configured."""
    if not cert and not key:
        return None
    if not cert or not key:
        raise ConfigError("TLS needs both tls_cert and tls_key")
    _readable(cert, "tls_cert")
    _readable(key, "tls_key")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(f"cannot load TLS certificate {cert} / key {key}: {e}") from None
    return ctx


def client_context(ca: str) -> ssl.SSLContext | None:
    """The connecting side's context (verifies the upstream against ``ca``), or None."""
    if not ca:
        return None
    _readable(ca, "tls_ca")
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_verify_locations(ca)
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(f"cannot load TLS CA {ca}: {e}") from None
    return ctx
