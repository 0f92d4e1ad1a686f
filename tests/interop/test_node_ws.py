"""Interop with Node.js's ``ws`` package, both directions, and the ``ws``
client against FastAPI and Starlette apps under uvicorn with tidings'
protocol (``--ws tidings.asgi:WebSocketProtocol``).

``tests/interop/node/ws_peer.mjs`` runs a ``ws`` client or server as a
subprocess; against tidings it echoes what it receives and obeys ``cmd:``
messages, so each test drives the conversation from its tidings side.
Against an app, which echoes, the test drives the ``ws`` client through its
stdin instead, and reads a digest of each message it receives.

Needs Node.js and ``npm ci`` in tests/interop/node (``scripts/test`` runs
it); without them the tests skip, unless CI is set.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
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

from ..asgi_apps import Watched, fastapi_app, starlette_app
from ..conftest import ServeASGI

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

    async def tell(self, order: dict[str, Any]) -> None:
        """A command for a driven peer (``ws_peer.mjs drive``), on its stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(order).encode() + b"\n")
        async with asyncio.timeout(BOUND):
            await self.proc.stdin.drain()

    async def send(self, message: str | bytes) -> None:
        """Have a driven peer send ``message``."""
        if isinstance(message, str):
            await self.tell({"send": message})
        else:
            await self.tell(
                {"send": base64.b64encode(message).decode(), "binary": True}
            )

    async def stats(self) -> tuple[int, int]:
        """Bytes a driven peer has read and written on its socket so far."""
        await self.tell({"cmd": "stats"})
        stats = await self.event()
        assert stats["event"] == "stats", stats
        return stats["read"], stats["written"]


def digest(message: str | bytes) -> dict[str, Any]:
    """The event a driven peer prints for ``message``, received."""
    data = message.encode() if isinstance(message, str) else message
    return {
        "event": "message",
        "binary": isinstance(message, bytes),
        "length": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


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


# -- the ws client, an ASGI app under uvicorn with tidings' protocol ----------


@asynccontextmanager
async def ws_client_of_app(
    node: str, url: str, *subprotocols: str
) -> AsyncIterator[tuple[NodePeer, dict[str, Any]]]:
    """The ws client, offering permessage-deflate and ``subprotocols``,
    connected to ``url`` and driven from here: (peer, its "open" event)."""
    async with NodePeer.start(node, "drive", url, "1", *subprotocols) as peer:
        opened = await peer.event()
        assert opened["event"] == "open", opened
        yield peer, opened


@pytest.mark.parametrize("compression", [True, False], ids=["deflate", "plain"])
@pytest.mark.parametrize(
    "app", [fastapi_app, starlette_app], ids=["fastapi", "starlette"]
)
async def test_ws_client_against_asgi_app_under_uvicorn(
    node: str, serve_asgi: ServeASGI, app: Any, compression: bool
) -> None:
    # uvicorn's --ws-per-message-deflate decides; ws always offers it.
    watched = Watched(app)
    url = await serve_asgi(watched, ws_per_message_deflate=compression)
    async with (
        ws_client_of_app(node, url + "/echo") as (peer, opened),
        asyncio.timeout(BOUND),
    ):
        assert opened["extensions"] == ("permessage-deflate" if compression else "")
        assert opened["protocol"] == ""
        for message in SMALL:
            await peer.send(message)
            assert await peer.event() == digest(message)

        # 1 MiB of text that compresses well, then 1 MiB that doesn't.
        text = big_text()[:MiB]
        read_before, written_before = await peer.stats()
        await peer.send(text)
        assert await peer.event() == digest(text)
        read_after, written_after = await peer.stats()
        read, written = read_after - read_before, written_after - written_before
        if compression:  # compressed on the wire, both ways
            assert read < MiB // 4 and written < MiB // 4
        else:
            assert read > MiB and written > MiB
        binary = big_binary()[:MiB]
        await peer.send(binary)
        assert await peer.event() == digest(binary)

        # Fragmented by ws: the app receives it whole.
        await peer.tell({"cmd": "fragments", "parts": ["from ", "ws ", "✓"]})
        assert await peer.event() == digest("from ws ✓")

        await peer.tell({"cmd": "close", "code": 4002, "reason": "bye from ws ✓"})
        closed = await peer.event()
        disconnect = await watched.disconnect(BOUND)
    # The app's disconnect event has ws's code and reason; tidings answered
    # ws with the same code, and no reason.
    assert disconnect == {
        "type": "websocket.disconnect",
        "code": 4002,
        "reason": "bye from ws ✓",
    }
    assert closed == {"event": "close", "code": 4002, "reason": ""}


async def test_asgi_app_picks_the_subprotocol_for_ws_client(
    node: str, serve_asgi: ServeASGI
) -> None:
    # ws offers three; the FastAPI app speaks chat.v1 and chat.v2, and picks
    # by its own preference, not ws's order.
    url = await serve_asgi(fastapi_app)
    async with ws_client_of_app(
        node, url + "/echo", "chat.v3", "chat.v2", "chat.v1"
    ) as (peer, opened):
        assert opened["protocol"] == "chat.v1"
        await peer.send("which?")
        assert await peer.event() == digest("which?")


async def test_asgi_app_close_code_and_reason_reach_ws_client(
    node: str, serve_asgi: ServeASGI
) -> None:
    url = await serve_asgi(fastapi_app)
    async with ws_client_of_app(node, url + "/close/4001") as (peer, _):
        await peer.send("bye from the app ✓")
        closed = await peer.event()
    assert closed == {"event": "close", "code": 4001, "reason": "bye from the app ✓"}
