"""Interop with the `websockets` library, both directions."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import serve as ws_serve

import tidings
from tidings import ConnectionClosed, WebSocket

BOUND = 10
MESSAGES: list[str | bytes] = ["hello", "ü" * 1000, b"\x00\xff" * 5000, "x" * 200_000]


@pytest.mark.parametrize("compression", [True, False], ids=["deflate", "plain"])
async def test_websockets_client_against_tidings_server(compression: bool) -> None:
    async def handler(ws: WebSocket) -> None:
        async for message in ws:
            if message == "close please":
                await ws.close(4001, "as asked")
                return
            await ws.send(message)

    options: dict[str, Any] = {} if compression else {"compression": None}
    async with (
        tidings.serve(handler, "127.0.0.1", 0, **options) as server,
        ws_connect(
            f"ws://127.0.0.1:{server.port}/",
            compression="deflate" if compression else None,
            max_size=None,
        ) as client,
    ):
        assert (client.protocol.extensions != []) is compression
        async with asyncio.timeout(BOUND):
            for message in MESSAGES:
                await client.send(message)
                assert await client.recv() == message
            await client.send(["frag", "mented"])
            assert await client.recv() == "fragmented"
            await client.send("close please")
            with pytest.raises(websockets.ConnectionClosed) as info:
                await client.recv()
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "as asked")


@pytest.mark.parametrize("compression", [True, False], ids=["deflate", "plain"])
async def test_tidings_client_against_websockets_server(compression: bool) -> None:
    async def handler(ws: Any) -> None:
        async for message in ws:
            if message == "close please":
                await ws.close(4002, "bye from websockets")
                return
            await ws.send(message)

    async with ws_serve(
        handler,
        "127.0.0.1",
        0,
        compression="deflate" if compression else None,
        max_size=None,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        options: dict[str, Any] = {} if compression else {"compression": None}
        async with tidings.connect(
            f"ws://127.0.0.1:{port}/", max_message_size=None, **options
        ) as ws:
            assert (ws.protocol.deflate_params is not None) is compression
            async with asyncio.timeout(BOUND):
                for message in MESSAGES:
                    await ws.send(message)
                    assert await ws.recv() == message
                await ws.send([b"frag", b"mented"])
                assert await ws.recv() == b"fragmented"
                await ws.send("close please")
                with pytest.raises(ConnectionClosed) as info:
                    await ws.recv()
        assert (info.value.code, info.value.reason) == (4002, "bye from websockets")


async def test_tidings_client_close_code_reaches_websockets_server() -> None:
    seen: list[tuple[int, str]] = []

    async def handler(ws: Any) -> None:
        try:
            await ws.recv()
        except websockets.ConnectionClosed as exc:
            assert exc.rcvd is not None
            seen.append((exc.rcvd.code, exc.rcvd.reason))

    async with ws_serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        ws = await tidings.connect(f"ws://127.0.0.1:{port}/")
        await ws.close(4003, "client says bye")
        async with asyncio.timeout(BOUND):
            while not seen:
                await asyncio.sleep(0.01)
    assert seen == [(4003, "client says bye")]
