"""Several ``tidings serve --broker redis://...`` processes on one real
``redis-server`` act as one hub: publications, ordering, recovery, presence,
the HTTP API's surveys, a node killed, and Redis restarted under load.

Every node, peer and Redis here is real: subprocesses and sockets on
127.0.0.1 (fixtures in conftest.py). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import pytest

from tidings.hub import Client, Publication, RecoveryFailed, Subscription, mint_token
from tidings.hub.app import SURVEY_TIMEOUT
from tidings.protocol import State

from ..conftest import Peer, RedisServer, wait_for
from .conftest import BOUND, SECRET, Cluster, Node, RedisFactory, api, http


class Progress:
    """State that one task changes and another waits on, bounded."""

    def __init__(self) -> None:
        self.condition = asyncio.Condition()

    async def changed(self) -> None:
        async with self.condition:
            self.condition.notify_all()

    async def until(
        self, predicate: Callable[[], bool], what: str, timeout: float = BOUND
    ) -> None:
        try:
            async with asyncio.timeout(timeout), self.condition:
                await self.condition.wait_for(predicate)
        except TimeoutError:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what}"
            ) from None


def offsets(pubs: list[dict[str, Any]]) -> list[int]:
    return [pub["offset"] for pub in pubs]


async def presence_of(node: Node, channel: str) -> set[str]:
    """The client ids ``/api/presence`` on ``node`` lists."""
    answer = await api(node, "GET", f"/api/presence?channel={channel}")
    return {entry["client"] for entry in answer["clients"]}


async def next_push(peer: Peer) -> dict[str, Any]:
    """The next push other than a join or a leave."""
    for _ in range(1000):
        push = await peer.push()
        if "join" not in push and "leave" not in push:
            return push
    raise AssertionError("only joins and leaves")


# -- 1. fan-out across nodes --------------------------------------------------


async def test_publications_on_one_node_reach_subscribers_on_the_others(
    cluster: Cluster, redis: RedisServer
) -> None:
    a, b, c = await cluster.start(3, redis)
    channel = "chat:fanout"
    subscribers = [await cluster.connect(a), await cluster.connect(b)]
    epochs = {
        (await peer.result("subscribe", channel=channel))["epoch"]
        for peer in subscribers
    }
    assert len(epochs) == 1, epochs
    (epoch,) = epochs

    # Through the wire protocol: a client of C publishes.
    publisher = await cluster.connect(c)
    reply = await publisher.result("publish", channel=channel, data={"text": "hi"})
    assert reply == {"offset": 1, "epoch": epoch}
    # Through C's HTTP API: no info.
    answer = await api(c, "POST", "/api/publish", {"channel": channel, "data": [2]})
    assert answer == {"offset": 2, "epoch": epoch}

    for peer in subscribers:
        assert await peer.pubs(2, channel) == [
            {
                "offset": 1,
                "epoch": epoch,
                "data": {"text": "hi"},
                "info": {"client": publisher.client, "user": ""},
            },
            {"offset": 2, "epoch": epoch, "data": [2]},
        ], peer


# -- 2. one order for concurrent publishers -----------------------------------


async def test_concurrent_publishers_on_every_node_give_everyone_one_order(
    cluster: Cluster, redis: RedisServer
) -> None:
    nodes = await cluster.start(3, redis)
    channel = "chat:order"
    per_publisher = 1000
    total = per_publisher * len(nodes)
    subscribers = [await cluster.connect(node) for node in nodes for _ in range(2)]
    epochs = {
        (await peer.result("subscribe", channel=channel))["epoch"]
        for peer in subscribers
    }
    assert len(epochs) == 1, epochs
    (epoch,) = epochs
    publishers = [await cluster.connect(node) for node in nodes]
    readers = [asyncio.create_task(peer.pubs(total, channel)) for peer in subscribers]

    datas = [
        [{"by": i, "n": n} for n in range(per_publisher)]
        for i in range(len(publishers))
    ]
    results = await asyncio.gather(
        *(
            peer.publish_many(channel, data)
            for peer, data in zip(publishers, datas, strict=True)
        )
    )

    # Every publication got its own offset: 1..3000 once each.
    published: dict[int, tuple[Any, str]] = {}
    for peer, data, result in zip(publishers, datas, results, strict=True):
        for item, reply in zip(data, result, strict=True):
            assert reply["epoch"] == epoch, reply
            assert reply["offset"] not in published, reply
            published[reply["offset"]] = (item, peer.client)
    assert sorted(published) == list(range(1, total + 1))

    async with asyncio.timeout(BOUND):
        received = await asyncio.gather(*readers)
    for peer, pubs in zip(subscribers, received, strict=True):
        assert offsets(pubs) == list(range(1, total + 1)), peer
        for pub in pubs:
            data, client = published[pub["offset"]]
            assert pub == {
                "offset": pub["offset"],
                "epoch": epoch,
                "data": data,
                "info": {"client": client, "user": ""},
            }, (peer, pub)


# -- 3. recovery on another node -----------------------------------------------


async def test_a_client_that_drops_recovers_on_another_node_without_gap(
    cluster: Cluster, redis: RedisServer
) -> None:
    a, b, c = await cluster.start(3, redis)
    channel = "chat:recover"
    x, y = await cluster.connect(a), await cluster.connect(a)
    epoch = (await x.result("subscribe", channel=channel))["epoch"]
    assert (await y.result("subscribe", channel=channel))["epoch"] == epoch
    for n in range(1, 6):
        await api(b, "POST", "/api/publish", {"channel": channel, "data": n})
    for peer in (x, y):
        assert [p["data"] for p in await peer.pubs(5, channel)] == [1, 2, 3, 4, 5]
        peer.ws.drop()  # gone without a word from A's point of view
        await peer.closed()

    # 100 publications on B while x and y are away.
    publisher = await cluster.connect(b)
    missed = [{"missed": n} for n in range(100)]
    replies = await publisher.publish_many(channel, missed)
    assert [r["offset"] for r in replies] == list(range(6, 106))

    # x comes back on C: exactly those 100, recovered.
    x2 = await cluster.connect(c)
    since = {"offset": 5, "epoch": epoch}
    result = await x2.result("subscribe", channel=channel, since=since)
    assert result["recovered"] is True, result
    assert (result["epoch"], result["offset"]) == (epoch, 105)
    who = {"client": publisher.client, "user": ""}
    assert result["publications"] == [
        {"offset": 6 + n, "data": data, "info": who} for n, data in enumerate(missed)
    ]

    # y comes back on C while B keeps publishing: the reply and the pushes
    # after it join up with no gap and no duplicate.
    later = [{"later": n} for n in range(50)]
    publishing = asyncio.create_task(publisher.publish_many(channel, later))
    y2 = await cluster.connect(c)
    result = await y2.result("subscribe", channel=channel, since=since)
    assert result["recovered"] is True and result["epoch"] == epoch, result
    recovered = result["publications"]
    assert offsets(recovered) == list(range(6, result["offset"] + 1))
    live = await y2.pubs(155 - result["offset"], channel)
    assert offsets(live) == list(range(result["offset"] + 1, 156))
    async with asyncio.timeout(BOUND):
        replies = await publishing
    assert [r["offset"] for r in replies] == list(range(106, 156))
    expected = [*missed, *later]
    assert [p["data"] for p in recovered + live] == expected

    # x gets the later ones live.
    live = await x2.pubs(50, channel)
    assert offsets(live) == list(range(106, 156))
    assert [p["data"] for p in live] == later
    assert all(p["epoch"] == epoch for p in live)


# -- 4. presence across nodes, and a node killed -----------------------------


async def test_presence_spans_nodes_and_a_killed_nodes_clients_expire_and_recover(
    cluster: Cluster, redis: RedisServer
) -> None:
    ttl = 1.5
    a, b, c = await cluster.start(3, redis, presence_ttl=ttl)
    channel = "chat:presence"
    peers = [await cluster.connect(node) for node in (a, b, c)]
    pa, pb, pc = peers
    epoch = ""
    for peer in peers:
        epoch = (await peer.result("subscribe", channel=channel))["epoch"]
    everyone = {peer.client for peer in peers}
    for node in (a, b, c):
        assert await presence_of(node, channel) == everyone, node
    for peer in peers:
        result = await peer.result("presence", channel=channel)
        assert {entry["client"] for entry in result["clients"]} == everyone, peer
        assert {entry["user"] for entry in result["clients"]} == {""}

    for n in range(1, 4):
        await api(b, "POST", "/api/publish", {"channel": channel, "data": n})
    for peer in peers:
        assert offsets(await peer.pubs(3, channel)) == [1, 2, 3]

    await a.kill()
    killed_at = time.monotonic()
    assert await pa.closed() == 1006  # no close frame from a dead node

    # Published while pa has no node.
    for n in range(4, 24):
        await api(c, "POST", "/api/publish", {"channel": channel, "data": n})

    async def pa_gone() -> bool:
        return pa.client not in await presence_of(b, channel)

    await wait_for(pa_gone, "the killed node's client to leave presence")
    gone_after = time.monotonic() - killed_at
    assert gone_after <= ttl + 1.0, gone_after
    assert await presence_of(c, channel) == {pb.client, pc.client}

    # pa comes back on B and recovers what it missed, then goes on live.
    pa2 = await cluster.connect(b)
    since = {"offset": 3, "epoch": epoch}
    result = await pa2.result("subscribe", channel=channel, since=since)
    assert result["recovered"] is True, result
    assert (result["epoch"], result["offset"]) == (epoch, 23)
    assert [p["data"] for p in result["publications"]] == list(range(4, 24))
    assert offsets(result["publications"]) == list(range(4, 24))
    await pb.result("publish", channel=channel, data=24)
    assert await pa2.pubs(1, channel) == [
        {
            "offset": 24,
            "epoch": epoch,
            "data": 24,
            "info": {"client": pb.client, "user": ""},
        }
    ]
    # The others lost nothing either.
    for peer in (pb, pc):
        pubs = await peer.pubs(21, channel)
        assert offsets(pubs) == list(range(4, 25)), peer
        assert [p["data"] for p in pubs] == list(range(4, 25))
    for node in (b, c):
        assert await presence_of(node, channel) == {pa2.client, pb.client, pc.client}
        # The dead node's heartbeat expired with its presence entries: the
        # surveys no longer wait for it.
        start = time.monotonic()
        assert await api(node, "GET", "/api/channels") == {
            "channels": [{"channel": channel, "subscribers": 3}]
        }
        assert time.monotonic() - start < SURVEY_TIMEOUT


async def test_presence_info_spans_nodes_and_outlives_a_killed_node(
    cluster: Cluster, redis: RedisServer
) -> None:
    a, b = await cluster.start(2, redis, presence_ttl=1.5)
    channel = "chat:info"
    alice_info, bob_info = {"name": "Alice", "avatar": "/a.png"}, ["Bob", 2]
    alice = await cluster.connect(a, mint_token(SECRET, "alice", info=alice_info))
    bob = await cluster.connect(b, mint_token(SECRET, "bob", info=bob_info))
    alice_json = {"client": alice.client, "user": "alice", "info": alice_info}
    bob_json = {"client": bob.client, "user": "bob", "info": bob_info}
    await alice.result("subscribe", channel=channel)
    assert await alice.push() == {"channel": channel, "join": alice_json}
    await bob.result("subscribe", channel=channel)
    # Each learns of the other, with its info, across the nodes.
    assert await alice.push() == {"channel": channel, "join": bob_json}
    assert await bob.push() == {"channel": channel, "join": bob_json}
    clients = (await alice.result("presence", channel=channel))["clients"]
    assert sorted(clients, key=lambda c: c["user"]) == [alice_json, bob_json]
    assert await bob.result("presence_stats", channel=channel) == {
        "clients": 2,
        "users": 2,
    }
    await a.kill()

    async def only_bob() -> bool:
        answer = await api(b, "GET", f"/api/presence?channel={channel}")
        return bool(answer["clients"] == [bob_json])

    await wait_for(only_bob, "the killed node's client to leave presence")
    assert await bob.result("presence_stats", channel=channel) == {
        "clients": 1,
        "users": 1,
    }
    # Alice comes back on B with her info; Bob sees her join again.
    again = await cluster.connect(b, mint_token(SECRET, "alice", info=alice_info))
    await again.result("subscribe", channel=channel)
    assert await bob.push() == {
        "channel": channel,
        "join": {**alice_json, "client": again.client},
    }


# -- 5. /api/disconnect reaches every node --------------------------------------


async def test_api_disconnect_on_one_node_closes_the_users_connections_on_all(
    cluster: Cluster, redis: RedisServer
) -> None:
    a, b, c = await cluster.start(3, redis)
    channel = "chat:disconnect"
    alice, bob = mint_token(SECRET, "alice"), mint_token(SECRET, "bob")
    alices = [await cluster.connect(node, alice) for node in (a, a, b, c)]
    bobs = [await cluster.connect(node, bob) for node in (a, b)]
    for peer in alices + bobs:
        await peer.result("subscribe", channel=channel)
    assert {peer.user for peer in alices} == {"alice"}
    assert {peer.user for peer in bobs} == {"bob"}

    start = time.monotonic()
    answer = await api(c, "POST", "/api/disconnect", {"user": "alice"})
    assert answer == {"disconnected": 4}
    assert time.monotonic() - start < SURVEY_TIMEOUT  # every node answered
    for peer in alices:
        assert await peer.closed() == 4003, peer

    # Bob's connections are untouched, on every node.
    await api(b, "POST", "/api/publish", {"channel": channel, "data": "still here"})
    for peer in bobs:
        assert [p["data"] for p in await peer.pubs(1, channel)] == ["still here"]
        assert await peer.result("ping") == {}

    async def only_bob() -> bool:
        return await presence_of(a, channel) == {peer.client for peer in bobs}

    await wait_for(only_bob, "alice's connections to leave presence")
    # Nobody left to disconnect.
    assert await api(a, "POST", "/api/disconnect", {"user": "alice"}) == {
        "disconnected": 0
    }


# -- 6. Redis stopped and started under load -----------------------------------


class HTTPPublisher:
    """Publishes ``{"n": attempt}`` through the HTTP API of the nodes in
    turn, one request at a time, recording which attempts succeeded."""

    def __init__(self, nodes: list[Node], channel: str) -> None:
        self.nodes = nodes
        self.channel = channel
        self.progress = Progress()
        #: Attempt -> (offset, epoch) for the attempts that succeeded.
        self.ok: dict[int, tuple[int, str]] = {}
        #: Attempts that failed, with (started, ended) monotonic times.
        self.failed: dict[int, tuple[float, float]] = {}
        #: Those of them answered 504: they may have been made.
        self.unknown: set[int] = set()
        #: Every attempt's (started, ended) times.
        self.times: list[tuple[float, float]] = []
        self.stopping = False
        #: What made :meth:`run` fail.
        self.error: BaseException | None = None

    async def until(self, predicate: Callable[[], bool], what: str) -> None:
        """Wait (bounded) until ``predicate()``; raise what made the
        publisher fail, if it failed first."""
        await self.progress.until(lambda: self.error is not None or predicate(), what)
        if self.error is not None:
            raise self.error

    async def run(self) -> None:
        try:
            await self._run()
        except BaseException as exc:
            self.error = exc
            await self.progress.changed()
            raise

    async def _run(self, max_attempts: int = 50_000) -> None:
        for n in range(max_attempts):
            if self.stopping:
                return
            node = self.nodes[n % len(self.nodes)]
            started = time.monotonic()
            body = {"channel": self.channel, "data": {"n": n}}
            answer = await http(node, "POST", "/api/publish", body)
            ended = time.monotonic()
            self.times.append((started, ended))
            if answer.status == 200:
                result = answer.json()
                self.ok[n] = (result["offset"], result["epoch"])
            else:
                # A clear failure and a JSON error saying why: 503 (never
                # made) or 504 (sent to Redis, no answer: may be made).
                assert answer.status in (503, 504), answer
                error = answer.json()["error"]
                assert error["code"] == answer.status, answer
                assert "redis" in error["message"], answer
                self.failed[n] = (started, ended)
                if answer.status == 504:
                    self.unknown.add(n)
            await self.progress.changed()
            if answer.status != 200:
                await asyncio.sleep(0.005)  # pacing: don't spin while Redis is down
        raise AssertionError("the publisher was never stopped")

    def successes_since(self, moment: float) -> int:
        return sum(1 for n in self.ok if self.times[n][0] >= moment)

    def failures_since(self, moment: float) -> int:
        return sum(1 for started, _ in self.failed.values() if started >= moment)


class Received:
    """What a ``tidings.hub.Client`` subscription yields, in order:
    publications and RecoveryFailed errors."""

    def __init__(self) -> None:
        self.items: list[Publication | RecoveryFailed] = []
        self.progress = Progress()

    async def consume(self, sub: Any) -> None:
        for _ in range(1_000_000):
            try:
                item: Publication | RecoveryFailed = await anext(sub)
            except RecoveryFailed as exc:
                item = exc  # iteration goes on after the gap
            except StopAsyncIteration:
                return
            self.items.append(item)
            await self.progress.changed()

    def summary(self, first_epoch: str) -> str:
        """The items received, in short: runs of offsets, and failures."""
        parts: list[str] = []
        run: list[int] = []
        for item in self.items:
            if isinstance(item, RecoveryFailed):
                if run:
                    parts.append(f"{run[0]}..{run[-1]}")
                    run = []
                parts.append(f"RecoveryFailed({item.offset}, {item.epoch})")
            elif run and item.offset != run[-1] + 1:
                parts.append(f"{run[0]}..{run[-1]}")
                run = [item.offset]
            else:
                run.append(item.offset)
        if run:
            parts.append(f"{run[0]}..{run[-1]}")
        return f"epoch {first_epoch}: " + ", ".join(parts)

    def position(self, first_epoch: str) -> tuple[str, int]:
        """The epoch and offset of the last item."""
        epoch, offset = first_epoch, 0
        for item in self.items:
            if isinstance(item, RecoveryFailed):
                epoch, offset = item.epoch, item.offset
            else:
                offset = item.offset
        return epoch, offset


async def catch_up(
    received: list[Received],
    subs: list[Subscription],
    first_epoch: str,
    last: tuple[str, int],
) -> None:
    """Wait until every subscription has received the publication at
    ``last`` (epoch, offset); fail saying where each one stands."""
    for r, sub in zip(received, subs, strict=True):

        def caught_up(r: Received = r) -> bool:
            return r.position(first_epoch) == last

        try:
            await r.progress.until(caught_up, "a subscriber to catch up")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc} with publication {last[1]} in {last[0]}: it received "
                f"{r.summary(first_epoch)}; its subscription is at "
                f"{sub.offset} in {sub.epoch}"
            ) from None


async def health(node: Node) -> tuple[int, Any]:
    answer = await http(node, "GET", "/healthz")
    return answer.status, answer.json()


@pytest.mark.parametrize("persistent", [True, False], ids=["aof", "no-persistence"])
async def test_redis_restart_during_publishing(
    cluster: Cluster, redis_factory: RedisFactory, persistent: bool
) -> None:
    redis = redis_factory(persistent=persistent)
    nodes = await cluster.start(2, redis)
    channel = "chat:restart"
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(Client(node.ws_url, timeout=BOUND))
            for node in nodes
            for _ in range(2)
        ]
        subs = [await client.subscribe(channel) for client in clients]
        first_epoch = subs[0].epoch
        assert first_epoch is not None
        assert {sub.epoch for sub in subs} == {first_epoch}
        client_ids = [client.client_id for client in clients]
        received = [Received() for _ in subs]
        consumers = [
            asyncio.create_task(r.consume(sub))
            for r, sub in zip(received, subs, strict=True)
        ]
        raws = [await cluster.connect(node) for node in nodes]
        for raw in raws:
            result = await raw.result("subscribe", channel=channel)
            assert result["epoch"] == first_epoch

        publisher = HTTPPublisher(nodes, channel)
        publishing = asyncio.create_task(publisher.run())
        try:
            await publisher.until(
                lambda: len(publisher.ok) >= 30, "30 publications before the stop"
            )
            await asyncio.to_thread(redis.stop)
            down_from = time.monotonic()

            async def all_unhealthy() -> bool:
                return all([(await health(node))[0] == 503 for node in nodes])

            await wait_for(all_unhealthy, "/healthz to say 503 on every node")
            for node in nodes:
                status, body = await health(node)
                assert status == 503 and body["status"] == "broker unavailable"
                assert body["broker"]["ok"] is False and body["broker"]["error"], body
            await publisher.until(
                lambda: publisher.failures_since(down_from) >= 20,
                "publishes to fail while Redis is down",
            )

            down_until = time.monotonic()
            await asyncio.to_thread(redis.start)

            async def all_healthy() -> bool:
                return all([(await health(node))[0] == 200 for node in nodes])

            await wait_for(all_healthy, "/healthz to say 200 again on every node")
            for node in nodes:
                status, body = await health(node)
                assert status == 200 and body["status"] == "ok"
                assert body["broker"]["ok"] is True, body
            back = time.monotonic()
            await publisher.until(
                lambda: publisher.successes_since(back) >= 30,
                "30 publications after the restart",
            )
        finally:
            publisher.stopping = True
            async with asyncio.timeout(BOUND):
                await publishing

        # Nothing succeeded while Redis was surely down.
        for n, (started, ended) in enumerate(publisher.times):
            if started > down_from and ended < down_until:
                assert n in publisher.failed, n
        ok = publisher.ok
        data_of = {offset_epoch: {"n": n} for n, offset_epoch in ok.items()}
        # Only a publish answered 504 may have been made after all.
        unknown_data = [{"n": n} for n in publisher.unknown]
        last_offset, last_epoch = ok[max(ok)]
        if persistent:
            assert {epoch for _, epoch in ok.values()} == {first_epoch}
        else:
            assert last_epoch != first_epoch

        await catch_up(received, subs, first_epoch, (last_epoch, last_offset))

        # The clients stayed connected all along: never reconnected.
        assert [client.client_id for client in clients] == client_ids
        assert all(client.connected for client in clients)

        for r in received:
            failures = [i for i in r.items if isinstance(i, RecoveryFailed)]
            pubs = [i for i in r.items if isinstance(i, Publication)]
            if persistent:
                # Everything, in order, once: whatever succeeded, and
                # perhaps a publish answered 504, its answer lost with Redis.
                assert failures == []
                assert [p.offset for p in pubs] == list(range(1, last_offset + 1))
                for pub in pubs:
                    key = (pub.offset, first_epoch)
                    if key in data_of:
                        assert pub.data == data_of[key], pub
                    else:
                        assert pub.data in unknown_data, pub
            else:
                # The history was lost with Redis: the subscription says so
                # once, at the gap, then goes on in the new epoch.
                assert len(failures) == 1, r.items
                (failure,) = failures
                assert failure.channel == channel
                assert failure.epoch == last_epoch
                at = r.items.index(failure)
                before = [p for p in r.items[:at] if isinstance(p, Publication)]
                after = [p for p in r.items[at + 1 :] if isinstance(p, Publication)]
                assert [p.offset for p in before] == list(range(1, len(before) + 1))
                for pub in before:
                    key = (pub.offset, first_epoch)
                    if key in data_of:
                        assert pub.data == data_of[key], pub
                    else:
                        assert pub.data in unknown_data, pub
                old = [o for o, e in ok.values() if e == first_epoch]
                assert len(before) >= max(old)  # all made before the stop
                assert [p.offset for p in after] == list(
                    range(failure.offset + 1, last_offset + 1)
                )
                for pub in after:
                    assert pub.data == data_of[(pub.offset, last_epoch)], pub

        # The raw peers were told where the channel is, and recover (or
        # learn that they cannot) by subscribing again with since.
        for raw in raws:
            assert raw.ws.state is State.OPEN, raw
            seen: list[dict[str, Any]] = []
            position = None
            for _ in range(len(publisher.times) + 100):
                push = await raw.push()
                if "position" in push:
                    position = push["position"]
                    break
                if "pub" in push:
                    seen.append(push["pub"])
            assert position is not None
            assert position["epoch"] == last_epoch, position
            contiguous = 0
            for raw_pub in seen:
                if raw_pub["epoch"] == first_epoch and raw_pub["offset"] == (
                    contiguous + 1
                ):
                    contiguous += 1
            assert contiguous >= 1
            await raw.result("unsubscribe", channel=channel)
            since = {"offset": contiguous, "epoch": first_epoch}
            result = await raw.result("subscribe", channel=channel, since=since)
            assert (result["epoch"], result["offset"]) == (last_epoch, last_offset)
            if persistent:
                assert result["recovered"] is True, result
                assert offsets(result["publications"]) == list(
                    range(contiguous + 1, last_offset + 1)
                )
            else:
                assert result["recovered"] is False, result
                assert "publications" not in result, result
            assert await raw.result("ping") == {}

        for consumer in consumers:
            consumer.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)


@pytest.mark.parametrize("persistent", [True, False], ids=["aof", "no-persistence"])
async def test_presence_and_surveys_are_whole_again_soon_after_redis_comes_back(
    cluster: Cluster, redis_factory: RedisFactory, persistent: bool
) -> None:
    # The default presence_ttl (30 s): the nodes refresh every 10 s, so a
    # refresh cannot be what makes things whole within the bound below.
    redis = redis_factory(persistent=persistent)
    a, b = await cluster.start(2, redis)
    channel = "chat:whole"
    peers = [await cluster.connect(node) for node in (a, a, b)]
    for peer in peers:
        await peer.result("subscribe", channel=channel)
    everyone = {peer.client for peer in peers}
    expected = {"channels": [{"channel": channel, "subscribers": 3}]}
    for node in (a, b):
        assert await presence_of(node, channel) == everyone
        assert await api(node, "GET", "/api/channels") == expected

    await asyncio.to_thread(redis.stop)

    async def all_unhealthy() -> bool:
        return all([(await health(node))[0] == 503 for node in (a, b)])

    await wait_for(all_unhealthy, "/healthz to say 503 on every node")
    await asyncio.to_thread(redis.start)

    async def all_healthy() -> bool:
        return all([(await health(node))[0] == 200 for node in (a, b)])

    await wait_for(all_healthy, "/healthz to say 200 again on every node")

    # Once every node is healthy again, presence lists every client again
    # and the surveys hear from every node: within a few seconds, not at
    # the next refresh.
    problems = []

    async def whole() -> bool:
        return all([await presence_of(node, channel) == everyone for node in (a, b)])

    try:
        await wait_for(whole, "presence to list every client", timeout=3.0)
    except AssertionError as exc:
        listed = {node.name: await presence_of(node, channel) for node in (a, b)}
        problems.append(f"{exc}: presence lists {listed}, not {everyone}")
    for node in (a, b):
        for _ in range(10):
            answer = await api(node, "GET", "/api/channels")
            if answer != expected:
                problems.append(f"/api/channels on {node.name}: {answer}")
    assert not problems, "\n".join(problems)
    for peer in peers:
        assert peer.ws.state is State.OPEN and await peer.result("ping") == {}


# -- a node stopped with SIGTERM: a rolling deploy -------------------------------


async def test_a_node_stopped_with_sigterm_lets_its_clients_go_and_recover_elsewhere(
    cluster: Cluster, redis: RedisServer
) -> None:
    a, b = await cluster.start(2, redis)
    channel = "chat:rolling"
    movers = [await cluster.connect(a) for _ in range(3)]
    stayer = await cluster.connect(b)
    epoch = ""
    for peer in [*movers, stayer]:
        epoch = (await peer.result("subscribe", channel=channel))["epoch"]
    for n in range(1, 4):
        await api(b, "POST", "/api/publish", {"channel": channel, "data": n})
    for peer in [*movers, stayer]:
        assert offsets(await peer.pubs(3, channel)) == [1, 2, 3]

    assert await a.terminate() == 0
    for peer in movers:
        assert await peer.closed() == 1001
    # Their presence entries went with them, with leave pushes: no waiting
    # for them to expire.
    assert await presence_of(b, channel) == {stayer.client}
    left: set[str] = set()
    for _ in range(100):
        if len(left) == len(movers):
            break
        push = await stayer.push()
        if "join" in push:
            continue
        assert "leave" in push, push
        left.add(push["leave"]["client"])
    assert left == {peer.client for peer in movers}

    for n in range(4, 14):
        await api(b, "POST", "/api/publish", {"channel": channel, "data": n})
    since = {"offset": 3, "epoch": epoch}
    for _ in movers:
        peer = await cluster.connect(b)
        result = await peer.result("subscribe", channel=channel, since=since)
        assert result["recovered"] is True, result
        assert [p["data"] for p in result["publications"]] == list(range(4, 14))
        assert offsets(result["publications"]) == list(range(4, 14))


# -- 7. /api/channels and /api/unsubscribe reach every node ----------------------


async def test_api_channels_sums_the_subscribers_of_every_node(
    cluster: Cluster, redis: RedisServer
) -> None:
    a, b, c = await cluster.start(3, redis)
    one, two = "chat:one", "chat:two"
    subscriptions = {a: [one, one], b: [one, two], c: [one, one, one]}
    peers: dict[Node, list[Peer]] = {}
    for node, channels in subscriptions.items():
        for channel in channels:
            peer = await cluster.connect(node)
            await peer.result("subscribe", channel=channel)
            peers.setdefault(node, []).append(peer)
    expected = [
        {"channel": "chat:one", "subscribers": 6},
        {"channel": "chat:two", "subscribers": 1},
    ]
    for node in (a, b, c):
        start = time.monotonic()
        assert await api(node, "GET", "/api/channels") == {"channels": expected}, node
        assert time.monotonic() - start < SURVEY_TIMEOUT  # every node answered

    await peers[c][0].result("unsubscribe", channel="chat:one")
    await peers[b][1].result("unsubscribe", channel="chat:two")
    assert await api(a, "GET", "/api/channels") == {
        "channels": [{"channel": "chat:one", "subscribers": 5}]
    }


async def test_api_unsubscribe_on_one_node_reaches_the_user_on_every_node(
    cluster: Cluster, redis: RedisServer
) -> None:
    a, b, c = await cluster.start(3, redis)
    target, other = "chat:target", "chat:other"
    alice, bob = mint_token(SECRET, "alice"), mint_token(SECRET, "bob")
    alices = [await cluster.connect(node, alice) for node in (a, c)]
    for peer in alices:
        await peer.result("subscribe", channel=target)
        await peer.result("subscribe", channel=other)
    bobs = [await cluster.connect(b, bob)]
    await bobs[0].result("subscribe", channel=target)
    async with Client(b.ws_url, token=alice, timeout=BOUND) as client:
        sub = await client.subscribe(target)

        start = time.monotonic()
        answer = await api(
            b, "POST", "/api/unsubscribe", {"user": "alice", "channel": target}
        )
        assert answer == {"unsubscribed": 3}
        assert time.monotonic() - start < SURVEY_TIMEOUT  # every node answered

        # The Python client's subscription ends, the client stays connected.
        async with asyncio.timeout(BOUND):
            assert [pub async for pub in sub] == []
        assert client.connected
        assert {info.user for info in await client.presence(other)} == {"alice"}

        for peer in alices:
            assert await next_push(peer) == {"channel": target, "unsubscribe": {}}
        await api(c, "POST", "/api/publish", {"channel": target, "data": "for bob"})
        await api(c, "POST", "/api/publish", {"channel": other, "data": "for alice"})
        for peer in alices:
            # Not the publication on target (it came first): that one on other.
            push = await next_push(peer)
            assert push["channel"] == other and push["pub"]["data"] == "for alice"
            reply = await peer.call("unsubscribe", channel=target)
            assert reply["error"]["code"] == 409, reply
        assert [p["data"] for p in await bobs[0].pubs(1, target)] == ["for bob"]
        assert await api(a, "GET", "/api/channels") == {
            "channels": [
                {"channel": other, "subscribers": 2},
                {"channel": target, "subscribers": 1},
            ]
        }

        async def only_bob() -> bool:
            return await presence_of(a, target) == {bobs[0].client}

        await wait_for(only_bob, "alice to leave the presence of the channel")
