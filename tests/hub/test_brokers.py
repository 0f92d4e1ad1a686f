"""The broker contract (tidings.hub.brokers.base), checked on every broker
kind of conftest.BROKERS: offsets and epochs, history, fan-out between
nodes, presence that expires, control messages and the list of nodes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tidings.hub.brokers.base import (
    Broker,
    ChannelOptions,
    ClientInfo,
    HistoryResult,
    Publication,
    Push,
)

from ..conftest import wait_for
from .conftest import Brokers, Recorder

#: Each kind once: these tests start the nodes they need themselves.
pytestmark = pytest.mark.parametrize(
    "brokers", ["memory", "redis", "cluster"], indirect=True
)

BOUND = 10
KEEP_5 = ChannelOptions(history_size=5, history_ttl=60)
NO_HISTORY = ChannelOptions()
ALICE = ClientInfo("c1", "alice")
BOB = ClientInfo("c2", "bob \x1f\x1e odd")  # user ids may hold anything


Start = Callable[..., Any]


@pytest.fixture
async def start(brokers: Brokers) -> AsyncIterator[Start]:
    """``broker, node = await start("a")``: a started broker of the kind,
    on the backend every broker of this test shares."""
    started: list[Broker] = []

    async def start_one(name: str) -> tuple[Broker, Recorder]:
        broker = brokers()
        node = Recorder()
        await broker.start(name, node)
        started.append(broker)
        return broker, node

    yield start_one
    for broker in started:
        await broker.close()


def data(value: Any) -> bytes:
    return repr(value).encode()


async def test_offsets_count_up_per_channel_in_one_epoch(start: Start) -> None:
    broker, _ = await start("a")
    offset, epoch = await broker.publish("a:x", b'"one"', KEEP_5, ALICE)
    assert offset == 1
    offset, same = await broker.publish("a:x", b'"two"', KEEP_5)
    assert offset == 2 and same == epoch
    offset, other_epoch = await broker.publish("a:y", b"1", KEEP_5)
    assert offset == 1 and other_epoch != epoch
    assert await broker.history("a:x", KEEP_5) == HistoryResult(
        epoch, 2, [Publication(1, b'"one"', ALICE), Publication(2, b'"two"')]
    )


async def test_a_new_channel_is_at_offset_0_in_an_epoch_that_stays(
    start: Start,
) -> None:
    broker, _ = await start("a")
    result = await broker.history("a:new", KEEP_5)
    assert result.offset == 0 and result.publications == [] and result.complete
    # Nothing was missed since offset 0 of this epoch...
    assert (await broker.history("a:new", KEEP_5, since=0)).complete
    # ...but an offset it never reached is not recoverable.
    assert not (await broker.history("a:new", KEEP_5, since=1)).complete
    # The first publication keeps the epoch a reader was given.
    assert (await broker.publish("a:new", b"1", KEEP_5))[1] == result.epoch


async def test_history_is_trimmed_to_its_size(start: Start) -> None:
    broker, _ = await start("a")
    for i in range(8):
        await broker.publish("a:x", data(i), KEEP_5)
    result = await broker.history("a:x", KEEP_5)
    assert [p.offset for p in result.publications] == [4, 5, 6, 7, 8]
    newest = await broker.history("a:x", KEEP_5, limit=2)
    assert [p.data for p in newest.publications] == [data(6), data(7)]
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
    result = await broker.history("a:x", KEEP_5, since=9)
    assert not result.complete
    # With limit 0 too: the answer says whether history reaches back.
    assert (await broker.history("a:x", KEEP_5, since=3, limit=0)).complete
    assert not (await broker.history("a:x", KEEP_5, since=2, limit=0)).complete


async def test_without_history_nothing_is_kept(start: Start) -> None:
    broker, _ = await start("a")
    await broker.publish("a:x", b"1", NO_HISTORY)
    result = await broker.history("a:x", NO_HISTORY)
    assert result.offset == 1 and result.publications == []
    assert (await broker.history("a:x", NO_HISTORY, since=1)).complete
    assert not (await broker.history("a:x", NO_HISTORY, since=0)).complete


async def test_pushes_reach_the_subscribed_nodes_only(start: Start) -> None:
    a, node_a = await start("a")
    b, node_b = await start("b")
    await a.publish("a:x", b"0", KEEP_5)
    await a.subscribe("a:x")
    offset, epoch = await b.publish("a:x", b'{"n":1}', KEEP_5, BOB)
    await b.publish("a:y", b"1", KEEP_5)
    await b.add_presence("a:x", ALICE, 30)
    await b.remove_presence("a:x", ALICE)
    await b.remove_presence("a:x", ALICE)  # not present: no second leave
    expected = [
        Push("a:x", "pub", epoch, offset, b'{"n":1}', BOB),
        Push("a:x", "join", info=ALICE),
        Push("a:x", "leave", info=ALICE),
    ]
    await node_a.until(lambda: len(node_a.pushes) >= 3)
    assert node_a.pushes == expected
    await a.unsubscribe("a:x")
    await b.subscribe("a:x")  # then a publication b must see, a must not
    await b.publish("a:x", b"2", KEEP_5)
    await node_b.until(lambda: len(node_b.pushes) == 1)
    await a.close()
    await b.publish("a:x", b"3", KEEP_5)
    await node_b.until(lambda: len(node_b.pushes) == 2)
    assert node_a.pushes == expected


async def test_offsets_stay_gap_free_when_every_node_publishes_at_once(
    start: Start,
) -> None:
    nodes = [await start(name) for name in ("a", "b", "c")]
    for broker, _ in nodes:
        await broker.subscribe("a:race")

    async def publish(broker: Broker, n: int) -> list[int]:
        return [(await broker.publish("a:race", b"0", KEEP_5))[0] for _ in range(n)]

    offsets = await asyncio.gather(*(publish(broker, 200) for broker, _ in nodes))
    assert sorted(o for some in offsets for o in some) == list(range(1, 601))
    for _, node in nodes:
        await node.until(lambda node=node: len(node.pushes) == 600)  # type: ignore[misc]
        assert [p.offset for p in node.pushes] == list(range(1, 601))


async def test_presence_lists_every_node_and_expires_without_refresh(
    start: Start,
) -> None:
    a, _ = await start("a")
    b, _ = await start("b")
    assert await a.presence("a:x") == []
    await a.add_presence("a:x", ALICE, 30)
    await b.add_presence("a:x", BOB, 0.3)
    await a.add_presence("a:x", ALICE, 30)  # again: still one entry
    assert sorted(await b.presence("a:x"), key=str) == sorted([ALICE, BOB], key=str)
    await a.remove_presence("a:x", ALICE)
    assert await a.presence("a:x") == [BOB]
    await a.remove_presence("a:nobody", ALICE)
    # Refreshed, an entry outlives its first TTL; then it expires.
    await b.refresh_presence("a:x", [BOB], 0.6)

    async def bob_gone() -> bool:  # b stopped refreshing
        return await a.presence("a:x") == []

    await wait_for(bob_gone, "bob's entry to expire", timeout=BOUND)


async def test_presence_stats_count_entries_and_their_users(start: Start) -> None:
    a, _ = await start("a")
    b, _ = await start("b")
    assert await a.presence_stats("a:x") == (0, 0)
    alice_again = ClientInfo("c3", "alice", {"tab": 2})
    await a.add_presence("a:x", ALICE, 30)
    await b.add_presence("a:x", alice_again, 30)
    await b.add_presence("a:x", BOB, 0.3)
    await a.add_presence("a:x", ALICE, 30)  # again: counted once
    await a.refresh_presence("a:x", [ALICE], 30)
    assert await b.presence_stats("a:x") == (3, 2)
    await a.remove_presence("a:x", ALICE)
    await a.remove_presence("a:x", ALICE)  # gone: not counted twice
    assert await a.presence_stats("a:x") == (2, 2)

    async def bob_gone() -> bool:  # b never refreshed bob's entry
        return await a.presence_stats("a:x") == (1, 1)

    await wait_for(bob_gone, "bob's entry to expire", timeout=BOUND)
    await b.remove_presence("a:x", alice_again)
    assert await a.presence_stats("a:x") == (0, 0)
    assert await a.presence("a:x") == []


async def test_presence_stats_of_10000_clients_list_nobody(start: Start) -> None:
    a, _ = await start("a")
    infos = [ClientInfo(f"c{i}", f"user{i % 2500}", {"n": i}) for i in range(10_000)]
    await a.refresh_presence("a:big", infos, 30)
    listed = 0
    original = a.presence

    async def presence(channel: str) -> list[ClientInfo]:
        nonlocal listed
        listed += 1
        return await original(channel)

    a.presence = presence  # type: ignore[method-assign]
    assert await a.presence_stats("a:big") == (10_000, 2500)
    assert listed == 0
    await a.remove_presence("a:big", infos[0])
    assert await a.presence_stats("a:big") == (9_999, 2500)


async def test_control_messages_reach_every_node(start: Start) -> None:
    a, node_a = await start("a")
    _, node_b = await start("b")
    await a.control({"op": "hello", "n": 1})
    for node in (node_a, node_b):
        await node.until(lambda node=node: node.controls != [])  # type: ignore[misc]
        assert node.controls == [{"op": "hello", "n": 1}]


async def test_nodes_are_listed_while_their_heartbeat_lasts(start: Start) -> None:
    a, _ = await start("a")
    b, _ = await start("b")
    c, _ = await start("c")
    await a.heartbeat(30)
    await b.heartbeat(30)
    await c.heartbeat(0.2)
    assert await a.nodes() >= {"a", "b"}
    await b.close()
    assert "b" not in await a.nodes()

    async def c_gone() -> bool:
        return "c" not in await a.nodes()

    await wait_for(c_gone, "c's heartbeat to expire", timeout=BOUND)
    assert await c.nodes() == {"a"}


async def test_status_is_ok_while_connected(start: Start) -> None:
    broker, _ = await start("a")
    assert broker.status()["ok"] is True


# -- idempotent publishing ------------------------------------------------------

KEYED = ChannelOptions(history_size=5, history_ttl=60, idempotency_window=300)


async def until_published(node: Recorder, offset: int) -> list[tuple[int, bytes]]:
    """The publications ``node`` received, once it received ``offset``."""
    await node.until(lambda: any(p.offset == offset for p in node.pushes))
    return [(p.offset, p.data) for p in node.pushes if p.kind == "pub"]


async def test_a_repeated_idempotency_key_publishes_once_on_any_node(
    start: Start,
) -> None:
    a, _ = await start("a")
    b, node_b = await start("b")
    await b.subscribe("a:x")
    first = await a.publish("a:x", b'"one"', KEYED, ALICE, idempotency_key="k1")
    assert first[0] == 1
    assert await b.publish("a:x", b'"again"', KEYED, idempotency_key="k1") == first
    assert await a.publish("a:x", b'"again"', KEYED, idempotency_key="k1") == first
    # Another key publishes; the first still answers its own publication.
    assert await b.publish("a:x", b'"two"', KEYED, idempotency_key="k2") == (
        2,
        first[1],
    )
    assert await b.publish("a:x", b'"again"', KEYED, idempotency_key="k1") == first
    # A key is per channel: the same key elsewhere publishes.
    other = await b.publish("a:y", b'"y"', KEYED, idempotency_key="k1")
    assert other[0] == 1 and other[1] != first[1]
    end, _ = await a.publish("a:x", b'"end"', KEYED)
    assert await until_published(node_b, end) == [
        (1, b'"one"'),
        (2, b'"two"'),
        (3, b'"end"'),
    ]
    history = await b.history("a:x", KEYED)
    assert [(p.offset, p.data, p.info) for p in history.publications] == [
        (1, b'"one"', ALICE),
        (2, b'"two"', None),
        (3, b'"end"', None),
    ]


async def test_a_key_raced_from_two_nodes_publishes_exactly_once(
    start: Start,
) -> None:
    a, _ = await start("a")
    b, node_b = await start("b")
    await b.subscribe("a:x")
    rounds, attempts = 5, 40
    for round in range(rounds):
        # Half from each node, all in flight at once.
        answers = await asyncio.gather(
            *(
                (a if i % 2 else b).publish(
                    "a:x", data(i), KEYED, idempotency_key=f"race {round}"
                )
                for i in range(attempts)
            )
        )
        assert set(answers) == {(round + 1, answers[0][1])}
    end, _ = await a.publish("a:x", b'"end"', KEYED)
    assert end == rounds + 1
    offsets = [offset for offset, _ in await until_published(node_b, end)]
    assert offsets == list(range(1, end + 1))


async def test_after_the_window_a_key_publishes_again(start: Start) -> None:
    a, _ = await start("a")
    b, _ = await start("b")
    brief = ChannelOptions(history_size=5, history_ttl=60, idempotency_window=0.2)
    first = await a.publish("a:x", b"1", brief, idempotency_key="k")

    async def published_again() -> bool:
        answer = await b.publish("a:x", b"1", brief, idempotency_key="k")
        return answer != first

    await wait_for(published_again, "the key to be forgotten", timeout=BOUND)
    # Every repeat before that published nothing.
    assert (await a.history("a:x", brief)).offset == 2


async def test_without_a_window_keys_are_ignored(start: Start) -> None:
    a, _ = await start("a")
    for offset in (1, 2):
        answer = await a.publish("a:x", b"1", KEEP_5, idempotency_key="k")
        assert answer[0] == offset
