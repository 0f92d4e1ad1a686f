"""The Redis broker when Redis goes away and comes back, with and without
persistence; a Redis that stalls; a node started before its Redis
(tidings.hub.brokers.redis). Each test has a redis-server of its own."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from tidings.hub.brokers import redis as redis_module
from tidings.hub.brokers.base import (
    BrokerUnavailable,
    ChannelOptions,
    ClientInfo,
)
from tidings.hub.brokers.redis import RedisBroker

from ..conftest import RedisServer, wait_for
from .conftest import Recorder

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


async def test_publications_made_together_share_a_round_trip(
    server: RedisServer, started: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    broker, node = await started()
    await broker.subscribe("a:x")
    trips: list[int] = []
    publish_all = broker._publish_all

    async def counted(commands: list[Any]) -> list[Any]:
        trips.append(len(commands))
        return await publish_all(commands)

    monkeypatch.setattr(broker, "_publish_all", counted)
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
