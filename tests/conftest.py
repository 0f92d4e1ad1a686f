"""Shared test settings and fixtures."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from hypothesis import settings

# Tests check behaviour, never speed: a slow or busy machine must not fail them.
settings.register_profile("tidings", deadline=None)
settings.load_profile("tidings")


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    """A throwaway certificate authority, made for this test run."""
    return trustme.CA()


@pytest.fixture(scope="session")
def tls_server(tls_ca: trustme.CA) -> ssl.SSLContext:
    """A server context with a certificate for 127.0.0.1 and localhost."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture(scope="session")
def tls_client(tls_ca: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts the throwaway CA."""
    context = ssl.create_default_context()
    tls_ca.configure_trust(context)
    return context


class RawClient:
    """A hand-driven TCP peer for tests that need to misbehave."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def handshake(self, path: str = "/") -> bytes:
        """Send a valid upgrade request; return the response head."""
        self.writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        return await self.reader.readuntil(b"\r\n\r\n")

    async def read_all(self, timeout: float = 10) -> bytes:
        """Read until the server closes the connection."""
        async with asyncio.timeout(timeout):
            return await self.reader.read()

    def close(self) -> None:
        self.writer.transport.abort()


RawConnect = Callable[[int], Awaitable[RawClient]]


@pytest.fixture
async def raw_connect() -> AsyncIterator[RawConnect]:
    """Open raw TCP peers to a port; they are aborted after the test."""
    clients: list[RawClient] = []

    async def connect(port: int) -> RawClient:
        client = await RawClient.open(port)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()


def count_writes(transports: Iterable[Any]) -> list[Any]:
    """Record every write and writelines call that reaches these real
    transports; return the list the calls are appended to."""
    writes: list[Any] = []
    inside = False

    def counting(real: Any) -> Any:
        def counted(data: Any) -> None:
            # asyncio's writelines calls write: count the outer call.
            nonlocal inside
            if not inside:
                writes.append(data)
            inside, outer = True, inside
            try:
                real(data)
            finally:
                inside = outer

        return counted

    for transport in transports:
        for name in ("write", "writelines"):
            setattr(transport, name, counting(getattr(transport, name)))
    return writes


def skip_unless_ci(reason: str) -> None:
    """Skip for a missing peer, or fail where CI is set (scripts/test
    installs every peer there)."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{reason}; CI must have it (scripts/test installs it)")
    pytest.skip(reason)


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A real ``redis-server`` on a free loopback port, in a folder of its
    own; with ``persistent``, an append-only file keeps its data across a
    restart, and without it a restart loses everything."""

    def __init__(self, *, persistent: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            skip_unless_ci("redis-server is not installed")
        assert binary is not None
        self.binary = binary
        self.persistent = persistent
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="tidings-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.persistent else "no",
            "--appendfsync",
            "always",
        ]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 20
        while True:  # until it answers PING, bounded
            try:
                with socket.create_connection(("127.0.0.1", self.port), 1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Shut it down (SIGTERM: it flushes its append-only file)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)
        self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the test session (tests use key prefixes of
    their own)."""
    server = RedisServer()
    server.start()
    yield server
    server.remove()


def lose(hub: Any, offsets: set[int]) -> list[Any]:
    """From now on, publications at ``offsets`` never reach this node's
    subscribers, as if the broker had lost them on the way; return the
    list of pushes that were lost."""
    lost: list[Any] = []
    deliver = hub.on_push

    def lossy(push: Any) -> None:
        if push.kind == "pub" and push.offset in offsets:
            lost.append(push)
        else:
            deliver(push)

    hub.on_push = lossy  # type: ignore[method-assign]
    return lost
