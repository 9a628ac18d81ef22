"""``dadafs stats ADDR``: one authenticated request for a daemon's counters."""

from __future__ import annotations

import ssl
from typing import Any

import trio

from .protocol import Channel, ProtocolError, client_handshake
from .remote import MAX_REPLY_HEADER, MAX_REPLY_PAYLOAD
from .util import ConfigError, parse_hostport


async def fetch_stats(
    addr: str, key: bytes, timeout: float = 10.0, ssl_context: ssl.SSLContext | None = None
) -> dict[str, Any]:
    host, port = parse_hostport(addr)
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(host, port)
            tls = None
            if ssl_context is not None:  # a daemon configured with tls_cert speaks only TLS
                tls = trio.SSLStream(stream, ssl_context, server_hostname=host)
                await tls.do_handshake()
            ch = Channel(
                stream.socket, max_header=MAX_REPLY_HEADER, max_payload=MAX_REPLY_PAYLOAD, tls=tls
            )
            try:
                await client_handshake(ch, key)
                await ch.send_frame({"id": 1, "op": "stats"})
                reply, _ = await ch.recv_frame()
            finally:
                ch.close()
    except (OSError, EOFError, trio.BrokenResourceError) as e:
        raise ConfigError(f"cannot reach {addr}: {e}") from None
    except ProtocolError as e:
        raise ConfigError(f"{addr}: {e}") from None
    except trio.TooSlowError:
        raise ConfigError(f"{addr} did not answer within {timeout:.0f} s") from None
    result: dict[str, Any] = reply.get("r", {})
    return result
