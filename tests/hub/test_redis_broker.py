"""The Redis broker when Redis goes away and comes back, with and without
persistence; a Redis that stalls; a node started before its Redis
(tidings.hub.brokers.redis). Each test has a redis-server of its own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from tidings.hub import (
    Client,
    Hub,
    HubConfig,
    Publication,
    RecoveryFailed,
    Subscription,
)
from tidings.hub.brokers import redis as redis_module
from tidings.hub.brokers.base import (
    BrokerUnavailable,
    ChannelOptions,
    ClientInfo,
    OutcomeUnknown,
)
from tidings.hub.brokers.redis import RedisBroker

from ..conftest import RedisServer, wait_for
from .conftest import Recorder, hub_config

BOUND = 20
KEEP = ChannelOptions(history_size=100, history_ttl=600)
ALICE = ClientInfo("c1", "alice")


async def until_status(broker: RedisBroker, ok: bool) -> None:
    what = "redis to be " + ("up" if ok else "down")
    await wait_for(lambda: broker.status()["ok"] is ok, what, timeout=BOUND)


@pytest.fixture(params=[True, False], ids=["aof", "no-persistence"])
def server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    server = RedisServer(persistent=request.param)
    server.start()
    yield server
    server.remove()


@pytest.fixture
async def started(
    server: RedisServer,
) -> AsyncIterator[Callable[..., Any]]:
    brokers: list[RedisBroker] = []

    async def start(**options: Any) -> tuple[RedisBroker, Recorder]:
        broker = RedisBroker(server.url, **options)
        node = Recorder()
        await broker.start(f"n{len(brokers)}", node)
        brokers.append(broker)
        return broker, node

    yield start
    for broker in brokers:
        await broker.close()


async def test_redis_restarted_calls_fail_clearly_then_channels_resync(
    server: RedisServer, started: Callable[..., Any]
) -> None:
    broker, node = await started()
    await broker.subscribe("a:x")
    for i in range(3):
        await broker.publish("a:x", str(i).encode(), KEEP)
    before = await broker.history("a:x", KEEP)
    await node.until(lambda: len(node.pushes) == 3)

    server.stop()
    await until_status(broker, False)
    assert broker.status()["error"]
    with pytest.raises(BrokerUnavailable):
        await broker.publish("a:x", b"lost", KEEP)
    with pytest.raises(BrokerUnavailable):
        await broker.subscribe("a:y")

    server.start()
    await until_status(broker, True)
    # Back: every subscribed channel gets its position, so that clients that
    # missed something recover it.
    await node.until(lambda: any(p.kind == "position" for p in node.pushes))
    [position] = [p for p in node.pushes if p.kind == "position"]
    assert node.reconnected == 1  # the node was asked to refresh its entries
    after = await broker.history("a:x", KEEP, since=1)
    if server.persistent:
        # Nothing was lost: same epoch, and the history still reaches back.
        assert (position.epoch, position.offset) == (before.epoch, 3)
        assert after.complete and [p.data for p in after.publications] == [
            b"1",
            b"2",
        ]
    else:
        # Everything was lost: a new epoch, and recovery fails, clearly.
        assert position.epoch != before.epoch and position.offset == 0
        assert not after.complete
    # The node's refresh makes its presence entries again if Redis lost them.
    await broker.refresh_presence("a:x", [ALICE], 30)
    assert await broker.presence("a:x") == [ALICE]
    # Live again, on the resubscribed channel.
    offset, epoch = await broker.publish("a:x", b"next", KEEP)
    await node.until(
        lambda: node.pushes[-1].kind == "pub" and node.pushes[-1].data == b"next"
    )
    assert (node.pushes[-1].offset, node.pushes[-1].epoch) == (offset, epoch)


async def test_a_node_started_before_its_redis_waits_for_it(
    server: RedisServer, started: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    server.stop()
    broker, _ = await started(timeout=0.2)
    assert broker.status()["ok"] is False
    with pytest.raises(BrokerUnavailable):
        await broker.history("a:x", KEEP)
    server.start()
    await until_status(broker, True)
    assert (await broker.history("a:x", KEEP)).offset == 0


async def test_a_stalled_redis_is_noticed_and_calls_are_bounded(
    server: RedisServer, started: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_module, "PING_INTERVAL", 0.1)
    broker, _ = await started(timeout=0.5, max_pending=2)
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)  # ours: it answers nothing
    try:
        slow = [
            asyncio.create_task(broker.publish("a:x", b"1", KEEP)) for _ in range(2)
        ]
        await asyncio.sleep(0)  # both are now waiting for Redis
        # A third is refused at once: a stalled Redis cannot grow memory.
        with pytest.raises(BrokerUnavailable, match="too many calls"):
            await broker.publish("a:x", b"2", KEEP)
        for task in slow:  # the waiting ones time out, clearly
            with pytest.raises(BrokerUnavailable):
                await task
        # Silent to pings: the node counts Redis as lost.
        await until_status(broker, False)
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    await until_status(broker, True)
    assert (await broker.publish("a:x", b"3", KEEP))[0] >= 1


async def test_a_publish_that_redis_may_still_make_is_504_never_503(
    server: RedisServer, started: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_module, "PING_INTERVAL", 0.1)
    broker, _ = await started(timeout=0.5)
    await broker.publish("a:x", b"before", KEEP)  # a connection ready to send
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)  # ours: it answers nothing
    try:
        # Sent to a Redis that stalls: it may make it later.
        with pytest.raises(OutcomeUnknown):
            await broker.publish("a:x", b"sent", KEEP)
        # Once the node counts Redis as lost, a publish is never sent.
        await until_status(broker, False)
        with pytest.raises(BrokerUnavailable) as refused:
            await broker.publish("a:x", b"refused", KEEP)
        assert not isinstance(refused.value, OutcomeUnknown)
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    # Resumed, Redis makes what it had received: why the answer was 504.
    await until_status(broker, True)
    history = await broker.history("a:x", KEEP)
    assert [p.data for p in history.publications] == [b"before", b"sent"]


async def test_clients_and_the_api_are_told_504_when_a_publish_may_be_made(
    server: RedisServer, connect: Any, http: Any
) -> None:
    async with Hub(hub_config(), RedisBroker(server.url, timeout=0.5)) as hub:
        peer = await connect(hub)
        await peer.result("publish", channel="chat:s", data=0)  # connections ready
        assert (
            await http(hub, "POST", "/api/publish", {"channel": "chat:s", "data": 1})
        ).status == 200
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)  # ours: it answers nothing
        try:
            code, message = await peer.error("publish", channel="chat:s", data=2)
            assert code == 504 and "may have been made" in message
            answer = await http(
                hub, "POST", "/api/publish", {"channel": "chat:s", "data": 3}
            )
            assert answer.status == 504, answer
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)


async def test_the_demo_feeds_outlive_a_stalled_redis_and_the_hub_closes(
    server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(redis_module, "PING_INTERVAL", 0.1)
    caplog.set_level(logging.DEBUG, "tidings.hub")
    hub = Hub(HubConfig(port=0), RedisBroker(server.url, timeout=0.3))
    await hub.start()
    async with Client(hub.ws_url, timeout=BOUND) as client:
        sub = await client.subscribe("ticker:all")
        await next_item(sub)
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)  # ours: it answers nothing
        try:
            await wait_for(
                lambda: "publication skipped" in caplog.text, "a feed's publish to fail"
            )
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        # The ticker goes on: a quote published after Redis resumed arrives.
        resumed = time.time()
        while not (
            isinstance(item := await next_item(sub), Publication)
            and item.data["time"] > resumed
        ):
            pass
    await hub.close()  # no error from the feeds' outage
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_presence_refresh_never_brings_back_a_client_that_left(
    server: RedisServer, connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Hub(hub_config(), RedisBroker(server.url)) as hub:
        peer = await connect(hub)
        await peer.result("subscribe", channel="chat:p")
        refresh, entered, go = (
            hub.broker.refresh_presence,
            asyncio.Event(),
            asyncio.Event(),
        )

        async def held(*args: Any) -> None:
            entered.set()
            await go.wait()
            await refresh(*args)

        monkeypatch.setattr(hub.broker, "refresh_presence", held)
        refreshing = asyncio.create_task(hub._refresh())
        await entered.wait()  # it read the subscribers: the peer among them
        await peer.send({"id": 100, "op": "unsubscribe", "channel": "chat:p"})
        await wait_for(lambda: not hub.subscriber_count("chat:p"), "the peer to leave")
        go.set()  # the refresh reaches Redis after the leave began
        await refreshing
        assert "result" in await peer.reply(100)
        assert await hub.broker.presence("chat:p") == []


async def test_publications_made_together_share_a_round_trip(
    server: RedisServer, started: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    broker, node = await started()
    await broker.subscribe("a:x")
    trips: list[int] = []
    run_scripts = broker._run_scripts

    async def counted(name: str, commands: list[Any]) -> list[Any]:
        trips.append(len(commands))
        return await run_scripts(name, commands)

    monkeypatch.setattr(broker, "_run_scripts", counted)
    results = await asyncio.gather(
        *(broker.publish("a:x", str(i).encode(), KEEP) for i in range(100))
    )
    # In the order they were made, gap-free, in far fewer round trips.
    assert [offset for offset, _ in results] == list(range(1, 101))
    assert sum(trips) == 100 and len(trips) <= 3, trips
    await node.until(lambda: len(node.pushes) == 100)
    assert [p.data for p in node.pushes] == [str(i).encode() for i in range(100)]


async def test_a_redis_that_lost_its_scripts_still_publishes(
    server: RedisServer, started: Callable[..., Any]
) -> None:
    broker, _ = await started()
    assert (await broker.publish("a:x", b"1", KEEP))[0] == 1
    await broker._redis.script_flush()
    offsets = await asyncio.gather(
        *(broker.publish("a:x", b"2", KEEP) for _ in range(3))
    )
    assert sorted(o for o, _ in offsets) == [2, 3, 4]
    assert (await broker.history("a:x", KEEP)).offset == 4


# -- a Redis that comes back from an older state ---------------------------------


class OlderRedis:
    """A redis-server that comes back from an older state of its data: an
    RDB snapshot (``rdb``), or an append-only file synced every second whose
    last writes never reached the disk, as after a host crash
    (``aof-everysec``: the files are copied at :meth:`mark` and put back
    after SIGKILL)."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.server = RedisServer(
            persistent=how == "aof-everysec", appendfsync="everysec"
        )
        self._copy: Any = None

    async def mark(self, broker: RedisBroker) -> None:
        """The state to come back to: as it is now."""
        if self.how == "rdb":
            await broker._redis.save()
        else:
            self._copy = self.server.copy_data()

    def come_back(self) -> None:
        self.server.kill()
        if self._copy is not None:
            self.server.restore_data(self._copy)
        self.server.start()


@pytest.fixture(params=["rdb", "aof-everysec"])
async def older(request: pytest.FixtureRequest) -> AsyncIterator[OlderRedis]:
    redis = OlderRedis(request.param)
    redis.server.start()
    yield redis
    redis.server.remove()


async def test_a_redis_back_from_an_older_state_never_reuses_an_offset(
    older: OlderRedis,
) -> None:
    brokers: list[RedisBroker] = []

    async def start() -> tuple[RedisBroker, Recorder]:
        broker = RedisBroker(older.server.url)
        node = Recorder()
        await broker.start(f"n{len(brokers)}", node)
        brokers.append(broker)
        return broker, node

    try:
        publisher, _ = await start()
        subscribed, node = await start()
        await subscribed.subscribe("a:x")
        for i in range(1, 4):
            await publisher.publish("a:x", b"%d" % i, KEEP)
        await older.mark(publisher)
        for i in range(4, 7):
            await publisher.publish("a:x", b"%d" % i, KEEP)
        await node.until(lambda: len(node.pushes) == 6)
        epoch = node.pushes[-1].epoch
        older.come_back()
        # A node that never saw the channel publishes first, perhaps before
        # the others are back: it cannot tell that 4 to 6 were given before.
        fresh, _ = await start()
        for i in range(3):
            await fresh.publish("a:x", b"new %d" % i, KEEP)
        await until_status(subscribed, True)
        # The node that delivered up to 6 checked before it resubscribed:
        # the channel has a new epoch, and its subscribers are told.
        await node.until(
            lambda: any(p.kind == "position" and p.epoch != epoch for p in node.pushes)
        )
        assert not [p for p in node.pushes[6:] if p.kind == "pub" and p.epoch == epoch]
        # The publishing node saw offset 6 too: no answer in the old epoch.
        recovered = await publisher.history("a:x", KEEP, since=5)
        assert recovered.epoch != epoch
        offset, new_epoch = await fresh.publish("a:x", b"later", KEEP)
        assert new_epoch == recovered.epoch
        await node.until(lambda: node.pushes[-1].kind == "pub")
        assert (node.pushes[-1].epoch, node.pushes[-1].offset) == (new_epoch, offset)
    finally:
        for broker in brokers:
            await broker.close()


async def test_without_a_loss_a_node_that_reconnects_keeps_the_epoch(
    older: OlderRedis,
) -> None:
    broker = RedisBroker(older.server.url)
    node = Recorder()
    await broker.start("n", node)
    try:
        await broker.subscribe("a:x")
        for i in range(3):
            await broker.publish("a:x", b"%d" % i, KEEP)
        await older.mark(broker)
        await node.until(lambda: len(node.pushes) == 3)
        older.come_back()  # to the state it had: nothing lost
        await node.until(lambda: node.pushes[-1].kind == "position")
        assert (node.pushes[-1].epoch, node.pushes[-1].offset) == (
            node.pushes[0].epoch,
            3,
        )
        assert (await broker.history("a:x", KEEP, since=1)).complete
    finally:
        await broker.close()


async def test_a_key_kept_from_an_epoch_redis_lost_answers_nothing(
    older: OlderRedis,
) -> None:
    broker = RedisBroker(older.server.url)
    node = Recorder()
    await broker.start("n", node)
    keyed = ChannelOptions(history_size=100, history_ttl=600, idempotency_window=300)
    try:
        first = await broker.publish("a:x", b"1", keyed, idempotency_key="k")
        await older.mark(broker)
        for i in range(2, 5):
            await broker.publish("a:x", b"%d" % i, keyed)
        older.come_back()  # offsets 2 to 4 are lost; the key is back
        await node.until(lambda: node.reconnected == 1)
        async with Redis.from_url(older.server.url) as fresh:
            assert await fresh.exists("tidings:{a:x}:idempotency:k")
        # The node saw offset 4: the channel gets a new epoch, where the
        # key's position means nothing. The publish is made there, once.
        again = await broker.publish("a:x", b"1", keyed, idempotency_key="k")
        assert again[1] != first[1]
        assert await broker.publish("a:x", b"1", keyed, idempotency_key="k") == again
        history = await broker.history("a:x", keyed)
        assert (history.offset, history.epoch) == again
        assert [(p.offset, p.data) for p in history.publications] == [(again[0], b"1")]
    finally:
        await broker.close()


async def next_item(sub: Subscription) -> Any:
    """The subscription's next publication, or the RecoveryFailed it raises."""
    async with asyncio.timeout(BOUND):
        try:
            return await anext(sub)
        except RecoveryFailed as exc:
            return exc


async def test_clients_on_two_nodes_learn_that_redis_lost_what_they_had(
    older: OlderRedis,
) -> None:
    async with contextlib.AsyncExitStack() as stack:

        async def node() -> Hub:
            broker = RedisBroker(older.server.url)
            return await stack.enter_async_context(Hub(hub_config(), broker))

        nodes = [await node(), await node()]
        clients = [
            await stack.enter_async_context(Client(n.ws_url, timeout=BOUND))
            for n in nodes
        ]
        subs = [await client.subscribe("chat:r") for client in clients]
        for i in range(1, 4):
            await nodes[0].publish("chat:r", i)
        await older.mark(nodes[0].broker)  # type: ignore[arg-type]
        for i in range(4, 7):
            await nodes[0].publish("chat:r", i)
        for sub in subs:
            assert [(await next_item(sub)).data for _ in range(6)] == [*range(1, 7)]
        epoch = subs[0].epoch
        older.come_back()
        # A third node, which never saw the channel, publishes at once.
        third = await node()
        for i in range(3):
            await third.publish("chat:r", f"new {i}")
        for sub in subs:
            # Told, before anything else, that what came since is lost...
            failed = await next_item(sub)
            assert isinstance(failed, RecoveryFailed), failed
            assert failed.epoch != epoch
        # ...and live again in the new epoch, gap-free.
        offset, new_epoch = await third.publish("chat:r", "after")
        assert new_epoch != epoch
        for sub in subs:
            pub = await next_item(sub)
            assert (pub.offset, sub.epoch, pub.data) == (offset, new_epoch, "after")
