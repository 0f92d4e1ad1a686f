"""The memory broker on a fake clock: history by age, presence expiry,
forgetting idle channels, and several nodes on one backend
(tidings.hub.brokers.memory). test_brokers.py checks the contract that it
shares with the Redis broker."""

from __future__ import annotations

from tidings.hub.brokers.base import ChannelOptions, ClientInfo, Push
from tidings.hub.brokers.memory import SWEEP_INTERVAL, MemoryBackend, MemoryBroker

from .conftest import Recorder


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
