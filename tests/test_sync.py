"""tidings.sync, the blocking client, against real servers: tidings' own
(its event loop in a thread of the test) and the websockets library's
threaded server."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from websockets.sync.server import ServerConnection as WsServerConnection
from websockets.sync.server import serve as ws_serve

import tidings
import tidings.sync
from tidings import ConnectionClosed, WebSocket
from tidings.engine.http import HTTPResponse
from tidings.exceptions import InvalidStatus
from tidings.protocol import ServerConnection, State

BOUND = 30  # seconds: every wait in these tests is bounded

#: Seconds a busy server leaves its socket unread: far longer than the short
#: timeouts the client used before. What the tests check holds however long
#: it is; it only has to outlast those timeouts for a fault to show.
BUSY = 0.5


@contextlib.contextmanager
def tidings_server(
    handler: Callable[[WebSocket], Any] | None = None, **options: Any
) -> Iterator[int]:
    """A tidings server on its own event loop, in a thread; yields its port.
    Without a handler it echoes."""

    async def echo(ws: WebSocket) -> None:
        async for message in ws:
            await ws.send(message)

    started = threading.Event()
    port: list[int] = []
    loop = asyncio.new_event_loop()
    stop = loop.create_future()

    async def main() -> None:
        async with tidings.serve(handler or echo, "127.0.0.1", 0, **options) as srv:
            port.append(srv.port)
            started.set()
            await stop

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),))
    thread.start()
    try:
        assert started.wait(BOUND)
        yield port[0]
    finally:
        loop.call_soon_threadsafe(stop.set_result, None)
        thread.join(BOUND)
        loop.close()


@contextlib.contextmanager
def websockets_server() -> Iterator[int]:
    def echo(ws: WsServerConnection) -> None:
        for message in ws:
            ws.send(message)

    with ws_serve(echo, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        try:
            yield server.socket.getsockname()[1]
        finally:
            server.shutdown()
            thread.join(BOUND)


@contextlib.contextmanager
def hand_server(
    script: Callable[[socket.socket, ServerConnection], None],
) -> Iterator[int]:
    """A server for one client, driven by hand over the sans-I/O core in a
    thread: it completes the handshake, then ``script`` does the rest with
    the socket and the protocol. Yields the port."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(BOUND)

        def run() -> None:
            sock, _ = listener.accept()
            with sock:
                sock.settimeout(BOUND)
                conn = ServerConnection()
                while conn.request is None:
                    data = sock.recv(65536)
                    assert data, "the client left before its request"
                    conn.receive_data(data)
                conn.accept()
                sock.sendall(b"".join(conn.data_to_send()))
                script(sock, conn)

        thread = threading.Thread(target=run)
        thread.start()
        try:
            yield listener.getsockname()[1]
        finally:
            thread.join(BOUND)


@pytest.mark.parametrize("server", [tidings_server, websockets_server])
def test_echo_text_and_binary_then_close(server: Any) -> None:
    with server() as port, tidings.sync.connect(f"ws://127.0.0.1:{port}/") as ws:
        assert ws.state is State.OPEN and ws.response is not None
        ws.send("héllo")
        assert ws.recv(timeout=BOUND) == "héllo"
        ws.send(b"\x00\xff")
        assert ws.recv(timeout=BOUND) == b"\x00\xff"
        big = bytes(range(256)) * 4096  # 1 MiB, many reads
        ws.send(big)
        assert ws.recv(timeout=BOUND) == big
    assert ws.state is State.CLOSED and ws.close_code == 1000
    with pytest.raises(ConnectionClosed):
        ws.send("after close")


def test_recv_times_out_and_the_connection_goes_on() -> None:
    with (
        tidings_server() as port,
        tidings.sync.connect(f"ws://127.0.0.1:{port}/") as ws,
    ):
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.05)
        ws.send("still here")
        assert ws.recv(timeout=BOUND) == "still here"


def test_send_waits_for_a_busy_server_whatever_recv_timed_out_before() -> None:
    async def busy_then_sizes(ws: WebSocket) -> None:
        time.sleep(BUSY)  # a busy loop, on purpose: nothing is read meanwhile
        async for message in ws:
            await ws.send(str(len(message)))

    big = bytes(16 << 20)  # more than the kernel buffers while nobody reads
    with (
        tidings_server(busy_then_sizes, max_message_size=None) as port,
        tidings.sync.connect(f"ws://127.0.0.1:{port}/", compression=None) as ws,
    ):
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.05)
        ws.send(big)  # blocks until the server reads, however long that is
        assert ws.recv(timeout=BOUND) == str(len(big))


def test_a_failed_write_of_a_pong_fails_the_connection() -> None:
    # Our end refuses writes from the start, as after a write that failed
    # midway: the pong cannot go out whole, so nothing may follow it.
    refused = threading.Event()
    done = threading.Event()

    def ping_then_wait(sock: socket.socket, conn: ServerConnection) -> None:
        assert refused.wait(BOUND)
        conn.send_ping(b"are you there?")
        sock.sendall(b"".join(conn.data_to_send()))
        done.wait(2 * BOUND)  # keep the connection open, reading nothing

    with hand_server(ping_then_wait) as port:
        ws = tidings.sync.connect(f"ws://127.0.0.1:{port}/")
        try:
            ws._sock.shutdown(socket.SHUT_WR)
            refused.set()
            with pytest.raises(ConnectionClosed) as caught:
                ws.recv(timeout=BOUND)
        finally:
            done.set()
            ws.close()
    assert caught.value.code == 1006
    assert ws.state is State.CLOSED


def test_iteration_ends_quietly_on_a_clean_close_after_every_message() -> None:
    async def three_then_leave(ws: WebSocket) -> None:
        for i in range(3):
            await ws.send(f"m{i}")
        await ws.close(1001, "bye")

    with tidings_server(three_then_leave) as port:
        ws = tidings.sync.connect(f"ws://127.0.0.1:{port}/")
        assert list(ws) == ["m0", "m1", "m2"]
        assert (ws.close_code, ws.close_reason) == (1001, "bye")


def test_iteration_raises_on_an_error_close() -> None:
    async def fail(ws: WebSocket) -> None:
        await ws.send("last words")
        raise RuntimeError("the handler failed")  # the server closes with 1011

    with tidings_server(fail) as port:
        ws = tidings.sync.connect(f"ws://127.0.0.1:{port}/")
        received = []
        with pytest.raises(ConnectionClosed) as caught:
            for message in ws:
                received.append(message)
    assert received == ["last words"] and caught.value.code == 1011


def test_pings_are_answered_while_recv_waits() -> None:
    # The server pings every 50 ms and gives up 0.5 s after a ping without
    # its pong: a client that did not answer would be closed within the wait.
    with (
        tidings_server(ping_interval=0.05, ping_timeout=0.5) as port,
        tidings.sync.connect(f"ws://127.0.0.1:{port}/") as ws,
    ):
        with pytest.raises(TimeoutError):
            ws.recv(timeout=1.5)  # many pings come and go meanwhile
        ws.send("alive")
        assert ws.recv(timeout=BOUND) == "alive"


def test_a_refused_handshake_raises_with_the_status() -> None:
    def refuse(request: Any) -> HTTPResponse:
        return HTTPResponse(403, "not you")

    with (
        tidings_server(process_request=refuse) as port,
        pytest.raises(InvalidStatus) as caught,
    ):
        tidings.sync.connect(f"ws://127.0.0.1:{port}/")
    assert caught.value.status == 403


def test_open_timeout_bounds_a_server_that_never_answers() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # accepts TCP (the backlog) and never says a word
        port = silent.getsockname()[1]
        with pytest.raises(TimeoutError, match=r"took longer than 0\.2 s"):
            tidings.sync.connect(f"ws://127.0.0.1:{port}/", open_timeout=0.2)


def test_tls(tls_server: ssl.SSLContext, tls_client: ssl.SSLContext) -> None:
    with (
        tidings_server(ssl=tls_server) as port,
        tidings.sync.connect(f"wss://localhost:{port}/", ssl=tls_client) as ws,
    ):
        ws.send("secret")
        assert ws.recv(timeout=BOUND) == "secret"
    assert ws.close_code == 1000
