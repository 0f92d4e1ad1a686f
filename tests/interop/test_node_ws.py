"""Interop with Node.js's ``ws`` package, both directions.

``tests/interop/node/ws_peer.mjs`` runs a ``ws`` client or server as a
subprocess; it echoes what it receives and obeys ``cmd:`` messages, so each
test drives the conversation from its tidings side.

Needs Node.js and ``npm ci`` in tests/interop/node (``scripts/test`` runs
it); without them the tests skip, unless CI is set.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import random
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NoReturn

import pytest

import tidings
from tidings import ConnectionClosed, WebSocket

NODE_DIR = Path(__file__).parent / "node"

#: Seconds for anything one step waits on; 16 MiB through zlib on both sides
#: takes a few seconds on a slow machine.
BOUND = 60
MiB = 1 << 20
#: tidings' limit in these tests: above the 16 MiB messages, unlike the default.
MAX_MESSAGE_SIZE = 32 * MiB

SMALL: list[str | bytes] = ["hello", "", "ü€𝄞" * 1000, b"", b"\x00\xff" * 5000]


@functools.cache
def big_text() -> str:
    """16 MiB of ASCII text that compresses well."""
    lines = "".join(f"{i:06d} tidings talks to ws\n" for i in range(40_000))
    return (lines * (16 * MiB // len(lines) + 1))[: 16 * MiB]


@functools.cache
def big_binary() -> bytes:
    """16 MiB that don't compress."""
    return random.Random(6455).randbytes(16 * MiB)


def _missing(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{reason}; CI must have it (scripts/test installs it)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def node() -> str:
    path = shutil.which("node")
    if path is None:
        _missing("Node.js is not installed")
    if not (NODE_DIR / "node_modules" / "ws").is_dir():
        _missing("the ws package is not installed (npm ci in tests/interop/node)")
    return path


class NodePeer:
    """``node ws_peer.mjs ...``: what it prints, one event a line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    @asynccontextmanager
    async def start(cls, node: str, *args: str) -> AsyncIterator[NodePeer]:
        proc = await asyncio.create_subprocess_exec(
            node,
            "ws_peer.mjs",
            *args,
            cwd=NODE_DIR,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            yield cls(proc)
        finally:
            assert proc.stdin is not None
            proc.stdin.close()  # a server stops when its stdin ends
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()

    async def event(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(BOUND):
            line = await self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"ws_peer.mjs exited ({await self.proc.wait()})")
        event: dict[str, Any] = json.loads(line)
        return event


def flag(compression: bool) -> str:
    return "1" if compression else "0"


def tidings_options(compression: bool) -> dict[str, Any]:
    options: dict[str, Any] = {"max_message_size": MAX_MESSAGE_SIZE}
    if not compression:
        options["compression"] = None
    return options


async def command(ws: WebSocket, cmd: str, **args: Any) -> None:
    await ws.send("cmd:" + json.dumps({"cmd": cmd, **args}))


async def wire_bytes(ws: WebSocket) -> tuple[int, int]:
    """Bytes the ws side has read and written on its socket so far."""
    await command(ws, "stats")
    reply = await ws.recv()
    assert isinstance(reply, str)
    stats = json.loads(reply)
    return stats["read"], stats["written"]


async def exchange(ws: WebSocket, compression: bool) -> None:
    """Drive the ws peer from tidings: echoes, 16 MiB, fragments."""
    async with asyncio.timeout(BOUND):
        for message in SMALL:
            await ws.send(message)
            assert await ws.recv() == message

        read_before, written_before = await wire_bytes(ws)
        await ws.send(big_text())
        echo = await ws.recv()
        assert isinstance(echo, str) and len(echo) == 16 * MiB
        assert echo == big_text()
        read_after, written_after = await wire_bytes(ws)
        read, written = read_after - read_before, written_after - written_before
        if compression:  # compressed on the wire, both ways
            assert read < 4 * MiB and written < 4 * MiB
        else:
            assert read > 16 * MiB and written > 16 * MiB

        await ws.send(big_binary())
        echo = await ws.recv()
        assert isinstance(echo, bytes) and len(echo) == 16 * MiB
        assert echo == big_binary()

        # Fragmented by tidings: ws reassembles them and echoes each whole.
        await ws.send(["frag", "mented ", "", "tëxt"])
        assert await ws.recv() == "fragmented tëxt"
        await ws.send([b"\x00", b"\x01" * 100_000, b"\x02"])
        assert await ws.recv() == b"\x00" + b"\x01" * 100_000 + b"\x02"

        # Fragmented by ws.
        await command(ws, "fragments", parts=["from ", "ws ", "✓"], binary=False)
        assert await ws.recv() == "from ws ✓"
        await command(ws, "fragments", parts=["a" * 70_000, "b", ""], binary=True)
        assert await ws.recv() == b"a" * 70_000 + b"b"


# -- the ws client, a tidings server -------------------------------------------


@asynccontextmanager
async def ws_client(
    node: str, compression: bool
) -> AsyncIterator[tuple[WebSocket, NodePeer, dict[str, Any]]]:
    """A tidings server, the ws client connected to it: (server side, peer,
    the peer's "open" event)."""
    connections: asyncio.Queue[WebSocket] = asyncio.Queue()

    async def handler(ws: WebSocket) -> None:
        connections.put_nowait(ws)
        await ws.wait_closed()

    async with (
        tidings.serve(
            handler, "127.0.0.1", 0, **tidings_options(compression)
        ) as server,
        NodePeer.start(
            node, "client", f"ws://127.0.0.1:{server.port}/", flag(compression)
        ) as peer,
    ):
        opened = await peer.event()
        assert opened["event"] == "open", opened
        async with asyncio.timeout(BOUND):
            ws = await connections.get()
        yield ws, peer, opened


@pytest.mark.parametrize("compression", [True, False], ids=["deflate", "plain"])
async def test_ws_client_against_tidings_server(node: str, compression: bool) -> None:
    async with ws_client(node, compression) as (ws, peer, opened):
        assert (ws.protocol.deflate_params is not None) is compression
        assert opened["extensions"] == ("permessage-deflate" if compression else "")
        await exchange(ws, compression)
        async with asyncio.timeout(BOUND):
            await ws.close(4001, "bye from tidings")
        closed = await peer.event()
    assert closed == {"event": "close", "code": 4001, "reason": "bye from tidings"}
    assert ws.close_code == 4001


async def test_ws_client_close_code_reaches_tidings_server(node: str) -> None:
    async with ws_client(node, compression=True) as (ws, peer, _):
        await command(ws, "close", code=4002, reason="bye from ws ✓")
        with pytest.raises(ConnectionClosed) as info:
            async with asyncio.timeout(BOUND):
                await ws.recv()
        closed = await peer.event()
    assert (info.value.code, info.value.reason) == (4002, "bye from ws ✓")
    assert (ws.close_code, ws.close_reason) == (4002, "bye from ws ✓")
    # tidings answered with the same code, and no reason.
    assert closed == {"event": "close", "code": 4002, "reason": ""}


# -- a ws server, the tidings client -------------------------------------------


@asynccontextmanager
async def ws_server(
    node: str, compression: bool
) -> AsyncIterator[tuple[WebSocket, NodePeer, dict[str, Any]]]:
    """A ws server, a tidings client connected to it: (client, peer, the
    peer's "open" event)."""
    async with NodePeer.start(node, "server", flag(compression)) as peer:
        listening = await peer.event()
        assert listening["event"] == "listening", listening
        async with tidings.connect(
            f"ws://127.0.0.1:{listening['port']}/", **tidings_options(compression)
        ) as ws:
            opened = await peer.event()
            assert opened["event"] == "open", opened
            yield ws, peer, opened


@pytest.mark.parametrize("compression", [True, False], ids=["deflate", "plain"])
async def test_tidings_client_against_ws_server(node: str, compression: bool) -> None:
    async with ws_server(node, compression) as (ws, peer, opened):
        assert (ws.protocol.deflate_params is not None) is compression
        assert opened["extensions"] == ("permessage-deflate" if compression else "")
        await exchange(ws, compression)
        await command(ws, "close", code=4003, reason="bye from ws")
        with pytest.raises(ConnectionClosed) as info:
            async with asyncio.timeout(BOUND):
                await ws.recv()
        closed = await peer.event()
    assert (info.value.code, info.value.reason) == (4003, "bye from ws")
    assert closed == {"event": "close", "code": 4003, "reason": ""}


async def test_tidings_client_close_code_reaches_ws_server(node: str) -> None:
    async with ws_server(node, compression=True) as (ws, peer, _):
        await ws.send("one last thing")
        assert await ws.recv() == "one last thing"
        async with asyncio.timeout(BOUND):
            await ws.close(4004, "bye from tidings ✓")
        closed = await peer.event()
    assert closed == {"event": "close", "code": 4004, "reason": "bye from tidings ✓"}
    # ws answered with the same code and reason.
    assert (ws.close_code, ws.close_reason) == (4004, "bye from tidings ✓")
