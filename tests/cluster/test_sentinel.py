"""``tidings serve --broker redis+sentinel://...``: a master, a replica and
three sentinels, all real ``redis-server`` processes; the master SIGKILLed
under steady publishing, with the replica in step or held behind (the
writes it never received are lost in the failover, as with asynchronous
replication); the nodes find the new master, answer 503 meanwhile, and
their clients end with every publication in order or an explicit
``recovered: false``. Also: the URL's parsing, and a master demoted to a
read-only replica."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
import trustme
from redis.asyncio import Redis

from tidings.hub import Client, Publication, RecoveryFailed
from tidings.hub.app import make_broker
from tidings.hub.brokers.base import BrokerUnavailable, ChannelOptions
from tidings.hub.brokers.redis import (
    RedisBroker,
    SentinelURL,
    parse_sentinel_url,
)
from tidings.hub.config import ConfigError, load_config

from ..conftest import RedisServer, Sentinels, free_port, wait_for
from ..hub.conftest import Recorder
from .conftest import BOUND, Cluster, RedisFactory
from .test_cluster import (
    HTTPPublisher,
    Received,
    catch_up,
    health,
    next_push,
    offsets,
)

# -- the URL ----------------------------------------------------------------------


def test_a_sentinel_url_names_the_sentinels_the_master_and_the_database() -> None:
    assert parse_sentinel_url(
        "redis+sentinel://:s%40cret@10.0.0.1:26379,[::1]:26380/mymaster/2"
    ) == SentinelURL(
        (("10.0.0.1", 26379), ("::1", 26380)), "mymaster", 2, password="s@cret"
    )
    assert parse_sentinel_url(
        "rediss+sentinel://app:pw@h:1/m?ssl_ca_certs=/etc/ca.pem"
    ) == SentinelURL(
        (("h", 1),),
        "m",
        tls=True,
        username="app",
        password="pw",
        options=(("ssl_ca_certs", "/etc/ca.pem"),),
    )


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("redis+sentinel://h/m", "each sentinel must be HOST:PORT"),
        ("redis+sentinel://h:1,/m", "each sentinel must be HOST:PORT"),
        ("redis+sentinel://h:70000/m", "each sentinel must be HOST:PORT"),
        ("redis+sentinel://h:1", "path is /MASTER_NAME or /MASTER_NAME/DB"),
        ("redis+sentinel://h:1/m/x", "path is /MASTER_NAME or /MASTER_NAME/DB"),
        ("redis+sentinel://h:1/m/0/1", "path is /MASTER_NAME or /MASTER_NAME/DB"),
        ("redis+sentinel://h:1/m?db=1", "options are ssl_ca_certs"),
        ("redis+sentinel://h:1/m?ssl_ca_certs=x", "with rediss+sentinel:// only"),
        ("rediss+sentinel://h:1/m?&", "options are ssl_ca_certs"),
        ("sentinel://h:1/m", "must be memory or a redis://"),
    ],
)
def test_a_bad_sentinel_url_is_a_clear_config_error(url: str, error: str) -> None:
    with pytest.raises(ConfigError, match=r"^broker.*" + re.escape(error)):
        load_config(overrides={"broker": url})


async def test_the_status_names_the_master_and_sentinels_never_the_password() -> None:
    # No sentinel listens there: no master can be found.
    sentinels = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    broker = RedisBroker(f"redis+sentinel://:hunter2@{sentinels}/mymaster", timeout=0.5)
    await broker.start("n", Recorder())
    try:
        status = broker.status()
        assert status["ok"] is False
        assert status["server"] == f"master mymaster/0 via sentinels {sentinels}"
        assert status["master"] == "mymaster"
        assert status["sentinels"] == sentinels.split(",")
        assert status["master_at"] is None
        assert status["error"].startswith("No master found for 'mymaster'"), status
        assert "hunter2" not in repr(status)
    finally:
        await broker.close()


@pytest.mark.parametrize("where", ["url", "env"])
async def test_the_password_comes_from_the_url_or_the_environment(where: str) -> None:
    # Sentinel itself is asked without a password; the master needs one.
    master = RedisServer(args=["--requirepass", "s3cret"])
    sentinel = RedisServer(
        config=f"sentinel monitor m 127.0.0.1 {master.port} 1\n"
        "sentinel auth-pass m s3cret\n",
        args=["--sentinel"],
    )
    try:
        master.start()
        sentinel.start()
        url = f"redis+sentinel://127.0.0.1:{sentinel.port}/m"
        env = {}
        if where == "url":
            url = url.replace("//", "//:s3cret@")
        else:
            env["TIDINGS_BROKER_PASSWORD"] = "s3cret"
        broker = make_broker(load_config(env=env, overrides={"broker": url}))
        assert isinstance(broker, RedisBroker)
        await broker.start("n", Recorder())
        try:
            status = broker.status()
            assert status["ok"] is True, status
            assert "s3cret" not in repr(status)
            await broker.publish("a:x", b"1", ChannelOptions())
        finally:
            await broker.close()
        # Without it (or with a wrong one), the node says why.
        broker = RedisBroker(url.replace("s3cret", "wrong"), timeout=0.5)
        await broker.start("n", Recorder())
        try:
            error = broker.status()["error"]
            assert "password" in error or "authenticated" in error, error
        finally:
            await broker.close()
    finally:
        sentinel.remove()
        master.remove()


async def test_rediss_sentinel_speaks_tls_to_the_sentinels_and_the_master(
    tls_ca: trustme.CA, tmp_path: Path
) -> None:
    ca, cert, key = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    issued = tls_ca.issue_cert("127.0.0.1")
    tls_ca.cert_pem.write_to_path(str(ca))
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    tls = ["--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    tls += ["--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"]
    # Sentinel reaches the master over TLS too.
    tls += ["--tls-replication", "yes"]
    # Each also listens in the clear, where the fixture checks it started.
    master_port, sentinel_port = free_port(), free_port()
    master = RedisServer(args=[*tls, "--tls-port", str(master_port)])
    sentinel = RedisServer(
        config=f"sentinel monitor m 127.0.0.1 {master_port} 1\n",
        args=["--sentinel", *tls, "--tls-port", str(sentinel_port)],
    )
    try:
        master.start()
        sentinel.start()
        url = f"rediss+sentinel://127.0.0.1:{sentinel_port}/m?ssl_ca_certs={ca}"
        broker = RedisBroker(url)
        await broker.start("n", Recorder())
        try:
            assert broker.status()["ok"] is True, broker.status()
            assert await broker.publish("a:x", b"1", ChannelOptions()) == (1, ANY)
        finally:
            await broker.close()
    finally:
        sentinel.remove()
        master.remove()


# -- a failover under load --------------------------------------------------------


@pytest.fixture
async def sentinels() -> AsyncIterator[Sentinels]:
    group = Sentinels()
    try:
        await group.start()
        yield group
    finally:
        await asyncio.to_thread(group.remove)


@pytest.mark.parametrize("replica", ["in-step", "behind"])
async def test_a_master_killed_under_load_fails_over_without_a_silent_gap(
    sentinels: Sentinels, cluster: Cluster, replica: str
) -> None:
    # sentinels comes first, so that the nodes stop before their Redis.
    nodes = [await cluster.start_node(sentinels.url) for _ in range(2)]
    channel = "chat:failover"
    for node in nodes:
        status, body = await health(node)
        assert status == 200, body
        assert body["broker"]["master"] == sentinels.name, body
        assert body["broker"]["master_at"] == f"127.0.0.1:{sentinels.master.port}"
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(Client(node.ws_url, timeout=BOUND))
            for node in nodes
            for _ in range(2)
        ]
        subs = [await client.subscribe(channel) for client in clients]
        first_epoch = subs[0].epoch
        assert first_epoch is not None
        received = [Received() for _ in subs]
        consumers = [
            asyncio.create_task(r.consume(sub))
            for r, sub in zip(received, subs, strict=True)
        ]
        raws = [await cluster.connect(node) for node in nodes]
        for raw in raws:
            await raw.result("subscribe", channel=channel)

        publisher = HTTPPublisher(nodes, channel)
        publishing = asyncio.create_task(publisher.run())
        try:
            await publisher.until(lambda: len(publisher.ok) >= 30, "30 publications")
            if replica == "behind":
                # The replica stops applying what the master sends it (it
                # still reads it): what follows is acknowledged by the
                # master alone, and lost when the replica is promoted.
                async with Redis(port=sentinels.replica.port) as client:
                    await client.client_pause(BOUND * 1000, all=False)
                made = len(publisher.ok)
                await publisher.until(
                    lambda: len(publisher.ok) >= made + 20,
                    "20 publications the replica does not have",
                )
            await asyncio.to_thread(sentinels.master.kill)
            killed = time.monotonic()
            if replica == "behind":
                # Once the replica notices, it drops what it read and did
                # not apply; it must answer the sentinels again to be
                # promoted (a paused Redis does not).
                async with Redis(port=sentinels.replica.port) as client:

                    async def link_down() -> bool:
                        info = await client.info("replication")
                        return bool(info["master_link_status"] == "down")

                    await wait_for(link_down, "the replica to lose its master")
                    await client.client_unpause()

            # Each node says 503 while it has no master (seen once each: the
            # failover may be over on one before the other is asked).
            unhealthy: dict[int, Any] = {}

            async def all_unhealthy() -> bool:
                for i, node in enumerate(nodes):
                    if i not in unhealthy:
                        status, body = await health(node)
                        if status == 503:
                            unhealthy[i] = body
                return len(unhealthy) == len(nodes)

            await wait_for(all_unhealthy, "/healthz to say 503 on every node")
            for body in unhealthy.values():
                assert body["broker"]["ok"] is False, body
                assert sentinels.name in body["broker"]["server"], body

            async def promoted() -> bool:
                return await sentinels.master_port() == sentinels.replica.port

            try:
                await wait_for(promoted, "the sentinels to promote the replica")
            except AssertionError as exc:
                raise AssertionError(f"{exc}:\n{sentinels.logs()}") from None

            async def all_healthy() -> bool:
                return all([(await health(node))[0] == 200 for node in nodes])

            await wait_for(all_healthy, "/healthz to say 200 again on every node")
            for node in nodes:
                _, body = await health(node)
                master_at = f"127.0.0.1:{sentinels.replica.port}"
                assert body["broker"]["master_at"] == master_at, body
            await publisher.until(
                lambda: publisher.successes_since(killed) >= 30,
                "30 publications after the failover",
            )
        finally:
            publisher.stopping = True
            async with asyncio.timeout(BOUND):
                await publishing

        # The time from the kill to the first publish that succeeded.
        first = min(n for n in publisher.ok if publisher.times[n][0] >= killed)
        failover = publisher.times[first][1] - killed
        print(f"\nfailover ({replica}): first publish {failover:.2f} s after the kill")

        ok = publisher.ok
        data_of = {position: {"n": n} for n, position in ok.items()}
        unknown_data = [{"n": n} for n in publisher.unknown]
        last_offset, last_epoch = ok[max(ok)]
        if replica == "behind":
            assert last_epoch != first_epoch

        await catch_up(received, subs, first_epoch, (last_epoch, last_offset))
        for r in received:
            failures = [i for i in r.items if isinstance(i, RecoveryFailed)]
            # Every publication in order and once, each epoch's offsets
            # contiguous; a gap only where the subscription says so.
            assert len(failures) == 1 if replica == "behind" else len(failures) <= 1
            epoch, expected = first_epoch, 1
            for item in r.items:
                if isinstance(item, RecoveryFailed):
                    epoch, expected = item.epoch, item.offset + 1
                    continue
                assert isinstance(item, Publication)
                assert item.offset == expected, r.summary(first_epoch)
                expected += 1
                if (item.offset, epoch) in data_of:
                    assert item.data == data_of[(item.offset, epoch)], item
                else:  # the publish answered 504: its outcome unknown
                    assert item.data in unknown_data, item

        # A client whose position is ahead of what the new master has (it
        # saw the writes lost in the failover) is told it cannot recover;
        # one that is not gets exactly what it missed.
        for raw in raws:
            seen: list[dict[str, Any]] = []
            position = None
            for _ in range(len(publisher.times) + 100):
                push = await next_push(raw)
                if "position" in push:
                    position = push["position"]
                    break
                seen.append(push["pub"])
            assert position is not None
            old = [pub for pub in seen if pub["epoch"] == first_epoch]
            assert offsets(old) == list(range(1, len(old) + 1))
            await raw.result("unsubscribe", channel=channel)
            since = {"offset": len(old), "epoch": first_epoch}
            result = await raw.result("subscribe", channel=channel, since=since)
            assert (result["epoch"], result["offset"]) == (last_epoch, last_offset)
            if last_epoch != first_epoch:
                assert result["recovered"] is False, result
                assert "publications" not in result, result
            else:
                assert result["recovered"] is True, result
                assert offsets(result["publications"]) == list(
                    range(len(old) + 1, last_offset + 1)
                )

        for consumer in consumers:
            consumer.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)


# -- a master demoted --------------------------------------------------------------


async def test_a_master_turned_read_only_replica_counts_as_lost(
    redis_factory: RedisFactory,
) -> None:
    # No sentinel here: a node on a plain URL whose Redis becomes a replica
    # (what a failover makes of an old master) must not stay on it
    # believing it is up; it drops its connection and makes a new one.
    master, other = redis_factory(), redis_factory()
    broker = RedisBroker(master.url)
    node = Recorder()
    await broker.start("n", node)
    try:
        await broker.subscribe("a:x")
        await broker.publish("a:x", b"1", ChannelOptions())
        async with Redis(port=master.port) as client:
            await client.replicaof("127.0.0.1", other.port)
        with pytest.raises(BrokerUnavailable, match=r"read only replica"):
            await broker.publish("a:x", b"2", ChannelOptions())
        # The pub/sub connection was dropped: the node reconnected and
        # resynced its channels.
        await node.until(lambda: node.reconnected == 1)
    finally:
        await broker.close()
