"""The hub over real sockets: publish and subscribe, presence, recovery,
slow readers, many subscribers and shutdown (docs/protocol.md). Every test
runs against each broker of conftest.BROKERS, and those that cross nodes
most on three nodes on a Redis Cluster too (ALSO_ON_CLUSTER)."""

from __future__ import annotations

import asyncio
import gc
import json
import resource
import time
from typing import Any

import pytest
import websockets

import tidings
from tidings.hub import Hub
from tidings.hub.brokers.memory import MemoryBroker
from tidings.hub.wire import encode_pub

from ..conftest import count_writes, wait_for
from .conftest import ALSO_ON_CLUSTER

BOUND = 10


@ALSO_ON_CLUSTER
async def test_subscribe_publish_unsubscribe(start_hub: Any, connect: Any) -> None:
    hub = await start_hub()
    alice = await connect(hub)
    bob = await connect(hub)
    carol = await connect(hub)  # stays subscribed throughout
    position = await alice.result("subscribe", channel="chat:a")
    epoch = (await hub.history("chat:a")).epoch
    assert position == {"epoch": epoch, "offset": 0}
    await carol.result("subscribe", channel="chat:a")
    assert await bob.result("publish", channel="chat:a", data={"text": "hi"}) == {
        "offset": 1,
        "epoch": epoch,
    }
    [pub] = await alice.pubs(1)
    assert pub == {
        "offset": 1,
        "epoch": epoch,
        "data": {"text": "hi"},
        "info": {"client": bob.client, "user": ""},
    }
    await bob.result("publish", channel="chat:a", data=2)
    assert [pub["data"] for pub in await alice.pubs(1)] == [2]
    assert await alice.result("unsubscribe", channel="chat:a") == {}
    assert await alice.error("unsubscribe", channel="chat:a") == (
        409,
        "not subscribed to chat:a",
    )
    await bob.result("publish", channel="chat:a", data=3)
    assert [pub["data"] for pub in await carol.pubs(3)] == [{"text": "hi"}, 2, 3]
    # Nothing more arrives for chat:a: the next message is the ping's reply.
    assert await alice.result("ping") == {}
    assert [p for p in alice.pushes if "pub" in p] == []
    await carol.result("unsubscribe", channel="chat:a")
    assert hub.subscriber_count("chat:a") == 0


async def test_subscribing_twice_is_409_and_the_first_subscription_stays(
    start_hub: Any, connect: Any
) -> None:
    hub = await start_hub()
    peer = await connect(hub)
    await peer.result("subscribe", channel="news:x")
    assert await peer.error("subscribe", channel="news:x") == (
        409,
        "already subscribed to news:x",
    )
    await hub.publish("news:x", "still")
    assert [p["data"] for p in await peer.pubs(1)] == ["still"]


@ALSO_ON_CLUSTER
async def test_publications_arrive_in_order_to_every_subscriber_and_the_publisher(
    start_hub: Any, connect: Any
) -> None:
    hub = await start_hub()
    subscribers = [await connect(hub) for _ in range(5)]
    for peer in subscribers:
        await peer.result("subscribe", channel="chat:order")
    publishers = subscribers[:3]

    async def publish(peer: Any, n: int) -> list[int]:
        # Pipelined: every command is sent before any reply is read.
        ids = []
        for i in range(n):
            ids.append(next(peer.ids))
            await peer.send(
                {"id": ids[-1], "op": "publish", "channel": "chat:order", "data": i}
            )
        replies = [await peer.reply(id) for id in ids]
        assert all("result" in r for r in replies), replies
        return [r["result"]["offset"] for r in replies]

    offsets = await asyncio.gather(*(publish(p, 50) for p in publishers))
    assert sorted(o for batch in offsets for o in batch) == list(range(1, 151))
    for peer in subscribers:
        pubs = await peer.pubs(150)
        assert [p["offset"] for p in pubs] == list(range(1, 151))
        # Each publisher's own publications come back in the order it sent them.
        for publisher in publishers:
            mine = [p["data"] for p in pubs if p["info"]["client"] == publisher.client]
            assert mine == list(range(50))


async def test_a_burst_reaches_each_subscriber_in_order_in_one_write(
    start_hub: Any, connect: Any
) -> None:
    # Publications made in one loop iteration (an app's loop of awaited
    # Hub.publish calls, which never wait on the memory broker) go out
    # together: one write per subscriber, every one in order, and a reply
    # sent meanwhile after the publications that came before it.
    hub = await start_hub()
    peers = [await connect(hub, node=hub) for _ in range(3)]
    for peer in peers:
        await peer.result("subscribe", channel="chat:burst")
    server = hub._server
    assert server is not None
    writes = count_writes(server.connections)
    for i in range(1, 201):
        await hub.publish("chat:burst", i)
    for peer in peers:
        assert [p["data"] for p in await peer.pubs(200)] == list(range(1, 201))
    # On Redis, pushes come as the node reads them from Redis: in one read
    # or several, as it happens. On the memory broker, in this iteration.
    if isinstance(hub.broker, MemoryBroker):
        assert len(writes) == len(peers)
    # A publish command: its own publication comes back before its reply.
    first = peers[0]
    id = next(first.ids)
    await first.send({"id": id, "op": "publish", "channel": "chat:burst", "data": 0})
    message = await first.recv()
    assert message.get("pub", {}).get("offset") == 201, message
    assert "result" in await first.reply(id)


async def test_deflate_is_agreed_without_context_takeover_and_fans_out(
    start_hub: Any,
) -> None:
    # As browsers offer it: the hub asks for no context takeover both ways,
    # so that it holds no compressor between messages and compresses a
    # publication once for all its subscribers.
    hub = await start_hub()
    url = f"ws://127.0.0.1:{hub.port}/ws"
    clients = [await websockets.connect(url) for _ in range(3)]
    try:
        agreed = clients[0].response.headers["Sec-WebSocket-Extensions"]
        assert "server_no_context_takeover" in agreed
        assert "client_no_context_takeover" in agreed
        for ws in clients:
            await ws.send(json.dumps({"id": 1, "op": "connect"}))
            await ws.send(json.dumps({"id": 2, "op": "subscribe", "channel": "chat:z"}))
            async with asyncio.timeout(10):
                while json.loads(await ws.recv()).get("id") != 2:
                    pass
        data = {"text": "compressible " * 40}
        for _ in range(2):
            await hub.publish("chat:z", data)
        for ws in clients:
            pubs = []
            async with asyncio.timeout(10):
                while len(pubs) < 2:
                    message = json.loads(await ws.recv())
                    if "pub" in message:
                        pubs.append(message["pub"]["data"])
            assert pubs == [data, data]
            # And what a client compresses (without context) is read.
            command = {"id": 3, "op": "publish", "channel": "chat:z", "data": data}
            await ws.send(json.dumps(command))
            async with asyncio.timeout(10):
                while (reply := json.loads(await ws.recv())).get("id") != 3:
                    pass
            assert "result" in reply, reply
    finally:
        for ws in clients:
            await ws.close()


@ALSO_ON_CLUSTER
async def test_a_publish_key_raced_from_every_node_publishes_exactly_once(
    start_hub: Any, connect: Any
) -> None:
    hub = await start_hub()
    subscriber = await connect(hub)
    await subscriber.result("subscribe", channel="chat:race")
    publishers = [await connect(hub) for _ in range(3)]  # one per node

    async def publish(peer: Any, key: str, n: int) -> set[tuple[int, str]]:
        # Pipelined: all n are in flight on the node at once.
        ids = [next(peer.ids) for _ in range(n)]
        for i, id in enumerate(ids):
            await peer.send(
                {
                    "id": id,
                    "op": "publish",
                    "channel": "chat:race",
                    "data": i,
                    "idempotency_key": key,
                }
            )
        replies = [await peer.reply(id) for id in ids]
        return {(r["result"]["offset"], r["result"]["epoch"]) for r in replies}

    for round in range(1, 4):
        answers = await asyncio.gather(
            *(publish(peer, f"key {round}", 10) for peer in publishers)
        )
        assert len(set.union(*answers)) == 1
        assert next(iter(answers[0]))[0] == round
    # A bad key is refused; the connection goes on.
    code, message = await publishers[0].error(
        "publish", channel="chat:race", data=1, idempotency_key="k" * 65
    )
    assert (code, message) == (
        400,
        "idempotency_key must be a string of 1-64 printable characters",
    )
    await hub.publish("chat:race", "end")
    pubs = await subscriber.pubs(4)
    assert [p["offset"] for p in pubs] == [1, 2, 3, 4] and pubs[3]["data"] == "end"


async def test_with_no_idempotency_window_keys_are_ignored(
    start_hub: Any, connect: Any
) -> None:
    hub = await start_hub(idempotency_window=0)
    peer = await connect(hub)
    for offset in (1, 2):
        result = await peer.result(
            "publish", channel="chat:k", data=1, idempotency_key="k"
        )
        assert result["offset"] == offset
    assert await hub.publish("chat:k", 2, idempotency_key="k") == (3, result["epoch"])


async def test_a_subscribe_needs_a_matching_channels_claim(
    start_hub: Any, connect: Any, mint: Any
) -> None:
    hub = await start_hub()
    peer = await connect(hub, mint("alice", channels=["private:alice-*", "chat:*"]))
    await peer.result("subscribe", channel="private:alice-inbox")
    await peer.result("subscribe", channel="chat:lobby")
    assert await peer.error("subscribe", channel="private:bob-inbox") == (
        403,
        "not allowed to subscribe to private:bob-inbox",
    )
    # The claim replaces the namespace's anonymous access.
    assert (await peer.error("subscribe", channel="news:today"))[0] == 403
    assert (await peer.error("history", channel="private:bob-inbox"))[0] == 403


async def test_publishing_where_clients_may_not_is_403(
    start_hub: Any, connect: Any, mint: Any
) -> None:
    hub = await start_hub()
    anonymous = await connect(hub)
    assert await anonymous.error("publish", channel="news:today", data=1) == (
        403,
        "not allowed to publish to news:today",
    )
    user = await connect(hub, mint("alice"))
    assert (await user.error("publish", channel="news:today", data=1))[0] == 403
    # A publish claim allows it, and only where it matches.
    editor = await connect(hub, mint("ed", publish=["news:*"]))
    assert (await editor.result("publish", channel="news:today", data=1))["offset"] == 1
    assert (await editor.error("publish", channel="chat:x", data=1))[0] == 403


async def test_anonymous_clients_are_refused_where_not_allowed(
    start_hub: Any, connect: Any, mint: Any
) -> None:
    hub = await start_hub()
    anonymous = await connect(hub)
    assert anonymous.client
    for op, fields in [
        ("subscribe", {}),
        ("publish", {"data": 1}),
        ("history", {}),
        ("presence", {}),
    ]:
        code, _ = await anonymous.error(op, channel="private:room", **fields)
        assert code == 403, op
    # A token without a channels claim subscribes only where anonymous
    # clients may; it publishes where clients may.
    user = await connect(hub, mint("alice"))
    assert (await user.error("subscribe", channel="private:room"))[0] == 403
    await user.result("publish", channel="private:room", data=1)
    member = await connect(hub, mint("bob", channels=["private:*"]))
    await member.result("subscribe", channel="private:room")


async def test_a_private_user_channel_is_for_the_users_it_names_only(
    start_hub: Any, connect: Any, mint: Any
) -> None:
    hub = await start_hub()
    dm = "private:dm#alice,bob"  # "private" is for token holders, no claims
    # Claims that name other channels do not matter: the name decides.
    alice = await connect(hub, mint("alice", channels=["chat:*"]))
    bob = await connect(hub, mint("bob"))
    await alice.result("subscribe", channel=dm)
    await bob.result("subscribe", channel=dm)
    await alice.result("publish", channel=dm, data="hi bob")
    [pub] = await bob.pubs(1)
    assert pub["data"] == "hi bob"
    # Another user, even one whose claims match every channel, and an
    # anonymous client, get 403 for everything.
    carol = await connect(hub, mint("carol", channels=["**"], publish=["**"]))
    anonymous = await connect(hub)
    for peer in (carol, anonymous):
        for op, fields in [
            ("subscribe", {}),
            ("presence", {}),
            ("presence_stats", {}),
            ("history", {}),
            ("publish", {"data": "let me in"}),
        ]:
            code, message = await peer.error(op, channel=dm, **fields)
            assert code == 403, (op, message)
    history = await bob.result("history", channel=dm)
    assert [p["data"] for p in history["publications"]] == ["hi bob"]
    # In a namespace open to all, the same.
    await alice.result("subscribe", channel="chat:dm#alice")
    assert (await anonymous.error("subscribe", channel="chat:dm#alice"))[0] == 403
    assert (await bob.error("subscribe", channel="chat:dm#alice"))[0] == 403
    # Names that cannot stand for users are malformed.
    for bad in ("chat:dm#", "chat:dm#alice,", "chat:a,b", "chat:dm#a#b"):
        assert (await alice.error("subscribe", channel=bad))[0] == 400


async def test_an_unknown_namespace_is_404(start_hub: Any, connect: Any) -> None:
    hub = await start_hub()
    peer = await connect(hub)
    for op in ("subscribe", "unsubscribe", "publish", "presence", "history"):
        assert await peer.error(op, channel="nowhere:x", data=1) == (
            404,
            "unknown namespace in nowhere:x",
        )


async def test_max_subscribers_is_503(start_hub: Any, connect: Any) -> None:
    # A limit per node (docs/scaling.md): two subscribers on one node.
    hub = await start_hub()
    for _ in range(2):
        await (await connect(hub, node=hub)).result("subscribe", channel="small:room")
    third = await connect(hub, node=hub)
    assert (await third.error("subscribe", channel="small:room"))[0] == 503


async def test_history_with_limit_and_since(start_hub: Any, connect: Any) -> None:
    hub = await start_hub()
    peer = await connect(hub)
    for i in range(15):
        await hub.publish("short:h", i)  # 10 are kept
    result = await peer.result("history", channel="short:h")
    epoch = result["epoch"]
    assert result["offset"] == 15
    assert [p["offset"] for p in result["publications"]] == list(range(6, 16))
    result = await peer.result("history", channel="short:h", limit=3)
    assert [p["data"] for p in result["publications"]] == [12, 13, 14]
    since = {"offset": 12, "epoch": epoch}
    result = await peer.result("history", channel="short:h", since=since)
    assert [p["offset"] for p in result["publications"]] == [13, 14, 15]
    assert "complete" not in result
    for since in ({"offset": 2, "epoch": epoch}, {"offset": 12, "epoch": "other"}):
        result = await peer.result("history", channel="short:h", since=since)
        assert result["publications"] == [] and result["complete"] is False


async def test_history_replies_are_capped_and_page_with_since(
    start_hub: Any, connect: Any
) -> None:
    # Hardening finding 3: a 45-byte command made the hub encode and
    # compress everything a channel keeps (6.5 MB) into one reply.
    hub = await start_hub(max_outbound=1 << 20)
    peer = await connect(hub)  # with permessage-deflate, the default
    data = "x" * 50_000
    for _ in range(40):  # 2 MB kept
        await hub.publish("news:big", data)
    cap = (1 << 20) // 2

    def size(result: dict[str, Any]) -> int:
        return sum(len(p["data"]) for p in result["publications"])

    newest = await peer.result("history", channel="news:big")
    offsets = [p["offset"] for p in newest["publications"]]
    assert size(newest) <= cap and offsets == list(range(41 - len(offsets), 41))
    # With since, the oldest after it; asking on from the last one gets
    # the rest, without a gap.
    epoch, since, pages, got = newest["epoch"], 0, 0, []
    while since < 40:
        page = await peer.result(
            "history", channel="news:big", since={"offset": since, "epoch": epoch}
        )
        assert size(page) <= cap and page["offset"] == 40
        got += [p["offset"] for p in page["publications"]]
        since, pages = got[-1], pages + 1
    assert got == list(range(1, 41)) and pages >= 4
    # A subscribe that would have to carry more than a reply may: the
    # client is told, and may page through the history itself.
    reply = await peer.result(
        "subscribe", channel="news:big", since={"offset": 0, "epoch": epoch}
    )
    assert reply == {"epoch": epoch, "offset": 40, "recovered": False}
    assert await peer.result("ping") == {}  # not dropped as too slow


# -- presence ------------------------------------------------------------


@ALSO_ON_CLUSTER
async def test_presence_and_join_leave(start_hub: Any, connect: Any, mint: Any) -> None:
    hub = await start_hub()
    alice = await connect(hub, mint("alice"))
    await alice.result("subscribe", channel="chat:p")
    assert await alice.push() == {
        "channel": "chat:p",
        "join": {"client": alice.client, "user": "alice"},
    }
    bob = await connect(hub)
    await bob.result("subscribe", channel="chat:p")
    assert await alice.push() == {
        "channel": "chat:p",
        "join": {"client": bob.client, "user": ""},
    }
    clients = (await bob.result("presence", channel="chat:p"))["clients"]
    assert sorted(clients, key=lambda c: c["user"]) == [
        {"client": bob.client, "user": ""},
        {"client": alice.client, "user": "alice"},
    ]
    await bob.result("unsubscribe", channel="chat:p")
    assert await alice.push() == {
        "channel": "chat:p",
        "leave": {"client": bob.client, "user": ""},
    }
    await bob.ws.close()  # a clean close of a subscriber: its leave too
    await bob.ws.wait_closed()
    carol = await connect(hub)
    await carol.result("subscribe", channel="chat:p")
    assert (await alice.push())["join"]["client"] == carol.client
    await carol.ws.close()
    assert await alice.push() == {
        "channel": "chat:p",
        "leave": {"client": carol.client, "user": ""},
    }
    assert await alice.result("presence", channel="chat:p") == {
        "clients": [{"client": alice.client, "user": "alice"}]
    }
    # Presence is off in "news": refused.
    assert (await alice.error("presence", channel="news:x"))[0] == 403


async def test_the_tokens_info_shows_in_presence_joins_leaves_and_publications(
    start_hub: Any, connect: Any, mint: Any
) -> None:
    hub = await start_hub()
    alice_info = {"name": "Alice", "avatar": "/a.png", "tags": ["ü", None]}
    alice = await connect(hub, hello=False)
    reply = await alice.result("connect", token=mint("alice", info=alice_info))
    assert reply["info"] == alice_info
    alice.client = reply["client"]
    await alice.result("subscribe", channel="chat:i")
    alice_json = {"client": alice.client, "user": "alice", "info": alice_info}
    assert await alice.push() == {"channel": "chat:i", "join": alice_json}
    bob = await connect(hub, mint("bob", info="Bob"))  # on another node
    await bob.result("subscribe", channel="chat:i")
    bob_json = {"client": bob.client, "user": "bob", "info": "Bob"}
    assert await alice.push() == {"channel": "chat:i", "join": bob_json}
    clients = (await bob.result("presence", channel="chat:i"))["clients"]
    assert sorted(clients, key=lambda c: c["user"]) == [alice_json, bob_json]
    await alice.result("publish", channel="chat:i", data="hi")
    for peer in (alice, bob):
        [pub] = await peer.pubs(1)
        assert pub["info"] == alice_json
    history = await bob.result("history", channel="chat:i")
    assert history["publications"][-1]["info"] == alice_json
    await bob.result("unsubscribe", channel="chat:i")
    assert await alice.push() == {"channel": "chat:i", "leave": bob_json}


@ALSO_ON_CLUSTER
async def test_presence_stats_count_clients_and_users_of_the_whole_hub(
    start_hub: Any, connect: Any, mint: Any
) -> None:
    hub = await start_hub()
    peers = [
        await connect(hub, token)
        for token in [mint("alice"), mint("alice"), mint("bob"), None, None]
    ]
    for peer in peers:
        await peer.result("subscribe", channel="chat:stats")
    # Two of alice, bob, and the anonymous user "" (once): on every node.
    for peer in peers:
        stats = await peer.result("presence_stats", channel="chat:stats")
        assert stats == {"clients": 5, "users": 3}
    for leaving, expected in [
        (peers[0], {"clients": 4, "users": 3}),  # alice is still there
        (peers[1], {"clients": 3, "users": 2}),
        (peers[3], {"clients": 2, "users": 2}),
        (peers[4], {"clients": 1, "users": 1}),
    ]:
        await leaving.result("unsubscribe", channel="chat:stats")
        assert await peers[2].result("presence_stats", channel="chat:stats") == (
            expected
        )
    await peers[2].ws.close()
    assert await peers[0].result("presence_stats", channel="chat:stats") == {
        "clients": 0,
        "users": 0,
    }
    assert await peers[0].result("presence_stats", channel="chat:nobody") == {
        "clients": 0,
        "users": 0,
    }
    # As presence: off in "news", and only for those who may subscribe.
    assert (await peers[0].error("presence_stats", channel="news:x"))[0] == 403
    assert (await peers[3].error("presence_stats", channel="private:x"))[0] == 403


def masked_text(payload: str) -> bytes:
    """A client's text frame, masked with a zero key (RFC 6455 §5.3)."""
    data = payload.encode()
    assert len(data) < 126
    return bytes([0x81, 0x80 | len(data)]) + b"\0\0\0\0" + data


@pytest.mark.parametrize("how", ["aborted", "silent"])
async def test_a_client_gone_without_closing_leaves(
    start_hub: Any, connect: Any, raw_connect: Any, how: str
) -> None:
    hub = await start_hub(ping_interval=0.2, ping_timeout=0.2)
    watcher = await connect(hub)
    await watcher.result("subscribe", channel="chat:k")
    assert (await watcher.push())["join"]["client"] == watcher.client
    ghost = await raw_connect(hub.port)
    await ghost.handshake("/ws")
    ghost.writer.write(
        masked_text('{"id":1,"op":"connect"}')
        + masked_text('{"id":2,"op":"subscribe","channel":"chat:k"}')
    )
    joined = (await watcher.push())["join"]
    gone = time.monotonic()
    if how == "aborted":
        ghost.close()  # TCP ends without a close frame
    # else: the peer stays connected but never answers a ping, like a
    # machine that lost power.
    assert await watcher.push() == {"channel": "chat:k", "leave": joined}
    # Within the keepalive timeout (0.4 s), with room for a slow machine.
    assert time.monotonic() - gone < 3
    assert await watcher.result("presence", channel="chat:k") == {
        "clients": [{"client": watcher.client, "user": ""}]
    }


# -- recovery --------------------------------------------------------------


@ALSO_ON_CLUSTER
async def test_recovery_returns_exactly_what_was_missed_then_live_pushes(
    start_hub: Any, connect: Any
) -> None:
    hub = await start_hub()
    peer = await connect(hub)
    position = await peer.result("subscribe", channel="chat:r")
    for i in range(5):
        await hub.publish("chat:r", f"before {i}")
    seen = await peer.pubs(5)
    last = {"offset": seen[-1]["offset"], "epoch": position["epoch"]}
    await peer.ws.close()
    for i in range(100):  # while the client is away
        await hub.publish("chat:r", i)
    peer = await connect(hub)
    result = await peer.result("subscribe", channel="chat:r", since=last)
    assert result["recovered"] is True
    assert result["epoch"] == position["epoch"] and result["offset"] == 105
    recovered = result["publications"]
    assert [p["offset"] for p in recovered] == list(range(6, 106))
    assert [p["data"] for p in recovered] == list(range(100))
    for i in range(10):
        await hub.publish("chat:r", f"live {i}")
    live = await peer.pubs(10)
    assert [p["offset"] for p in live] == list(range(106, 116))


async def test_recovery_fails_when_the_history_no_longer_reaches_back(
    start_hub: Any, connect: Any
) -> None:
    hub = await start_hub()
    peer = await connect(hub)
    epoch = (await peer.result("subscribe", channel="short:r"))["epoch"]
    await peer.ws.close()
    for i in range(11):  # one more than the history keeps
        await hub.publish("short:r", i)
    peer = await connect(hub)
    result = await peer.result(
        "subscribe", channel="short:r", since={"offset": 0, "epoch": epoch}
    )
    assert result == {"epoch": epoch, "offset": 11, "recovered": False}
    await hub.publish("short:r", "live")
    [pub] = await peer.pubs(1)
    assert pub["offset"] == 12


@ALSO_ON_CLUSTER
async def test_recovery_fails_with_another_epoch(start_hub: Any, connect: Any) -> None:
    hub = await start_hub()
    await hub.publish("chat:e", 1)
    peer = await connect(hub)
    result = await peer.result(
        "subscribe", channel="chat:e", since={"offset": 0, "epoch": "not-it"}
    )
    assert result["recovered"] is False and "publications" not in result
    assert result["offset"] == 1
    # An offset from the future of this epoch cannot be recovered either.
    await peer.result("unsubscribe", channel="chat:e")
    since = {"offset": 7, "epoch": result["epoch"]}
    result = await peer.result("subscribe", channel="chat:e", since=since)
    assert result["recovered"] is False and "publications" not in result


@ALSO_ON_CLUSTER
async def test_publications_during_a_recovering_subscribe_are_not_lost_or_doubled(
    start_hub: Any, connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = await start_hub()
    read_history = hub.broker.history

    async def slow_history(*args: Any, **kwargs: Any) -> Any:
        # Let publications land both before and after the read, while the
        # subscribe is in flight, whatever the broker.
        for _ in range(3):
            await asyncio.sleep(0)
        result = await read_history(*args, **kwargs)
        for _ in range(3):
            await asyncio.sleep(0)
        return result

    monkeypatch.setattr(hub.broker, "history", slow_history)
    publisher = await connect(hub)
    epoch = (await publisher.result("publish", channel="chat:race", data=0))["epoch"]

    async def publish_until(stop: asyncio.Event) -> None:
        while not stop.is_set():
            await publisher.result("publish", channel="chat:race", data="x")

    for attempt in range(20):
        stop = asyncio.Event()

        peer = await connect(hub)
        since = {"offset": (await hub.history("chat:race")).offset, "epoch": epoch}
        task = asyncio.create_task(publish_until(stop))
        for _ in range(attempt % 4):  # vary where the subscribe lands
            await asyncio.sleep(0)
        result = await peer.result("subscribe", channel="chat:race", since=since)
        stop.set()
        await task
        assert result["recovered"] is True
        end = (await hub.history("chat:race")).offset
        offsets = [p["offset"] for p in result["publications"]]
        pushes = await peer.pubs(end - result["offset"])
        offsets += [p["offset"] for p in pushes]
        assert offsets == list(range(since["offset"] + 1, end + 1)), attempt
        await peer.result("ping")  # after any push of those publications
        assert not [p for p in peer.pushes if "pub" in p], attempt
        await peer.ws.close()


# -- load -----------------------------------------------------------------


def rss() -> int:
    """This process's resident set, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


async def test_a_reader_that_stops_is_dropped_with_4005_and_memory_stays_bounded(
    start_hub: Any, connect: Any
) -> None:
    max_outbound = 256 * 1024
    hub = await start_hub(max_outbound=max_outbound)
    fast = await connect(hub, compression=None)
    await fast.result("subscribe", channel="bulk:firehose")
    # A tidings client queues a few messages, then stops reading the socket.
    slow = await connect(hub, compression=None, max_queue=2)
    await slow.result("subscribe", channel="bulk:firehose")
    [slow_side] = [s for s in slow.node._sessions if s.info.client == slow.client]
    chunk = "x" * (64 * 1024)
    count = 100 * 1024 * 1024 // len(chunk)
    epoch = (await hub.history("bulk:firehose")).epoch
    push = encode_pub("bulk:firehose", epoch, count, json.dumps(chunk).encode(), None)
    frame = len(push) + 10  # the largest frame header
    gc.collect()
    before = rss()
    peak_buffer = 0
    async with asyncio.timeout(60):
        for i in range(count):
            await hub.publish("bulk:firehose", chunk)
            if slow_side.ws.close_code is None:
                peak_buffer = max(peak_buffer, slow_side.ws.write_buffer_size)
            # The fast subscriber keeps up and gets every publication.
            [pub] = await fast.pubs(1)
            assert pub["offset"] == i + 1
    growth = rss() - before
    assert slow_side.ws.close_code == 4005
    assert slow.node.metrics.dropped_slow == 1
    assert 0 < peak_buffer <= max_outbound + frame
    assert growth < 30 * 1024 * 1024, growth
    # The slow client's connection is gone (its close frame was behind the
    # data it never read, so it may only see the TCP connection end).
    assert await slow.closed() != 1000
    assert fast.node.subscriber_count("bulk:firehose") == 1
    assert slow.node.subscriber_count("bulk:firehose") == (slow.node is fast.node)


async def test_a_thousand_subscribers_all_receive_a_publication(
    start_hub: Any,
) -> None:
    n = 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * n + 200  # both ends of every connection are in this process
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    hub = await start_hub(max_connections=n + 10)
    url = f"ws://127.0.0.1:{hub.port}/ws"
    clients: list[tidings.WebSocket] = []
    try:
        async with asyncio.timeout(60):

            async def subscriber() -> None:
                ws = await tidings.connect(url, compression=None)
                clients.append(ws)
                await ws.send('{"id":1,"op":"connect"}')
                await ws.recv()
                await ws.send('{"id":2,"op":"subscribe","channel":"news:all"}')
                assert json.loads(await ws.recv())["id"] == 2

            await asyncio.gather(*(subscriber() for _ in range(n)))
            assert hub.subscriber_count("news:all") == n
            await hub.publish("news:all", {"hello": "everyone"})
            received = await asyncio.gather(*(ws.recv() for ws in clients))
        epoch = (await hub.history("news:all")).epoch
        assert all(
            json.loads(r)["pub"]
            == {"offset": 1, "epoch": epoch, "data": {"hello": "everyone"}}
            for r in received
        )
        assert hub.metrics.deliveries == n
    finally:
        async with asyncio.timeout(BOUND):
            await asyncio.gather(*(ws.close() for ws in clients))
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_shutdown_closes_every_client_with_1001(
    start_hub: Any, connect: Any
) -> None:
    hub: Hub = await start_hub()
    peers = [await connect(hub) for _ in range(3)]
    await peers[0].result("subscribe", channel="chat:bye")
    mine = [peer for peer in peers if peer.node is hub]
    async with asyncio.timeout(BOUND):
        await hub.close()
    for peer in mine:
        assert await peer.closed() == 1001
    assert hub.connection_count() == 0 and hub.channels() == {}
    # The other nodes' clients stay connected.
    for peer in peers:
        if peer.node is not hub:
            assert await peer.result("ping") == {}


@ALSO_ON_CLUSTER
async def test_a_subscribe_waits_until_the_node_receives_the_channel(
    start_hub: Any, connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With a broker that yields, a second subscriber must not read the
    # channel's position before the node's broker subscription is live, or
    # a publication in between is lost to it.
    hub = await start_hub()
    gate, entered = asyncio.Event(), asyncio.Event()
    subscribe = hub.broker.subscribe

    async def slow_subscribe(channel: str) -> None:
        entered.set()
        await gate.wait()
        await subscribe(channel)

    monkeypatch.setattr(hub.broker, "subscribe", slow_subscribe)
    first, second = await connect(hub, node=hub), await connect(hub, node=hub)
    await first.send({"id": 10, "op": "subscribe", "channel": "chat:race"})
    async with asyncio.timeout(BOUND):
        await entered.wait()
    await second.send({"id": 10, "op": "subscribe", "channel": "chat:race"})
    await wait_for(
        lambda: len([s for s in hub._sessions if s.subscriptions]) == 2,
        "the hub to have the second subscribe",
        timeout=BOUND,
    )
    await hub.publish("chat:race", "in the window")
    gate.set()
    for peer in (first, second):
        reply = await peer.reply(10)
        if reply["result"]["offset"] == 0:
            [pub] = await peer.pubs(1)
            assert pub["data"] == "in the window"
        else:
            assert reply["result"]["offset"] == 1


async def test_presence_of_a_node_that_stops_refreshing_expires(
    start_hub: Any, connect: Any
) -> None:
    hub = await start_hub(presence_ttl=0.3)
    peers = [await connect(hub) for _ in range(3)]
    for peer in peers:
        await peer.result("subscribe", channel="chat:alive")
    # One node stops refreshing, as if it died: its client's entry expires;
    # the others are refreshed and stay.
    [keep_alive, *_] = hub._tasks
    keep_alive.cancel()
    others = 3 - sum(peer.node is hub for peer in peers)

    async def expired() -> bool:
        return len(await hub.broker.presence("chat:alive")) == others

    await wait_for(expired, "the stopped node's entries to expire", timeout=BOUND)
    present = {c.client for c in await peers[-1].node.broker.presence("chat:alive")}
    assert present == {peer.client for peer in peers if peer.node is not hub}
    # The counts too: every client is anonymous, one user while any is left.
    stats = await peers[-1].result("presence_stats", channel="chat:alive")
    assert stats == {"clients": others, "users": min(others, 1)}


async def test_pushes_that_trail_a_subscribe_reply_are_not_sent_twice(
    start_hub: Any, connect: Any
) -> None:
    # A broker's pushes may reach a node after a read that already counts
    # them (Redis delivers pub/sub on another connection than the read).
    hub = await start_hub()
    early = await connect(hub, node=hub)
    await early.result("subscribe", channel="chat:trail")
    trailing: list[Any] = []
    deliver = hub.on_push
    hub.on_push = trailing.append  # type: ignore[method-assign]
    for i in range(1, 4):
        await hub.publish("chat:trail", i)
    late = await connect(hub, node=hub)
    assert (await late.result("subscribe", channel="chat:trail"))["offset"] == 3
    hub.on_push = deliver  # type: ignore[method-assign]
    for push in trailing:
        deliver(push)
    await hub.publish("chat:trail", 4)
    assert [p["offset"] for p in await late.pubs(1)] == [4]
    assert [p["offset"] for p in await early.pubs(4)] == [1, 2, 3, 4]
