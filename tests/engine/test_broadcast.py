"""Tests of tidings.broadcast over real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import tidings
from tidings import ConnectionClosed, WebSocket
from tidings.engine import broadcast as broadcast_module
from tidings.engine.broadcast import broadcast_many
from tidings.protocol import DeflateConfig

from ..conftest import count_writes

BOUND = 10

Fan = Callable[..., int]


@pytest.fixture(autouse=True, params=["C", "Python"])
def twin(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """Every test runs on both twins of the fan-out loop (write_plain)."""
    if request.param == "Python":
        monkeypatch.setattr(
            broadcast_module, "write_plain", broadcast_module._py_write_plain
        )
    elif broadcast_module.write_plain is broadcast_module._py_write_plain:
        pytest.skip("tidings.engine._fanout was not built, or speedups are off")
    yield request.param


@pytest.fixture(params=["broadcast", "broadcast_many"])
def fan(request: pytest.FixtureRequest) -> Fan:
    """``broadcast``, or ``broadcast_many`` of one message: the same rules."""
    if request.param == "broadcast":
        return tidings.broadcast

    def one(conns: Any, message: str | bytes, **kwargs: Any) -> int:
        return broadcast_many(conns, [message], **kwargs)

    return one


async def gather_server_side(server: tidings.Server, count: int) -> list[WebSocket]:
    async with asyncio.timeout(BOUND):
        while len(server.connections) < count:
            await asyncio.sleep(0.01)
    return list(server.connections)


async def wait_forever(ws: WebSocket) -> None:
    await ws.wait_closed()


async def test_every_client_receives_text_and_binary() -> None:
    async with tidings.serve(wait_forever, "127.0.0.1", 0) as server:
        clients = [
            await tidings.connect(f"ws://127.0.0.1:{server.port}/") for _ in range(50)
        ]
        conns = await gather_server_side(server, 50)
        assert tidings.broadcast(conns, "news") == 50
        assert tidings.broadcast(conns, b"\x00bin") == 50
        async with asyncio.timeout(BOUND):
            for ws in clients:
                assert await ws.recv() == "news"
                assert await ws.recv() == b"\x00bin"
        for ws in clients:
            await ws.close()


async def test_compressed_once_for_no_context_takeover_and_plain_for_the_rest() -> None:
    lean = DeflateConfig(server_no_context_takeover=True, min_size=0)
    message = "price update " * 50
    async with tidings.serve(wait_forever, "127.0.0.1", 0) as server:
        uri = f"ws://127.0.0.1:{server.port}/"
        clients = [
            await tidings.connect(uri, compression=lean),
            await tidings.connect(uri, compression=lean),
            await tidings.connect(uri),  # context takeover
            await tidings.connect(uri, compression=None),
        ]
        conns = await gather_server_side(server, 4)
        for _ in range(3):
            assert tidings.broadcast(conns, message) == 4
        async with asyncio.timeout(BOUND):
            for ws in clients:
                assert [await ws.recv() for _ in range(3)] == [message] * 3
        # The connections still work normally afterwards, compression included.
        for conn in conns:
            await conn.send(message)
        async with asyncio.timeout(BOUND):
            for ws in clients:
                assert await ws.recv() == message
        for ws in clients:
            await ws.close()


async def test_slow_receivers_are_skipped_or_dropped(
    raw_connect: Any, fan: Fan
) -> None:
    async with tidings.serve(
        wait_forever, "127.0.0.1", 0, compression=None, write_limit=16 * 1024
    ) as server:
        fast = await tidings.connect(f"ws://127.0.0.1:{server.port}/", compression=None)
        slow = await raw_connect(server.port)
        await slow.handshake()  # then never reads
        conns = await gather_server_side(server, 2)
        slow_side = next(
            c
            for c in conns
            if c.remote_address[1] == slow.writer.get_extra_info("sockname")[1]
        )
        chunk = b"x" * 65536
        async with asyncio.timeout(BOUND):
            while slow_side.write_buffer_size <= slow_side.write_limit:
                slow_side.send_nowait(chunk)  # fill the kernel and the transport
                await asyncio.sleep(0)
        assert fan(conns, "tick") == 1  # skipped
        assert await fast.recv() == "tick"
        assert slow_side.close_code is None
        dropped: list[WebSocket] = []

        def drop(ws: WebSocket) -> None:
            dropped.append(ws)
            ws.drop(1013, "receiving too slowly")

        assert fan(conns, "tock", on_slow=drop) == 1
        assert dropped == [slow_side]
        assert await fast.recv() == "tock"
        assert slow_side.close_code == 1013
        await fast.close()


async def test_a_connection_mid_fragmented_message_is_skipped(fan: Fan) -> None:
    release = asyncio.Event()

    async def fragments() -> Any:
        yield "first "
        yield "middle "  # sent once the next fragment is known
        await release.wait()
        yield "last"

    async with tidings.serve(wait_forever, "127.0.0.1", 0) as server:
        ws = await tidings.connect(f"ws://127.0.0.1:{server.port}/")
        [conn] = await gather_server_side(server, 1)
        sending = asyncio.create_task(conn.send(fragments()))
        await asyncio.sleep(0.05)
        assert fan([conn], "interleaved?") == 0
        release.set()
        await sending
        assert await ws.recv() == "first middle last"
        await ws.close()
        with contextlib.suppress(ConnectionClosed):
            await ws.recv()


async def test_a_broadcast_from_a_callback_keeps_the_senders_order() -> None:
    def on_message(ws: WebSocket, message: str | bytes) -> None:
        ws.send_nowait("ack")
        tidings.broadcast(server.connections, f"news: {message!s}")

    async with (
        tidings.serve(None, "127.0.0.1", 0, on_message=on_message) as server,
        tidings.connect(f"ws://127.0.0.1:{server.port}/") as ws,
    ):
        await ws.send("hello")
        async with asyncio.timeout(BOUND):
            assert [await ws.recv(), await ws.recv()] == ["ack", "news: hello"]


async def test_broadcasts_made_together_leave_in_one_write_per_connection() -> None:
    async with tidings.serve(wait_forever, "127.0.0.1", 0, compression=None) as server:
        clients = [
            await tidings.connect(f"ws://127.0.0.1:{server.port}/", compression=None)
            for _ in range(3)
        ]
        by_port = {c.remote_address[1]: c for c in await gather_server_side(server, 3)}
        # The server side of each client, in the clients' order.
        conns = [by_port[ws._transport.get_extra_info("sockname")[1]] for ws in clients]
        writes = count_writes(conns)
        for i in range(10):
            assert tidings.broadcast(conns, f"tick {i}") == 3
        assert writes == []  # nothing is written before the loop moves on
        # A direct send and a close come after what was broadcast first.
        conns[0].send_nowait("direct")
        closing = asyncio.create_task(conns[1].close(1001, "bye"))
        async with asyncio.timeout(BOUND):
            received = [[await ws.recv() for _ in range(10)] for ws in clients]
            assert received == [[f"tick {i}" for i in range(10)]] * 3
            assert await clients[0].recv() == "direct"
            with contextlib.suppress(ConnectionClosed):
                await clients[1].recv()
            assert clients[1].close_code == 1001
            await closing
        assert len(writes) == 3 + 1  # one per connection (with the send); the close
        for ws in (clients[0], clients[2]):
            await ws.close()


async def test_broadcast_many_frames_a_batch_once_in_order_for_every_kind() -> None:
    lean = DeflateConfig(server_no_context_takeover=True, min_size=100)
    # Large enough to compress, and small enough not to: both in one batch.
    messages: list[str | bytes] = ["tick " * 40, "short", b"\x00bin" * 50, "last " * 30]
    async with tidings.serve(wait_forever, "127.0.0.1", 0) as server:
        uri = f"ws://127.0.0.1:{server.port}/"
        clients = [
            await tidings.connect(uri, compression=lean),
            await tidings.connect(uri),  # context takeover: sent plain
            await tidings.connect(uri, compression=None),
        ]
        conns = await gather_server_side(server, 3)
        writes = count_writes(conns)
        assert broadcast_many(conns, messages) == 3
        assert len(writes) == 3  # at once: one write per connection
        assert broadcast_many(conns, ["after"]) == 3
        assert len(writes) == 6
        async with asyncio.timeout(BOUND):
            for ws in clients:
                got = [await ws.recv() for _ in range(len(messages) + 1)]
                assert got == [*messages, "after"]
        for conn in conns:  # compression goes on working afterwards
            await conn.send(messages[0])
        async with asyncio.timeout(BOUND):
            for ws in clients:
                assert await ws.recv() == messages[0]
                await ws.close()


async def test_deflate_connections_get_a_batch_compressed_once_in_the_fan_out_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lean = DeflateConfig(server_no_context_takeover=True, min_size=0)
    messages: list[str | bytes] = ["tick " * 40, b"\x00bin" * 50]
    compressions = 0
    compress_once = broadcast_module._compress_once

    def counted(*args: Any) -> bytes:
        nonlocal compressions
        compressions += 1
        return compress_once(*args)

    def not_here(*args: Any) -> bool:
        raise AssertionError("left to the full loop")

    async with tidings.serve(wait_forever, "127.0.0.1", 0) as server:
        uri = f"ws://127.0.0.1:{server.port}/"
        clients = [await tidings.connect(uri, compression=lean) for _ in range(3)]
        clients.append(await tidings.connect(uri))  # context takeover: plain
        conns = await gather_server_side(server, 4)
        writes = count_writes(conns)
        monkeypatch.setattr(broadcast_module, "_compress_once", counted)
        monkeypatch.setattr(WebSocket, "send_frame", not_here)
        assert broadcast_many(conns, messages) == 4
        monkeypatch.undo()
        assert compressions == 1
        # One write each: the same compressed bytes three times, and plain.
        small, *same, large = sorted(len(data) for data in writes)
        assert same == [small, small] and large > small
        async with asyncio.timeout(BOUND):
            for ws in clients:
                assert [await ws.recv() for _ in messages] == messages
        for ws in clients:
            await ws.close()


async def test_broadcast_many_writes_at_once_and_keeps_each_connections_order() -> None:
    async with tidings.serve(wait_forever, "127.0.0.1", 0, compression=None) as server:
        uri = f"ws://127.0.0.1:{server.port}/"
        clients = [await tidings.connect(uri, compression=None) for _ in range(3)]
        by_port = {c.remote_address[1]: c for c in await gather_server_side(server, 3)}
        conns = [by_port[ws._transport.get_extra_info("sockname")[1]] for ws in clients]
        gone = await tidings.connect(uri)
        [gone_side] = [c for c in await gather_server_side(server, 4) if c not in conns]
        await gone.close()
        await gone_side.wait_closed()
        writes = count_writes(conns)
        # The first is mid-batch of its own: what it queued goes first.
        assert tidings.broadcast(conns[:1], "queued") == 1
        # A client's side is a target too: it masks each frame itself.
        targets = [*conns, gone_side, clients[2]]
        assert broadcast_many(targets, ["a", "b"]) == 4  # the closed one skipped
        assert len(writes) == 2  # the plain ones at once; the first still waits
        async with asyncio.timeout(BOUND):
            assert [await clients[0].recv() for _ in range(3)] == ["queued", "a", "b"]
            for ws in clients[1:]:
                assert [await ws.recv(), await ws.recv()] == ["a", "b"]
            assert [await conns[2].recv(), await conns[2].recv()] == ["a", "b"]
        for ws in clients:
            await ws.close()


@pytest.mark.parametrize("by", ["fan-out", "send"])
async def test_a_fan_out_write_goes_behind_what_the_transport_holds(
    raw_connect: Any, by: str
) -> None:
    """The transport comes to hold bytes through the fan-out's own writes,
    or through the connection's (a reply, a ping): either way what the
    fan-out writes next must queue behind them."""
    async with tidings.serve(
        wait_forever, "127.0.0.1", 0, compression=None, write_limit=2**30
    ) as server:
        client = await raw_connect(server.port)
        await client.handshake()
        client.writer.transport.pause_reading()  # the socket fills
        [conn] = await gather_server_side(server, 1)
        assert conn._fd >= 0  # plain TCP
        transport = conn._transport
        assert transport is not None
        through: list[int] = []
        real_write = transport.write

        def write(data: Any) -> None:
            through.append(len(data))
            real_write(data)

        transport.write = write  # type: ignore[method-assign]
        chunk = b"x" * 60_000
        sent = 0
        async with asyncio.timeout(BOUND):
            while not transport.get_write_buffer_size():  # the socket is full
                if by == "send":
                    conn.send_nowait(b"%06d" % sent + chunk)
                else:
                    assert broadcast_many([conn], [b"%06d" % sent + chunk]) == 1
                sent += 1
                await asyncio.sleep(0)
        if by == "fan-out":
            assert len(through) < sent  # the first ones went straight to the socket
        held = transport.get_write_buffer_size()
        assert held > 0
        # The client reads what its socket holds, before the server's loop
        # can hand the transport's bytes on: the socket has room again, but
        # what comes next must still queue behind what the transport holds.
        sock = socket.socket(
            fileno=os.dup(client.writer.get_extra_info("socket").fileno())
        )
        sock.setblocking(False)
        received = bytearray()
        with contextlib.suppress(BlockingIOError):
            while data := sock.recv(1 << 20):
                received += data
        assert broadcast_many([conn], [b"%06d" % sent + chunk]) == 1
        sent += 1
        assert transport.get_write_buffer_size() > held
        frame = 4 + 6 + len(chunk)  # a 16-bit length header, unmasked
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(BOUND):
            while len(received) < sent * frame:
                received += await loop.sock_recv(sock, 1 << 20)
        assert re.findall(rb"(\d{6})x", bytes(received)) == [
            b"%06d" % i for i in range(sent)
        ]
        sock.close()
        client.close()  # it would not answer the server's close
