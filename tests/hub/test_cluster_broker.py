"""The Redis Cluster broker (tidings.hub.brokers.cluster) on a real local
cluster: channels spread over the shards, sharded pub/sub only where a
node's clients need it, and a master SIGKILLed while every shard is
published to. test_brokers.py runs the broker contract on it too."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tidings.hub import Client, Hub, Publication, RecoveryFailed, Subscription
from tidings.hub.brokers.base import (
    BrokerUnavailable,
    ChannelOptions,
    OutcomeUnknown,
)
from tidings.hub.brokers.cluster import ClusterBroker, parse_cluster_url
from tidings.hub.config import ConfigError, load_config

from ..conftest import RedisCluster, wait_for
from .conftest import HTTP, Recorder, hub_config

BOUND = 30
KEEP = ChannelOptions(history_size=1000, history_ttl=600, idempotency_window=60)


def spread(cluster: RedisCluster, prefix: str, namespace: str) -> dict[int, str]:
    """A channel of ``namespace`` on each master: master port -> channel."""
    found: dict[int, str] = {}
    for i in range(100):
        channel = f"{namespace}:c{i}"
        master = cluster.master_of(f"{prefix}{{{channel}}}:meta")
        found.setdefault(master.port, channel)
        if len(found) == len(cluster.live()) // (1 + cluster.replicas):
            return found
    raise AssertionError("100 channels all hash to some masters only")


@pytest.fixture
async def brokers(redis_cluster: RedisCluster) -> AsyncIterator[list[Any]]:
    """Two started nodes' brokers and what each received, on a key prefix
    of their own."""
    started: list[Any] = []
    prefix = f"t{time.monotonic_ns()}:"
    for name in ("a", "b"):
        broker = ClusterBroker(redis_cluster.url, prefix=prefix)
        node = Recorder()
        await broker.start(name, node)
        started.append((broker, node))
    yield started
    for broker, _ in started:
        await broker.close()


def test_cluster_urls_are_checked_with_clear_errors() -> None:
    nodes, options = parse_cluster_url("rediss+cluster://:s%40cret@h1:7000,[::1]:7001")
    assert nodes == [("h1", 7000), ("::1", 7001)]
    assert options == {"ssl": True, "username": None, "password": "s@cret"}
    for url, why in [
        ("redis+cluster://h1", "is not HOST:PORT"),
        ("redis+cluster://h1:7000,:7001", "is not HOST:PORT"),
        ("redis+cluster://h1:70000", "is not HOST:PORT"),
        ("redis+cluster://h1:7000/2", "database 0 only"),
        ("redis+cluster://h1:7000?timeout=1", "no options"),
    ]:
        with pytest.raises(ConfigError, match=why):
            load_config(overrides={"broker": url})
    assert load_config(overrides={"broker": "redis+cluster://h:1,h:2"}).broker


async def test_the_broker_password_is_used_where_the_url_has_none() -> None:
    given = ClusterBroker("redis+cluster://127.0.0.1:7000", password="s3cret")
    in_url = ClusterBroker("redis+cluster://:mine@127.0.0.1:7000", password="s3cret")
    try:
        assert given._redis.connection_kwargs["password"] == "s3cret"
        assert in_url._redis.connection_kwargs["password"] == "mine"
    finally:
        await given._redis.aclose()
        await in_url._redis.aclose()


async def test_channels_on_every_shard_publish_at_once_gap_free_across_nodes(
    redis_cluster: RedisCluster, brokers: list[Any]
) -> None:
    (a, _), (b, node_b) = brokers
    channels = list(spread(redis_cluster, a._prefix, "a").values())
    assert len(channels) == 3  # one per master
    for channel in channels:
        await b.subscribe(channel)

    async def publish(broker: Any, channel: str, n: int) -> list[int]:
        return [(await broker.publish(channel, b"%d" % i, KEEP))[0] for i in range(n)]

    # Both nodes publish on every shard at once, each publish keyed: a
    # repeat on the other node publishes nothing.
    results = await asyncio.gather(
        *(publish(x, c, 20) for c in channels for x in (a, b)),
        *(
            x.publish(c, b"keyed", KEEP, idempotency_key="k")
            for c in channels
            for x in (a, b)
        ),
    )
    offsets = results[: 2 * len(channels)]
    keyed = results[2 * len(channels) :]
    for i in range(len(channels)):
        mine = sorted(offsets[2 * i] + offsets[2 * i + 1])
        assert keyed[2 * i] == keyed[2 * i + 1]  # one publication, one answer
        assert sorted([*mine, keyed[2 * i][0]]) == list(range(1, 42))

    def delivered(channel: str) -> list[int]:
        return [p.offset for p in node_b.pushes if p.channel == channel]

    await node_b.until(lambda: all(len(delivered(c)) == 41 for c in channels))
    for channel in channels:  # in offset order, each once
        assert delivered(channel) == list(range(1, 42))
        history = await a.history(channel, KEEP, since=0)
        assert history.complete and len(history.publications) == 41


async def test_a_node_subscribes_only_on_the_masters_of_its_channels(
    redis_cluster: RedisCluster, brokers: list[Any]
) -> None:
    (a, node_a), _ = brokers
    by_master = spread(redis_cluster, a._prefix, "a")
    port, channel = next(iter(by_master.items()))
    await a.subscribe(channel)
    shard_channel = a._pubsub_name(channel).decode()
    for server in redis_cluster.servers:
        # (Control messages are on a shard channel of their own.)
        listed = redis_cluster.cli(server, "PUBSUB", "SHARDCHANNELS", f"{a._prefix}{{*")
        # The channel's master has the node's subscription; no other has any.
        assert listed.split() == ([shard_channel] if server.port == port else [])
        # Publications never go by classic pub/sub, which reaches every node.
        assert redis_cluster.cli(server, "PUBSUB", "CHANNELS", f"{a._prefix}*") == "\n"
    await a.publish(channel, b"1", KEEP)
    await node_a.until(lambda: len(node_a.pushes) == 1)
    await a.unsubscribe(channel)
    await wait_for(
        lambda: (
            redis_cluster.cli(
                redis_cluster.master_of(shard_channel),
                "PUBSUB",
                "SHARDNUMSUB",
                shard_channel,
            ).split()[1]
            == "0"
        ),
        "the unsubscribe",
    )


# -- a master lost -------------------------------------------------------------


@pytest.fixture
def failover_cluster() -> Iterator[RedisCluster]:
    """A cluster of its own: 3 masters with a replica each."""
    cluster = RedisCluster(replicas=1)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


async def items(sub: Subscription, until: Any) -> list[Publication | RecoveryFailed]:
    """What ``sub`` yields (publications, and RecoveryFailed where it could
    not recover) until a publication of data ``until``, bounded."""
    got: list[Publication | RecoveryFailed] = []
    async with asyncio.timeout(BOUND):
        while True:
            try:
                got.append(await anext(sub))
            except RecoveryFailed as exc:
                got.append(exc)
                continue
            last = got[-1]
            if isinstance(last, Publication) and last.data == until:
                return got


def check_gap_free(got: list[Publication | RecoveryFailed], acked: list[Any]) -> None:
    """Every publication in order, none twice, and none missing except
    where a RecoveryFailed says so."""
    runs: list[list[int]] = [[]]
    for item in got:
        if isinstance(item, RecoveryFailed):
            runs.append([])
        else:
            runs[-1].append(item.offset)
    for run in runs:
        assert run == list(range(run[0], run[0] + len(run))) if run else True, run
    if len(runs) == 1:  # recovered: every acknowledged publication came
        data = {p.data for p in got if isinstance(p, Publication)}
        assert set(acked) <= data, set(acked) - data


async def test_a_master_killed_its_channels_answer_503_then_recover_others_never_stop(
    failover_cluster: RedisCluster, http: HTTP
) -> None:
    cluster = failover_cluster
    async with contextlib.AsyncExitStack() as stack:

        async def node() -> Hub:
            broker = ClusterBroker(cluster.url, timeout=2)
            return await stack.enter_async_context(Hub(hub_config(), broker))

        nodes = [await node(), await node()]
        by_master = spread(cluster, "tidings:", "chat")
        lost_port, lost = next(iter(by_master.items()))
        others = [c for port, c in by_master.items() if port != lost_port]
        clients = [
            await stack.enter_async_context(Client(n.ws_url, timeout=BOUND))
            for n in nodes
        ]
        subs = {
            c: [await client.subscribe(c) for client in clients]
            for c in [lost, *others]
        }
        acked: dict[str, list[Any]] = {c: [] for c in subs}
        refused: list[Exception] = []
        killed = asyncio.Event()
        back = asyncio.Event()

        async def publish_steadily(channel: str) -> None:
            # Every shard is published to, all along; each publication waits
            # for the one before (a steady stream, not a flood).
            after = 0  # publications made since the lost channel was back
            for i in range(100_000):
                if after == 5:
                    return
                try:
                    await nodes[i % 2].publish(channel, i)
                except (BrokerUnavailable, OutcomeUnknown) as exc:
                    assert channel == lost, f"{channel}, on a live master: {exc}"
                    refused.append(exc)
                    await asyncio.sleep(0.01)  # the publisher's own pace
                    continue
                acked[channel].append(i)
                if killed.is_set() and channel == lost and refused:
                    back.set()
                after += back.is_set()
                await asyncio.sleep(0.005)  # the publisher's own pace

        master = next(s for s in cluster.servers if s.port == lost_port)
        publishers = [asyncio.create_task(publish_steadily(c)) for c in subs]
        try:
            await wait_for(
                lambda: all(len(a) >= 5 for a in acked.values()), "publishing"
            )
            assert master.proc is not None
            master.proc.send_signal(signal.SIGKILL)
            master.proc.wait(10)
            master.proc = None
            started = time.monotonic()
            killed.set()
            # The lost master's channels answer 503 on every node...
            for hub in nodes:
                await wait_for(
                    lambda hub=hub: (
                        hub.broker.status()["shards"].get(f"127.0.0.1:{lost_port}")
                        not in (None, "ok")
                    ),
                    "the node to see the master lost",
                )
            answer = await http(
                nodes[1], "POST", "/api/publish", {"channel": lost, "data": "refused"}
            )
            # (A replica takes over after cluster-node-timeout, 1 s, and an
            # election: this comes well before.)
            assert answer.status == 503, answer
            # ...until a replica takes over.
            async with asyncio.timeout(BOUND):
                await back.wait()
            took = time.monotonic() - started
            print(f"a master killed: its channels published again after {took:.1f} s")
            # Refused before they were sent (503); only one in flight when
            # the master died may have an unknown outcome (504).
            assert sum(isinstance(e, OutcomeUnknown) for e in refused) <= 2, refused
            assert len(refused) > 2
            # The other shards went on all along.
            await asyncio.gather(*publishers)
        finally:
            for task in publishers:
                task.cancel()
        for channel, channel_subs in subs.items():
            for sub in channel_subs:
                got = await items(sub, acked[channel][-1])
                check_gap_free(got, acked[channel])
                if channel != lost:
                    assert not any(isinstance(x, RecoveryFailed) for x in got)


async def test_a_master_restarted_empty_resyncs_its_channels_in_a_new_epoch() -> None:
    cluster = RedisCluster()  # no replicas: the master itself comes back
    cluster.start()
    broker = ClusterBroker(cluster.url, timeout=1)
    node = Recorder()
    try:
        await broker.start("a", node)
        by_master = spread(cluster, "tidings:", "a")
        port, lost = next(iter(by_master.items()))
        other = next(c for p, c in by_master.items() if p != port)
        for channel in (lost, other):
            await broker.subscribe(channel)
            await broker.publish(channel, b"1", KEEP)
        _, epoch = await broker.publish(lost, b"2", KEEP)
        await node.until(lambda: len(node.pushes) == 3)
        master = next(s for s in cluster.servers if s.port == port)
        master.kill()
        name = f"127.0.0.1:{port}"
        await wait_for(lambda: broker.status()["shards"][name] != "ok", "the loss")
        with pytest.raises(BrokerUnavailable):
            await broker.publish(lost, b"refused", KEEP)
        await broker.publish(other, b"2", KEEP)  # the other shards go on
        master.start()  # without persistence: empty
        await wait_for(lambda: broker.status()["shards"][name] == "ok", "its return")
        # Its channels are told where they are: a new epoch, as the history
        # is gone, so their clients learn that recovery failed.
        await node.until(lambda: any(p.kind == "position" for p in node.pushes))
        [position] = [p for p in node.pushes if p.kind == "position"]
        assert (position.channel, position.offset) == (lost, 0)
        assert position.epoch != epoch
        offset, new_epoch = await broker.publish(lost, b"again", KEEP)
        await node.until(lambda: node.pushes[-1].data == b"again")
        assert (offset, new_epoch) == (1, position.epoch)
    finally:
        await broker.close()
        cluster.remove()


async def test_a_node_started_before_its_cluster_waits_for_it() -> None:
    cluster = RedisCluster()
    broker = ClusterBroker(cluster.url, timeout=0.2)
    try:
        await broker.start("a", Recorder())
        assert broker.status()["ok"] is False
        with pytest.raises(BrokerUnavailable):
            await broker.history("a:x", KEEP)
        cluster.start()
        await wait_for(lambda: broker.status()["ok"], "the cluster", timeout=BOUND)
        await wait_for(
            lambda: all(s == "ok" for s in broker.status()["shards"].values()),
            "every master",
            timeout=BOUND,
        )
        assert (await broker.history("a:x", KEEP)).offset == 0
    finally:
        await broker.close()
        cluster.remove()


async def test_a_master_behind_what_a_node_saw_gives_the_channel_a_new_epoch(
    redis_cluster: RedisCluster, brokers: list[Any]
) -> None:
    (a, _), (b, node_b) = brokers
    channel = "a:behind"
    await b.subscribe(channel)
    for i in range(3):
        _, epoch = await a.publish(channel, b"%d" % i, KEEP)
    # As a replica that missed the last write would be, once promoted.
    meta = f"{a._prefix}{{{channel}}}:meta"
    redis_cluster.cli(redis_cluster.master_of(meta), "HSET", meta, "offset", "2")
    offset, new_epoch = await a.publish(channel, b"next", KEEP)
    assert (offset, new_epoch != epoch) == (3, True)  # offset 3, never in epoch
    # Every node subscribed hears of it, by the channel's own shard.
    await node_b.until(lambda: node_b.pushes[-1].data == b"next")
    kinds = [(p.kind, p.epoch) for p in node_b.pushes[3:]]
    assert kinds == [("position", new_epoch), ("pub", new_epoch)]


def move_slot(cluster: RedisCluster, key: str) -> None:
    """Move ``key``'s slot, and its keys, to another master (as
    ``redis-cli --cluster reshard`` does, one slot)."""
    slot = cluster.cli(cluster.servers[0], "CLUSTER", "KEYSLOT", key).strip()
    source = cluster.master_of(key)
    target = next(s for s in cluster.servers if s is not source)
    ids = {s: cluster.cli(s, "CLUSTER", "MYID").strip() for s in (source, target)}
    cluster.cli(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
    cluster.cli(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
    keys = cluster.cli(source, "CLUSTER", "GETKEYSINSLOT", slot, "1000").split()
    port = str(target.port)
    cluster.cli(source, "MIGRATE", "127.0.0.1", port, "", "0", "5000", "KEYS", *keys)
    for server in cluster.servers:
        cluster.cli(server, "CLUSTER", "SETSLOT", slot, "NODE", ids[target])
    assert cluster.master_of(key) is target


async def test_a_channel_whose_slot_moves_is_delivered_from_its_new_master(
    redis_cluster: RedisCluster, brokers: list[Any]
) -> None:
    (a, node_a), (b, _) = brokers
    channel = "a:moving"
    await a.subscribe(channel)
    await b.publish(channel, b"before", KEEP)
    await node_a.until(lambda: len(node_a.pushes) == 1)
    move_slot(redis_cluster, f"{a._prefix}{{{channel}}}:meta")
    # The old master ends the subscription; the node subscribes the channel
    # on the new one, and tells its subscribers where it is.
    await node_a.until(lambda: any(p.kind == "position" for p in node_a.pushes))
    offset, _ = await b.publish(channel, b"after", KEEP)
    await node_a.until(lambda: node_a.pushes[-1].data == b"after")
    assert [p.offset for p in node_a.pushes if p.kind == "pub"] == [1, offset]
    assert offset == 2  # the keys moved with the slot
