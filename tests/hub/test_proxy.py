"""The hooks over HTTP (hub/proxy.py), against a real back end: the
Starlette app of proxy_backend.py under uvicorn, in a process of its own.
Every hook: accept, refuse, disconnect, transform; and every way a back end
fails (timeout, refused connection, 5xx, an answer that is not as
documented), which must give 503 and never a yes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import pytest

import tidings
from tidings.hub import Hub, HubConfig
from tidings.hub.brokers.redis import RedisBroker

from ..conftest import Backend, free_port, hooks_at, http_request, wait_for
from .conftest import BOUND, HOOKED_NAMESPACES, SECRET, as_user

# -- connect ------------------------------------------------------------------------


async def test_connect_is_decided_by_the_back_end_with_the_listed_headers(
    start_hooked: Any, connect: Any, backend: Backend
) -> None:
    hub = await start_hooked(headers=["Cookie", "User-Agent"])
    headers = [("Cookie", "session=s3cret"), ("X-Other", "no"), ("User-Agent", "t")]
    peer = await connect(hub, hello=False, headers=headers)
    info = {"name": "Alice", "avatar": "/a.png"}
    result = await peer.result(
        "connect", data=as_user("alice", info=info, data={"motd": "hi"})
    )
    assert result["user"] == "alice" and result["info"] == info
    assert result["data"] == {"motd": "hi"}
    [call] = await backend.calls("connect")
    body = call["body"]
    assert body["client"] == result["client"] and body["transport"] == "websocket"
    assert body["headers"] == {"Cookie": "session=s3cret", "User-Agent": "t"}
    assert "user" not in body  # not known before the answer


async def test_a_token_skips_the_connect_hook(
    start_hooked: Any, connect: Any, backend: Backend
) -> None:
    hub = await start_hooked()
    peer = await connect(hub, hello=False)
    token = tidings.hub.mint_token(SECRET, "bob")
    assert (await peer.result("connect", token=token))["user"] == "bob"
    assert await backend.calls("connect") == []


@pytest.mark.parametrize(
    ("spec", "code"),
    [
        ({"body": {"error": {"code": 401, "message": "log in first"}}}, 401),
        ({"status": 500}, 503),
        ({"status": 302}, 503),
        ({"raw": "<html>oops</html>"}, 503),
        ({"body": {"result": {"info": "no user"}}}, 503),
        ({"body": {"error": {"code": 200, "message": "not an error code"}}}, 503),
        ({"body": {"result": {"user": "x", "info": "i" * 5000}}}, 503),
        ({"body": {"result": {"user": "x", "channels": ["not a channel"]}}}, 503),
        ({"body": [1, 2]}, 503),
    ],
    ids=[
        "refused",
        "500",
        "redirect",
        "not-json",
        "no-user",
        "bad-code",
        "info-too-big",
        "bad-channel",
        "not-an-object",
    ],
)
async def test_a_connect_the_back_end_does_not_accept_is_never_a_yes(
    start_hooked: Any, connect: Any, backend: Backend, spec: Any, code: int
) -> None:
    hub = await start_hooked()
    await backend.script(connect=spec)
    peer = await connect(hub, hello=False)
    error_code, _ = await peer.error("connect", data=as_user("mallory"))
    assert error_code == code
    if code == 503:
        # Told to try again later: the back end could not say yes.
        assert await peer.closed() == 1013
        outcomes = {
            outcome for (hook, outcome) in hub.metrics.hook_calls if hook == "connect"
        }
        assert outcomes and "ok" not in outcomes
    else:
        # Refused as the back end said; the connection stays.
        assert (await peer.error("subscribe", channel="news:a"))[0] == 401


async def test_a_back_end_that_disconnects_closes_with_its_code(
    start_hooked: Any, connect: Any, backend: Backend
) -> None:
    hub = await start_hooked()
    await backend.script(
        connect={"body": {"disconnect": {"code": 4403, "reason": "banned"}}}
    )
    peer = await connect(hub, hello=False)
    await peer.send({"id": 1, "op": "connect"})
    assert await peer.closed() == 4403
    assert peer.ws.close_reason == "banned"


async def test_a_back_end_too_slow_or_gone_is_503_within_the_timeout(
    start_hooked: Any, connect: Any, backend: Backend
) -> None:
    hub = await start_hooked(timeout=0.3)
    await backend.script(connect={"delay": 3})
    peer = await connect(hub, hello=False)
    started = time.monotonic()
    assert (await peer.error("connect"))[0] == 503
    assert time.monotonic() - started < 3  # not the back end's pace
    assert hub.metrics.hook_calls["connect", "timeout"] == 1
    # Nobody listening there.
    gone = await start_hooked(connect=f"http://127.0.0.1:{free_port()}/connect")
    peer = await connect(gone, hello=False)
    assert (await peer.error("connect"))[0] == 503
    assert gone.metrics.hook_calls["connect", "unreachable"] == 1
    metrics = await http_request(gone.port, "GET", "/metrics")
    assert (
        b'tidings_hook_calls_total{hook="connect",outcome="unreachable"} 1'
        in metrics.body
    )


async def test_a_slow_back_end_holds_a_bounded_number_of_calls_and_the_hub_serves_on(
    start_hooked: Any, connect: Any, backend: Backend
) -> None:
    hub = await start_hooked(timeout=0.5, max_in_flight=8)
    await backend.script(connect={"delay": 5})
    # A subscriber of another channel, through a token: it must hear every
    # publication while a thousand connects wait on the back end.
    listener = await connect(hub, hello=False)
    await listener.result("connect", token=tidings.hub.mint_token(SECRET, "l"))
    await listener.result("subscribe", channel="news:live")

    async def connect_one() -> int:
        async with tidings.connect(f"ws://127.0.0.1:{hub.port}/ws") as ws:
            await ws.send(json.dumps({"id": 1, "op": "connect"}))
            reply = json.loads(await ws.recv())
            return int(reply["error"]["code"])

    async def publish_all() -> list[float]:
        delays = []
        for i in range(20):
            sent = time.monotonic()
            await hub.publish("news:live", i)
            pub = (await listener.pubs(1, "news:live"))[0]
            assert pub["data"] == i
            delays.append(time.monotonic() - sent)
        return delays

    started = time.monotonic()
    async with asyncio.timeout(60):
        codes, delays = await asyncio.gather(
            asyncio.gather(*(connect_one() for _ in range(1000))), publish_all()
        )
    assert set(codes) == {503}
    # No call ends before the first times out, 0.5 s in: until then, only
    # the 8 that had a turn can have reached the back end.
    early = [c for c in await backend.calls("connect") if c["at"] < started + 0.5]
    assert len(early) <= 8
    # The loop was never held up for the length of a back-end call.
    assert max(delays) < 5, delays


# -- subscribe, publish, rpc, refresh --------------------------------------------


async def test_subscribe_is_the_back_ends_to_decide_and_info_is_per_channel(
    start_hooked: Any, connect: Any, backend: Backend
) -> None:
    hub = await start_hooked()
    alice = await connect(hub, hello=False)
    await alice.result("connect", data=as_user("alice", info={"name": "Alice"}))
    await backend.script(
        subscribe={"body": {"result": {"info": {"name": "Alice", "role": "host"}}}}
    )
    await alice.result("subscribe", channel="room:1")
    [call] = await backend.calls("subscribe")
    assert call["body"]["channel"] == "room:1" and call["body"]["user"] == "alice"
    assert call["body"]["info"] == {"name": "Alice"}
    presence = await alice.result("presence", channel="room:1")
    assert presence["clients"][0]["info"] == {"name": "Alice", "role": "host"}
    await backend.script(
        subscribe={"body": {"error": {"code": 403, "message": "members only"}}}
    )
    assert await alice.error("subscribe", channel="room:2") == (403, "members only")
    # Not let in: neither its presence nor its history.
    assert (await alice.error("history", channel="room:2"))[0] == 403
    await backend.script(subscribe={"status": 503})
    assert (await alice.error("subscribe", channel="room:3"))[0] == 503
    assert "room:3" not in hub.channels()


async def test_publish_may_be_refused_or_rewritten_and_keeps_its_order(
    start_hooked: Any, connect: Any, backend: Backend
) -> None:
    hub = await start_hooked()
    alice = await connect(hub, hello=False)
    connected = await alice.result(
        "connect", data=as_user("alice", info={"name": "Alice"})
    )
    alice.client = connected["client"]
    await alice.result("subscribe", channel="room:p")
    await backend.script(
        publish={"body": {"result": {"data": {"text": "***", "moderated": True}}}}
    )
    await alice.result("publish", channel="room:p", data={"text": "darn"})
    [pub] = await alice.pubs(1, "room:p")
    assert pub["data"] == {"text": "***", "moderated": True}
    assert pub["info"] == {
        "client": alice.client,
        "user": "alice",
        "info": {"name": "Alice"},
    }
    await backend.script(
        publish={"body": {"error": {"code": 422, "message": "no swearing"}}}
    )
    assert await alice.error("publish", channel="room:p", data={"text": "x"}) == (
        422,
        "no swearing",
    )
    # Pipelined publishes through the hook are made in the order sent.
    await backend.script()
    results = await alice.publish_many("room:p", [{"n": n} for n in range(20)])
    assert [r["offset"] for r in results] == list(range(2, 22))
    assert [p["data"]["n"] for p in await alice.pubs(20, "room:p")] == list(range(20))


async def test_rpc_answers_with_the_back_ends_data(
    start_hooked: Any, connect: Any, backend: Backend
) -> None:
    hub = await start_hooked()
    peer = await connect(hub, hello=False)
    await peer.result("connect", data=as_user("alice"))
    result = await peer.result("rpc", method="history.older", data={"before": 10})
    assert result == {"data": {"method": "history.older", "echo": {"before": 10}}}
    await backend.script(
        rpc={"body": {"error": {"code": 404, "message": "no such method"}}}
    )
    assert await peer.error("rpc", method="nope") == (404, "no such method")
    assert (await peer.error("rpc", data=1))[0] == 400  # no method
    without = await start_hooked(rpc=None)
    peer = await connect(without, hello=False)
    await peer.result("connect", data=as_user("alice"))
    assert (await peer.error("rpc", method="x"))[0] == 404


async def test_refresh_extends_or_ends_a_proxied_connection(
    start_hooked: Any, connect: Any, backend: Backend
) -> None:
    hub = await start_hooked()
    await backend.script(refresh={"body": {"result": {"expire_at": time.time() + 1}}})
    peer = await connect(hub, hello=False)
    await peer.result("connect", data=as_user("alice", expire_at=time.time() + 0.2))
    await wait_for(
        lambda: (
            len(hub.metrics.hook_calls) and hub.metrics.hook_calls["refresh", "ok"] >= 1
        ),
        "a refresh",
    )
    assert (await peer.result("ping")) == {}  # still connected
    await backend.script(refresh={"body": {"result": {"expired": True}}})
    assert await peer.closed() == 4002


async def test_server_side_channels_arrive_as_subscribe_pushes_and_recover(
    start_hooked: Any, connect: Any, backend: Backend
) -> None:
    hub = await start_hooked()
    peer = await connect(hub, hello=False)
    await peer.result("connect", data=as_user("alice", channels=["news:s"]))
    push = await peer.push()
    assert push["channel"] == "news:s" and push["subscribe"]["offset"] == 0
    epoch = push["subscribe"]["epoch"]
    await hub.publish("news:s", "one")
    assert (await peer.pubs(1, "news:s"))[0]["data"] == "one"
    await peer.ws.close()
    await hub.publish("news:s", "two")
    # Back, with where it was: the push recovers what it missed.
    again = await connect(hub, hello=False)
    await again.result(
        "connect",
        data=as_user("alice", channels=["news:s"]),
        subs={"news:s": {"offset": 1, "epoch": epoch}},
    )
    push = await again.push()
    assert push["subscribe"]["recovered"] is True
    assert [p["data"] for p in push["subscribe"]["publications"]] == ["two"]


# -- the fallbacks and many nodes ------------------------------------------------------


async def test_the_fallbacks_go_through_the_same_hooks(
    start_hooked: Any, backend: Backend
) -> None:
    hub = await start_hooked()
    await backend.script(
        connect={"body": {"result": {"user": "carol", "info": {"name": "Carol"}}}}
    )
    cookie = (("Cookie", "session=c4r0l"),)
    # A long-poll: connected and subscribed through the hooks.
    answer = await http_request(
        hub.port, "GET", "/poll?channel=room:f&timeout=0", headers=cookie
    )
    assert answer.status == 200, answer
    # A command over POST: the publish hook rewrites it.
    await backend.script(
        connect={"body": {"result": {"user": "carol", "info": {"name": "Carol"}}}},
        publish={"body": {"result": {"data": "rewritten"}}},
    )
    answer = await http_request(
        hub.port,
        "POST",
        "/command",
        {"id": 7, "op": "publish", "channel": "room:f", "data": "sent"},
        headers=cookie,
    )
    assert answer.status == 200, answer
    history = await hub.history("room:f")
    assert [p.data for p in history.publications] == [b'"rewritten"']
    assert history.publications[0].info.info == {"name": "Carol"}  # type: ignore[union-attr]
    # An event stream: its connect reply names the back end's user.
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    writer.write(
        b"GET /sse?channel=room:f HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Cookie: session=c4r0l\r\n\r\n"
    )
    try:
        async with asyncio.timeout(BOUND):
            while not (line := await reader.readline()).startswith(b'data: {"id":1'):
                assert line, "the stream ended"
        assert json.loads(line[6:])["result"]["user"] == "carol"
    finally:
        writer.close()
    calls = await backend.calls()
    assert [(c["hook"], c["body"]["transport"]) for c in calls] == [
        ("connect", "poll"),
        ("subscribe", "poll"),
        ("connect", "command"),
        ("publish", "command"),
        ("connect", "sse"),
        ("subscribe", "sse"),
    ]
    assert all(c["body"]["headers"]["Cookie"] == "session=c4r0l" for c in calls)


async def test_two_nodes_on_redis_ask_the_same_back_end_and_share_info(
    backend: Backend, redis_server: Any, connect: Any
) -> None:
    await backend.script()
    prefix = f"t{time.monotonic_ns()}:"
    config = HubConfig(
        port=0,
        demo=False,
        namespaces=HOOKED_NAMESPACES,
        proxy=hooks_at(backend),
        presence_ttl=30,
    )
    async with contextlib.AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                Hub(config, RedisBroker(redis_server.url, prefix=prefix))
            )
            for _ in range(2)
        ]
        alice = await connect(nodes[0], hello=False)
        bob = await connect(nodes[1], hello=False)
        alice_id = (
            await alice.result("connect", data=as_user("alice", info={"name": "Alice"}))
        )["client"]
        await bob.result("connect", data=as_user("bob", info={"name": "Bob"}))
        await alice.result("subscribe", channel="room:n")
        await bob.result("subscribe", channel="room:n")
        await alice.result("publish", channel="room:n", data="hello")
        [pub] = await bob.pubs(1, "room:n")
        assert pub["info"] == {
            "client": alice_id,
            "user": "alice",
            "info": {"name": "Alice"},
        }
        presence = await bob.result("presence", channel="room:n")
        assert sorted(c["info"]["name"] for c in presence["clients"]) == [
            "Alice",
            "Bob",
        ]


async def test_presence_and_history_over_post_ask_the_subscribe_hook(
    start_hooked: Any, backend: Backend
) -> None:
    # A fallback's POST /command is never subscribed: the application says
    # whether it may read the channel, as for a subscribe.
    hub = await start_hooked()
    await backend.script(connect={"body": {"result": {"user": "dave"}}})
    cookie = (("Cookie", "session=d4ve"),)
    for op in ("presence", "history"):
        answer = await http_request(
            hub.port,
            "POST",
            "/command",
            {"id": 1, "op": op, "channel": "room:r"},
            headers=cookie,
        )
        assert answer.status == 200, answer
    await backend.script(
        connect={"body": {"result": {"user": "dave"}}},
        subscribe={"body": {"error": {"code": 403, "message": "members only"}}},
    )
    answer = await http_request(
        hub.port,
        "POST",
        "/command",
        {"id": 1, "op": "presence", "channel": "room:r"},
        headers=cookie,
    )
    assert answer.status == 403, answer
    asked = [c["body"]["channel"] for c in await backend.calls("subscribe")]
    assert asked == ["room:r"] * 3
