"""Tests of tidings.engine.http: the plain HTTP answers that
``process_request`` gives instead of an upgrade, over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

import tidings
from tidings import HTTPResponse, HTTPStream, InvalidStatus, ResponseStream
from tidings.protocol import Request

from ..conftest import echo

BOUND = 10  # seconds: every wait in these tests is bounded


def uri(server: tidings.Server) -> str:
    return f"ws://127.0.0.1:{server.port}/"


@contextlib.asynccontextmanager
async def streamed(
    body: Callable[[ResponseStream], Awaitable[None]], raw_connect: Any
) -> AsyncIterator[tuple[tidings.Server, Any]]:
    """A server that answers every request with ``HTTPStream(200, [], body)``,
    and a raw client that has sent it a request."""
    async with tidings.serve(
        echo,
        "127.0.0.1",
        0,
        process_request=lambda request: HTTPStream(200, [], body),
    ) as server:
        peer = await raw_connect(server.port)
        peer.writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        yield server, peer


async def test_process_request_answers_healthz_and_refuses_with_401(
    raw_connect: Any,
) -> None:
    async def process_request(request: Request) -> HTTPResponse | None:
        if request.path == "/healthz":
            return HTTPResponse(200, "ok")
        if request.headers.get("Authorization") != "Bearer secret":
            return HTTPResponse(401, "who are you?")
        return None

    async with tidings.serve(
        echo, "127.0.0.1", 0, process_request=process_request
    ) as server:
        peer = await raw_connect(server.port)
        peer.writer.write(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        response = await peer.read_all()
        peer.close()  # else the server waits close_timeout for the client's FIN
        assert response.startswith(b"HTTP/1.1 200 OK\r\n") and response.endswith(
            b"\r\n\r\nok\n"
        )
        with pytest.raises(InvalidStatus) as info:
            await tidings.connect(uri(server))
        assert info.value.status == 401
        async with tidings.connect(
            uri(server), headers=[("Authorization", "Bearer secret")]
        ) as ws:
            await ws.send("in")
            assert await ws.recv() == "in"


async def test_process_request_streams_a_body_as_it_is_made(
    raw_connect: Any,
) -> None:
    more = asyncio.Event()

    async def body(stream: ResponseStream) -> None:
        stream.write(b"first\n")
        await more.wait()
        stream.write(b"second\n")

    def process_request(request: Request) -> HTTPStream:
        return HTTPStream(200, [("Content-Type", "text/plain")], body)

    async with tidings.serve(
        echo, "127.0.0.1", 0, process_request=process_request
    ) as server:
        peer = await raw_connect(server.port)
        peer.writer.write(b"GET /feed HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(BOUND):
            head = await peer.reader.readuntil(b"\r\n\r\n")
            assert head == (
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                b"Connection: close\r\n\r\n"
            )
            assert await peer.reader.readline() == b"first\n"
        more.set()
        # The body returned: the connection closes, which ends the body.
        assert await peer.read_all() == b"second\n"


async def test_a_streamed_body_is_cancelled_when_the_client_leaves(
    raw_connect: Any,
) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def body(stream: ResponseStream) -> None:
        started.set()
        try:
            while True:  # writes reveal that the client is gone
                stream.write(b"tick\n")
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with streamed(body, raw_connect) as (server, peer):
        async with asyncio.timeout(BOUND):
            await started.wait()
            peer.close()
            await cancelled.wait()
            while server.connections:
                await asyncio.sleep(0.01)  # connection_lost is not awaitable


async def test_a_bytes_body_goes_out_with_its_length_and_type(
    raw_connect: Any,
) -> None:
    body = bytes(range(256))
    answer = HTTPResponse(200, body, [("Content-Type", "application/octet-stream")])
    async with tidings.serve(
        echo, "127.0.0.1", 0, process_request=lambda request: answer
    ) as server:
        peer = await raw_connect(server.port)
        peer.writer.write(b"GET /blob HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        response = await peer.read_all()
        peer.close()
    head, _, sent = response.partition(b"\r\n\r\n")
    assert sent == body
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert b"Content-Length: 256" in lines[1:]
    assert b"Content-Type: application/octet-stream" in lines[1:]


async def test_a_stream_queues_for_a_client_that_does_not_read(
    raw_connect: Any,
) -> None:
    # write() never waits: write_buffer_size is how a body sees a client
    # that stopped reading. close() still sends what is queued, then ends.
    filled = asyncio.Event()
    chunk = b"x" * 65536
    written = 0

    async def body(stream: ResponseStream) -> None:
        nonlocal written
        for _ in range(16_384):  # at most 1 GiB: the kernel's buffers fill first
            stream.write(chunk)
            written += len(chunk)
            if stream.write_buffer_size > 4 * len(chunk):
                break
            await asyncio.sleep(0)
        filled.set()
        stream.close()

    async with streamed(body, raw_connect) as (_, peer):
        async with asyncio.timeout(BOUND):
            await filled.wait()
        response = await peer.read_all()
    _, _, sent = response.partition(b"\r\n\r\n")
    assert len(sent) == written > 4 * len(chunk)


async def test_an_async_process_request_is_cancelled_when_the_client_leaves(
    raw_connect: Any,
) -> None:
    holding, cancelled = asyncio.Event(), asyncio.Event()

    async def process_request(request: Request) -> HTTPResponse:
        holding.set()
        try:
            await asyncio.sleep(3600)  # a long-poll with nothing to say
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return HTTPResponse(200, "late")

    async with tidings.serve(
        echo, "127.0.0.1", 0, process_request=process_request
    ) as server:
        peer = await raw_connect(server.port)
        peer.writer.write(b"GET /poll HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(BOUND):
            await holding.wait()
            peer.close()
            await cancelled.wait()
            while server.connections:
                await asyncio.sleep(0.01)  # connection_lost is not awaitable


async def read_response(peer: Any) -> tuple[bytes, bytes]:
    """One response of a connection kept alive: its head, and the body its
    Content-Length says."""
    async with asyncio.timeout(BOUND):
        head = await peer.reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        return head, await peer.reader.readexactly(length)


async def test_a_connection_carries_request_after_request_until_one_says_close(
    raw_connect: Any,
) -> None:
    seen: list[str] = []

    def process_request(request: Request) -> HTTPResponse:
        seen.append(request.path)
        return HTTPResponse(200, request.path)

    async with tidings.serve(
        echo, "127.0.0.1", 0, process_request=process_request, max_body_size=100
    ) as server:
        peer = await raw_connect(server.port)
        peer.writer.write(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = await read_response(peer)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b"/one\n"
        assert b"connection:" not in head.lower()  # HTTP/1.1: it persists
        # Two at once (pipelined, one with a body), answered in order.
        peer.writer.write(
            b"POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /three HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert (await read_response(peer))[1] == b"/two\n"
        assert (await read_response(peer))[1] == b"/three\n"
        assert len(server.connections) == 1
        peer.writer.write(b"GET /four HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        last = await peer.read_all()  # and the server closes
        assert last.startswith(b"HTTP/1.1 200 OK\r\n") and last.endswith(b"/four\n")
        assert b"Connection: close" in last
        assert seen == ["/one", "/two", "/three", "/four"]


async def test_a_connection_kept_alive_may_upgrade_next(raw_connect: Any) -> None:
    async with tidings.serve(
        echo,
        "127.0.0.1",
        0,
        process_request=lambda r: HTTPResponse(200, "ok") if r.path == "/h" else None,
    ) as server:
        peer = await raw_connect(server.port)
        peer.writer.write(b"GET /h HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(peer))[1] == b"ok\n"
        async with asyncio.timeout(BOUND):
            head = await peer.handshake()
        assert head.startswith(b"HTTP/1.1 101 ")
        # A refused upgrade is not kept: the client may have sent frames.
        refused = await raw_connect(server.port)
        refused.writer.write(
            b"GET /h HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\n\r\n"
        )
        answer = await refused.read_all()
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer


async def test_an_idle_connection_kept_alive_ends_after_open_timeout(
    raw_connect: Any,
) -> None:
    async with tidings.serve(
        echo,
        "127.0.0.1",
        0,
        process_request=lambda request: HTTPResponse(200, "ok"),
        open_timeout=0.2,
    ) as server:
        peer = await raw_connect(server.port)
        peer.writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await read_response(peer)
        assert await peer.read_all(timeout=BOUND) == b""
        async with asyncio.timeout(BOUND):
            while server.connections:
                await asyncio.sleep(0.01)


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_process_request_that_raises_is_answered_500_and_the_server_goes_on(
    raw_connect: Any, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def fail_later(request: Request) -> HTTPResponse:
        await asyncio.sleep(0)
        raise RuntimeError("a bug in the application")

    def fail_now(request: Request) -> HTTPResponse:
        raise RuntimeError("a bug in the application")

    async with tidings.serve(
        echo,
        "127.0.0.1",
        0,
        process_request=fail_later if kind == "async" else fail_now,
    ) as server:
        peer = await raw_connect(server.port)
        for _ in range(2):  # kept alive: the next request is answered too
            peer.writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
            head, body = await read_response(peer)
            assert head.startswith(b"HTTP/1.1 500 ")
            assert body == b"internal server error\n"
        peer.close()
    errors = [r for r in caplog.records if r.getMessage() == "error in process_request"]
    assert len(errors) == 2 and all(r.exc_info for r in errors)
