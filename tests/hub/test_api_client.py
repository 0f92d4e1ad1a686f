"""The HTTP API's Python client (hub/api_client.py), blocking and asyncio,
against real hubs: typed answers, the API key, the hub's refusals, and
retries only where a retry cannot publish twice: a 503 from a hub whose
redis-server is stopped, connections dropped or left unanswered by a TCP
relay in front of a hub, and a port where nothing listens."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest

from tidings import AsyncHubAPI, HubAPI
from tidings.hub import APIError, Hub, Publication, Published
from tidings.hub.brokers.base import ClientInfo, PresenceStats
from tidings.hub.brokers.redis import RedisBroker

from ..conftest import RedisServer, free_port, wait_for
from .conftest import hub_config

KEY = "the-api-key"
#: Retries fast enough for a test, and enough of them to outlast a Redis
#: restart (the broker reconnects with a backoff of up to 5 s).
PATIENT = {"retries": 1000, "backoff_initial": 0.01, "backoff_max": 0.05}


@pytest.fixture
async def memory_hub() -> AsyncIterator[Callable[..., Awaitable[Hub]]]:
    """``hub = await memory_hub(**config)``: one node on the memory broker."""
    hubs: list[Hub] = []

    async def start(**options: Any) -> Hub:
        hub = Hub(hub_config(**options))
        hubs.append(await hub.start())
        return hub

    yield start
    for hub in hubs:
        await hub.close()


def base(hub: Hub) -> str:
    return f"http://127.0.0.1:{hub.port}"


# -- answers ---------------------------------------------------------------------


async def test_every_method_answers_with_typed_results(
    start_hub: Any, connect: Any, mint: Any
) -> None:
    hub = await start_hub()
    alice = await connect(hub, mint("alice", info={"name": "Alice"}))
    bob = await connect(hub, mint("bob"))
    epoch = (await alice.result("subscribe", channel="chat:room"))["epoch"]
    await bob.result("subscribe", channel="chat:room")
    await bob.result("subscribe", channel="news:x")
    async with AsyncHubAPI(base(hub) + "/") as api:
        assert await api.publish("chat:room", {"n": 1}) == Published(1, epoch)
        offset, _ = await api.publish("chat:room", {"n": 2})
        assert offset == 2
        [on_news, on_chat] = await api.broadcast(["news:x", "chat:room"], "both")
        assert (on_news.offset, on_chat) == (1, Published(3, epoch))
        assert [p["data"] for p in await alice.pubs(3)] == [{"n": 1}, {"n": 2}, "both"]

        present = await api.presence("chat:room")
        assert sorted(present, key=lambda c: c.user) == [
            ClientInfo(alice.client, "alice", {"name": "Alice"}),
            ClientInfo(bob.client, "bob"),
        ]
        assert [c.info for c in present if c.user == "alice"] == [{"name": "Alice"}]
        assert await api.presence_stats("chat:room") == PresenceStats(2, 2)

        history = await api.history("chat:room")
        assert (history.epoch, history.offset, history.complete) == (epoch, 3, True)
        assert history.publications == [
            Publication(1, {"n": 1}),
            Publication(2, {"n": 2}),
            Publication(3, "both"),
        ]
        assert [
            p.data for p in (await api.history("chat:room", limit=1)).publications
        ] == ["both"]
        after = await api.history("chat:room", since=(1, epoch))
        assert [p.offset for p in after.publications] == [2, 3]
        elsewhere = await api.history("chat:room", since=(1, "another epoch"))
        assert (elsewhere.complete, elsewhere.publications) == (False, [])

        assert await api.channels() == {"chat:room": 2, "news:x": 1}
        assert await api.unsubscribe("bob", "chat:room") == 1
        assert await api.channels() == {"chat:room": 1, "news:x": 1}
        assert await api.disconnect("alice") == 1
        assert await alice.closed() == 4003
        assert await api.disconnect("nobody") == 0


async def test_the_blocking_client_answers_the_same(
    start_hub: Any, connect: Any, mint: Any
) -> None:
    hub = await start_hub()
    carol = await connect(hub, mint("carol"))
    epoch = (await carol.result("subscribe", channel="chat:sync"))["epoch"]

    def back_end() -> tuple[Any, ...]:
        with HubAPI(base(hub)) as api:
            published = api.publish("chat:sync", "from a thread")
            broadcast = api.broadcast(["chat:sync"], "again")
            history = api.history("chat:sync", limit=5)
            return (
                published,
                broadcast,
                [p.data for p in history.publications],
                api.presence("chat:sync"),
                api.presence_stats("chat:sync"),
                api.channels(),
                api.unsubscribe("carol", "chat:sync"),
                api.disconnect("carol"),
            )

    # A blocking client blocks its thread: not the loop the hub runs on.
    answers = await asyncio.to_thread(back_end)
    assert answers == (
        Published(1, epoch),
        [Published(2, epoch)],
        ["from a thread", "again"],
        [ClientInfo(carol.client, "carol")],
        PresenceStats(1, 1),
        {"chat:sync": 1},
        1,
        1,
    )
    assert await carol.closed() == 4003


# -- the key and the refusals ------------------------------------------------------


async def test_the_api_key_is_refused_or_accepted(memory_hub: Any) -> None:
    hub = await memory_hub(api_key=KEY)
    for key in (None, "wrong"):
        async with AsyncHubAPI(base(hub), key=key) as api:
            with pytest.raises(APIError) as refused:
                await api.publish("chat:k", 1)
        assert (refused.value.status, refused.value.message) == (
            401,
            "missing or wrong API key",
        )
        assert refused.value.code == 401
    async with AsyncHubAPI(base(hub), key=KEY) as api:
        assert (await api.publish("chat:k", 1)).offset == 1

    def blocking() -> Published:
        with HubAPI(base(hub), key=KEY) as api:
            return api.publish("chat:k", 2)

    assert (await asyncio.to_thread(blocking)).offset == 2


async def test_refusals_raise_api_error_with_the_status_and_the_message(
    memory_hub: Any,
) -> None:
    hub = await memory_hub()
    async with AsyncHubAPI(base(hub)) as api:
        cases: list[tuple[Callable[[], Awaitable[Any]], int, str]] = [
            (lambda: api.publish("nope:x", 1), 404, "unknown namespace in nope:x"),
            (lambda: api.presence("nope:x"), 404, "unknown namespace in nope:x"),
            (lambda: api.publish("bad name", 1), 400, "channel"),
            (lambda: api.broadcast([], 1), 400, "channels must be a non-empty list"),
            (lambda: api.history("chat:x", limit=-1), 400, "limit must be"),
            (lambda: api.disconnect(""), 400, "user must be a non-empty string"),
            (lambda: api.unsubscribe("alice", "nope:x"), 404, "unknown namespace"),
        ]
        for call, status, words in cases:
            with pytest.raises(APIError) as refused:
                await call()
            assert refused.value.status == status, refused.value
            assert words in refused.value.message
    # Not even an HTTP address: the WebSocket endpoint, say.
    with pytest.raises(ValueError, match="http:// or https://"):
        AsyncHubAPI(hub.ws_url)
    # A URL that is not the hub's API: its answer, as an error.
    async with AsyncHubAPI(base(hub) + "/elsewhere") as api:
        with pytest.raises(APIError) as refused:
            await api.publish("chat:x", 1)
        assert (refused.value.status, refused.value.message) == (404, "not found")


# -- retries: a 503 from a real hub -------------------------------------------------


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it stops and starts."""
    server = RedisServer()
    server.start()
    yield server
    server.remove()


async def test_a_503_is_retried_with_a_key_and_not_without(
    own_redis: RedisServer,
) -> None:
    broker = RedisBroker(own_redis.url, prefix=f"t{secrets.token_hex(4)}:")
    hub = await Hub(hub_config(), broker).start()
    try:
        async with AsyncHubAPI(base(hub), **PATIENT) as api:
            own_redis.stop()
            await wait_for(lambda: not broker.status()["ok"], "the broker is down")
            # Without a key a publish is tried once: the 503 is the answer.
            with pytest.raises(APIError) as refused:
                await api.publish("chat:r", "once")
            assert refused.value.status == 503
            assert "redis is unreachable" in refused.value.message
            assert hub.metrics.errors["api_503"] == 1
            # With one, it is tried until the hub can answer; reads too.
            keyed = asyncio.ensure_future(
                api.publish("chat:r", "retried", idempotency_key="order-7")
            )
            read = asyncio.ensure_future(api.history("chat:r"))
            await wait_for(lambda: hub.metrics.errors["api_503"] >= 5, "503s answered")
            assert not keyed.done() and not read.done()
            own_redis.start()
            async with asyncio.timeout(60):
                published, history = await asyncio.gather(keyed, read)
            assert published.offset == 1
            assert history.offset in (0, 1)  # before or after the publish
            after = await api.history("chat:r")
            assert [p.data for p in after.publications] == ["retried"]
    finally:
        await hub.close()


# -- retries: connections dropped or unanswered ---------------------------------------


class Relay:
    """A TCP relay in front of a hub: each connection it accepts is handled
    by the next of ``plan`` (then ``relay``): ``drop`` reads the request
    and closes without an answer, ``hang`` reads it and answers nothing,
    ``relay`` passes the request to the hub (with ``Connection: close``,
    so that every request comes on a connection of its own, to meet the
    next of ``plan``) and its answer back."""

    def __init__(self, hub_port: int, plan: list[str]) -> None:
        self.hub_port = hub_port
        self.plan = plan
        self.accepted: list[str] = []
        self._server: asyncio.Server | None = None
        self._held: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        for writer in self._held:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        action = self.plan.pop(0) if self.plan else "relay"
        self.accepted.append(action)
        if action != "relay":
            await reader.readuntil(b"\r\n\r\n")
            if action == "drop":
                writer.close()
            else:
                self._held.append(writer)
            return
        head = await reader.readuntil(b"\r\n\r\n")
        hub_reader, hub_writer = await asyncio.open_connection(
            "127.0.0.1", self.hub_port
        )
        hub_writer.write(head[:-2] + b"Connection: close\r\n\r\n")

        async def pipe(
            source: asyncio.StreamReader, sink: asyncio.StreamWriter
        ) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, hub_writer), pipe(hub_reader, writer))


@pytest.fixture
async def relay() -> AsyncIterator[Callable[..., Awaitable[tuple[Relay, str]]]]:
    relays: list[Relay] = []

    async def start(hub: Hub, plan: list[str]) -> tuple[Relay, str]:
        one = Relay(hub.port, plan)
        relays.append(one)
        return one, await one.start()

    yield start
    for one in relays:
        await one.close()


async def test_a_dropped_connection_is_retried_with_a_key_and_not_without(
    memory_hub: Any, relay: Any
) -> None:
    hub = await memory_hub()
    front, url = await relay(hub, ["drop"])
    async with AsyncHubAPI(url, backoff_initial=0.01) as api:
        with pytest.raises(httpx.RemoteProtocolError):
            await api.publish("chat:d", "maybe")
        assert front.accepted == ["drop"]
        front.plan[:] = ["drop", "drop"]
        published = await api.publish("chat:d", "surely", idempotency_key="k1")
        assert front.accepted == ["drop", "drop", "drop", "relay"]
        front.plan[:] = ["drop"]
        history = await api.history("chat:d")
        assert front.accepted[-2:] == ["drop", "relay"]
        assert [(p.offset, p.data) for p in history.publications] == [
            (published.offset, "surely")
        ]
        # Never more than ``retries`` times.
        front.plan[:] = ["drop"] * 4
        with pytest.raises(httpx.RemoteProtocolError):
            await api.history("chat:d")
        assert front.accepted[-4:] == ["drop"] * 4 and not front.plan


async def test_a_timeout_is_retried_with_a_key_and_not_without(
    memory_hub: Any, relay: Any
) -> None:
    hub = await memory_hub()
    front, url = await relay(hub, ["hang"])
    async with AsyncHubAPI(url, timeout=0.2, backoff_initial=0.01) as api:
        with pytest.raises(httpx.TimeoutException):
            await api.publish("chat:t", "maybe")
        assert front.accepted == ["hang"]
        front.plan[:] = ["hang"]
        assert (await api.publish("chat:t", 1, idempotency_key="k")).offset == 1
        assert front.accepted == ["hang", "hang", "relay"]

    def blocking() -> Published:
        with HubAPI(url, timeout=0.2, backoff_initial=0.01) as api:
            front.plan[:] = ["hang"]
            with pytest.raises(httpx.TimeoutException):
                api.disconnect("alice")
            front.plan[:] = ["hang", "drop"]
            return api.publish("chat:t", 2, idempotency_key="k2")

    assert (await asyncio.to_thread(blocking)).offset == 2
    assert front.accepted[-4:] == ["hang", "hang", "drop", "relay"]


async def test_a_connection_refused_is_retried_for_any_call() -> None:
    # Nothing was sent: trying again cannot do anything twice.
    tries: list[str] = []

    async def count(request: httpx.Request) -> None:
        tries.append(request.url.path)

    http = httpx.AsyncClient(event_hooks={"request": [count]})
    url = f"http://127.0.0.1:{free_port()}"
    async with (
        http,
        AsyncHubAPI(url, retries=2, backoff_initial=0.01, http_client=http) as api,
    ):
        with pytest.raises(httpx.ConnectError):
            await api.publish("chat:x", 1)
    assert tries == ["/api/publish"] * 3


# -- what lands with other parts of issue 23 -------------------------------------------


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[str, list[tuple[str, Any]]]]:
    """A stand-in for the endpoints that other branches add to the hub (its
    answers as docs/protocol.md gives them), recording each request: the
    client's side of them, tested before the hub's side is here."""
    seen: list[tuple[str, Any]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        length = next(
            int(line.split(":")[1])
            for line in head.split("\r\n")
            if line.lower().startswith("content-length:")
        )
        body = json.loads(await reader.readexactly(length))
        path = head.split()[1]
        seen.append((path, body))
        answer = {
            "/api/publish": {"offset": 4, "epoch": "e"},
            "/api/broadcast": {
                "results": [{"channel": "chat:a", "offset": 4, "epoch": "e"}]
            },
            "/api/subscribe": {"subscribed": 2},
        }[path]
        data = json.dumps(answer).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(data), data)
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", seen
    server.close()
    await server.wait_closed()


async def test_the_idempotency_key_and_subscribe_as_sent(recorder: Any) -> None:
    url, seen = recorder
    async with AsyncHubAPI(url) as api:
        assert await api.publish("chat:a", 1, idempotency_key="k" * 64) == (4, "e")
        assert await api.broadcast(["chat:a"], 1, idempotency_key="b") == [(4, "e")]
        assert await api.subscribe("alice", "chat:a") == 2
        assert await api.subscribe("alice", "chat:a", since=(3, "e")) == 2
    assert seen == [
        ("/api/publish", {"channel": "chat:a", "data": 1, "idempotency_key": "k" * 64}),
        ("/api/broadcast", {"channels": ["chat:a"], "data": 1, "idempotency_key": "b"}),
        ("/api/subscribe", {"user": "alice", "channel": "chat:a"}),
        (
            "/api/subscribe",
            {
                "user": "alice",
                "channel": "chat:a",
                "since": {"offset": 3, "epoch": "e"},
            },
        ),
    ]


async def test_a_publish_sent_twice_with_its_key_is_made_once(
    start_hub: Any,
) -> None:
    hub = await start_hub()
    async with AsyncHubAPI(base(hub)) as api:
        first = await api.publish("chat:i", "once", idempotency_key="order-1")
        assert await api.publish("chat:i", "once", idempotency_key="order-1") == first
        [again] = await api.broadcast(["chat:i"], "x", idempotency_key="order-1")
        assert again == first
        history = await api.history("chat:i")
        assert [p.data for p in history.publications] == ["once"]


async def test_subscribe_reaches_the_user_on_every_node(
    start_hub: Any, connect: Any, mint: Any
) -> None:
    hub = await start_hub()
    peers = [await connect(hub, mint("dora")) for _ in range(2)]
    async with AsyncHubAPI(base(hub)) as api:
        assert await api.subscribe("dora", "news:s") == 2
        for peer in peers:
            push = await peer.push()
            assert push["channel"] == "news:s" and "subscribe" in push
        offset, _ = await api.publish("news:s", "hello")
        for peer in peers:
            assert [(p["offset"], p["data"]) for p in await peer.pubs(1)] == [
                (offset, "hello")
            ]


async def test_both_clients_keep_one_connection_to_tidings_serve(
    memory_hub: Any,
) -> None:
    # The hub answers its API with HTTP/1.1 keep-alive: a back end's calls
    # reuse one connection rather than paying a TCP handshake each.
    hub = await memory_hub()
    server = hub._server
    assert server is not None
    seen: set[Any] = set()
    async with AsyncHubAPI(base(hub)) as api:
        for i in range(5):
            await api.publish("chat:kept", i)
            seen |= server.connections
    assert len(seen) == 1
    seen.clear()

    with HubAPI(base(hub)) as blocking:
        for i in range(5):
            await asyncio.to_thread(blocking.publish, "chat:kept", i)
            seen |= server.connections
    assert len(seen) == 1
    assert (await hub.history("chat:kept")).offset == 10
