"""Tests of tidings.engine.server over real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import tempfile
import time
from typing import Any

import pytest

import tidings
from tidings import ConnectionClosed, HTTPResponse, InvalidStatus, WebSocket
from tidings.engine.connection import _keepalive_timers
from tidings.protocol import Request
from tidings.protocol.frames import Opcode, serialize_frame

from ..conftest import count_writes, echo

BOUND = 10  # seconds: every wait in these tests is bounded


def uri(server: tidings.Server, path: str = "/") -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


async def test_text_and_binary_echo() -> None:
    async with (
        tidings.serve(echo, "127.0.0.1", 0) as server,
        tidings.connect(uri(server)) as ws,
    ):
        await ws.send("héllo")
        assert await ws.recv() == "héllo"
        await ws.send(b"\x00\x01\xff")
        assert await ws.recv() == b"\x00\x01\xff"
        await ws.send(bytearray(b"ba"))
        assert await ws.recv() == b"ba"


async def test_fragmented_sends_arrive_as_one_message() -> None:
    async def fragments() -> Any:
        for part in (b"a", b"b", b"c"):
            yield part

    async with (
        tidings.serve(echo, "127.0.0.1", 0) as server,
        tidings.connect(uri(server)) as ws,
    ):
        await ws.send(["Hel", "lo"])
        assert await ws.recv() == "Hello"
        await ws.send(fragments())
        assert await ws.recv() == b"abc"
        with pytest.raises(TypeError, match="must all be str or all bytes"):
            await ws.send(["a", b"b"])


async def test_ten_thousand_messages_arrive_in_order() -> None:
    async with (
        tidings.serve(echo, "127.0.0.1", 0) as server,
        tidings.connect(uri(server)) as ws,
    ):

        async def sender() -> None:
            for i in range(10_000):
                await ws.send(str(i))

        task = asyncio.create_task(sender())
        async with asyncio.timeout(60):
            received = [await ws.recv() for _ in range(10_000)]
        await task
        assert received == [str(i) for i in range(10_000)]


def masked_texts(*texts: bytes) -> bytes:
    return b"".join(serialize_frame(Opcode.TEXT, t, mask=True) for t in texts)


@pytest.mark.parametrize("api", ["handler", "callback"])
async def test_answers_to_messages_read_together_leave_together(
    raw_connect: Any, api: str
) -> None:
    counted: list[list[Any]] = []
    burst = [b"%d" % i for i in range(40)]

    async def counted_echo(ws: WebSocket) -> None:
        counted.append(count_writes([ws]))
        async for message in ws:
            await ws.send(message)

    def on_message(ws: WebSocket, message: str | bytes) -> None:
        if not counted:
            counted.append(count_writes([ws]))
        ws.send_nowait(message)

    async with (
        tidings.serve(counted_echo, "127.0.0.1", 0)
        if api == "handler"
        else tidings.serve(None, "127.0.0.1", 0, on_message=on_message)
    ) as server:
        client = await raw_connect(server.port)
        await client.handshake()
        await asyncio.sleep(0.05)  # the handler is waiting in recv()
        client.writer.write(masked_texts(*burst))
        expected = b"".join(serialize_frame(Opcode.TEXT, t) for t in burst)
        async with asyncio.timeout(BOUND):
            assert await client.reader.readexactly(len(expected)) == expected
        client.close()
        # A write per 16 answers at least, and per loop iteration at most:
        # neither one each nor all 40 held back.
        assert len(burst) // 16 <= len(counted[0]) <= 2 * (len(burst) // 16 + 1)


async def test_a_sender_that_never_yields_still_writes_while_corked(
    raw_connect: Any,
) -> None:
    written: list[int] = []

    async def flood(ws: WebSocket) -> None:
        writes = count_writes([ws])
        await ws.recv()  # "two" stays queued, so the sends below are held
        for _ in range(1000):
            await ws.send("x")  # never suspends: the write buffer stays small
        written.append(len(writes))

    async with tidings.serve(flood, "127.0.0.1", 0) as server:
        client = await raw_connect(server.port)
        await client.handshake()
        client.writer.write(masked_texts(b"one", b"two"))
        expected = serialize_frame(Opcode.TEXT, b"x") * 1000
        async with asyncio.timeout(BOUND):
            assert await client.reader.readexactly(len(expected)) == expected
        client.close()
    assert written and written[0] >= 1000 // 16 - 1


async def test_a_thousand_concurrent_connections() -> None:
    async with tidings.serve(echo, "127.0.0.1", 0, compression=None) as server:

        async def one(i: int) -> str | bytes:
            async with tidings.connect(uri(server), compression=None) as ws:
                await ws.send(f"client {i}")
                return await ws.recv()

        async with asyncio.timeout(60):
            replies = await asyncio.gather(*(one(i) for i in range(1000)))
        assert replies == [f"client {i}" for i in range(1000)]


async def test_callback_fast_path_runs_without_a_handler() -> None:
    def on_message(ws: WebSocket, message: str | bytes) -> None:
        ws.send_nowait(message.upper() if isinstance(message, str) else message)

    async with (
        tidings.serve(None, "127.0.0.1", 0, on_message=on_message) as server,
        tidings.connect(uri(server)) as ws,
    ):
        await ws.send("shout")
        assert await ws.recv() == "SHOUT"


async def test_an_error_in_the_callback_closes_only_that_connection_with_1011() -> None:
    def on_message(ws: WebSocket, message: str | bytes) -> None:
        if message == "boom":
            raise ValueError("boom")
        ws.send_nowait(message)

    async with (
        tidings.serve(None, "127.0.0.1", 0, on_message=on_message) as server,
        tidings.connect(uri(server)) as good,
        tidings.connect(uri(server)) as bad,
    ):
        await bad.send("boom")
        with pytest.raises(ConnectionClosed) as info:
            await bad.recv()
        assert info.value.code == 1011
        await good.send("still here")
        assert await good.recv() == "still here"


def write_in_one_read(peer: Any, *messages: bytes) -> None:
    """Send ``messages`` as binary frames in one write: the server reads
    them together."""
    peer.writer.write(
        b"".join(serialize_frame(Opcode.BINARY, data, mask=True) for data in messages)
    )


async def test_messages_after_a_failed_callback_are_not_delivered(
    raw_connect: Any,
) -> None:
    seen: list[str | bytes] = []

    def on_message(ws: WebSocket, message: str | bytes) -> None:
        seen.append(message)
        if message == b"boom":
            raise ValueError("boom")

    async with tidings.serve(None, "127.0.0.1", 0, on_message=on_message) as server:
        peer = await raw_connect(server.port)
        await peer.handshake()
        # Three messages in one read: the connection fails at the second.
        write_in_one_read(peer, b"first", b"boom", b"after")
        data = await peer.read_all()
        peer.close()
    assert seen == [b"first", b"boom"]
    assert data[:1] == b"\x88" and int.from_bytes(data[2:4], "big") == 1011


async def test_a_callback_may_hand_the_messages_of_the_same_read_to_another(
    raw_connect: Any,
) -> None:
    first: list[str | bytes] = []
    rest: list[str | bytes] = []
    done = asyncio.Event()

    def then(ws: WebSocket, message: str | bytes) -> None:
        rest.append(message)
        if len(rest) == 2:
            done.set()

    def on_message(ws: WebSocket, message: str | bytes) -> None:
        first.append(message)
        ws.on_message = then

    async with tidings.serve(None, "127.0.0.1", 0, on_message=on_message) as server:
        peer = await raw_connect(server.port)
        await peer.handshake()
        write_in_one_read(peer, b"one", b"two", b"three")
        async with asyncio.timeout(BOUND):
            await done.wait()
        peer.close()
    assert first == [b"one"]
    assert rest == [b"two", b"three"]


async def test_a_callback_may_pause_reading_and_learn_of_the_close() -> None:
    received: asyncio.Queue[str | bytes] = asyncio.Queue()
    closed = asyncio.Event()
    opened: list[WebSocket] = []

    def on_message(ws: WebSocket, message: str | bytes) -> None:
        if not opened:
            opened.append(ws)
            ws.add_close_callback(lambda _: closed.set())
            ws.pause_reading()  # as if its own queue were full
        received.put_nowait(message)

    async with (
        tidings.serve(None, "127.0.0.1", 0, on_message=on_message) as server,
        tidings.connect(uri(server)) as client,
    ):
        await client.send("first")
        async with asyncio.timeout(BOUND):
            assert await received.get() == "first"
        [ws] = opened
        transport = ws._transport
        assert transport is not None and not transport.is_reading()
        await client.send("second")
        ws.resume_reading()
        async with asyncio.timeout(BOUND):
            assert await received.get() == "second"
        assert not closed.is_set()
        await client.close()
        async with asyncio.timeout(BOUND):
            await closed.wait()


async def test_handler_exception_closes_with_1011() -> None:
    async def handler(ws: WebSocket) -> None:
        raise RuntimeError("bug")

    async with (
        tidings.serve(handler, "127.0.0.1", 0) as server,
        tidings.connect(uri(server)) as ws,
    ):
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.code == 1011


async def test_handler_returning_closes_with_1000_and_async_for_ends_quietly() -> None:
    async def handler(ws: WebSocket) -> None:
        await ws.send("bye")

    async with (
        tidings.serve(handler, "127.0.0.1", 0) as server,
        tidings.connect(uri(server)) as ws,
    ):
        assert [m async for m in ws] == ["bye"]
        assert ws.close_code == 1000


async def test_request_path_query_headers_and_remote_address() -> None:
    seen: list[Any] = []

    async def handler(ws: WebSocket) -> None:
        assert ws.request is not None
        seen.append(
            (ws.request.path, ws.request.query, ws.request.headers.get("X-Test"))
        )
        seen.append(ws.remote_address[0])

    async with (
        tidings.serve(handler, "127.0.0.1", 0) as server,
        tidings.connect(uri(server, "/room?id=7"), headers=[("X-Test", "yes")]) as ws,
    ):
        await ws.wait_closed()
    assert seen == [("/room", "id=7", "yes"), "127.0.0.1"]


async def test_subprotocol_selection_hook() -> None:
    def select(request: Request, offered: Any) -> str | None:
        return offered[-1] if offered else None

    async with (
        tidings.serve(echo, "127.0.0.1", 0, select_subprotocol=select) as server,
        tidings.connect(uri(server), subprotocols=["a", "b"]) as ws,
    ):
        assert ws.subprotocol == "b"


async def test_origin_not_allowed_gets_403() -> None:
    async with tidings.serve(
        echo, "127.0.0.1", 0, origins=["https://good.example"]
    ) as server:
        async with tidings.connect(uri(server), origin="https://good.example") as ws:
            await ws.send("ok")
            assert await ws.recv() == "ok"
        with pytest.raises(InvalidStatus) as info:
            await tidings.connect(uri(server), origin="https://evil.example")
        assert info.value.status == 403
        with pytest.raises(InvalidStatus):
            await tidings.connect(uri(server))  # no Origin at all


async def test_plain_http_request_gets_426(raw_connect: Any) -> None:
    async with tidings.serve(echo, "127.0.0.1", 0) as server:
        peer = await raw_connect(server.port)
        peer.writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        response = await peer.read_all()
        peer.close()  # the server waits for its FIN up to close_timeout
        assert response.startswith(b"HTTP/1.1 426 ")
        assert b"Upgrade: websocket" in response


async def test_open_timeout_ends_once_the_request_is_read(raw_connect: Any) -> None:
    # A held answer (a long-poll) may take longer than open_timeout.
    async def process_request(request: Request) -> HTTPResponse:
        await asyncio.sleep(0.5)
        return HTTPResponse(200, "late but fine")

    async with tidings.serve(
        echo, "127.0.0.1", 0, process_request=process_request, open_timeout=0.1
    ) as server:
        peer = await raw_connect(server.port)
        peer.writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        response = await peer.read_all()
        assert response.startswith(b"HTTP/1.1 200 OK") and response.endswith(
            b"late but fine\n"
        )
        peer.close()


async def test_oversized_head_gets_431(raw_connect: Any) -> None:
    async with tidings.serve(echo, "127.0.0.1", 0) as server:
        peer = await raw_connect(server.port)
        peer.writer.write(
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
        )
        response = await peer.read_all()
        peer.close()  # the server waits for its FIN up to close_timeout
        assert response.startswith(b"HTTP/1.1 431 ")


async def test_max_connections_answers_503() -> None:
    async with tidings.serve(echo, "127.0.0.1", 0, max_connections=2) as server:
        async with tidings.connect(uri(server)), tidings.connect(uri(server)):
            with pytest.raises(InvalidStatus) as info:
                await tidings.connect(uri(server))
            assert info.value.status == 503
        # Once they are gone there is room again.
        async with asyncio.timeout(BOUND):
            while server.connections:
                await asyncio.sleep(0.01)
        async with tidings.connect(uri(server)) as ws:
            await ws.send("x")
            assert await ws.recv() == "x"


async def test_slowloris_is_dropped_after_open_timeout(raw_connect: Any) -> None:
    async with tidings.serve(echo, "127.0.0.1", 0, open_timeout=0.3) as server:
        peer = await raw_connect(server.port)
        peer.writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finished
        start = time.monotonic()
        assert await peer.read_all() == b""
        assert time.monotonic() - start < BOUND
        async with tidings.connect(uri(server)) as ws:  # others are unaffected
            await ws.send("fine")
            assert await ws.recv() == "fine"


async def test_protocol_violation_closes_1002_and_others_carry_on(
    raw_connect: Any,
) -> None:
    async with (
        tidings.serve(echo, "127.0.0.1", 0) as server,
        tidings.connect(uri(server)) as bystander,
    ):
        peer = await raw_connect(server.port)
        await peer.handshake()
        peer.writer.write(
            serialize_frame(Opcode.TEXT, b"unmasked")
        )  # clients must mask
        data = await peer.read_all()
        peer.close()  # the server waits for its FIN up to close_timeout
        assert data[:2] == b"\x88" + bytes([len(data) - 2])
        assert int.from_bytes(data[2:4], "big") == 1002
        await bystander.send("unaffected")
        assert await bystander.recv() == "unaffected"


async def test_abrupt_tcp_loss_gives_1006_to_the_handler(raw_connect: Any) -> None:
    codes: list[int] = []
    done = asyncio.Event()

    async def handler(ws: WebSocket) -> None:
        try:
            await ws.recv()
        except ConnectionClosed as exc:
            codes.append(exc.code)
        done.set()

    async with tidings.serve(handler, "127.0.0.1", 0) as server:
        peer = await raw_connect(server.port)
        await peer.handshake()
        peer.close()
        async with asyncio.timeout(BOUND):
            await done.wait()
    assert codes == [1006]


async def test_keepalive_timers_are_shared_and_closed_connections_leave_them() -> None:
    # Connections due to ping close together share one timer, not one each.
    async with tidings.serve(echo, "127.0.0.1", 0, ping_interval=100) as server:
        clients = [
            await tidings.connect(uri(server), ping_interval=None) for _ in range(20)
        ]
        timers = _keepalive_timers(asyncio.get_running_loop())
        groups = list(timers._due.values())
        # Due within 100 s, to the nearest 4 s: one or two groups.
        assert sum(len(group) for group in groups) == 20
        assert len(groups) <= 2
        accepted = server.connections
        for client in clients:
            await client.close()
        async with asyncio.timeout(BOUND):
            await asyncio.gather(*(ws.wait_closed() for ws in accepted))
        assert not any(groups), "the groups still hold closed connections"


async def test_keepalive_closes_1011_when_pongs_never_come(raw_connect: Any) -> None:
    closed: list[int | None] = []
    done = asyncio.Event()

    async def handler(ws: WebSocket) -> None:
        await ws.wait_closed()
        closed.append(ws.close_code)
        done.set()

    async with tidings.serve(
        handler, "127.0.0.1", 0, ping_interval=0.1, ping_timeout=0.2, compression=None
    ) as server:
        peer = await raw_connect(server.port)
        await peer.handshake()
        start = time.monotonic()
        data = await peer.read_all()  # pings, then a close frame, then EOF
        elapsed = time.monotonic() - start
        async with asyncio.timeout(BOUND):
            await done.wait()
    assert data[:2] == b"\x89\x04"  # the ping
    assert b"\x88" in data and data.endswith(b"keepalive ping timeout")
    assert closed == [1011]
    assert elapsed < BOUND


def event_loop_runners() -> list[Any]:
    runners: list[Any] = [pytest.param(asyncio.run, id="asyncio")]
    try:
        import uvloop
    except ImportError:
        return runners
    return [*runners, pytest.param(uvloop.run, id="uvloop")]


@pytest.mark.parametrize("run", event_loop_runners())
def test_a_blocked_loop_does_not_count_as_a_dead_peer(
    run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server's loop blocks right after each keepalive ping, for longer
    # than ping_timeout, while the client's pong arrives in the socket. When
    # the loop wakes the deadline is past, but the pong is there: no 1011.
    # libuv runs due timers before it polls for I/O, so uvloop shows the trap.
    send_ping = WebSocket._keepalive_ping

    def ping_then_block(self: WebSocket) -> None:
        send_ping(self)
        time.sleep(0.3)  # a busy loop, on purpose

    monkeypatch.setattr(WebSocket, "_keepalive_ping", ping_then_block)

    async def handler(ws: WebSocket) -> None:
        await asyncio.sleep(1)  # about three pings
        await ws.send("still alive")

    async def main() -> None:
        async with (
            tidings.serve(
                handler, "127.0.0.1", 0, ping_interval=0.05, ping_timeout=0.1
            ) as server,
            tidings.connect(uri(server), ping_interval=None) as ws,
        ):
            async with asyncio.timeout(BOUND):
                assert await ws.recv() == "still alive"

    run(main())


async def test_a_paused_reader_does_not_count_as_a_dead_peer() -> None:
    # The handler reads nothing, the queue fills and reading pauses, so the
    # pongs wait unread in the socket: the peer must not be called dead.
    async def handler(ws: WebSocket) -> None:
        await asyncio.sleep(0.6)
        await ws.send(str([await ws.recv() for _ in range(3)]))

    async with (
        tidings.serve(
            handler, "127.0.0.1", 0, ping_interval=0.05, ping_timeout=0.1, max_queue=1
        ) as server,
        tidings.connect(uri(server), ping_interval=None) as ws,
    ):
        for i in range(3):
            await ws.send(str(i))
        async with asyncio.timeout(BOUND):
            assert await ws.recv() == "['0', '1', '2']"


async def test_server_close_sends_1001_to_everyone() -> None:
    server = await tidings.serve(echo, "127.0.0.1", 0)
    clients = [await tidings.connect(uri(server)) for _ in range(5)]
    server.close()
    async with asyncio.timeout(BOUND):
        await server.wait_closed()
        for ws in clients:
            with pytest.raises(ConnectionClosed):
                await ws.recv()
    assert [ws.close_code for ws in clients] == [1001] * 5
    assert {ws.close_reason for ws in clients} == {"server shutting down"}


async def test_serve_forever_returns_after_close() -> None:
    async with tidings.serve(echo, "127.0.0.1", 0) as server:
        task = asyncio.create_task(server.serve_forever())
        await asyncio.sleep(0)
        server.close()
        async with asyncio.timeout(BOUND):
            await task


async def test_tls_both_ways(
    tls_server: ssl.SSLContext, tls_client: ssl.SSLContext
) -> None:
    async with (
        tidings.serve(echo, "127.0.0.1", 0, ssl=tls_server) as server,
        tidings.connect(f"wss://127.0.0.1:{server.port}/", ssl=tls_client) as ws,
    ):
        await ws.send("secret")
        assert await ws.recv() == "secret"


async def test_tls_rejects_an_untrusted_certificate(tls_server: ssl.SSLContext) -> None:
    async with tidings.serve(echo, "127.0.0.1", 0, ssl=tls_server) as server:
        with pytest.raises(ssl.SSLCertVerificationError):
            await tidings.connect(f"wss://127.0.0.1:{server.port}/")


async def test_unix_socket() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ws.sock")
        async with (
            tidings.serve(echo, unix_path=path) as server,
            tidings.connect("ws://localhost/", unix_path=path) as ws,
        ):
            assert server.sockets[0].family == socket.AF_UNIX
            await ws.send("over unix")
            assert await ws.recv() == "over unix"


async def test_reuse_port_lets_two_servers_share_a_port() -> None:
    async with (
        tidings.serve(echo, "127.0.0.1", 0, reuse_port=True) as first,
        tidings.serve(echo, "127.0.0.1", first.port, reuse_port=True) as second,
    ):
        assert second.port == first.port


async def test_a_server_listens_on_a_socket_it_is_given() -> None:
    # As a worker of `tidings serve --workers` does with its parent's.
    with socket.create_server(("127.0.0.1", 0)) as sock:
        async with tidings.serve(echo, sock=sock) as server:
            assert server.port == sock.getsockname()[1]
            async with tidings.connect(uri(server)) as ws:
                await ws.send("on a given socket")
                assert await ws.recv() == "on a given socket"


async def test_compression_is_negotiated_and_used() -> None:
    async with (
        tidings.serve(echo, "127.0.0.1", 0) as server,
        tidings.connect(uri(server)) as ws,
    ):
        assert ws.protocol.deflate_params is not None
        await ws.send("x" * 10_000)
        assert await ws.recv() == "x" * 10_000


async def test_max_message_size_closes_1009() -> None:
    async with (
        tidings.serve(echo, "127.0.0.1", 0, max_message_size=1000) as server,
        tidings.connect(uri(server)) as ws,
    ):
        await ws.send(os.urandom(2000))
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.code == 1009


async def test_server_stops_reading_when_the_handler_does_not(raw_connect: Any) -> None:
    # max_queue messages are buffered, then reading pauses: the client's
    # writes back up into the kernel's buffers instead of our memory.
    release = asyncio.Event()
    seen: list[WebSocket] = []

    async def handler(ws: WebSocket) -> None:
        seen.append(ws)
        await release.wait()
        async for _ in ws:
            pass

    async with (
        tidings.serve(handler, "127.0.0.1", 0, max_queue=4, compression=None) as server,
        tidings.connect(uri(server), compression=None, write_limit=1024) as ws,
    ):
        payload = b"x" * 100_000
        sent = 0

        async def flood() -> None:
            nonlocal sent
            while True:
                await ws.send(payload)
                sent += 1

        task = asyncio.create_task(flood())
        async with asyncio.timeout(BOUND):
            while not (seen and seen[0]._reading_paused):
                await asyncio.sleep(0.01)
        queued = len(seen[0]._messages)
        await asyncio.sleep(0.2)
        assert len(seen[0]._messages) == queued <= 5
        assert sent < 200  # the sender is held back by TCP, not buffered
        task.cancel()
        release.set()


async def test_a_peer_that_never_reads_cannot_grow_the_servers_memory(
    raw_connect: Any,
) -> None:
    chunk = b"\x00" * (64 * 1024)
    total = 100 * 1024 * 1024
    write_limit = 64 * 1024
    buffered: list[int] = []
    sent = 0

    async def sample(ws: WebSocket) -> None:
        while True:
            buffered.append(ws.write_buffer_size)
            await asyncio.sleep(0.002)

    async def handler(ws: WebSocket) -> None:
        nonlocal sent
        sampler = asyncio.create_task(sample(ws))
        while sent < total:
            await ws.send(chunk)
            sent += len(chunk)
        sampler.cancel()

    async with tidings.serve(
        handler, "127.0.0.1", 0, compression=None, write_limit=write_limit
    ) as server:
        peer = await raw_connect(server.port)
        await peer.handshake()
        # The peer reads nothing: once the kernel's buffers are full the
        # server must stall, not buffer.
        async with asyncio.timeout(BOUND):
            while True:
                before = sent
                await asyncio.sleep(0.3)
                if sent == before:
                    break
        assert 0 < sent < total // 10
        # Now read everything; the whole 100 MiB arrives.
        received = 0
        async with asyncio.timeout(60):
            while received < total:
                data = await peer.reader.read(1 << 20)
                assert data
                received += len(data)
        peer.close()
    assert sent == total
    frame = len(chunk) + 4  # a 64 KiB frame has a 4-byte header
    assert max(buffered) <= write_limit + frame


async def test_shutdown_is_bounded_when_a_peer_stops_reading(raw_connect: Any) -> None:
    # Our close frame sits behind megabytes the peer will never read; the
    # close must still end, by dropping the socket after close_timeout.
    flooded = asyncio.Event()

    async def handler(ws: WebSocket) -> None:
        while ws.write_buffer_size <= ws.write_limit:
            ws.send_nowait(b"x" * 65536)
            await asyncio.sleep(0)
        flooded.set()
        await ws.wait_closed()

    server = await tidings.serve(
        handler, "127.0.0.1", 0, compression=None, close_timeout=0.3
    )
    peer = await raw_connect(server.port)
    await peer.handshake()
    async with asyncio.timeout(BOUND):
        await flooded.wait()
        server.close()
        await server.wait_closed()


async def test_shutdown_reads_the_answer_of_a_connection_that_stopped_reading() -> None:
    # The handler never reads: its queue fills and reading pauses. Shutting
    # down must read again, or the peer's answer to our close frame would
    # sit unread until close_timeout (here far longer than the wait below).
    async def handler(ws: WebSocket) -> None:
        await ws.wait_closed()

    server = await tidings.serve(
        handler, "127.0.0.1", 0, max_queue=1, close_timeout=BOUND * 6
    )
    async with tidings.connect(uri(server), close_timeout=BOUND * 6) as ws:
        (conn,) = server.connections
        for _ in range(2):
            await ws.send("unread")  # the second fills the queue of one
        async with asyncio.timeout(BOUND):
            while not conn._reading_paused:  # no event says so: poll
                await asyncio.sleep(0)
            server.close()
            await server.wait_closed()
        assert ws.close_code == 1001


async def test_close_is_not_held_up_by_a_peer_that_keeps_sending() -> None:
    # After our close frame, messages still arriving must not pause reading
    # again, or the peer's close frame would wait behind them.
    async def handler(ws: WebSocket) -> None:
        await ws.recv()
        await ws.close()

    async with (
        tidings.serve(
            handler, "127.0.0.1", 0, max_queue=2, close_timeout=BOUND
        ) as server,
        tidings.connect(uri(server), close_timeout=BOUND) as ws,
    ):
        start = time.monotonic()
        with contextlib.suppress(ConnectionClosed):
            for _ in range(10_000):
                await ws.send("x" * 10_000)
        await ws.wait_closed()
        assert time.monotonic() - start < BOUND / 2
