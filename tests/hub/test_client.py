"""tidings.hub.Client against a real hub: commands, subscriptions, and
reconnecting with recovery; and against a hub that asks an application
(the back end of proxy_backend.py, as in test_proxy.py): connect data,
info, rpc and server-side subscriptions."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tidings import ConnectionClosed
from tidings.hub import (
    Client,
    Hub,
    HubError,
    MemoryBroker,
    Publication,
    RecoveryFailed,
    Subscription,
)
from tidings.hub.brokers.base import ClientInfo, Push

from ..conftest import Backend, lose
from .conftest import CLUSTERS, as_user

BOUND = 10
FAST = {"backoff_initial": 0.05, "backoff_max": 0.2, "timeout": BOUND}


def url(hub: Hub) -> str:
    return f"ws://127.0.0.1:{hub.port}/ws"


async def take(sub: Subscription, n: int) -> list[Publication]:
    out = []
    async with asyncio.timeout(BOUND):
        async for pub in sub:
            out.append(pub)
            if len(out) == n:
                break
    return out


async def test_subscribe_and_publish_round_trip(start_hub: Any, mint: Any) -> None:
    hub = await start_hub()
    async with Client(url(hub), token=mint("alice"), **FAST) as client:
        assert client.user == "alice" and client.client_id
        sub = await client.subscribe("chat:c")
        assert sub.offset == 0 and sub.epoch
        offset, epoch = await client.publish("chat:c", {"text": "hi"})
        assert (offset, epoch) == (1, sub.epoch)
        await hub.publish("chat:c", "from the back end")
        first, second = await take(sub, 2)
        assert first == Publication(
            1, {"text": "hi"}, ClientInfo(client.client_id, "alice")
        )
        assert second == Publication(2, "from the back end", None)
        assert sub.offset == 2


async def test_a_publish_sent_again_with_its_key_is_made_once(
    start_hub: Any,
) -> None:
    hub = await start_hub()
    async with Client(url(hub), **FAST) as client:
        first = await client.publish("chat:k", "once", idempotency_key="order-7")
        again = await client.publish("chat:k", "twice", idempotency_key="order-7")
        assert again == first == (1, first[1])
        assert await client.publish("chat:k", "another", idempotency_key="8") == (
            2,
            first[1],
        )
        history = await client.history("chat:k")
        assert [p.data for p in history.publications] == ["once", "another"]
        with pytest.raises(HubError) as refused:
            await client.publish("chat:k", "x", idempotency_key="k" * 65)
        assert refused.value.code == 400


async def test_presence_and_history(start_hub: Any) -> None:
    hub = await start_hub()
    async with Client(url(hub), **FAST) as client:
        await client.subscribe("chat:p")
        assert await client.presence("chat:p") == [ClientInfo(client.client_id, "")]
        for i in range(5):
            await client.publish("short:h", i)
        history = await client.history("short:h", limit=2)
        assert [p.data for p in history.publications] == [3, 4]
        assert history.offset == 5 and history.complete
        since = await client.history("short:h", since=(3, history.epoch))
        assert [p.offset for p in since.publications] == [4, 5]
        gone = await client.history("short:h", since=(3, "another epoch"))
        assert not gone.complete and gone.publications == []


async def test_presence_info_from_the_token_and_presence_stats(
    start_hub: Any, mint: Any
) -> None:
    hub = await start_hub()
    token = mint("alice", info={"name": "Alice"})
    async with (
        Client(url(hub), token=token, **FAST) as alice,
        Client(url(hub), token=mint("bob"), **FAST) as bob,
    ):
        await alice.subscribe("chat:s")
        await bob.subscribe("chat:s")
        presence = await bob.presence("chat:s")
        assert {(c.user, str(c.info)) for c in presence} == {
            ("alice", "{'name': 'Alice'}"),
            ("bob", "None"),
        }
        stats = await alice.presence_stats("chat:s")
        assert stats == (2, 2) and (stats.clients, stats.users) == (2, 2)


async def test_error_replies_raise_hub_error(start_hub: Any) -> None:
    hub = await start_hub()
    async with Client(url(hub), **FAST) as client:
        with pytest.raises(HubError) as info:
            await client.publish("news:x", 1)
        assert (info.value.code, info.value.message) == (
            403,
            "not allowed to publish to news:x",
        )
        with pytest.raises(HubError) as info:
            await client.subscribe("nowhere:x")
        assert info.value.code == 404
        with pytest.raises(HubError) as info:
            await client.subscribe("private:x")
        assert info.value.code == 403
        sub = await client.subscribe("news:x")  # still usable after errors
        with pytest.raises(HubError) as info:
            await client.subscribe("news:x")
        assert info.value.code == 409
        await hub.publish("news:x", "ok")
        assert [p.data for p in await take(sub, 1)] == ["ok"]


async def test_a_refused_token_raises_on_open(start_hub: Any, mint: Any) -> None:
    hub = await start_hub()
    with pytest.raises(HubError) as info:
        async with Client(url(hub), token=mint("alice", ttl=-5), **FAST):
            pass
    assert (info.value.code, info.value.message) == (401, "token expired")


async def test_commands_time_out(
    start_hub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = await start_hub()
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def hang(*args: Any, **kwargs: Any) -> Any:
        await never

    monkeypatch.setattr(hub.broker, "presence", hang)
    async with Client(url(hub), **{**FAST, "timeout": 0.2}) as client:
        with pytest.raises(TimeoutError):
            await client.presence("chat:x")
    never.cancel()


async def test_unsubscribe_ends_the_iteration(start_hub: Any) -> None:
    hub = await start_hub()
    async with Client(url(hub), **FAST) as client:
        sub = await client.subscribe("news:u")
        await hub.publish("news:u", 1)
        assert [p.data for p in await take(sub, 1)] == [1]
        await sub.unsubscribe()
        async with asyncio.timeout(BOUND):
            assert [p async for p in sub] == []
        assert hub.subscriber_count("news:u") == 0
        await sub.unsubscribe()  # again: nothing to do
        again = await client.subscribe("news:u")  # the channel can be reused
        await hub.publish("news:u", 2)
        assert [p.data for p in await take(again, 1)] == [2]


async def test_closing_the_client_ends_every_subscription(start_hub: Any) -> None:
    hub = await start_hub()
    async with Client(url(hub), **FAST) as client:
        sub = await client.subscribe("news:z")
        reader = asyncio.create_task(take(sub, 10))
    async with asyncio.timeout(BOUND):
        assert await reader == []
    with pytest.raises(ConnectionClosed):
        await client.publish("chat:z", 1)


async def test_callbacks_instead_of_iteration(start_hub: Any) -> None:
    hub = await start_hub()
    async with Client(url(hub), **FAST) as client:
        received: list[Publication] = []
        done = asyncio.Event()

        def on_publication(pub: Publication) -> None:
            received.append(pub)
            if len(received) == 3:
                done.set()

        sub = await client.subscribe("chat:cb", on_publication)
        joins: list[ClientInfo] = []
        sub.on_join = joins.append
        async with Client(url(hub), **FAST) as other:
            await other.subscribe("chat:cb")
            for i in range(3):
                await other.publish("chat:cb", i)
        async with asyncio.timeout(BOUND):
            await done.wait()
        assert [p.data for p in received] == [0, 1, 2]
        # (Our own join may have come before on_join was set.)
        assert [j.client for j in joins if j.client != client.client_id] == [
            other.client_id
        ]


async def test_reconnect_after_a_drop_recovers_every_missed_publication(
    start_hub: Any,
) -> None:
    hub = await start_hub()
    requests = []
    read_history = hub.broker.history

    async def history(*args: Any, **kwargs: Any) -> Any:
        result = await read_history(*args, **kwargs)
        requests.append((kwargs.get("since"), len(result.publications)))
        return result

    hub.broker.history = history  # type: ignore[method-assign]
    async with Client(url(hub), **FAST) as client:
        sub = await client.subscribe("chat:d")
        for i in range(5):
            await hub.publish("chat:d", i)
        assert [p.offset for p in await take(sub, 5)] == [1, 2, 3, 4, 5]
        first_id = client.client_id
        # The hub drops the client as too slow (4005): it should reconnect
        # and recover. The next 100 publications happen before it can.
        [session] = hub._sessions
        hub.drop_slow(session.ws)
        for i in range(5, 105):
            await hub.publish("chat:d", i)
        recovered = await take(sub, 100)
        assert [p.offset for p in recovered] == list(range(6, 106))
        assert [p.data for p in recovered] == list(range(5, 105))
        assert client.client_id != first_id
        # Recovered by a subscribe with since (all 100 in its reply where
        # the broker never yields; with Redis the reconnect may come sooner).
        assert any(since == 5 and n > 0 for since, n in requests), requests
        # Then live publications, with no gap.
        offset, _ = await client.publish("chat:d", "live")
        assert offset == 106
        [live] = await take(sub, 1)
        assert (live.offset, live.data) == (106, "live")


async def test_reconnect_after_a_lost_connection_while_publishing(
    start_hub: Any,
) -> None:
    hub = await start_hub()
    async with Client(url(hub), **FAST) as client:
        sub = await client.subscribe("chat:l")
        count = 500  # within the channel's history

        async def publish() -> None:
            for i in range(count):
                await hub.publish("chat:l", i)
                await asyncio.sleep(0)  # let the client read and reconnect

        publisher = asyncio.create_task(publish())
        received = await take(sub, 20)
        first_id = client.client_id
        [session] = hub._sessions
        session.ws._transport.abort()  # the connection is lost: 1006
        received += await take(sub, count - 20)
        await publisher
        assert client.client_id != first_id
        assert [p.data for p in received] == list(range(count))


async def test_reconnect_to_a_restarted_hub_signals_recovery_failed(
    start_hub: Any,
) -> None:
    hub = await start_hub(broker=MemoryBroker())
    port = hub.port
    async with Client(url(hub), **FAST) as client:
        sub = await client.subscribe("chat:r")
        failures: list[RecoveryFailed] = []
        sub.on_recovery_failed = failures.append
        await hub.publish("chat:r", "before")
        assert [p.data for p in await take(sub, 1)] == ["before"]
        old_epoch = sub.epoch
        await hub.close()  # clients get 1001 and reconnect with backoff
        # A new hub on the same port, with a new memory broker: the
        # channel's history is gone, in a new epoch.
        hub = await start_hub(broker=MemoryBroker(), port=port)
        with pytest.raises(RecoveryFailed) as info:
            await take(sub, 1)
        assert info.value.channel == "chat:r"
        assert info.value.epoch != old_epoch and info.value.offset == 0
        assert failures == [info.value]
        # The subscription goes on, live, in the new epoch.
        await hub.publish("chat:r", "after")
        [pub] = await take(sub, 1)
        assert (pub.offset, pub.data) == (1, "after")
        assert sub.epoch == info.value.epoch


async def test_commands_wait_for_the_reconnect(start_hub: Any) -> None:
    hub = await start_hub(broker=MemoryBroker())
    port = hub.port
    async with Client(url(hub), **FAST) as client:
        sub = await client.subscribe("news:w")
        await hub.close()
        publish = asyncio.create_task(client.publish("chat:w", "queued"))
        hub = await start_hub(broker=MemoryBroker(), port=port)
        async with asyncio.timeout(BOUND):
            assert (await publish)[0] == 1
        with pytest.raises(RecoveryFailed):
            await take(sub, 1)


async def test_disconnect_through_the_api_is_final(start_hub: Any, mint: Any) -> None:
    hub = await start_hub()
    async with Client(url(hub), token=mint("alice"), **FAST) as client:
        sub = await client.subscribe("news:f")
        assert hub.disconnect("alice") == 1
        with pytest.raises(ConnectionClosed) as info:
            await take(sub, 1)
        assert info.value.code == 4003
        with pytest.raises(ConnectionClosed):
            await client.publish("chat:f", 1)
        assert not client.connected


async def test_a_resubscribe_that_is_refused_ends_the_subscription(
    start_hub: Any,
) -> None:
    hub = await start_hub(broker=MemoryBroker())
    port = hub.port
    async with Client(url(hub), **FAST) as client:
        sub = await client.subscribe("news:gone")
        kept = await client.subscribe("chat:kept")
        await hub.close()
        # The hub comes back without the "news" namespace.
        namespaces = {"chat": hub.config.namespaces["chat"]}
        hub = await start_hub(broker=MemoryBroker(), port=port, namespaces=namespaces)
        with pytest.raises(HubError) as info:
            await take(sub, 1)
        assert info.value.code == 404
        async with asyncio.timeout(BOUND):
            assert [p async for p in sub] == []  # ended
        with pytest.raises(RecoveryFailed):
            await take(kept, 1)
        assert client.connected
        await hub.publish("chat:kept", "still")
        assert [p.data for p in await take(kept, 1)] == ["still"]


async def test_a_token_refused_on_reconnect_ends_everything(
    start_hub: Any, mint: Any
) -> None:
    hub = await start_hub()
    async with Client(url(hub), token=mint("alice"), **FAST) as client:
        sub = await client.subscribe("news:t")
        client.token = mint("alice", ttl=-5)  # it expired while connected
        [session] = hub._sessions
        hub.drop_slow(session.ws)
        with pytest.raises(HubError) as info:
            await take(sub, 1)
        assert (info.value.code, info.value.message) == (401, "token expired")
        with pytest.raises(HubError):
            await client.presence("chat:x")
        assert not client.connected


async def test_get_token_keeps_the_connection_past_its_tokens(
    start_hub: Any, mint: Any
) -> None:
    hub = await start_hub()
    calls = 0
    refreshed_twice = asyncio.Event()

    async def get_token() -> str:
        nonlocal calls
        calls += 1
        if calls == 3:  # connect, then two refreshes
            refreshed_twice.set()
        return str(mint("alice", ttl=2))

    async with Client(url(hub), get_token=get_token, **FAST) as client:
        first_id = client.client_id
        sub = await client.subscribe("news:r")
        async with asyncio.timeout(BOUND):
            await refreshed_twice.wait()
        # The first token has expired by now; the connection is the same.
        await hub.publish("news:r", "still here")
        assert [p.data for p in await take(sub, 1)] == ["still here"]
        assert client.connected and client.client_id == first_id


async def test_a_token_that_expires_unrefreshed_ends_everything(
    start_hub: Any, mint: Any
) -> None:
    hub = await start_hub()
    async with Client(url(hub), token=mint("alice", ttl=1), **FAST) as client:
        sub = await client.subscribe("news:e")
        with pytest.raises(ConnectionClosed) as info:
            await take(sub, 1)
        assert info.value.code == 4002
        assert not client.connected


async def test_refresh_by_hand_replaces_the_token(start_hub: Any, mint: Any) -> None:
    hub = await start_hub()
    async with Client(url(hub), token=mint("alice", ttl=60), **FAST) as client:
        assert 3590 <= await client.refresh(mint("alice")) <= 3600
        with pytest.raises(HubError) as info:
            await client.refresh(mint("bob"))
        assert info.value.code == 403


async def test_an_offset_skipped_live_is_recovered_in_order(start_hub: Any) -> None:
    hub = await start_hub()
    async with Client(url(hub), **FAST) as client:
        sub = await client.subscribe("chat:gap")
        lost = lose(hub, {2, 3})
        for i in range(1, 6):
            await hub.publish("chat:gap", i)
        received = await take(sub, 5)
        assert [(p.offset, p.data) for p in received] == [(n, n) for n in range(1, 6)]
        assert [p.offset for p in lost] == [2, 3]  # they did go missing
        await hub.publish("chat:gap", 6)
        [live] = await take(sub, 1)
        assert live.offset == 6


async def test_a_position_ahead_of_the_subscription_is_recovered(
    start_hub: Any,
) -> None:
    hub = await start_hub()
    async with Client(url(hub), **FAST) as client:
        sub = await client.subscribe("chat:behind")
        lose(hub, {1, 2})
        offset, epoch = (0, "")
        for i in (1, 2):
            offset, epoch = await hub.publish("chat:behind", i)
        # Nothing else will be published: only the position tells.
        hub.on_push(Push("chat:behind", "position", epoch, offset))
        assert [p.data for p in await take(sub, 2)] == [1, 2]


async def test_a_new_epoch_live_means_recovery_failed(start_hub: Any) -> None:
    hub = await start_hub(broker=MemoryBroker())
    async with Client(url(hub), **FAST) as client:
        sub = await client.subscribe("chat:epoch")
        await hub.publish("chat:epoch", "old")
        [old] = await take(sub, 1)
        old_epoch = sub.epoch
        # The broker loses the channel (a Redis restarted without
        # persistence would): its offsets start again in a new epoch.
        assert isinstance(hub.broker, MemoryBroker)
        del hub.broker.backend.channels["chat:epoch"]
        await hub.publish("chat:epoch", "new 1")
        async with asyncio.timeout(BOUND):
            with pytest.raises(RecoveryFailed) as failed:
                await sub.__anext__()
        assert failed.value.epoch != old_epoch and failed.value.offset == 1
        await hub.publish("chat:epoch", "new 2")
        [new] = await take(sub, 1)
        assert (new.offset, new.data, sub.epoch) == (2, "new 2", failed.value.epoch)
        assert old.offset == 1


async def test_the_hub_unsubscribing_the_client_ends_the_iteration(
    start_hub: Any, mint: Any, http: Any
) -> None:
    hub = await start_hub()
    async with Client(url(hub), token=mint("alice"), **FAST) as client:
        sub = await client.subscribe("chat:kick")
        kept = await client.subscribe("chat:stay")
        answer = await http(
            hub, "POST", "/api/unsubscribe", {"user": "alice", "channel": "chat:kick"}
        )
        assert answer.json() == {"unsubscribed": 1}
        assert await take(sub, 1) == []  # the iteration ended
        await hub.publish("chat:stay", "still here")
        assert [p.data for p in await take(kept, 1)] == ["still here"]
        # It may subscribe again.
        again = await client.subscribe("chat:kick")
        await hub.publish("chat:kick", 1)
        assert [p.offset for p in await take(again, 1)] == [1]


# -- with the application's hooks --------------------------------------------------


async def test_connect_data_goes_to_the_application_and_its_answer_comes_back(
    start_hooked: Any, backend: Backend
) -> None:
    hub = await start_hooked()
    info = {"name": "Alice", "avatar": "/a.png"}
    data = as_user("alice", info=info, data={"motd": "hi"})
    async with Client(url(hub), data=data, **FAST) as client:
        assert (client.user, client.info, client.data) == (
            "alice",
            info,
            {"motd": "hi"},
        )
    [call] = await backend.calls("connect")
    assert call["body"]["data"] == data


async def test_rpc_returns_the_applications_data_or_raises_its_error(
    start_hooked: Any, backend: Backend
) -> None:
    hub = await start_hooked()
    async with Client(url(hub), data=as_user("alice"), **FAST) as client:
        answer = await client.rpc("history.older", {"before": 10})
        assert answer == {"method": "history.older", "echo": {"before": 10}}
        assert await client.rpc("typing") == {"method": "typing", "echo": None}
        await backend.script(
            rpc={"body": {"error": {"code": 418, "message": "no such method"}}}
        )
        with pytest.raises(HubError) as info:
            await client.rpc("nope")
        assert (info.value.code, info.value.message) == (418, "no such method")
        await backend.script(rpc={"status": 500})
        with pytest.raises(HubError) as info:
            await client.rpc("history.older")
        assert info.value.code == 503
        assert client.connected
    calls = await backend.calls("rpc")
    assert [c["body"]["user"] for c in calls] == ["alice"] * 4


async def test_presence_joins_leaves_and_publications_carry_the_applications_info(
    start_hooked: Any,
) -> None:
    hub = await start_hooked()
    alice_info, bob_info = {"name": "Alice"}, {"name": "Bob"}
    joined, left = asyncio.Event(), asyncio.Event()
    seen: list[tuple[str, ClientInfo]] = []

    def on(kind: str, event: asyncio.Event) -> Any:
        def record(who: ClientInfo) -> None:
            if who.user == "bob":  # (Alice's own join may come too)
                seen.append((kind, who))
                event.set()

        return record

    alice_data = as_user("alice", info=alice_info)
    async with Client(url(hub), data=alice_data, **FAST) as alice:
        sub = await alice.subscribe("room:1")
        sub.on_join, sub.on_leave = on("join", joined), on("leave", left)
        bob_data = as_user("bob", info=bob_info)
        async with Client(url(hub), data=bob_data, **FAST) as bob:
            await bob.subscribe("room:1")
            await bob.publish("room:1", "hi")
            [pub] = await take(sub, 1)
            presence = await alice.presence("room:1")
            async with asyncio.timeout(BOUND):
                await joined.wait()
        async with asyncio.timeout(BOUND):
            await left.wait()
    assert pub.info is not None and (pub.info.user, pub.info.info) == ("bob", bob_info)
    assert sorted((c.user, c.info["name"]) for c in presence) == [
        ("alice", "Alice"),
        ("bob", "Bob"),
    ]
    assert [(kind, who.info) for kind, who in seen] == [
        ("join", bob_info),
        ("leave", bob_info),
    ]


async def test_a_server_side_subscription_recovers_what_a_drop_missed(
    start_hooked: Any, backend: Backend
) -> None:
    hub = await start_hooked()
    since = []
    read_history = hub.broker.history

    async def history(*args: Any, **kwargs: Any) -> Any:
        since.append(kwargs.get("since"))
        return await read_history(*args, **kwargs)

    hub.broker.history = history  # type: ignore[method-assign]
    made: list[Subscription] = []
    data = as_user("alice", channels=["room:s"])
    async with Client(url(hub), data=data, on_subscription=made.append, **FAST) as c:
        # There once the client is open, made by the hub alone.
        sub = c.subscriptions["room:s"]
        assert made == [sub] and sub.server_side and sub.epoch and sub.offset == 0
        with pytest.raises(HubError) as info:
            await c.subscribe("room:s")
        assert info.value.code == 409
        for i in range(3):
            await hub.publish("room:s", i)
        assert [p.data for p in await take(sub, 3)] == [0, 1, 2]
        [session] = hub._sessions
        session.ws._transport.abort()  # the connection is lost: 1006
        # Published before the client can notice (the memory broker never
        # yields): the reconnect recovers them from the connect's subs.
        for i in range(3, 8):
            await hub.publish("room:s", i)
        recovered = await take(sub, 5)
        assert [(p.offset, p.data) for p in recovered] == [
            (n + 1, n) for n in range(3, 8)
        ]
        assert 3 in since  # recovered from there
        assert c.subscriptions["room:s"] is sub and made == [sub]
        await hub.publish("room:s", "live")
        [live] = await take(sub, 1)
        assert (live.offset, live.data) == (9, "live")
        # The application gave the same answer to the second connect, which
        # carried the same data.
        assert [call["body"]["data"] for call in await backend.calls("connect")] == [
            data,
            data,
        ]


async def test_a_gap_in_a_server_side_subscription_is_recovered_by_reconnecting(
    start_hooked: Any, backend: Backend
) -> None:
    hub = await start_hooked()
    data = as_user("alice", channels=["room:gap"])
    async with Client(url(hub), data=data, **FAST) as client:
        sub = client.subscriptions["room:gap"]
        lost = lose(hub, {2, 3})
        for i in range(1, 6):
            await hub.publish("room:gap", i)
        received = await take(sub, 5)
        assert [(p.offset, p.data) for p in received] == [(n, n) for n in range(1, 6)]
        assert [p.offset for p in lost] == [2, 3]  # they did go missing
        assert len(await backend.calls("connect")) == 2  # through a reconnect
        await hub.publish("room:gap", 6)
        assert [p.offset for p in await take(sub, 1)] == [6]


async def test_a_server_side_subscription_that_cannot_be_recovered_raises(
    start_hooked: Any,
) -> None:
    hub = await start_hooked()
    data = as_user("alice", channels=["room:e"])
    async with Client(url(hub), data=data, **FAST) as client:
        sub = client.subscriptions["room:e"]
        await hub.publish("room:e", "old")
        assert [p.data for p in await take(sub, 1)] == ["old"]
        old_epoch = sub.epoch
        # The broker loses the channel: the next publication, live, is of
        # a new epoch, and what came before it cannot be recovered.
        assert isinstance(hub.broker, MemoryBroker)
        del hub.broker.backend.channels["room:e"]
        await hub.publish("room:e", "new")
        with pytest.raises(RecoveryFailed) as failed:
            await take(sub, 1)
        assert failed.value.epoch != old_epoch and failed.value.offset == 1
        await hub.publish("room:e", "after")
        [pub] = await take(sub, 1)
        assert (pub.offset, pub.data, sub.epoch) == (2, "after", failed.value.epoch)


async def test_a_server_side_subscription_ends_when_the_application_drops_it(
    start_hooked: Any,
) -> None:
    hub = await start_hooked()
    kept = as_user("alice", channels=["room:a", "room:b"])
    async with Client(url(hub), data=kept, **FAST) as client:
        a, b = client.subscriptions["room:a"], client.subscriptions["room:b"]
        # At the next connect, the application names room:b only.
        client.connect_data = as_user("alice", channels=["room:b"])
        [session] = hub._sessions
        hub.drop_slow(session.ws)
        async with asyncio.timeout(BOUND):
            assert [p async for p in a] == []  # ended
        assert list(client.subscriptions) == ["room:b"]
        assert client.subscriptions["room:b"] is b
        await hub.publish("room:b", "still")
        assert [p.data for p in await take(b, 1)] == ["still"]


async def test_server_side_subscriptions_of_the_token_and_of_the_api(
    start_hub: Any, mint: Any
) -> None:
    hub = await start_hub()
    token = mint("alice", subs=["private:t"])
    made: list[Subscription] = []
    async with Client(url(hub), token, on_subscription=made.append, **FAST) as c:
        sub = c.subscriptions["private:t"]  # there once open, as the token says
        assert made == [sub] and sub.server_side
        # The back end subscribes her again, elsewhere, while she is here.
        answered = asyncio.get_running_loop().create_future()

        def on_subscription(sub: Subscription) -> None:
            sub.on_publication = lambda pub: answered.set_result((sub.channel, pub))

        c.on_subscription = on_subscription
        survey = await hub.survey("subscribe", user="alice", channel="news:api")
        assert sum(survey) == 1
        await hub.publish("news:api", "via the api")
        async with asyncio.timeout(BOUND):
            channel, pub = await answered
        assert (channel, pub.data) == ("news:api", "via the api")
        await hub.publish("private:t", 1)
        assert [p.data for p in await take(sub, 1)] == [1]
        [session] = [s for node in CLUSTERS[hub] for s in node._sessions]
        session.ws._transport.abort()  # the connection is lost: 1006
        for n in (2, 3):
            await hub.publish("private:t", n)
        # Recovered from the position connect carried; news:api, which only
        # /api/subscribe named, ended with the connection.
        assert [(p.offset, p.data) for p in await take(sub, 2)] == [(2, 2), (3, 3)]
        await c.history("news:api", limit=0)  # once connected again
        assert list(c.subscriptions) == ["private:t"]
