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
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import tidings
from tidings.hub import Broker, Hub, HubConfig, MemoryBroker, NamespaceConfig
from tidings.hub import mint_token as _mint_token
from tidings.hub.brokers.base import Push
from tidings.hub.brokers.memory import MemoryBackend

from ..conftest import HTTPAnswer, Peer, http_request

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


#: The folder of proxy_backend.py.
HERE = Path(__file__).parent


class Backend:
    """The back end of proxy_backend.py under uvicorn, in a process of its
    own, and what the tests ask of it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        # uvicorn takes the listening socket: connections wait in the
        # kernel until it accepts, so no wait for it to be ready.
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--app-dir",
                str(HERE),
                "--fd",
                str(self.sock.fileno()),
                "--log-level",
                "warning",
                "proxy_backend:app",
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
