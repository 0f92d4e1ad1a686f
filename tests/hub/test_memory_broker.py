"""The memory broker: offsets, history by size and age, presence, pushes
and forgetting idle channels (tidings.hub.brokers.memory), on a fake
clock."""

from __future__ import annotations

from tidings.hub.brokers.base import (
    ChannelOptions,
    ClientInfo,
    HistoryResult,
    Publication,
    Push,
)
from tidings.hub.brokers.memory import SWEEP_INTERVAL, MemoryBroker


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
    pushes: list[Push] = []
    await broker.start(pushes.append)
    return broker, clock, pushes


async def test_offsets_count_up_per_channel_in_one_epoch() -> None:
    broker, _, _ = await started()
    first, epoch = await broker.publish("a:x", "one", KEEP_5, ALICE)
    assert first == Publication(1, "one", ALICE)
    second, same = await broker.publish("a:x", "two", KEEP_5)
    assert second.offset == 2 and same == epoch
    other, other_epoch = await broker.publish("a:y", 1, KEEP_5)
    assert other.offset == 1 and other_epoch != epoch
    assert await broker.history("a:x", KEEP_5) == HistoryResult(
        epoch, 2, [first, second]
    )


async def test_a_new_channel_is_at_offset_0() -> None:
    broker, _, _ = await started()
    result = await broker.history("a:new", KEEP_5)
    assert result.offset == 0 and result.publications == [] and result.complete
    # Nothing was missed since offset 0 of this epoch...
    assert (await broker.history("a:new", KEEP_5, since=0)).complete
    # ...but an offset it never reached is not recoverable.
    assert not (await broker.history("a:new", KEEP_5, since=1)).complete


async def test_history_is_trimmed_to_its_size() -> None:
    broker, _, _ = await started()
    for i in range(8):
        await broker.publish("a:x", i, KEEP_5)
    result = await broker.history("a:x", KEEP_5)
    assert [p.offset for p in result.publications] == [4, 5, 6, 7, 8]
    newest = await broker.history("a:x", KEEP_5, limit=2)
    assert [p.data for p in newest.publications] == [6, 7]
    assert (await broker.history("a:x", KEEP_5, limit=0)).publications == []
    # since: complete only while the history reaches back to since + 1.
    result = await broker.history("a:x", KEEP_5, since=3)
    assert result.complete
    assert [p.offset for p in result.publications] == [4, 5, 6, 7, 8]
    result = await broker.history("a:x", KEEP_5, since=5, limit=2)
    assert [p.offset for p in result.publications] == [6, 7]
    assert (await broker.history("a:x", KEEP_5, since=8)).publications == []
    result = await broker.history("a:x", KEEP_5, since=2)
    assert not result.complete and result.publications == [] and result.offset == 8


async def test_without_history_nothing_is_kept() -> None:
    broker, _, _ = await started()
    await broker.publish("a:x", 1, NO_HISTORY)
    result = await broker.history("a:x", NO_HISTORY)
    assert result.offset == 1 and result.publications == []
    assert (await broker.history("a:x", NO_HISTORY, since=1)).complete
    assert not (await broker.history("a:x", NO_HISTORY, since=0)).complete


async def test_history_expires_after_its_ttl() -> None:
    broker, clock, _ = await started()
    await broker.publish("a:x", "old", KEEP_5)
    clock.now += 40
    await broker.publish("a:x", "newer", KEEP_5)
    clock.now += 30  # "old" is 70 s old, "newer" 30 s
    result = await broker.history("a:x", KEEP_5)
    assert [p.data for p in result.publications] == ["newer"]
    assert not (await broker.history("a:x", KEEP_5, since=0)).complete
    assert (await broker.history("a:x", KEEP_5, since=1)).complete
    clock.now += 31
    result = await broker.history("a:x", KEEP_5)
    assert result.publications == [] and result.offset == 2
    assert not (await broker.history("a:x", KEEP_5, since=1)).complete


async def test_pushes_reach_only_subscribed_channels() -> None:
    broker, _, pushes = await started()
    await broker.publish("a:x", 0, KEEP_5)
    await broker.subscribe("a:x")
    publication, _ = await broker.publish("a:x", 1, KEEP_5)
    await broker.publish("a:y", 1, KEEP_5)
    await broker.add_presence("a:x", ALICE, KEEP_5)
    await broker.remove_presence("a:x", ALICE)
    await broker.remove_presence("a:x", ALICE)  # not present: no second leave
    await broker.unsubscribe("a:x")
    await broker.publish("a:x", 2, KEEP_5)
    assert pushes == [
        Push("a:x", publication=publication),
        Push("a:x", join=ALICE),
        Push("a:x", leave=ALICE),
    ]
    await broker.subscribe("a:x")
    await broker.close()
    await broker.publish("a:x", 3, KEEP_5)
    assert len(pushes) == 3


async def test_presence() -> None:
    broker, _, _ = await started()
    bob = ClientInfo("c2", "bob")
    assert await broker.presence("a:x") == []
    await broker.add_presence("a:x", ALICE, KEEP_5)
    await broker.add_presence("a:x", bob, KEEP_5)
    await broker.add_presence("a:x", ALICE, KEEP_5)
    assert await broker.presence("a:x") == [ALICE, bob]
    await broker.remove_presence("a:x", ALICE)
    assert await broker.presence("a:x") == [bob]
    await broker.remove_presence("a:nobody", ALICE)


async def test_idle_channels_are_forgotten_by_the_sweep() -> None:
    broker, clock, _ = await started()  # the first sweep is due in 60 s
    short = ChannelOptions(history_size=5, history_ttl=10)
    epochs = {}
    for name in ("a:idle", "a:subscribed", "a:present", "a:recent"):
        epochs[name] = (await broker.publish(name, 1, short))[1]
    await broker.publish("a:nohistory", 1, NO_HISTORY)
    await broker.subscribe("a:subscribed")
    await broker.add_presence("a:present", ALICE, short)
    clock.now += 11  # every history above has expired
    await broker.publish("a:recent", 2, short)
    assert len(broker._channels) == 5  # no sweep before SWEEP_INTERVAL
    clock.now += SWEEP_INTERVAL - 11
    await broker.publish("a:recent", 3, short)
    assert set(broker._channels) == {"a:subscribed", "a:present", "a:recent"}
    # A forgotten channel starts again in a new epoch: nobody can mistake
    # its offsets for the old ones.
    result = await broker.history("a:idle", short, since=1)
    assert result.epoch != epochs["a:idle"] and result.offset == 0
    assert not result.complete
    kept = await broker.history("a:subscribed", short)
    assert kept.epoch == epochs["a:subscribed"] and kept.offset == 1
    # The next sweep is SWEEP_INTERVAL later.
    clock.now += SWEEP_INTERVAL - 1
    await broker.publish("a:recent", 4, short)
    assert "a:idle" in broker._channels
    clock.now += 1
    await broker.publish("a:recent", 5, short)
    assert "a:idle" not in broker._channels


async def test_publishing_to_ever_new_names_does_not_grow_without_bound() -> None:
    broker, clock, _ = await started()
    for i in range(10_000):
        await broker.publish(f"a:{i}", i, KEEP_5)
        clock.now += 0.1  # 1,000 s in all: many sweeps, each history 60 s
    assert len(broker._channels) < 2 * (60 + SWEEP_INTERVAL) / 0.1
