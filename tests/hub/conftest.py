"""Fixtures of the hub tests: a hub per broker kind, WebSocket peers that
speak the hub's JSON protocol, and a plain HTTP client for the API.

Every test that takes ``start_hub`` runs four times: on the memory broker
and on a real Redis, each as one node and as three nodes on one backend.
With three nodes, ``start_hub`` starts the two others beside the hub it
returns, and ``connect`` spreads the peers over the nodes in turn (the
first on the hub returned), so that every publication, presence list and
recovery crosses nodes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

import tidings
from tidings import ConnectionClosed, WebSocket
from tidings.hub import Broker, Hub, HubConfig, MemoryBroker, NamespaceConfig
from tidings.hub import mint_token as _mint_token
from tidings.hub.brokers.memory import MemoryBackend

BOUND = 10  # seconds: every wait in these tests is bounded
SECRET = "a test secret that is 32+ bytes long"

#: Broker kinds: the backend, and how many nodes share it.
BROKERS = {"memory": 1, "memory-3-nodes": 3, "redis": 1, "redis-3-nodes": 3}


class Brokers:
    """Makes brokers of one kind on one fresh backend: a new
    :class:`MemoryBackend`, or a key prefix of its own on the test
    session's Redis, so that every channel starts at offset 0."""

    def __init__(self, kind: str, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self.nodes = BROKERS[kind]
        self.memory = MemoryBackend()
        self.redis_url = ""
        self.prefix = f"t{secrets.token_hex(4)}:"
        if kind.startswith("redis"):
            self.redis_url = request.getfixturevalue("redis_server").url

    def __call__(self) -> Broker:
        if not self.redis_url:
            return MemoryBroker(self.memory)
        from tidings.hub.brokers.redis import RedisBroker

        return RedisBroker(self.redis_url, prefix=self.prefix)


@pytest.fixture(params=list(BROKERS))
def brokers(request: pytest.FixtureRequest) -> Brokers:
    """Brokers of each kind, each sharing its backend with the others."""
    return Brokers(request.param, request)


@pytest.fixture
def broker(brokers: Brokers) -> Broker:
    """A fresh broker of each kind; the hub that gets it starts and closes it."""
    return brokers()


#: A hub -> the nodes of its hub, in the order ``connect`` uses them.
CLUSTERS: dict[Hub, list[Hub]] = {}


NAMESPACES = {
    # Anyone may subscribe and publish; history, presence, join and leave.
    "chat": NamespaceConfig(
        allow_anonymous=True,
        allow_publish=True,
        history_size=1000,
        history_ttl=600,
        presence=True,
        join_leave=True,
    ),
    # Anyone may subscribe; only the HTTP API (or a publish claim) publishes.
    "news": NamespaceConfig(allow_anonymous=True, history_size=100, history_ttl=600),
    # Token holders only.
    "private": NamespaceConfig(allow_publish=True, history_size=100, history_ttl=600),
    # A short history, for recovery that fails.
    "short": NamespaceConfig(
        allow_anonymous=True, allow_publish=True, history_size=10, history_ttl=600
    ),
    # No history: bulk data that the hub must not keep.
    "bulk": NamespaceConfig(allow_anonymous=True, allow_publish=True),
    "small": NamespaceConfig(
        allow_anonymous=True, allow_publish=True, max_subscribers=2
    ),
}


def hub_config(**options: Any) -> HubConfig:
    """A test hub's configuration: loopback, a free port, no demo."""
    defaults: dict[str, Any] = {
        "port": 0,
        "demo": False,
        "secret": SECRET,
        "api_key": None,
        "namespaces": NAMESPACES,
    }
    return HubConfig(**{**defaults, **options})


StartHub = Callable[..., Awaitable[Hub]]


@pytest.fixture
async def start_hub(brokers: Brokers) -> AsyncIterator[StartHub]:
    """``hub = await start_hub(**config)``: a running hub of the ``brokers``
    kind, with the other nodes of its kind beside it (``broker=`` gives a
    broker of its own, as one node); all closed after the test."""
    hubs: list[Hub] = []

    async def start(broker: Broker | None = None, **options: Any) -> Hub:
        given = broker is not None
        hub = Hub(hub_config(**options), broker or brokers())
        hubs.append(hub)
        await hub.start()
        nodes = [hub]
        if not given:
            for _ in range(brokers.nodes - 1):
                other = Hub(hub_config(**{**options, "port": 0}), brokers())
                hubs.append(other)
                nodes.append(await other.start())
        CLUSTERS[hub] = nodes
        return hub

    yield start
    async with asyncio.timeout(BOUND):
        for hub in hubs:
            CLUSTERS.pop(hub, None)
            await hub.close()


@pytest.fixture
def mint() -> Callable[..., str]:
    """``mint(user, channels=..., publish=..., ttl=...)``: a token for the
    test hubs' secret."""

    def mint(user: str, **claims: Any) -> str:
        return _mint_token(SECRET, user, **claims)

    return mint


class Peer:
    """A hub client written from docs/protocol.md alone: JSON commands with
    ids, replies matched by id, pushes kept in order on the side."""

    def __init__(self, ws: WebSocket, hub: Hub) -> None:
        self.ws = ws
        #: The node this peer is connected to.
        self.hub = hub
        self.ids = itertools.count(1)
        self.pushes: deque[dict[str, Any]] = deque()
        self.client = ""

    async def send(self, message: Any) -> None:
        await self.ws.send(message if isinstance(message, str) else json.dumps(message))

    async def recv(self) -> dict[str, Any]:
        async with asyncio.timeout(BOUND):
            message = await self.ws.recv()
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

    async def push(self) -> dict[str, Any]:
        """The next push."""
        if self.pushes:
            return self.pushes.popleft()
        message = await self.recv()
        assert "id" not in message, message
        return message

    async def pubs(self, n: int, channel: str | None = None) -> list[dict[str, Any]]:
        """The next ``n`` publications (of ``channel``), skipping joins and
        leaves."""
        out = []
        while len(out) < n:
            push = await self.push()
            if "pub" in push and (channel is None or push["channel"] == channel):
                out.append(push["pub"])
        return out

    async def closed(self) -> int:
        """Read until the hub closes the connection; return the close code."""
        async with asyncio.timeout(BOUND):
            try:
                while True:
                    await self.ws.recv()
            except ConnectionClosed as exc:
                return exc.code


Connect = Callable[..., Awaitable[Peer]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """``peer = await connect(hub, token=None, query="", hello=True,
    node=None)``: a WebSocket to the hub (to ``node``, or to its nodes in
    turn) that has sent connect (unless ``hello`` is false). Other keywords
    go to tidings.connect. Closed after the test."""
    peers: list[Peer] = []
    turns: dict[Hub, itertools.cycle[Hub]] = {}

    async def open_peer(
        hub: Hub,
        token: str | None = None,
        *,
        query: str = "",
        hello: bool = True,
        node: Hub | None = None,
        **options: Any,
    ) -> Peer:
        if node is None:
            if hub not in turns:
                turns[hub] = itertools.cycle(CLUSTERS.get(hub, [hub]))
            node = next(turns[hub])
        url = f"ws://127.0.0.1:{node.port}/ws" + (f"?{query}" if query else "")
        async with asyncio.timeout(BOUND):
            ws = await tidings.connect(url, **options)
        peer = Peer(ws, node)
        peers.append(peer)
        if hello:
            fields = {} if token is None else {"token": token}
            peer.client = (await peer.result("connect", **fields))["client"]
        return peer

    yield open_peer
    async with asyncio.timeout(BOUND):
        await asyncio.gather(*(peer.ws.close() for peer in peers))


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
        assert self.headers["content-type"] == "application/json"
        return json.loads(self.body)


HTTP = Callable[..., Awaitable[HTTPAnswer]]


@pytest.fixture
def http() -> HTTP:
    """``answer = await http(hub, method, path, body=None, key=None)``; a
    ``body`` other than bytes is sent as JSON."""

    async def request(
        hub: Hub,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> HTTPAnswer:
        data = (
            b""
            if body is None
            else body
            if isinstance(body, bytes)
            else json.dumps(body).encode()
        )
        fields = [("Host", "127.0.0.1"), *headers]
        if key is not None:
            fields.append(("Authorization", f"apikey {key}"))
        if data:
            fields.append(("Content-Length", str(len(data))))
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in fields
        )
        async with asyncio.timeout(BOUND):
            reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
            try:
                writer.write(head.encode() + b"\r\n" + data)
                raw = await reader.read()
            finally:
                writer.close()
        return HTTPAnswer(raw)

    return request
