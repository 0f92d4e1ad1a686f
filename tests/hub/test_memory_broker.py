"""The memory broker on a fake clock: history by age, presence expiry,
forgetting idle channels, and several nodes on one backend
(tidings.hub.brokers.memory). test_brokers.py checks the contract that it
shares with the Redis broker."""

from __future__ import annotations

from typing import Any

from tidings.hub import Hub
from tidings.hub.brokers.base import ChannelOptions, ClientInfo, Push
from tidings.hub.brokers.memory import (
    PUBLICATION_OVERHEAD,
    SWEEP_INTERVAL,
    MemoryBackend,
    MemoryBroker,
)

from .conftest import Recorder, hub_config


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


KEEP_5 = ChannelOptions(history_size=5, history_ttl=60)
NO_HISTORY = ChannelOptions()
ALICE = ClientInfo("c1", "alice")


async def started() -> tuple[MemoryBroker, Clock, list[Push]]:
    clock = Clock()
    broker = MemoryBroker(clock=clock)
    node = Recorder()
    await broker.start("n1", node)
    return broker, clock, node.pushes


async def test_history_expires_after_its_ttl() -> None:
    broker, clock, _ = await started()
    await broker.publish("a:x", b'"old"', KEEP_5)
    clock.now += 40
    await broker.publish("a:x", b'"newer"', KEEP_5)
    clock.now += 30  # "old" is 70 s old, "newer" 30 s
    result = await broker.history("a:x", KEEP_5)
    assert [p.data for p in result.publications] == [b'"newer"']
    assert not (await broker.history("a:x", KEEP_5, since=0)).complete
    assert (await broker.history("a:x", KEEP_5, since=1)).complete
    clock.now += 31
    result = await broker.history("a:x", KEEP_5)
    assert result.publications == [] and result.offset == 2
    assert not (await broker.history("a:x", KEEP_5, since=1)).complete


async def test_idle_channels_are_forgotten_by_the_sweep() -> None:
    broker, clock, _ = await started()  # the first sweep is due in 60 s
    short = ChannelOptions(history_size=5, history_ttl=10)
    epochs = {}
    for name in ("a:idle", "a:subscribed", "a:present", "a:recent"):
        epochs[name] = (await broker.publish(name, b"1", short))[1]
    await broker.publish("a:nohistory", b"1", NO_HISTORY)
    await broker.subscribe("a:subscribed")
    await broker.add_presence("a:present", ALICE, 1000)
    clock.now += 11  # every history above has expired
    await broker.publish("a:recent", b"2", short)
    assert len(broker.backend.channels) == 5  # no sweep before SWEEP_INTERVAL
    clock.now += SWEEP_INTERVAL - 11
    await broker.publish("a:recent", b"3", short)
    assert set(broker.backend.channels) == {"a:subscribed", "a:present", "a:recent"}
    # A forgotten channel starts again in a new epoch: nobody can mistake
    # its offsets for the old ones.
    result = await broker.history("a:idle", short, since=1)
    assert result.epoch != epochs["a:idle"] and result.offset == 0
    assert not result.complete
    kept = await broker.history("a:subscribed", short)
    assert kept.epoch == epochs["a:subscribed"] and kept.offset == 1
    # The next sweep is SWEEP_INTERVAL later.
    clock.now += SWEEP_INTERVAL - 1
    await broker.publish("a:recent", b"4", short)
    assert "a:idle" in broker.backend.channels
    clock.now += 1
    await broker.publish("a:recent", b"5", short)
    assert "a:idle" not in broker.backend.channels


async def test_publishing_to_ever_new_names_does_not_grow_without_bound() -> None:
    broker, clock, _ = await started()
    for i in range(10_000):
        await broker.publish(f"a:{i}", b"i", KEEP_5)
        clock.now += 0.1  # 1,000 s in all: many sweeps, each history 60 s
    assert len(broker.backend.channels) < 2 * (60 + SWEEP_INTERVAL) / 0.1


async def test_presence_expires_on_the_clock_and_refresh_extends_it() -> None:
    broker, clock, _ = await started()
    await broker.add_presence("a:x", ALICE, 30)
    clock.now += 20
    await broker.refresh_presence("a:x", [ALICE], 30)
    clock.now += 20  # 40 s after the join, 20 s after the refresh
    assert await broker.presence("a:x") == [ALICE]
    clock.now += 10
    assert await broker.presence("a:x") == []


async def test_nodes_on_one_backend_share_channels() -> None:
    backend = MemoryBackend()
    one, two = MemoryBroker(backend), MemoryBroker(backend)
    node_one, node_two = Recorder(), Recorder()
    await one.start("one", node_one)
    await two.start("two", node_two)
    await two.subscribe("a:x")
    offset, epoch = await one.publish("a:x", b"1", KEEP_5)
    assert node_two.pushes == [Push("a:x", "pub", epoch, offset, b"1")]
    assert node_one.pushes == []
    assert (await two.history("a:x", KEEP_5)).offset == 1
    await two.close()  # a node that leaves gets nothing more
    await one.publish("a:x", b"2", KEEP_5)
    assert len(node_two.pushes) == 1 and "a:x" not in backend.subscribed


async def test_beyond_max_channels_the_least_recently_published_idle_one_goes() -> None:
    backend = MemoryBackend(max_channels=3)
    broker = MemoryBroker(backend)
    await broker.start("n1", Recorder())
    epochs = {}
    for name in ("a:old", "a:subscribed", "a:present"):
        epochs[name] = (await broker.publish(name, b"1", KEEP_5))[1]
    await broker.subscribe("a:subscribed")
    await broker.add_presence("a:present", ALICE, 1000)
    await broker.publish("a:old", b"2", KEEP_5)  # now the most recent
    await broker.unsubscribe("a:subscribed")
    await broker.subscribe("a:subscribed")
    await broker.publish("a:new", b"1", KEEP_5)
    # "a:old" was published last but the others are in use: it goes.
    assert set(backend.channels) == {"a:subscribed", "a:present", "a:new"}
    assert backend.history_bytes == sum(s.bytes for s in backend.channels.values())
    gone = await broker.history("a:old", KEEP_5, since=2)
    assert gone.epoch != epochs["a:old"] and gone.offset == 0
    assert len(backend.channels) == 3
    # Every channel in use: the count grows rather than break a subscriber.
    await broker.subscribe("a:new")
    await broker.subscribe("a:old")
    await broker.publish("a:fourth", b"1", KEEP_5)
    assert len(backend.channels) == 4


async def test_beyond_max_history_bytes_the_least_recently_published_lose_it() -> None:
    size = 1000 + PUBLICATION_OVERHEAD
    backend = MemoryBackend(max_history_bytes=3 * size)
    broker = MemoryBroker(backend)
    await broker.start("n1", Recorder())
    data = b"x" * 1000
    for name in ("a:1", "a:2", "a:1"):
        await broker.publish(name, data, KEEP_5)
    assert backend.history_bytes == 3 * size
    await broker.publish("a:3", data, KEEP_5)  # over: a:2 is the oldest
    assert backend.history_bytes == 3 * size
    lost = await broker.history("a:2", KEEP_5, since=0)
    assert not lost.complete and lost.offset == 1
    kept = await broker.history("a:1", KEEP_5, since=0)
    assert kept.complete and [p.offset for p in kept.publications] == [1, 2]
    # One channel alone over the budget keeps its newest publications.
    for i in range(5):
        await broker.publish("a:big", data + bytes([i]), KEEP_5)
    result = await broker.history("a:big", KEEP_5)
    assert [p.offset for p in result.publications] == [4, 5]
    assert backend.history_bytes <= 3 * size + 2
    assert set(backend.histories) == {"a:big"}
    # History trimmed by size and TTL gives its bytes back.
    small = ChannelOptions(history_size=1, history_ttl=60)
    await broker.publish("a:big", b"1", small)
    assert backend.history_bytes == 1 + PUBLICATION_OVERHEAD


async def test_a_flood_of_publications_to_new_channels_stays_within_budget(
    connect: Any,
) -> None:
    # Hardening finding 2: 64 KiB publications to ever new chat channels,
    # each keeping 100 for an hour, grew the hub by 450 MB.
    config = hub_config(max_history_bytes=1 << 20, max_channels=50)
    async with Hub(config) as hub:
        assert isinstance(hub.broker, MemoryBroker)
        backend = hub.broker.backend
        peer = await connect(hub)
        flood = [{}] * 15_000  # 60 KB of JSON
        for i in range(100):
            await peer.publish_many(f"chat:flood{i}", [flood])
        assert backend.history_bytes <= 1 << 20
        assert len(backend.channels) <= 50
        newest = await peer.result("history", channel="chat:flood99")
        assert newest["offset"] == 1 and len(newest["publications"]) == 1


async def test_presence_stats_expire_on_the_clock_within_a_bounded_heap() -> None:
    broker, clock, _ = await started()
    bob = ClientInfo("c2", "bob")
    await broker.add_presence("a:x", ALICE, 30)
    await broker.add_presence("a:x", bob, 10)
    for _ in range(1000):  # refreshed again and again: no pile of deadlines
        await broker.refresh_presence("a:x", [ALICE], 30)
    assert len(broker.backend.channels["a:x"].deadlines) <= 4 * 2 + 64
    clock.now += 20
    assert await broker.presence_stats("a:x") == (1, 1)
    clock.now += 10
    assert await broker.presence_stats("a:x") == (0, 0)


KEYED = ChannelOptions(idempotency_window=300)


async def test_an_idempotency_key_is_kept_for_its_window_on_the_clock() -> None:
    broker, clock, _ = await started()
    first = await broker.publish("a:x", b"1", KEYED, idempotency_key="k")
    clock.now += 299
    assert await broker.publish("a:x", b"2", KEYED, idempotency_key="k") == first
    clock.now += 1
    assert await broker.publish("a:x", b"3", KEYED, idempotency_key="k") == (
        2,
        first[1],
    )
    # Made anew, the key runs from this publication.
    clock.now += 299
    assert await broker.publish("a:x", b"4", KEYED, idempotency_key="k") == (
        2,
        first[1],
    )
    assert broker.backend.keys.keys() == {("a:x", "k")}


async def test_beyond_max_idempotency_keys_the_oldest_is_forgotten() -> None:
    broker = MemoryBroker(MemoryBackend(max_idempotency_keys=3))
    await broker.start("n1", Recorder())
    for i in range(4):
        await broker.publish("a:x", b"1", KEYED, idempotency_key=f"k{i}")
    assert [key for _, key in broker.backend.keys] == ["k1", "k2", "k3"]
    for i in (1, 2, 3):
        answer = await broker.publish("a:x", b"1", KEYED, idempotency_key=f"k{i}")
        assert answer[0] == i + 1
    assert (await broker.publish("a:x", b"1", KEYED, idempotency_key="k0"))[0] == 5


async def test_the_sweep_keeps_a_channel_while_its_keys_are_remembered() -> None:
    broker, clock, _ = await started()  # the first sweep is due in 60 s
    first = await broker.publish("a:x", b"1", KEYED, idempotency_key="k")
    clock.now += SWEEP_INTERVAL
    await broker.publish("a:other", b"1", NO_HISTORY)  # sweeps
    # No history, no subscriber, nobody present: kept for its key alone.
    assert set(broker.backend.channels) == {"a:x"}
    assert await broker.publish("a:x", b"2", KEYED, idempotency_key="k") == first
    clock.now += 300
    await broker.publish("a:other", b"1", NO_HISTORY)
    assert broker.backend.channels == {} and broker.backend.keys == {}


async def test_a_key_of_a_forgotten_channel_answers_nothing() -> None:
    broker = MemoryBroker(MemoryBackend(max_channels=1))
    await broker.start("n1", Recorder())
    first = await broker.publish("a:x", b"1", KEYED, idempotency_key="k")
    await broker.publish("a:y", b"1", KEYED)  # "a:x" is forgotten for it
    # "a:x" starts again in a new epoch: the key's position is gone with
    # the old one, and the publish is made in the new epoch.
    again = await broker.publish("a:x", b"1", KEYED, idempotency_key="k")
    assert again[0] == 1 and again[1] != first[1]
    assert await broker.publish("a:x", b"2", KEYED, idempotency_key="k") == again
    assert len(broker.backend.keys) == 1
