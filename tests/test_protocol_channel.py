"""The framed channel itself: a frame cut short never leaves a usable, desynchronised stream."""

from __future__ import annotations

import trio

from dadafs.protocol import Channel


def test_cancelled_send_mid_frame_closes_the_connection() -> None:
    """A peer that stops reading fills the socket buffers; a send cancelled after part of a frame
    went out must close the channel, or the next frame would be parsed as that frame's rest."""

    async def main() -> None:
        async with trio.open_nursery() as n:
            got = trio.Event()

            async def never_reads(stream: trio.SocketStream) -> None:
                got.set()
                await trio.sleep_forever()

            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            port = listeners[0].socket.getsockname()[1]
            n.start_soon(trio.serve_listeners, never_reads, listeners)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            ch = Channel(stream.socket, max_header=1 << 20, max_payload=1 << 20)
            await got.wait()
            frames = 0
            with trio.move_on_after(1.0):
                while True:
                    await ch.send_frame({"id": frames, "op": "stat"}, b"\0" * (256 << 10))
                    frames += 1
            assert ch.sock.fileno() == -1  # closed: the cut frame cannot be followed by another
            n.cancel_scope.cancel()

    trio.run(main)


def test_cancel_before_any_byte_keeps_the_connection() -> None:
    async def main() -> None:
        async with trio.open_nursery() as n:

            async def echo(stream: trio.SocketStream) -> None:
                await trio.sleep_forever()

            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            port = listeners[0].socket.getsockname()[1]
            n.start_soon(trio.serve_listeners, echo, listeners)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            ch = Channel(stream.socket, max_header=1 << 20, max_payload=0)

            async def hold() -> None:  # another sender holds the lock: ours waits, sends nothing
                async with ch.send_lock:
                    await trio.sleep(0.3)

            n.start_soon(hold)
            await trio.sleep(0.05)
            with trio.move_on_after(0.1):
                await ch.send_frame({"id": 1, "op": "ping"})
            await trio.sleep(0.3)
            assert ch.sock.fileno() != -1
            await ch.send_frame({"id": 2, "op": "ping"})  # still usable
            ch.close()
            n.cancel_scope.cancel()

    trio.run(main)
