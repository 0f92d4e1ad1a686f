"""Channel tokens (docs/protocol.md, "Channel tokens"): a subscribe that
carries a JWT for exactly its channel and user, what it allows and refuses,
its expiry and ``sub_refresh``, over WebSocket and the fallbacks, from the
Python client, on the memory broker and on three nodes over Redis."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt
import pytest

from tidings import connect
from tidings.hub import (
    Broker,
    Client,
    Hub,
    HubConfig,
    HubError,
    NamespaceConfig,
    mint_channel_token,
)
from tidings.hub.hooks import HookContext, Refuse, Subscribe
from tidings.hub.session import Session

from ..conftest import Peer, wait_for
from .conftest import BOUND, NAMESPACES, SECRET
from .test_transports import command, get, node, subscribed

pytestmark = pytest.mark.parametrize(
    "brokers", ["memory", "redis-3-nodes"], indirect=True
)


#: The test namespaces, and one of token holders with presence.
MEMBERS = {
    **NAMESPACES,
    "members": NamespaceConfig(
        allow_publish=True, presence=True, history_size=10, history_ttl=600
    ),
}


def channel_token(user: str, channel: str, **options: Any) -> str:
    return mint_channel_token(SECRET, user, channel, **options)


def expiring_at(exp: int, user: str, channel: str) -> str:
    """A channel token that expires at ``exp`` exactly (Unix time)."""
    return jwt.encode({"sub": user, "channel": channel, "exp": exp}, SECRET, "HS256")


def session_of(peer: Peer) -> Session:
    """The hub's session of ``peer``."""
    [session] = [
        s
        for s in peer.node._sessions
        if s.info is not None and s.info.client == peer.client
    ]
    return session


async def unsubscribed(peer: Peer, channel: str) -> list[dict[str, Any]]:
    """Wait for the ``unsubscribe`` push of ``channel``; return the pushes
    that came before it."""
    before = []
    while (push := await peer.push()) != {"channel": channel, "unsubscribe": {}}:
        before.append(push)
    return before


async def test_a_channel_token_lets_a_client_without_channel_claims_subscribe(
    start_hub: Any, connect: Any, mint: Any
) -> None:
    hub = await start_hub(namespaces=MEMBERS)
    alice = await connect(hub, token=mint("alice", info={"name": "Alice"}))
    assert (await alice.error("subscribe", channel="members:room"))[0] == 403
    token = channel_token("alice", "members:room", info={"role": "guest"})
    result = await alice.result("subscribe", channel="members:room", token=token)
    assert result["offset"] == 0 and 3590 <= result["ttl"] <= 3600
    # Its presence and history are the subscriber's to read; it shows there
    # with the channel token's info.
    [entry] = (await alice.result("presence", channel="members:room"))["clients"]
    assert entry == {"client": alice.client, "user": "alice", "info": {"role": "guest"}}
    assert (await alice.result("history", channel="members:room"))["offset"] == 0
    await alice.result("publish", channel="members:room", data="hi")
    assert (await alice.push())["pub"]["data"] == "hi"
    other = channel_token("alice", "members:room", info={"role": "other"})
    assert (await alice.error("subscribe", channel="members:room", token=other))[
        0
    ] == 409
    [entry] = (await alice.result("presence", channel="members:room"))["clients"]
    assert entry["info"] == {"role": "guest"}
    await alice.result("publish", channel="members:room", data="again")
    assert (await alice.push())["pub"]["info"]["info"] == {"role": "guest"}


async def test_an_invalid_or_expired_channel_token_is_401_and_the_connection_stays(
    start_hub: Any, connect: Any, mint: Any
) -> None:
    hub = await start_hub()
    alice = await connect(hub, token=mint("alice"))
    expired = channel_token("alice", "private:x", ttl=-5)
    assert await alice.error("subscribe", channel="private:x", token=expired) == (
        401,
        "token expired",
    )
    assert await alice.error("subscribe", channel="private:x", token="garbage") == (
        401,
        "invalid token",
    )
    # A connection token is no channel token.
    assert await alice.error("subscribe", channel="private:x", token=mint("alice")) == (
        401,
        "invalid token: a channel token needs a channel claim",
    )
    too_big = jwt.encode(
        {"sub": "alice", "channel": "private:x", "exp": 2**40, "info": "x" * 5000},
        SECRET,
        "HS256",
    )
    assert (await alice.error("subscribe", channel="private:x", token=too_big))[
        0
    ] == 401
    assert await alice.result("ping") == {}
    # Nor is a channel token a connection token.
    assert await alice.error("refresh", token=channel_token("alice", "private:x")) == (
        401,
        "invalid token: a channel token is not a connection token",
    )
    token = channel_token("alice", "private:x")
    assert (await alice.result("subscribe", channel="private:x", token=token))[
        "ttl"
    ] > 0


async def test_a_channel_token_of_another_channel_or_user_is_403(
    start_hub: Any, connect: Any, mint: Any
) -> None:
    hub = await start_hub()
    alice = await connect(hub, token=mint("alice"))
    for channel, token in [
        ("private:x", channel_token("alice", "private:y")),
        ("private:x", channel_token("bob", "private:x")),
        # A private user channel stays for the users it names.
        ("private:dm#bob,carol", channel_token("alice", "private:dm#bob,carol")),
    ]:
        code, _ = await alice.error("subscribe", channel=channel, token=token)
        assert code == 403, channel
    anonymous = await connect(hub)
    code, message = await anonymous.error(
        "subscribe", channel="chat:x", token=channel_token("alice", "chat:x")
    )
    assert (code, message) == (403, "the channel token is for another user")
    # Named, the user's token brings its expiry.
    named = channel_token("alice", "private:dm#alice,bob")
    result = await alice.result(
        "subscribe", channel="private:dm#alice,bob", token=named
    )
    assert result["ttl"] > 0


async def test_the_subscription_ends_with_an_unsubscribe_push_when_its_token_expires(
    start_hub: Any, connect: Any, mint: Any
) -> None:
    hub = await start_hub()
    alice = await connect(hub, token=mint("alice"))
    token = expiring_at(int(time.time()) + 2, "alice", "private:e")
    assert (await alice.result("subscribe", channel="private:e", token=token))[
        "ttl"
    ] in (1, 2)
    session = session_of(alice)
    await unsubscribed(alice, "private:e")
    await wait_for(lambda: alice.node.subscriber_count("private:e") == 0, "the end")
    assert not session.granted and not session._grant_timers
    assert await alice.result("ping") == {}
    assert (await alice.error("presence", channel="private:e"))[0] == 403


async def test_sub_refresh_in_time_keeps_the_subscription(
    start_hub: Any, connect: Any, mint: Any
) -> None:
    hub = await start_hub()
    alice = await connect(hub, token=mint("alice", channels=["private:c"]))
    exp = int(time.time()) + 2
    kept = expiring_at(exp, "alice", "private:a")
    await alice.result("subscribe", channel="private:a", token=kept)
    # Ends a second after private:a would have: the test's clock.
    await alice.result(
        "subscribe",
        channel="private:b",
        token=expiring_at(exp + 1, "alice", "private:b"),
    )
    await alice.result("subscribe", channel="private:c")
    result = await alice.result(
        "sub_refresh", channel="private:a", token=channel_token("alice", "private:a")
    )
    assert 3590 <= result["ttl"] <= 3600
    # Refused refreshes leave the old token in force.
    for channel, token, code in [
        ("private:b", channel_token("bob", "private:b"), 403),
        ("private:b", channel_token("alice", "private:a"), 403),
        ("private:b", channel_token("alice", "private:b", ttl=-5), 401),
        ("private:b", "garbage", 401),
        ("private:c", channel_token("alice", "private:c"), 409),  # by its claims
        ("private:d", channel_token("alice", "private:d"), 409),  # not subscribed
    ]:
        assert (await alice.error("sub_refresh", channel=channel, token=token))[
            0
        ] == code, (channel, code)
    assert (await alice.error("sub_refresh", channel="private:b"))[0] == 400
    pushes = await unsubscribed(alice, "private:b")
    assert pushes == []
    await hub.publish("private:a", "still here")
    assert (await alice.push())["pub"]["data"] == "still here"


async def test_a_refresh_that_narrows_the_claims_keeps_what_channel_tokens_allowed(
    start_hub: Any, connect: Any, mint: Any
) -> None:
    hub = await start_hub()
    alice = await connect(hub, token=mint("alice", channels=["private:claimed"]))
    await alice.result("subscribe", channel="private:claimed")
    token = channel_token("alice", "private:granted")
    await alice.result("subscribe", channel="private:granted", token=token)
    await alice.result("refresh", token=mint("alice", channels=[]))
    assert await alice.push() == {"channel": "private:claimed", "unsubscribe": {}}
    await hub.publish("private:granted", "kept")
    assert (await alice.push())["pub"]["data"] == "kept"


async def test_channel_token_timers_end_with_the_subscription_and_the_session(
    start_hub: Any, connect: Any, mint: Any
) -> None:
    hub = await start_hub()
    alice = await connect(hub, token=mint("alice"))
    token = channel_token("alice", "private:t")
    await alice.result("subscribe", channel="private:t", token=token)
    session = session_of(alice)
    [timer] = session._grant_timers.values()
    await alice.result("unsubscribe", channel="private:t")
    assert timer.cancelled() and not session.granted and not session._grant_timers
    await alice.result("subscribe", channel="private:t", token=token)
    [timer] = session._grant_timers.values()
    await alice.ws.close()
    await wait_for(lambda: session not in alice.node._sessions, "the session's end")
    assert timer.cancelled() and not session.granted


async def test_a_channel_token_skips_the_subscribe_hook(broker: Broker) -> None:
    namespaces = {"room": NamespaceConfig(subscribe_proxy=True, presence=True)}
    config = HubConfig(port=0, demo=False, secret=SECRET, namespaces=namespaces)
    hub = Hub(config, broker)
    asked: list[str] = []

    @hub.on_subscribe
    async def subscribe(context: HookContext) -> Subscribe:
        asked.append(context.channel)
        raise Refuse(403, "members only")

    async with hub:
        async with asyncio.timeout(BOUND):
            ws = await connect(hub.ws_url)
        peer = Peer(ws, hub)
        token = jwt.encode({"sub": "ann", "exp": 2**40}, SECRET, "HS256")
        peer.client = (await peer.result("connect", token=token))["client"]
        assert await peer.error("subscribe", channel="room:1") == (403, "members only")
        granted = channel_token("ann", "room:1")
        assert (await peer.result("subscribe", channel="room:1", token=granted))[
            "ttl"
        ] > 0
        # Nor is it asked about the channel's presence.
        assert len((await peer.result("presence", channel="room:1"))["clients"]) == 1
        assert asked == ["room:1"]
        await ws.close()


# -- the fallbacks ---------------------------------------------------------------


async def test_sse_channel_tokens_and_sub_refresh_over_post_on_any_node(
    start_hub: Any, streams: Any, mint: Any
) -> None:
    hub = await start_hub()
    secret = "the-secret-of-this-stream"
    exp = int(time.time()) + 2
    token = mint("ann")
    stream, connected = await subscribed(
        hub,
        streams,
        [
            ("channel", "private:s1"),
            ("channel", "private:s2"),
            ("channel", "private:s3"),
            ("channel_token", expiring_at(exp, "ann", "private:s1")),
            ("channel_token", expiring_at(exp + 1, "ann", "private:s2")),
            ("channel_token", "garbage"),  # that channel alone fails
            ("token", token),
            ("session", secret),
        ],
    )
    assert connected["user"] == "ann"
    first, second, third = [await stream.data() for _ in range(3)]
    assert first["id"] == 2 and first["result"]["ttl"] in (1, 2)
    assert second["id"] == 3 and second["result"]["ttl"] in (2, 3)
    assert third == {"id": 4, "error": {"code": 401, "message": "invalid token"}}
    body = {
        "id": 9,
        "op": "sub_refresh",
        "channel": "private:s1",
        "token": channel_token("ann", "private:s1"),
    }
    for query, status in [
        ("", 400),  # whose stream?
        ("session=another-client-secret", 409),
    ]:
        answer = await command(node(hub, 1), body, token=token, query=query)
        assert answer.status == status, answer
    wrong = {**body, "token": channel_token("bob", "private:s1")}
    answer = await command(node(hub, 1), wrong, token=token, query=f"session={secret}")
    assert answer.status == 403
    answer = await command(node(hub, 1), body, token=token, query=f"session={secret}")
    assert answer.status == 200, answer
    assert 3590 <= answer.json()["result"]["ttl"] <= 3600
    assert await stream.data() == {"channel": "private:s2", "unsubscribe": {}}
    await hub.publish("private:s1", "kept")
    assert (await stream.data())["pub"]["data"] == "kept"


async def test_sse_channel_tokens_must_match_the_channels(
    start_hub: Any, streams: Any
) -> None:
    hub = await start_hub()
    query = {"channel": ["chat:a", "chat:b"], "channel_token": "x"}
    answer = await get(hub, "/sse", query)
    assert answer.status == 400
    # Without a token of its own, no channel token can match the stream.
    stream, _ = await subscribed(
        hub,
        streams,
        {"channel": "chat:a", "channel_token": channel_token("a", "chat:a")},
    )
    reply = await stream.data()
    assert reply["error"]["code"] == 403
    event = await stream.event()
    assert event["event"] == "close" and event["data"]["code"] == 1013


async def test_poll_with_a_channel_token_holds_no_longer_than_it_lasts(
    start_hub: Any, mint: Any
) -> None:
    hub = await start_hub()
    token = mint("ann")
    query = {"channel": "private:p", "token": token}
    answer = await get(hub, "/poll", {**query, "channel_token": "garbage"})
    assert answer.status == 401
    answer = await get(
        hub, "/poll", {**query, "channel_token": channel_token("bob", "private:p")}
    )
    assert answer.status == 403
    first = await get(
        hub, "/poll", {**query, "channel_token": channel_token("ann", "private:p")}
    )
    assert first.status == 200 and 3590 <= first.json()["ttl"] <= 3600
    position = {"since": first.json()["offset"], "epoch": first.json()["epoch"]}
    exp = int(time.time()) + 2
    held = await get(
        node(hub, 1),
        "/poll",
        {
            **query,
            **position,
            "timeout": "30",
            "channel_token": expiring_at(exp, "ann", "private:p"),
        },
        timeout=BOUND,
    )
    # Answered at the token's expiry (the request would time out long
    # before the poll's 30 s), with nothing and no unsubscribe push: the
    # next poll needs a new token.
    assert held.status == 200, held
    assert held.json()["publications"] == [] and held.json()["pushes"] == []
    assert held.json()["ttl"] == 0


# -- the Python client -----------------------------------------------------------


async def test_the_clients_get_token_refreshes_and_resubscribes_after_a_reconnect(
    start_hub: Any, mint: Any
) -> None:
    hub = await start_hub()
    calls = 0
    refreshed_twice = asyncio.Event()

    async def get_token() -> str:
        nonlocal calls
        calls += 1
        if calls == 3:  # subscribe, then two sub_refresh
            refreshed_twice.set()
        return channel_token("alice", "private:g", ttl=2)

    url = f"ws://127.0.0.1:{hub.port}/ws"
    options = {"backoff_initial": 0.05, "backoff_max": 0.2, "timeout": BOUND}
    async with Client(url, token=mint("alice"), **options) as client:
        sub = await client.subscribe("private:g", get_token=get_token)
        async with asyncio.timeout(BOUND):
            await refreshed_twice.wait()
        # The first token has expired by now; the subscription is the same.
        await hub.publish("private:g", "still here")
        async with asyncio.timeout(BOUND):
            assert (await anext(sub)).data == "still here"
        # Dropped: the reconnect resubscribes with a new channel token.
        asked = calls
        [session] = hub._sessions
        hub.drop_slow(session.ws)
        await wait_for(
            lambda: (
                any(s is not session for s in hub._sessions)
                and hub.subscriber_count("private:g") == 1
            ),
            "the resubscribe",
        )
        assert calls > asked
        await hub.publish("private:g", "after the reconnect")
        async with asyncio.timeout(BOUND):
            assert (await anext(sub)).data == "after the reconnect"


async def test_the_clients_get_token_failing_ends_the_subscription(
    start_hub: Any, mint: Any
) -> None:
    hub = await start_hub()

    async def refused() -> str:
        raise LookupError("no token for you")

    async def expired() -> str:
        return channel_token("alice", "private:f", ttl=-5)

    url = f"ws://127.0.0.1:{hub.port}/ws"
    async with Client(url, token=mint("alice"), timeout=BOUND) as client:
        with pytest.raises(LookupError):
            await client.subscribe("private:f", get_token=refused)
        with pytest.raises(HubError) as info:
            await client.subscribe("private:f", get_token=expired)
        assert info.value.code == 401
        assert client.connected and "private:f" not in client.subscriptions
