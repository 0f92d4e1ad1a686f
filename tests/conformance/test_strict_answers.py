"""The asyncio engine answers messages that arrive just before a protocol
error, as Autobahn's strict verdict expects (cases 3.2, 4.1.3, 5.15).

These run everywhere: no Python 2.7 or Autobahn needed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib

import pytest

import tidings
from tidings.engine.connection import Message, WebSocket
from tidings.protocol.frames import Frame, FrameParser, Opcode, serialize_frame

# One write: a message, a frame with RSV2 set (no extension gives it a
# meaning), then a ping that must not be answered.
BAD_RSV = bytes([0xA1]) + serialize_frame(Opcode.TEXT, b"x", mask=True)[1:]


def burst(*, mask: bool) -> bytes:
    bad = BAD_RSV if mask else bytes([0xA1]) + serialize_frame(Opcode.TEXT, b"x")[1:]
    return (
        serialize_frame(Opcode.TEXT, b"Hello", mask=mask)
        + bad
        + serialize_frame(Opcode.PING, b"p", mask=mask)
    )


def frames(data: bytes, *, masked: bool) -> list[Frame]:
    parser = FrameParser(expect_mask=masked)
    parser.feed(data)
    found = []
    while (frame := parser.next_frame()) is not None:
        found.append(frame)
    return found


async def read_until_close(reader: asyncio.StreamReader) -> list[Frame]:
    """Server frames up to its close frame (it then waits for our EOF)."""
    parser = FrameParser(expect_mask=False)
    found: list[Frame] = []
    async with asyncio.timeout(10):
        while not found or found[-1].opcode is not Opcode.CLOSE:
            data = await reader.read(65536)
            assert data, f"EOF before a close frame, after {found}"
            parser.feed(data)
            while (frame := parser.next_frame()) is not None:
                found.append(frame)
    return found


def check_echo_then_close(received: list[Frame]) -> None:
    assert [(f.opcode, f.payload[:2]) for f in received] == [
        (Opcode.TEXT, b"He"),
        (Opcode.CLOSE, (1002).to_bytes(2, "big")),
    ]
    assert received[0].payload == b"Hello"


async def echo(ws: WebSocket) -> None:
    async for message in ws:
        await ws.send(message)


def echo_now(ws: WebSocket, message: Message) -> None:
    ws.send_nowait(message)


async def test_server_handler_echoes_before_failing(raw_connect) -> None:  # type: ignore[no-untyped-def]
    async with tidings.serve(echo, "127.0.0.1", 0, compression=None) as server:
        assert server.port is not None
        peer = await raw_connect(server.port)
        assert b" 101 " in await peer.handshake()
        peer.writer.write(burst(mask=True))
        check_echo_then_close(await read_until_close(peer.reader))
        peer.close()


async def test_server_callback_echoes_before_failing(raw_connect) -> None:  # type: ignore[no-untyped-def]
    async with tidings.serve(
        None, "127.0.0.1", 0, on_message=echo_now, compression=None
    ) as server:
        assert server.port is not None
        peer = await raw_connect(server.port)
        assert b" 101 " in await peer.handshake()
        peer.writer.write(burst(mask=True))
        check_echo_then_close(await read_until_close(peer.reader))
        peer.close()


@pytest.mark.parametrize("late", ["", "bad frame", "ping"])
async def test_client_echoes_before_failing(late: str) -> None:
    """With ``late``, the bad frame (and the ping), or the ping alone, come in
    a later write, before the application has read the message: Autobahn 3.3
    on a busy machine."""
    received = asyncio.get_running_loop().create_future()

    async def fake_server(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        guid = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
        accept = base64.b64encode(hashlib.sha1(key + guid).digest())
        data = burst(mask=False)
        cut = len(data)
        if late:
            cut = len(serialize_frame(Opcode.TEXT, b"Hello"))
        if late == "ping":
            cut = len(data) - len(serialize_frame(Opcode.PING, b"p"))
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + accept
            + b"\r\n\r\n"
            + data[:cut]
        )
        if late:
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(data[cut:])
        async with asyncio.timeout(10):
            received.set_result(await reader.read())
        writer.close()

    server = await asyncio.start_server(fake_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        ws = await tidings.connect(f"ws://127.0.0.1:{port}/", compression=None)
        if late:
            await asyncio.sleep(0.2)  # the rest arrives meanwhile
        try:
            await echo(ws)
        except tidings.ConnectionClosed as exc:
            assert exc.code == 1002
        check_echo_then_close(frames(await received, masked=True))
