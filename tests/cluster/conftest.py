"""Fixtures of the cluster tests: real ``tidings serve`` processes on one real
``redis-server``, raw protocol peers, and a plain HTTP client.

Every Redis is a test's own (``redis_factory``), so channels start at offset
0 and the hub's ``tidings:`` keys and live-node list hold only this test's
nodes. Every wait is bounded: nothing here sleeps for a fixed time to let
something happen.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import tidings

from ..conftest import HTTPAnswer, Peer, RedisServer, http_request

#: Seconds: the bound of every single wait in these tests.
BOUND = 20
SECRET = "a cluster test secret that is 32+ bytes"

#: The nodes' configuration file. The rate limit is lifted so that one
#: connection may publish thousands of times at once.
CONFIG = """\
rate_limit = 1000000.0
rate_burst = 100000

[namespaces.chat]
allow_anonymous = true
allow_publish = true
history_size = 5000
history_ttl = 600
presence = true
join_leave = true
"""


# -- Redis --------------------------------------------------------------------


RedisFactory = Callable[..., RedisServer]


@pytest.fixture
def redis_factory() -> Iterator[RedisFactory]:
    """``server = redis_factory(persistent=False)``: a started redis-server
    of this test's own, removed after the test."""
    servers: list[RedisServer] = []

    def make(*, persistent: bool = False) -> RedisServer:
        server = RedisServer(persistent=persistent)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.remove()


@pytest.fixture
def redis(redis_factory: RedisFactory) -> RedisServer:
    """A started redis-server without persistence, this test's own."""
    return redis_factory()


# -- nodes --------------------------------------------------------------------


class Node:
    """One ``tidings serve`` process."""

    def __init__(
        self, name: str, proc: asyncio.subprocess.Process, log: Path, port: int
    ) -> None:
        self.name = name
        self.proc = proc
        self.log = log
        self.port = port
        self.ws_url = f"ws://127.0.0.1:{port}/ws"
        #: True once the test killed it on purpose (SIGKILL).
        self.killed = False

    def __repr__(self) -> str:
        return f"<node {self.name} :{self.port} pid {self.proc.pid}>"

    def stderr(self) -> str:
        """What the node logged, for failure messages."""
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    async def kill(self) -> None:
        """SIGKILL: the node dies without closing anything."""
        self.killed = True
        if self.proc.returncode is None:
            self.proc.kill()
        async with asyncio.timeout(BOUND):
            await self.proc.wait()

    async def terminate(self) -> int:
        """SIGTERM, then wait (bounded) for the exit status; SIGKILL and
        raise if it does not stop."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(BOUND):
                return await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(
                f"{self!r} did not stop within {BOUND} s of SIGTERM:\n{self.stderr()}"
            ) from None


async def http(node: Node, method: str, path: str, body: Any = None) -> HTTPAnswer:
    """One HTTP request to ``node`` (the API is open on loopback)."""
    return await http_request(node.port, method, path, body, timeout=BOUND)


async def api(node: Node, method: str, path: str, body: Any = None) -> Any:
    """An HTTP API call that must succeed; its JSON answer."""
    answer = await http(node, method, path, body)
    assert answer.status == 200, answer
    return answer.json()


class Cluster:
    """Starts nodes and peers; stops them all after the test."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.config = tmp_path / "hub.toml"
        self.config.write_text(CONFIG)
        self.nodes: list[Node] = []
        self.peers: list[Peer] = []
        self.names = (chr(c) for c in range(ord("A"), ord("Z") + 1))

    async def start_node(self, broker: str, *args: str) -> Node:
        name = next(self.names)
        log = self.tmp_path / f"node-{name}.log"
        with log.open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tidings",
                "serve",
                "--broker",
                broker,
                "--port",
                "0",
                "--no-demo",
                "--config",
                str(self.config),
                "--secret",
                SECRET,
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        node = Node(name, proc, log, 0)
        self.nodes.append(node)
        assert proc.stdout is not None
        # "tidings hub running at http://127.0.0.1:PORT/", then
        # "  WebSocket endpoint: ws://127.0.0.1:PORT/ws" (more lines may
        # follow: nothing else is read from stdout).
        async with asyncio.timeout(BOUND):
            line = (await proc.stdout.readline()).decode()
            second = (await proc.stdout.readline()).decode()
        prefix = "tidings hub running at http://127.0.0.1:"
        assert line.startswith(prefix), (line, node.stderr())
        assert second.strip().startswith("WebSocket endpoint: ws://"), second
        node.port = int(line[len(prefix) :].strip().rstrip("/"))
        node.ws_url = f"ws://127.0.0.1:{node.port}/ws"
        return node

    async def start(
        self,
        n: int,
        redis: RedisServer,
        *,
        presence_ttl: float | None = None,
        api_key: str | None = None,
    ) -> list[Node]:
        """Start ``n`` nodes on ``redis`` at once."""
        args = [] if presence_ttl is None else ["--presence-ttl", str(presence_ttl)]
        if api_key is not None:
            args += ["--api-key", api_key]
        return list(
            await asyncio.gather(*(self.start_node(redis.url, *args) for _ in range(n)))
        )

    async def connect(
        self, node: Node, token: str | None = None, *, hello: bool = True
    ) -> Peer:
        """A raw peer on ``node`` that has sent connect (unless ``hello``
        is false)."""
        async with asyncio.timeout(BOUND):
            ws = await tidings.connect(node.ws_url)
        peer = Peer(ws, node)
        peer.bound = BOUND
        self.peers.append(peer)
        if hello:
            fields = {} if token is None else {"token": token}
            result = await peer.result("connect", **fields)
            peer.client, peer.user = result["client"], result["user"]
        return peer

    async def close(self) -> None:
        async with asyncio.timeout(BOUND):
            await asyncio.gather(
                *(peer.ws.close() for peer in self.peers), return_exceptions=True
            )
        statuses = await asyncio.gather(
            *(node.terminate() for node in self.nodes), return_exceptions=True
        )
        for node, status in zip(self.nodes, statuses, strict=True):
            if isinstance(status, BaseException):
                raise status
            if not node.killed:
                assert status == 0, f"{node!r} exited with {status}:\n{node.stderr()}"


@pytest.fixture
async def cluster(
    redis_factory: RedisFactory, tmp_path: Path
) -> AsyncIterator[Cluster]:
    """Starts ``tidings serve`` nodes and raw peers; after the test, closes
    the peers, then SIGTERMs the nodes and waits for them (bounded)."""
    # redis_factory is set up first, so its servers outlive the nodes.
    del redis_factory
    cluster = Cluster(tmp_path)
    try:
        yield cluster
    finally:
        await cluster.close()
