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
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

import tidings
from tidings.hub import Broker, Hub, HubConfig, MemoryBroker, NamespaceConfig
from tidings.hub import mint_token as _mint_token
from tidings.hub.brokers.base import Push
from tidings.hub.brokers.memory import MemoryBackend

from ..conftest import Backend, HTTPAnswer, Peer, hooks_at, http_request

BOUND = 10  # seconds: every wait in these tests is bounded
SECRET = "a test secret that is 32+ bytes long"

#: Broker kinds: the backend, and how many nodes share it.
BROKERS = {"memory": 1, "memory-3-nodes": 3, "redis": 1, "redis-3-nodes": 3}
#: Kinds that only the tests that name them run on: a Redis Cluster of three
#: masters (the test session's).
CLUSTER_BROKERS = {"cluster": 1, "cluster-3-nodes": 3}


class Brokers:
    """Makes brokers of one kind on one fresh backend: a new
    :class:`MemoryBackend`, or a key prefix of its own on the test
    session's Redis (or Redis Cluster), so that every channel starts at
    offset 0."""

    def __init__(self, kind: str, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self.nodes = {**BROKERS, **CLUSTER_BROKERS}[kind]
        self.memory = MemoryBackend()
        self.redis_url = ""
        self.prefix = f"t{secrets.token_hex(4)}:"
        if kind.startswith("redis"):
            self.redis_url = request.getfixturevalue("redis_server").url
        if kind.startswith("cluster"):
            self.redis_url = request.getfixturevalue("redis_cluster").url

    def __call__(self) -> Broker:
        if not self.redis_url:
            return MemoryBroker(self.memory)
        from tidings.hub.brokers.cluster import ClusterBroker
        from tidings.hub.brokers.redis import RedisBroker

        if self.kind.startswith("cluster"):
            return ClusterBroker(self.redis_url, prefix=self.prefix)
        return RedisBroker(self.redis_url, prefix=self.prefix)


#: On a test: run it on three nodes on the Redis Cluster too.
ALSO_ON_CLUSTER = pytest.mark.parametrize(
    "brokers", [*BROKERS, "cluster-3-nodes"], indirect=True
)


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
        peer.bound = BOUND
        peers.append(peer)
        if hello:
            fields = {} if token is None else {"token": token}
            peer.client = (await peer.result("connect", **fields))["client"]
        return peer

    yield open_peer
    async with asyncio.timeout(BOUND):
        await asyncio.gather(*(peer.ws.close() for peer in peers))


@pytest.fixture
async def streams() -> AsyncIterator[list[Any]]:
    """Event streams (test_transports.py's ``Stream``) to close after the
    test."""
    opened: list[Any] = []
    yield opened
    for stream in opened:
        stream.close()


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
        if key is not None:
            headers = (*headers, ("Authorization", f"apikey {key}"))
        return await http_request(
            hub.port, method, path, body, headers=headers, timeout=BOUND
        )

    return request


class Recorder:
    """A node, as far as a broker can tell: it records what the broker
    delivers, and lets a test wait for it."""

    def __init__(self) -> None:
        self.pushes: list[Push] = []
        self.controls: list[dict[str, Any]] = []
        self.reconnected = 0
        self._changed = asyncio.Event()

    def on_push(self, push: Push) -> None:
        self.pushes.append(push)
        self._changed.set()

    def on_control(self, message: dict[str, Any]) -> None:
        self.controls.append(message)
        self._changed.set()

    def on_reconnected(self) -> None:
        self.reconnected += 1
        self._changed.set()

    async def until(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(BOUND):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


HOOKED_NAMESPACES = {
    # The application decides subscribes and publishes here.
    "room": NamespaceConfig(
        subscribe_proxy=True,
        publish_proxy=True,
        history_size=100,
        history_ttl=600,
        presence=True,
        join_leave=True,
    ),
    # Tokens and namespace options, as without hooks.
    "news": NamespaceConfig(allow_anonymous=True, history_size=10, history_ttl=600),
}


@pytest.fixture
async def start_hooked(backend: Backend) -> AsyncIterator[Any]:
    """``hub = await start(**proxy_options)``: a hub whose hooks are the
    back end's; the back end's script and calls are reset."""
    await backend.script()
    await http_request(backend.port, "DELETE", "/calls")
    hubs: list[Hub] = []

    async def start_hub(config: dict[str, Any] | None = None, **options: Any) -> Hub:
        hub = Hub(
            HubConfig(
                port=0,
                demo=False,
                secret=SECRET,
                namespaces=HOOKED_NAMESPACES,
                proxy=hooks_at(backend, **options),
                **(config or {}),
            )
        )
        hubs.append(await hub.start())
        return hub

    yield start_hub
    for hub in hubs:
        await hub.close()


def as_user(user: str, **result: Any) -> dict[str, Any]:
    """A connect command's data that the back end's default connect answer
    turns into its result."""
    return {"result": {"user": user, **result}}
