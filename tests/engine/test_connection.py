"""Tests of tidings.engine.connection, the asyncio WebSocket, over loopback sockets."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import tidings
from tidings import WebSocket
from tidings.protocol import State
from tidings.protocol.frames import Frame, FrameParser, Opcode, serialize_frame

BOUND = 60  # seconds: every wait in these tests is bounded

UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


class RawPeer:
    """A client on a plain non-blocking socket, which reads only when told."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.parser = FrameParser(expect_mask=False)

    @classmethod
    async def open(cls, port: int, *, rcvbuf: int) -> RawPeer:
        sock = socket.socket()
        # Before connecting, so that TCP's window is small from the start.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        peer = cls(sock)
        await peer.loop.sock_connect(sock, ("127.0.0.1", port))
        await peer.send(UPGRADE)
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            byte = await peer.loop.sock_recv(sock, 1)  # not a byte past it
            assert byte, f"EOF in the response head {head!r}"
            head += byte
        assert head.startswith(b"HTTP/1.1 101 "), head
        return peer

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    async def frames_until(self, last: Callable[[Frame], bool]) -> list[Frame]:
        """Read the server's frames up to the first for which ``last`` is
        true."""
        found: list[Frame] = []
        while not found or not last(found[-1]):
            data = await self.loop.sock_recv(self.sock, 1 << 16)
            assert data, f"EOF after {len(found)} frames"
            self.parser.feed(data)
            while (frame := self.parser.next_frame()) is not None:
                found.append(frame)
                if last(frame):
                    break
        return found

    def close(self) -> None:
        if self.sock.fileno() != -1:
            self.sock.close()


@pytest.fixture
async def raw_peers() -> AsyncIterator[list[RawPeer]]:
    peers: list[RawPeer] = []
    yield peers
    for peer in peers:
        peer.close()


def ping(payload: bytes) -> bytes:
    return serialize_frame(Opcode.PING, payload, mask=True)


class Watched:
    """The server side of the one connection in a test: the WebSocket, and
    the most bytes its transport has held for writing after any write."""

    def __init__(self) -> None:
        self.ws: WebSocket | None = None
        self.peak = 0
        self.opened = asyncio.Event()
        self.done = asyncio.Event()

    async def handler(self, ws: WebSocket) -> None:
        transport: Any = ws._transport
        # A small kernel buffer, so that what the kernel takes does not
        # depend on this machine's TCP autotuning: the rest stays with us.
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
        for name in ("write", "writelines"):
            setattr(transport, name, self._watch(transport, getattr(transport, name)))
        self.ws = ws
        self.opened.set()
        async for message in ws:
            if message == "done":
                self.done.set()

    def _watch(self, transport: Any, write: Any) -> Any:
        def watched(data: Any) -> None:
            write(data)
            self.peak = max(self.peak, transport.get_write_buffer_size())

        return watched


async def test_pings_from_a_peer_that_never_reads_do_not_grow_our_memory(
    raw_peers: list[RawPeer],
) -> None:
    # A peer that sends pings and never reads made the server queue a pong
    # for each, without bound (59 MB of pings: +55 MB). Pongs now wait while
    # the write buffer is over its limit, and only the latest ping is then
    # answered (RFC 6455 §5.5.3); reading goes on, so a peer that sends
    # while it does not read is never stuck.
    watched = Watched()
    limit = 64 * 1024
    async with tidings.serve(
        watched.handler, "127.0.0.1", 0, write_limit=limit, ping_interval=None
    ) as server:
        peer = await RawPeer.open(server.port, rcvbuf=4096)
        raw_peers.append(peer)
        async with asyncio.timeout(BOUND):
            await watched.opened.wait()
            payloads = [b"%08d" % i + b"." * 117 for i in range(160_000)]  # 125 B
            batch = 2000
            for i in range(0, len(payloads), batch):  # 20 MB in all
                await peer.send(b"".join(ping(p) for p in payloads[i : i + batch]))
            await peer.send(serialize_frame(Opcode.TEXT, b"done", mask=True))
            # Every ping was read: the message after them arrived.
            await watched.done.wait()
        assert watched.ws is not None
        # At most the limit, plus the few pongs queued in one read (see
        # tidings.protocol.connection._MAX_UNSENT_PONGS) before the
        # transport said it was over.
        assert watched.peak <= limit + 17 * 127, watched.peak
        assert watched.ws.write_buffer_size <= limit + 17 * 127

        # Once the peer reads, the buffer drains and the latest ping gets
        # its pong; earlier pongs came in order, some skipped.
        async with asyncio.timeout(BOUND):
            frames = await peer.frames_until(lambda f: f.payload == payloads[-1])
        assert {f.opcode for f in frames} == {Opcode.PONG}
        answered = [int(f.payload[:8]) for f in frames]
        assert answered == sorted(set(answered))
        assert len(answered) < len(payloads) // 10

        # The connection is as good as new: a ping gets its pong at once.
        async with asyncio.timeout(BOUND):
            await peer.send(ping(b"again"))
            [pong] = await peer.frames_until(lambda f: f.payload == b"again")
        assert pong == Frame(Opcode.PONG, b"again")
        assert watched.ws.state is State.OPEN
        peer.close()  # rather than have the server wait for a close frame


async def test_every_ping_of_a_burst_is_answered_while_the_buffer_is_low(
    raw_peers: list[RawPeer],
) -> None:
    # What peers expect (Autobahn case 2.10 sends 10 pings at once): with
    # room in the write buffer, each ping gets its own pong.
    watched = Watched()
    async with tidings.serve(
        watched.handler, "127.0.0.1", 0, ping_interval=None
    ) as server:
        peer = await RawPeer.open(server.port, rcvbuf=1 << 16)
        raw_peers.append(peer)
        payloads = [b"ping %d" % i for i in range(10)]
        async with asyncio.timeout(BOUND):
            await peer.send(b"".join(ping(p) for p in payloads))
            frames = await peer.frames_until(lambda f: f.payload == payloads[-1])
        assert frames == [Frame(Opcode.PONG, p) for p in payloads]
        peer.close()


async def test_a_tidings_client_ping_gets_its_pong() -> None:
    async with (
        tidings.serve(Watched().handler, "127.0.0.1", 0) as server,
        tidings.connect(f"ws://127.0.0.1:{server.port}/") as ws,
    ):
        async with asyncio.timeout(BOUND):
            assert await ws.ping(b"hello") >= 0
            assert await ws.ping() >= 0


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_the_event_loops_set_tcp_nodelay_so_the_engine_need_not(loop_name: str) -> None:
    # WebSocket.connection_made relies on this: frames go out whole, and
    # Nagle's algorithm would only hold small ones back.
    if loop_name == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    else:
        runner = asyncio.Runner()

    async def nodelay() -> tuple[int, int]:
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Accept(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sock = transport.get_extra_info("socket")
                accepted.set_result(
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                )

        loop = asyncio.get_running_loop()
        server = await loop.create_server(Accept, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        sock = transport.get_extra_info("socket")
        dialed = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        served = await asyncio.wait_for(accepted, BOUND)
        transport.close()
        server.close()
        return dialed, served

    with runner:
        dialed, served = runner.run(nodelay())
    assert dialed and served
