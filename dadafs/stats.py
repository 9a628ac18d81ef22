"""``dadafs stats ADDR``: one authenticated request for a daemon's counters."""

from __future__ import annotations

from typing import Any

import trio

from .protocol import Channel, ProtocolError, client_handshake
from .remote import MAX_REPLY_HEADER, MAX_REPLY_PAYLOAD
from .util import ConfigError, parse_hostport


async def fetch_stats(addr: str, key: bytes, timeout: float = 10.0) -> dict[str, Any]:
    host, port = parse_hostport(addr)
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(host, port)
            ch = Channel(stream.socket, max_header=MAX_REPLY_HEADER, max_payload=MAX_REPLY_PAYLOAD)
            try:
                await client_handshake(ch, key)
                await ch.send_frame({"id": 1, "op": "stats"})
                reply, _ = await ch.recv_frame()
            finally:
                ch.close()
    except (OSError, EOFError) as e:
        raise ConfigError(f"cannot reach {addr}: {e}") from None
    except ProtocolError as e:
        raise ConfigError(f"{addr}: {e}") from None
    except trio.TooSlowError:
        raise ConfigError(f"{addr} did not answer within {timeout:.0f} s") from None
    result: dict[str, Any] = reply.get("r", {})
    return result
