"""Tests of tidings.engine.client over real loopback sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import tidings
from tidings import (
    ConnectionClosed,
    HTTPResponse,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
    WebSocket,
)
from tidings.protocol import Request

from ..conftest import echo, free_port

BOUND = 10


async def test_ping_returns_the_round_trip() -> None:
    async with (
        tidings.serve(echo, "127.0.0.1", 0) as server,
        tidings.connect(f"ws://127.0.0.1:{server.port}/") as ws,
    ):
        latency = await ws.ping()
        assert 0 < latency < BOUND
        assert ws.latency == latency
        await ws.ping(b"mine")


async def test_close_code_and_reason_reach_the_server() -> None:
    seen: list[tuple[int | None, str]] = []

    async def handler(ws: WebSocket) -> None:
        await ws.wait_closed()
        seen.append((ws.close_code, ws.close_reason))

    async with tidings.serve(handler, "127.0.0.1", 0) as server:
        ws = await tidings.connect(f"ws://127.0.0.1:{server.port}/")
        await ws.close(4000, "done here")
        assert ws.close_code == 4000
    assert seen == [(4000, "done here")]


async def test_sending_after_close_raises_connection_closed() -> None:
    async with tidings.serve(echo, "127.0.0.1", 0) as server:
        ws = await tidings.connect(f"ws://127.0.0.1:{server.port}/")
        await ws.close()
        with pytest.raises(ConnectionClosed) as info:
            await ws.send("late")
        assert info.value.code == 1000


async def test_connection_refused_is_an_os_error() -> None:
    with pytest.raises(OSError):
        await tidings.connect(f"ws://127.0.0.1:{free_port()}/")


async def test_invalid_uri() -> None:
    with pytest.raises(InvalidURI):
        tidings.connect("http://example.com/")


async def test_open_timeout_against_a_silent_server() -> None:
    async def silent(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.read()  # accepts TCP, never answers the upgrade
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(TimeoutError, match=r"took longer than 0\.2 s"):
            await tidings.connect(f"ws://127.0.0.1:{port}/", open_timeout=0.2)


async def test_a_non_websocket_answer_is_invalid_handshake() -> None:
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: wrong\r\n\r\n"
        )
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(InvalidHandshake, match="Sec-WebSocket-Accept"):
            await tidings.connect(f"ws://127.0.0.1:{port}/")


async def test_redirects_are_followed() -> None:
    async with tidings.serve(echo, "127.0.0.1", 0) as target:

        def redirect(request: Request) -> HTTPResponse:
            location = f"ws://127.0.0.1:{target.port}/moved"
            return HTTPResponse(302, "moved", [("Location", location)])

        async with (
            tidings.serve(echo, "127.0.0.1", 0, process_request=redirect) as first,
            tidings.connect(f"ws://127.0.0.1:{first.port}/") as ws,
        ):
            await ws.send("found you")
            assert await ws.recv() == "found you"


async def test_redirect_loops_are_bounded() -> None:
    def loop_back(request: Request) -> HTTPResponse:
        return HTTPResponse(307, "again", [("Location", "/again")])

    async with tidings.serve(echo, "127.0.0.1", 0, process_request=loop_back) as server:
        with pytest.raises(InvalidHandshake, match="more than 3 redirects"):
            await tidings.connect(f"ws://127.0.0.1:{server.port}/", max_redirects=3)


async def test_a_redirect_from_wss_to_ws_is_refused(
    tls_server: Any, tls_client: Any
) -> None:
    def downgrade(request: Request) -> HTTPResponse:
        return HTTPResponse(302, "", [("Location", "ws://127.0.0.1:1/")])

    async with tidings.serve(
        echo, "127.0.0.1", 0, ssl=tls_server, process_request=downgrade
    ) as server:
        with pytest.raises(InvalidHandshake, match="insecure"):
            await tidings.connect(f"wss://127.0.0.1:{server.port}/", ssl=tls_client)


async def test_a_4xx_refusal_carries_the_status() -> None:
    def refuse(request: Request) -> HTTPResponse:
        return HTTPResponse(403, "go away")

    async with tidings.serve(echo, "127.0.0.1", 0, process_request=refuse) as server:
        with pytest.raises(InvalidStatus) as info:
            await tidings.connect(f"ws://127.0.0.1:{server.port}/")
        assert info.value.status == 403
        assert info.value.body == b"go away\n"  # sent with the head


async def test_reconnecting_client_resumes_after_the_server_restarts() -> None:
    port = free_port()
    server = await tidings.serve(echo, "127.0.0.1", port)
    replies: list[str | bytes] = []
    connections = 0

    async def client() -> None:
        nonlocal connections
        async for ws in tidings.connect(
            f"ws://127.0.0.1:{port}/", backoff_initial=0.05, backoff_max=0.2
        ):
            connections += 1
            try:
                await ws.send(f"hello {connections}")
                replies.append(await ws.recv())
                await ws.recv()  # until the server goes away
            except ConnectionClosed:
                if connections == 2:
                    return
                continue

    task = asyncio.create_task(client())
    async with asyncio.timeout(BOUND):
        while not replies:
            await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.2)  # the client retries against a closed port
        server = await tidings.serve(echo, "127.0.0.1", port)
        while len(replies) < 2:
            await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()
        await task
    assert replies == ["hello 1", "hello 2"]


async def test_reconnecting_gives_up_on_a_4xx() -> None:
    def refuse(request: Request) -> HTTPResponse:
        return HTTPResponse(401, "no")

    async with tidings.serve(echo, "127.0.0.1", 0, process_request=refuse) as server:
        with pytest.raises(InvalidStatus):
            async for _ in tidings.connect(f"ws://127.0.0.1:{server.port}/"):
                pass


async def test_the_server_closes_tcp_first() -> None:
    # RFC 6455 §7.1.1: after the close handshake the client waits for the
    # server's FIN instead of closing first.
    async with tidings.serve(echo, "127.0.0.1", 0, close_timeout=BOUND) as server:
        ws = await tidings.connect(
            f"ws://127.0.0.1:{server.port}/", close_timeout=BOUND
        )
        async with asyncio.timeout(BOUND / 2):  # well before any timeout
            await ws.close()
        assert ws.close_code == 1000


async def test_client_callback_fast_path() -> None:
    got: list[str | bytes] = []
    done = asyncio.Event()

    def on_message(ws: WebSocket, message: str | bytes) -> None:
        got.append(message)
        if len(got) == 3:
            done.set()

    async with (
        tidings.serve(echo, "127.0.0.1", 0) as server,
        tidings.connect(f"ws://127.0.0.1:{server.port}/", on_message=on_message) as ws,
    ):
        for i in range(3):
            await ws.send(str(i))
        async with asyncio.timeout(BOUND):
            await done.wait()
    assert got == ["0", "1", "2"]
