"""Shared test settings and fixtures."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import trustme
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import settings

from tidings import ConnectionClosed, WebSocket
from tidings.asgi import WebSocketProtocol
from tidings.hub import mint_token

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


def listening() -> socket.socket:
    """A socket listening on a free loopback port, for a server to serve:
    clients may connect at once, and wait in the kernel until it accepts."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


class Served:
    """An app under a server in this process: its port, and a stop."""

    def __init__(self, port: int, stop: Callable[[], Awaitable[None]]) -> None:
        self.port = port
        self.stop = stop
        self.http = f"http://127.0.0.1:{port}"
        self.ws = f"ws://127.0.0.1:{port}/realtime/ws"


async def serve_uvicorn(app: Any, ws: Any = "auto") -> Served:
    """``app`` under an in-process uvicorn with WebSocket protocol ``ws``,
    its lifespan run; ``Served.ws`` is the hub's WebSocket where an app
    mounts it at /realtime."""
    sock = listening()
    config = uvicorn.Config(app, ws=ws, lifespan="on", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve([sock]))

    async def stop() -> None:
        if not task.done():
            server.should_exit = True
            async with asyncio.timeout(10):
                await task
        sock.close()

    return Served(sock.getsockname()[1], stop)


ServeASGI = Callable[..., Awaitable[str]]


@pytest.fixture
async def serve_asgi() -> AsyncIterator[ServeASGI]:
    """``url = await serve_asgi(app, **uvicorn_options)``: an ASGI app under
    an in-process uvicorn with tidings' protocol (``--ws
    tidings.asgi:WebSocketProtocol``), at ``ws://127.0.0.1:PORT``; stopped
    after the test. Its socket listens before uvicorn starts, so clients may
    connect at once: the kernel holds them until uvicorn accepts."""
    servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(app: Any, **options: Any) -> str:
        sock = listening()
        config = uvicorn.Config(
            app, ws=WebSocketProtocol, lifespan="off", log_level="info", **options
        )
        server = uvicorn.Server(config)
        servers.append((server, asyncio.ensure_future(server.serve([sock]))))
        return f"ws://127.0.0.1:{sock.getsockname()[1]}"

    yield start
    for server, task in servers:
        server.should_exit = True
        async with asyncio.timeout(10):
            await task


async def failing_command(*args: str, bound: float = 30) -> str:
    """Run ``python -m tidings ARGS``, which must fail: exit status 1 and
    nothing on stdout. Returns what it said on stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "tidings", *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(bound):
        out, err = await proc.communicate()
    assert proc.returncode == 1 and out == b"", (proc.returncode, out, err)
    return err.decode()


def count_writes(connections: Iterable[Any]) -> list[Any]:
    """Record every write and writelines call that reaches the real
    transports of these WebSockets; return the list the calls are appended
    to. Their fan-out writes go through the transport too, not straight to
    the socket (engine/broadcast.py), so that every write is seen."""
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

    for ws in connections:
        ws._fd = -1
        transport = ws._transport
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


def _port_free(port: int) -> bool:
    if port > 65535:
        return False
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


async def echo(ws: WebSocket) -> None:
    """A handler that sends every message back."""
    async for message in ws:
        await ws.send(message)


class RedisServer:
    """A real ``redis-server`` on a free loopback port, in a folder of its
    own; with ``persistent``, an append-only file (synced to disk as
    ``appendfsync`` says) keeps its data across a restart, and without it a
    restart loses everything but an RDB snapshot made with ``SAVE``.
    ``config`` is the text of a configuration file to start it with, and
    ``args`` more options (``--replicaof HOST PORT``, ``--sentinel``)."""

    def __init__(
        self,
        *,
        persistent: bool = False,
        appendfsync: str = "always",
        config: str | None = None,
        args: Iterable[str] = (),
        cluster: bool = False,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            skip_unless_ci("redis-server is not installed")
        assert binary is not None
        self.binary = binary
        self.persistent = persistent
        self.appendfsync = appendfsync
        self.cluster = cluster
        # A cluster node also listens on its port + 10000 (the cluster bus).
        self.port = free_port()
        while cluster and not _port_free(self.port + 10000):
            self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="tidings-redis-"))
        self.config: list[str] = []
        if config is not None:
            (self.dir / "redis.conf").write_text(config)
            self.config = [str(self.dir / "redis.conf")]
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            self.binary,
            *self.config,
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
            self.appendfsync,
            *self.args,
        ]
        if self.cluster:
            # A master silent for a second is failed over (when it has a
            # replica), so that failover tests take seconds; meanwhile the
            # other masters serve their slots (docs/scaling.md).
            args += ["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"]
            args += ["--cluster-require-full-coverage", "no"]
            args += ["--logfile", str(self.dir / "redis.log")]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 20
        while True:  # until it answers PING (NOAUTH: it wants a password), bounded
            try:
                with socket.create_connection(("127.0.0.1", self.port), 1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith((b"+PONG", b"-NOAUTH")):
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

    def kill(self) -> None:
        """End it with SIGKILL: nothing is flushed."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(20)
        self.proc = None

    def copy_data(self) -> Path:
        """A copy of its files as they are now (on a machine that crashes
        later, what the disk held)."""
        copy = Path(tempfile.mkdtemp(prefix="tidings-redis-copy-"))
        shutil.copytree(self.dir, copy, dirs_exist_ok=True)
        return copy

    def restore_data(self, copy: Path) -> None:
        """Put back the files of :meth:`copy_data` (stopped first)."""
        assert self.proc is None, "stop or kill it first"
        shutil.rmtree(self.dir)
        shutil.copytree(copy, self.dir)
        shutil.rmtree(copy, ignore_errors=True)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Sentinels:
    """One master, one replica (``--replicaof``) and three sentinels
    (``redis-server sentinel.conf --sentinel``, which is what Debian's
    ``redis-sentinel`` runs) watching the master as ``mymaster``, quorum 2,
    tuned to fail over within seconds."""

    name = "mymaster"
    #: Milliseconds without an answer before a sentinel counts the master
    #: down (the default is 30 s).
    down_after = 500

    def __init__(self) -> None:
        self.master = RedisServer()
        self.replica = RedisServer(
            args=["--replicaof", "127.0.0.1", str(self.master.port)]
        )
        config = (
            f"sentinel monitor {self.name} 127.0.0.1 {self.master.port} 2\n"
            f"sentinel down-after-milliseconds {self.name} {self.down_after}\n"
            f"sentinel failover-timeout {self.name} 5000\n"
        )
        self.sentinels = [
            RedisServer(config=config, args=["--sentinel"]) for _ in range(3)
        ]
        for server in (self.master, self.replica, *self.sentinels):
            server.args += ["--logfile", str(server.dir / "log")]

    def logs(self) -> str:
        """What the sentinels logged, for failure messages."""
        return "\n".join(
            (s.dir / "log").read_text(errors="replace")[-3000:] for s in self.sentinels
        )

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.name}/0"

    async def start(self, timeout: float = 30) -> None:
        """Start them all; return once every sentinel knows the replica and
        the two other sentinels (they find each other through the master,
        every 2 s), so that a failover can be agreed."""
        from redis.asyncio import Redis

        for server in (self.master, self.replica, *self.sentinels):
            server.start()

        async def ready() -> bool:
            for sentinel in self.sentinels:
                async with Redis(port=sentinel.port) as client:
                    state = await client.sentinel_master(self.name)
                if state["num-other-sentinels"] < 2 or state["num-slaves"] < 1:
                    return False
            async with Redis(port=self.replica.port) as client:
                info = await client.info("replication")
            return bool(info["master_link_status"] == "up")

        await wait_for(ready, "the sentinels to know each other", timeout=timeout)

    async def master_port(self) -> int:
        """Where the first sentinel says the master is."""
        from redis.asyncio import Redis

        async with Redis(port=self.sentinels[0].port) as client:
            _, port = await client.sentinel_get_master_addr_by_name(self.name)
        return int(port)

    def remove(self) -> None:
        for server in (*self.sentinels, self.replica, self.master):
            server.remove()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the test session (tests use key prefixes of
    their own)."""
    server = RedisServer()
    server.start()
    yield server
    server.remove()


class RedisCluster:
    """A real Redis Cluster on loopback: ``masters`` ``redis-server
    --cluster-enabled yes`` processes, with ``replicas`` replicas each, joined
    by ``redis-cli --cluster create``."""

    def __init__(self, masters: int = 3, replicas: int = 0) -> None:
        if shutil.which("redis-cli") is None:
            skip_unless_ci("redis-cli is not installed")
        self.replicas = replicas
        self.servers = [
            RedisServer(cluster=True) for _ in range(masters * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        nodes = ",".join(f"127.0.0.1:{s.port}" for s in self.servers)
        return f"redis+cluster://{nodes}"

    def start(self) -> None:
        for server in self.servers:
            server.start()
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{s.port}" for s in self.servers),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=60,
        )
        for server in self.servers:
            self.wait_ok(server)
            # A replica that never synced with its master cannot replace it.
            self.wait_for(server, "master_link_status:up", "INFO", "replication")

    def wait_for(self, server: RedisServer, line: str, *command: str) -> None:
        """Until ``command`` answers with ``line``, on a replica, bounded."""
        deadline = time.monotonic() + 30
        while "role:slave" in (answer := self.cli(server, *command)):
            if line in answer:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server.port} never said {line}")
            time.sleep(0.05)

    def cli(self, server: RedisServer, *args: str) -> str:
        """A command's answer from ``server``, as redis-cli prints it."""
        return subprocess.run(
            ["redis-cli", "-p", str(server.port), *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout

    def wait_ok(self, server: RedisServer, timeout: float = 30) -> None:
        """Until ``server`` says cluster_state:ok, bounded."""
        deadline = time.monotonic() + timeout
        while "cluster_state:ok" not in self.cli(server, "CLUSTER", "INFO"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster at {server.port} is not ok")
            time.sleep(0.05)

    def master_of(self, key: str) -> RedisServer:
        """The master that holds ``key``'s slot now."""
        slot = int(self.cli(self.servers[0], "CLUSTER", "KEYSLOT", key))
        for line in self.cli(self.live()[0], "CLUSTER", "NODES").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for ranges in fields[8:]:
                first, _, last = ranges.partition("-")
                if int(first) <= slot <= int(last or first):
                    port = int(fields[1].split("@")[0].rpartition(":")[2])
                    return next(s for s in self.servers if s.port == port)
        raise LookupError(f"no master holds slot {slot}")

    def live(self) -> list[RedisServer]:
        return [s for s in self.servers if s.proc is not None]

    def remove(self) -> None:
        for server in self.servers:
            server.remove()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """One Redis Cluster of 3 masters for the test session (tests use key
    prefixes of their own)."""
    cluster = RedisCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


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


class Peer:
    """A hub client written from docs/protocol.md alone: JSON commands with
    ids, replies matched by id, pushes kept in order on the side. ``node``
    is the hub node it is connected to (a Hub, or a process)."""

    #: Seconds any one wait may take.
    bound = 20.0

    def __init__(self, ws: Any, node: Any) -> None:
        self.ws = ws
        self.node = node
        self.ids = itertools.count(1)
        self.pushes: deque[dict[str, Any]] = deque()
        self.client = ""
        self.user = ""

    def __repr__(self) -> str:
        return f"<peer {self.client} on {self.node!r}>"

    async def send(self, message: Any) -> None:
        await self.ws.send(message if isinstance(message, str) else json.dumps(message))

    async def recv(self) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self.bound):
                message = await self.ws.recv()
        except TimeoutError:
            raise AssertionError(
                f"{self!r} received nothing for {self.bound} s"
            ) from None
        assert isinstance(message, str)
        decoded = json.loads(message)
        assert isinstance(decoded, dict)
        return decoded

    async def reply(self, id: int | None) -> dict[str, Any]:
        """The reply to command ``id`` (None: an error without id); pushes
        that come first are kept for :meth:`push`."""
        while True:
            message = await self.recv()
            if "channel" in message and "id" not in message:
                self.pushes.append(message)
                continue
            assert message.get("id") == id, (id, message)
            return message

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send a command; return the whole reply."""
        id = next(self.ids)
        await self.send({"id": id, "op": op, **fields})
        return await self.reply(id)

    async def result(self, op: str, **fields: Any) -> Any:
        reply = await self.call(op, **fields)
        assert "result" in reply, reply
        return reply["result"]

    async def error(self, op: str, **fields: Any) -> tuple[int, str]:
        reply = await self.call(op, **fields)
        assert "error" in reply, reply
        return reply["error"]["code"], reply["error"]["message"]

    async def publish_many(self, channel: str, datas: list[Any]) -> list[Any]:
        """Publish every item of ``datas``, pipelined: all commands are sent
        before the first reply is read. Returns the results, in order."""
        ids = [next(self.ids) for _ in datas]
        for id, data in zip(ids, datas, strict=True):
            await self.send(
                {"id": id, "op": "publish", "channel": channel, "data": data}
            )
        results = []
        for id in ids:
            reply = await self.reply(id)
            assert "result" in reply, reply
            results.append(reply["result"])
        return results

    async def push(self) -> dict[str, Any]:
        """The next push."""
        if self.pushes:
            return self.pushes.popleft()
        message = await self.recv()
        assert "id" not in message, message
        return message

    async def pubs(self, n: int, channel: str | None = None) -> list[dict[str, Any]]:
        """The next ``n`` publications (of ``channel``), skipping joins and
        leaves (and failing on any other push)."""
        out: list[dict[str, Any]] = []
        while len(out) < n:
            try:
                push = await self.push()
            except AssertionError as exc:
                last = [pub["offset"] for pub in out[-5:]]
                raise AssertionError(
                    f"{exc}, after {len(out)} of {n} publications (the last at "
                    f"offsets {last})"
                ) from None
            if "pub" in push and (channel is None or push["channel"] == channel):
                out.append(push["pub"])
            else:
                assert "join" in push or "leave" in push, push
        return out

    async def closed(self) -> int:
        """Read until the hub closes the connection; return the close code
        (1006 when the connection ended without one)."""
        async with asyncio.timeout(self.bound):
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await self.ws.recv()
        return self.ws.close_code or 1006


class HTTPAnswer:
    """A plain HTTP response."""

    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines)
        }

    def json(self) -> Any:
        assert self.headers.get("content-type") == "application/json", self.headers
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<HTTP {self.status} {self.body[:300]!r}>"


async def wait_for(
    check: Callable[[], Any], what: str, *, timeout: float = 20.0
) -> float:
    """Call ``check`` (a function, or a coroutine function) until it returns
    true, at most ``timeout`` seconds; return how long it took. For states
    that nothing announces (an entry expiring, /healthz, a broker's
    connection); what something announces is awaited, not polled."""
    start = time.monotonic()
    for _ in range(int(timeout / 0.02) + 1):
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            break
        await asyncio.sleep(0.02)  # the polling interval
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def http_request(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    *,
    headers: Iterable[tuple[str, str]] = (),
    timeout: float = 20.0,
) -> HTTPAnswer:
    """One plain HTTP/1.1 request to 127.0.0.1:``port``, read to the end; a
    ``body`` other than bytes is sent as JSON."""
    data = (
        b""
        if body is None
        else body
        if isinstance(body, bytes)
        else json.dumps(body).encode()
    )
    # Read to the end: a proxy in between must close, not keep it alive.
    fields = [("Connection", "close"), *headers]
    if not any(name.lower() == "host" for name, _ in fields):
        fields.insert(0, ("Host", "127.0.0.1"))
    if data:
        fields.append(("Content-Length", str(len(data))))
        if not any(name.lower() == "content-type" for name, _ in fields):
            fields.append(("Content-Type", "application/json"))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in fields
    )
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(head.encode() + b"\r\n" + data)
            raw = await reader.read()
        finally:
            writer.close()
    return HTTPAnswer(raw)


#: The folder of the proxy tests' back end, proxy_backend.py.
BACKEND_DIR = Path(__file__).parent / "hub"


class Backend:
    """The back end of proxy_backend.py under uvicorn, in a process of its
    own, and what the tests ask of it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        # The back end takes the listening socket: connections wait in the
        # kernel until it accepts, so no wait for it to be ready.
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(BACKEND_DIR / "proxy_backend.py"),
                str(self.sock.fileno()),
            ],
            pass_fds=[self.sock.fileno()],
        )

    def url(self, hook: str) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/{hook}"

    async def script(self, **specs: Any) -> None:
        """How each hook named answers from now on (proxy_backend.py)."""
        answer = await http_request(self.port, "POST", "/script", specs)
        assert answer.status == 200, answer

    async def calls(self, hook: str | None = None) -> list[dict[str, Any]]:
        answer = await http_request(self.port, "GET", "/calls")
        return [c for c in answer.json()["calls"] if hook in (None, c["hook"])]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)
        self.sock.close()


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    """The proxy tests' back end (proxy_backend.py), in a process of its own."""
    backend = Backend()
    yield backend
    backend.stop()


def hooks_at(backend: Backend, **options: Any) -> Any:
    """A ``ProxyConfig`` whose every hook is ``backend``'s, with a timeout
    generous for a busy machine unless ``options`` say otherwise."""
    from tidings.hub import ProxyConfig

    hooks = {
        h: backend.url(h) for h in ("connect", "refresh", "subscribe", "publish", "rpc")
    }
    return ProxyConfig(**{"timeout": 5.0, **hooks, **options})


@dataclass(frozen=True)
class KeyPair:
    """A signing key as PEM files hold it, and the algorithm it signs with."""

    private: bytes
    public: bytes
    algorithm: str

    def jwk(self, kid: str) -> dict[str, Any]:
        """The public key as a JWKS lists it."""
        key = serialization.load_pem_public_key(self.public)
        jwk = jwt.get_algorithm_by_name(self.algorithm).to_jwk(key, as_dict=True)
        return {**jwk, "kid": kid, "use": "sig", "alg": self.algorithm}

    def mint(self, user: str, **claims: Any) -> str:
        """A token for ``user`` signed with this key."""
        return mint_token(self.private, user, **claims)


#: The kinds of key a hub checks tokens with, and their algorithms.
KEY_KINDS = {"rsa": "RS256", "ec": "ES256", "ed25519": "EdDSA"}


@functools.cache
def key_pair(kind: str, n: int = 0) -> KeyPair:
    """The ``n``-th key of ``kind`` (rsa, ec, ed25519; or rsa1024 and ec384,
    which no hub takes), made once per test session."""
    private: Any
    if kind.startswith("rsa"):
        bits = 1024 if kind == "rsa1024" else 2048
        private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    elif kind.startswith("ec"):
        curve = ec.SECP384R1() if kind == "ec384" else ec.SECP256R1()
        private = ec.generate_private_key(curve)
    else:
        private = ed25519.Ed25519PrivateKey.generate()
    return KeyPair(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        private.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        ),
        {**KEY_KINDS, "rsa1024": "RS256", "ec384": "ES384"}[kind],
    )
