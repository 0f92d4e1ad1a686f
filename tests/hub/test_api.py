"""The HTTP API beside the hub's WebSocket (docs/protocol.md, "The HTTP
API"), over real sockets."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import pytest

from tidings import InvalidStatus
from tidings.hub import auth
from tidings.hub.brokers.base import BrokerUnavailable

from ..conftest import http_request
from .conftest import CLUSTERS, SECRET

BOUND = 10
KEY = "the-api-key"


async def test_publish_reaches_subscribers_without_info(
    start_hub: Any, connect: Any, http: Any
) -> None:
    hub = await start_hub()
    peer = await connect(hub)
    position = await peer.result("subscribe", channel="news:today")
    answer = await http(
        hub, "POST", "/api/publish", {"channel": "news:today", "data": {"n": 1}}
    )
    assert answer.status == 200
    assert answer.json() == {"offset": 1, "epoch": position["epoch"]}
    assert await peer.pubs(1) == [
        {"offset": 1, "epoch": position["epoch"], "data": {"n": 1}}
    ]


async def test_broadcast_publishes_to_every_channel(
    start_hub: Any, connect: Any, http: Any
) -> None:
    hub = await start_hub()
    peer = await connect(hub)
    await peer.result("subscribe", channel="news:a")
    await peer.result("subscribe", channel="chat:b")
    await hub.publish("chat:b", "earlier")
    answer = await http(
        hub, "POST", "/api/broadcast", {"channels": ["news:a", "chat:b"], "data": "x"}
    )
    results = answer.json()["results"]
    assert [(r["channel"], r["offset"]) for r in results] == [
        ("news:a", 1),
        ("chat:b", 2),
    ]
    pushes = [await peer.push() for _ in range(4)]
    pubs = [(p["channel"], p["pub"]["offset"]) for p in pushes if "pub" in p]
    assert pubs == [("chat:b", 1), ("news:a", 1), ("chat:b", 2)]
    # One unknown namespace refuses the whole broadcast.
    answer = await http(
        hub, "POST", "/api/broadcast", {"channels": ["news:a", "nope:x"], "data": 1}
    )
    assert answer.status == 404
    assert (await hub.history("news:a")).offset == 1


async def test_a_publish_repeating_its_idempotency_key_publishes_nothing(
    start_hub: Any, connect: Any, http: Any
) -> None:
    hub = await start_hub()
    nodes = CLUSTERS[hub]
    peer = await connect(hub)
    await peer.result("subscribe", channel="news:today")
    body = {"channel": "news:today", "idempotency_key": "order 17"}
    # Retried on every node in turn: one publication, one answer.
    answers = [
        await http(node, "POST", "/api/publish", {**body, "data": i})
        for i, node in enumerate(nodes * 2)
    ]
    assert [a.status for a in answers] == [200] * len(answers)
    first = answers[0].json()
    assert first["offset"] == 1
    assert [a.json() for a in answers] == [first] * len(answers)
    # In a broadcast the key is per channel: news:today has it already,
    # chat:b publishes, and a retry of the broadcast publishes nothing.
    broadcast = {
        "channels": ["news:today", "chat:b"],
        "data": "x",
        "idempotency_key": "order 17",
    }
    results = []
    for node in (nodes[-1], hub):
        answer = await http(node, "POST", "/api/broadcast", broadcast)
        assert answer.status == 200
        results.append(answer.json()["results"])
    assert results[0] == results[1]
    assert results[0][0] == {"channel": "news:today", **first}
    assert results[0][1]["offset"] == 1
    await hub.publish("news:today", "end")
    assert [pub["data"] for pub in await peer.pubs(2)] == [0, "end"]
    assert (await hub.history("chat:b")).offset == 1


@pytest.mark.parametrize("key", ["", "k" * 65, 17, "a\tb"])
async def test_a_bad_idempotency_key_is_400_and_nothing_is_published(
    start_hub: Any, http: Any, key: Any
) -> None:
    hub = await start_hub()
    for path, body in (
        ("/api/publish", {"channel": "news:a", "data": 1}),
        ("/api/broadcast", {"channels": ["news:a", "chat:b"], "data": 1}),
    ):
        answer = await http(hub, "POST", path, {**body, "idempotency_key": key})
        assert answer.status == 400
        assert answer.json()["error"]["message"] == (
            "idempotency_key must be a string of 1-64 printable characters"
        )
    assert (await hub.history("news:a")).offset == 0


async def test_a_key_raced_over_the_api_from_every_node_publishes_once(
    start_hub: Any, connect: Any, http: Any
) -> None:
    hub = await start_hub()
    nodes = CLUSTERS[hub]
    peer = await connect(hub)
    await peer.result("subscribe", channel="news:race")
    attempts = 24
    answers = await asyncio.gather(
        *(
            http(
                nodes[i % len(nodes)],
                "POST",
                "/api/publish",
                {"channel": "news:race", "data": i, "idempotency_key": "k"},
            )
            for i in range(attempts)
        )
    )
    assert [a.status for a in answers] == [200] * attempts
    assert len({(a.json()["offset"], a.json()["epoch"]) for a in answers}) == 1
    await hub.publish("news:race", "end")
    [made, end] = await peer.pubs(2)
    assert (made["offset"], end["offset"], end["data"]) == (1, 2, "end")


async def test_presence_history_and_channels(
    start_hub: Any, connect: Any, http: Any, mint: Any
) -> None:
    hub = await start_hub()
    alice = await connect(hub, mint("alice"))
    await alice.result("subscribe", channel="chat:room")
    for i in range(5):
        await hub.publish("chat:room", i)
    answer = await http(hub, "GET", "/api/presence?channel=chat:room")
    assert answer.json() == {"clients": [{"client": alice.client, "user": "alice"}]}
    history = (await http(hub, "GET", "/api/history?channel=chat:room")).json()
    epoch = history["epoch"]
    assert history["offset"] == 5 and len(history["publications"]) == 5
    answer = await http(hub, "GET", "/api/history?channel=chat:room&limit=2")
    assert [p["data"] for p in answer.json()["publications"]] == [3, 4]
    answer = await http(hub, "GET", f"/api/history?channel=chat:room&since=3:{epoch}")
    assert [p["offset"] for p in answer.json()["publications"]] == [4, 5]
    answer = await http(hub, "GET", "/api/history?channel=chat:room&since=3:other")
    assert answer.json() == {
        "epoch": epoch,
        "offset": 5,
        "publications": [],
        "complete": False,
    }
    bob = await connect(hub)
    await bob.result("subscribe", channel="chat:room")
    await bob.result("subscribe", channel="news:x")
    answer = await http(hub, "GET", "/api/channels")
    assert answer.json() == {
        "channels": [
            {"channel": "chat:room", "subscribers": 2},
            {"channel": "news:x", "subscribers": 1},
        ]
    }


async def test_presence_stats_over_the_api(
    start_hub: Any, connect: Any, http: Any, mint: Any
) -> None:
    hub = await start_hub()
    for token in [mint("alice"), mint("alice"), None]:
        peer = await connect(hub, token)
        await peer.result("subscribe", channel="chat:many")
    answer = await http(hub, "GET", "/api/presence_stats?channel=chat:many")
    assert answer.json() == {"clients": 3, "users": 2}
    answer = await http(hub, "GET", "/api/presence_stats?channel=chat:nobody")
    assert answer.json() == {"clients": 0, "users": 0}
    assert (await http(hub, "GET", "/api/presence_stats")).status == 400
    assert (await http(hub, "GET", "/api/presence_stats?channel=what:x")).status == 404


async def test_disconnect_closes_every_connection_of_the_user_with_4003(
    start_hub: Any, connect: Any, http: Any, mint: Any
) -> None:
    hub = await start_hub()
    alice = [await connect(hub, mint("alice")) for _ in range(2)]
    bob = await connect(hub, mint("bob"))
    answer = await http(hub, "POST", "/api/disconnect", {"user": "alice"})
    assert answer.json() == {"disconnected": 2}
    for peer in alice:
        assert await peer.closed() == 4003
    assert await bob.result("ping") == {}
    assert not hub._background  # nothing is kept per disconnect
    answer = await http(hub, "POST", "/api/disconnect", {"user": "nobody"})
    assert answer.json() == {"disconnected": 0}


async def test_healthz(start_hub: Any, http: Any) -> None:
    hub = await start_hub(api_key=KEY)
    answer = await http(hub, "GET", "/healthz")  # no key needed
    assert answer.status == 200
    assert answer.json() == {"status": "ok", "broker": hub.broker.status()}
    assert answer.json()["broker"]["ok"] is True


PROMETHEUS_LINE = re.compile(
    r'[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*",?)*\})? '
    r"-?[0-9.e+]+"
)


async def test_metrics_are_prometheus_text(
    start_hub: Any, connect: Any, http: Any
) -> None:
    hub = await start_hub()
    peer = await connect(hub)
    await peer.result("subscribe", channel="chat:m")
    await peer.result("publish", channel="chat:m", data=1)
    await peer.send("{not json")
    await peer.reply(None)
    answer = await http(hub, "GET", "/metrics")
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    values = {}
    for line in answer.body.decode().splitlines():
        if line.startswith("#"):
            assert re.fullmatch(r"# (HELP|TYPE) \w+ .+", line), line
            continue
        assert PROMETHEUS_LINE.fullmatch(line), line
        name, value = line.rsplit(" ", 1)
        values[name] = float(value)
    assert values["tidings_connections"] == 1
    assert values["tidings_subscriptions"] == 1
    assert values["tidings_channels"] == 1
    assert values["tidings_publications_total"] == 1
    assert values["tidings_deliveries_total"] >= 1
    assert values['tidings_errors_total{kind="code_400"}'] == 1


async def test_the_api_key_is_required_when_configured(
    start_hub: Any, http: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = await start_hub(api_key=KEY)
    compared = []
    compare = auth.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    for key in (None, "wrong", KEY + "x", KEY[:-1]):
        answer = await http(hub, "GET", "/api/channels", key=key)
        assert answer.status == 401
        assert answer.json() == {
            "error": {"code": 401, "message": "missing or wrong API key"}
        }
    bearer = (("Authorization", f"Bearer {KEY}"),)
    assert (await http(hub, "GET", "/api/channels", headers=bearer)).status == 401
    answer = await http(hub, "GET", "/api/channels", key=KEY)
    assert answer.status == 200 and answer.json() == {"channels": []}
    # Every key was checked in constant time.
    assert (KEY.encode(), KEY.encode()) in compared and len(compared) >= 4


async def test_without_a_key_the_api_is_refused_on_a_public_address(
    start_hub: Any, http: Any
) -> None:
    # Listening on every address, but asked on loopback.
    hub = await start_hub(host="0.0.0.0")
    answer = await http(hub, "GET", "/api/channels")
    assert answer.status == 403
    assert answer.json()["error"]["code"] == 403
    assert (await http(hub, "GET", "/healthz")).status == 200


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (("POST", "/api/publish", b"{not json"), 400),
        (("POST", "/api/publish", [1, 2]), 400),
        (("POST", "/api/publish", {"data": 1}), 400),
        (("POST", "/api/publish", {"channel": "news:x"}), 400),
        (("POST", "/api/publish", {"channel": "bad name", "data": 1}), 400),
        (("POST", "/api/publish", {"channel": "a@b:c", "data": 1}), 400),
        (("POST", "/api/publish", {"channel": "nope:x", "data": 1}), 404),
        (("POST", "/api/broadcast", {"channels": [], "data": 1}), 400),
        (("POST", "/api/broadcast", {"channels": "news:x", "data": 1}), 400),
        (("POST", "/api/disconnect", {"user": ""}), 400),
        (("GET", "/api/presence", None), 400),
        (("GET", "/api/presence?channel=nope:x", None), 404),
        (("GET", "/api/history?channel=news:x&limit=-1", None), 400),
        (("GET", "/api/history?channel=news:x&limit=%C2%B2", None), 400),
        (("GET", "/api/history?channel=news:x&since=abc", None), 400),
        (("GET", "/api/history?channel=news:x&since=-1:e", None), 400),
        (("GET", "/api/publish", None), 404),
        (("GET", "/api/nothing", None), 404),
    ],
)
async def test_errors_are_json_with_their_status(
    start_hub: Any, http: Any, request_: tuple[str, str, Any], status: int
) -> None:
    hub = await start_hub()
    answer = await http(hub, *request_)
    assert answer.status == status
    error = answer.json()["error"]
    assert error["code"] == status and error["message"]


async def test_other_paths_are_404_without_the_demo(start_hub: Any, http: Any) -> None:
    hub = await start_hub()
    assert (await http(hub, "GET", "/")).status == 404
    assert (await http(hub, "GET", "/chat")).status == 404
    assert (await http(hub, "GET", "/chat.html")).status == 404


async def test_the_browser_client_is_served_with_or_without_the_demo(
    start_hub: Any, http: Any
) -> None:
    hub = await start_hub()
    script = await http(hub, "GET", "/tidings.js")
    assert script.status == 200 and b"export class Hub" in script.body
    assert script.headers["content-type"].startswith("text/javascript")
    # A module a page of any origin may load: public code, no credentials.
    assert script.headers["access-control-allow-origin"] == "*"
    types = await http(hub, "GET", "/tidings.d.ts")
    assert types.status == 200 and b"class Hub" in types.body
    assert (await http(hub, "POST", "/tidings.js")).status == 405


async def test_an_api_publish_while_clients_subscribe_concurrently(
    start_hub: Any, connect: Any, http: Any
) -> None:
    hub = await start_hub()
    peers = [await connect(hub) for _ in range(5)]

    async def subscribe_then_read(peer: Any) -> list[int]:
        start = (await peer.result("subscribe", channel="news:c"))["offset"]
        return [p["offset"] for p in await peer.pubs(10 - start)]

    async def publish() -> None:
        for i in range(10):
            await http(hub, "POST", "/api/publish", {"channel": "news:c", "data": i})

    async with asyncio.timeout(BOUND):
        *received, _ = await asyncio.gather(
            *(subscribe_then_read(p) for p in peers), publish()
        )
    for offsets in received:
        assert offsets == list(range(11 - len(offsets), 11))


async def test_unsubscribe_reaches_the_user_on_every_node(
    start_hub: Any, connect: Any, http: Any, mint: Any
) -> None:
    hub = await start_hub()
    alice = [await connect(hub, mint("alice")) for _ in range(3)]
    bob = await connect(hub, mint("bob"))
    for peer in [*alice, bob]:
        await peer.result("subscribe", channel="chat:u")
    answer = await http(
        hub, "POST", "/api/unsubscribe", {"user": "alice", "channel": "chat:u"}
    )
    assert answer.json() == {"unsubscribed": 3}
    for peer in alice:  # told, after the joins of the others
        while "join" in (push := await peer.push()):
            pass
        assert push == {"channel": "chat:u", "unsubscribe": {}}
    await hub.publish("chat:u", "after")
    assert [p["data"] for p in await bob.pubs(1)] == ["after"]
    for peer in alice:
        assert await peer.result("ping") == {}
        assert not [p for p in peer.pushes if "pub" in p]
        # It is no longer subscribed: it may subscribe again.
        await peer.result("subscribe", channel="chat:u")
    assert [c.user for c in await hub.broker.presence("chat:u")].count("alice") == 3
    bad = await http(hub, "POST", "/api/unsubscribe", {"user": "alice"})
    assert bad.status == 400


def with_subs(user: str, *subs: str) -> str:
    """A token for ``user`` whose ``subs`` claim names ``subs``."""
    return auth.mint_token(SECRET, user, subs=subs)


async def test_subscribe_reaches_the_user_on_another_node_and_recovers(
    start_hub: Any, connect: Any, http: Any, mint: Any
) -> None:
    hub = await start_hub()
    other = CLUSTERS[hub][-1]  # another node, where there are several
    alice = await connect(hub, mint("alice"), node=other)
    bob = await connect(hub, mint("bob"), node=hub)
    poll = await http_request(  # a long-poll holds no connection: left out
        other.port, "GET", f"/poll?channel=news:p&timeout=0&token={mint('alice')}"
    )
    assert poll.status == 200, poll
    # The token grants nothing in "private": the back end decides alone.
    assert (await alice.error("subscribe", channel="private:in"))[0] == 403
    body = {"user": "alice", "channel": "private:in"}
    answer = await http(hub, "POST", "/api/subscribe", body)
    assert answer.json() == {"subscribed": 1}
    push = await alice.push()
    assert push == {
        "channel": "private:in",
        "subscribe": {"epoch": push["subscribe"]["epoch"], "offset": 0},
    }
    epoch = push["subscribe"]["epoch"]
    # Subscribed already: left as it is, not counted.
    assert (await http(hub, "POST", "/api/subscribe", body)).json() == {"subscribed": 0}
    for n in (1, 2):
        await hub.publish("private:in", n)
    assert [p["data"] for p in await alice.pubs(2)] == [1, 2]
    assert await bob.result("ping") == {} and not bob.pushes
    # Offline, alice misses three; back with a token that names the channel
    # (as the back end keeps it now), she recovers exactly those.
    await alice.ws.close()
    for n in (3, 4, 5):
        await hub.publish("private:in", n)
    again = await connect(hub, hello=False, node=other)
    await again.result(
        "connect",
        token=with_subs("alice", "private:in"),
        subs={"private:in": {"offset": 2, "epoch": epoch}},
    )
    push = (await again.push())["subscribe"]
    assert (push["recovered"], push["offset"]) == (True, 5)
    assert [(p["offset"], p["data"]) for p in push["publications"]] == [
        (3, 3),
        (4, 4),
        (5, 5),
    ]
    await hub.publish("private:in", 6)
    assert [p["offset"] for p in await again.pubs(1)] == [6]
    # Or the back end says where to recover from: /api/subscribe's since.
    third = await connect(hub, mint("alice"), node=other)
    body = {**body, "since": {"offset": 4, "epoch": epoch}}
    assert (await http(hub, "POST", "/api/subscribe", body)).json() == {
        "subscribed": 1  # the other connection of alice is subscribed already
    }
    push = (await third.push())["subscribe"]
    assert push["recovered"] is True
    assert [p["offset"] for p in push["publications"]] == [5, 6]


async def test_subscribe_refuses_bad_bodies_and_counts_no_connection(
    start_hub: Any, connect: Any, http: Any, mint: Any
) -> None:
    hub = await start_hub()
    alice = await connect(hub, mint("alice"))
    for body in [
        [],
        {"channel": "news:a"},
        {"user": "", "channel": "news:a"},
        {"user": "alice"},
        {"user": "alice", "channel": "no namespace"},
        {"user": "alice", "channel": "news:a", "since": {"offset": -1, "epoch": "e"}},
        {"user": "alice", "channel": "news:a", "since": "0:e"},
    ]:
        answer = await http(hub, "POST", "/api/subscribe", body)
        assert answer.status == 400, (body, answer)
    unknown = {"user": "alice", "channel": "nowhere:a"}
    assert (await http(hub, "POST", "/api/subscribe", unknown)).status == 404
    nobody = {"user": "nobody", "channel": "news:a"}
    assert (await http(hub, "POST", "/api/subscribe", nobody)).json() == {
        "subscribed": 0
    }
    assert await alice.result("ping") == {} and not alice.pushes


async def test_healthz_is_503_while_the_broker_is_down(
    start_hub: Any, http: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = await start_hub()
    status = {"kind": "test", "ok": False, "error": "connection refused"}
    monkeypatch.setattr(hub.broker, "status", lambda: status)
    answer = await http(hub, "GET", "/healthz")
    assert answer.status == 503
    assert answer.json() == {"status": "broker unavailable", "broker": status}
    metrics = (await http(hub, "GET", "/metrics")).body.decode()
    assert "tidings_broker_up 0" in metrics.splitlines()


async def test_an_unreachable_broker_is_503_on_the_api(
    start_hub: Any, http: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = await start_hub()

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise BrokerUnavailable("redis is unreachable: connection refused")

    monkeypatch.setattr(hub.broker, "publish", down)
    answer = await http(hub, "POST", "/api/publish", {"channel": "chat:x", "data": 1})
    assert answer.status == 503
    assert (
        answer.json()["error"]["message"] == "redis is unreachable: connection refused"
    )
    nan = await http(hub, "POST", "/api/publish", b'{"channel": "chat:x", "data": NaN}')
    assert nan.status == 400


async def test_metrics_need_the_api_key_when_one_is_set(
    start_hub: Any, http: Any
) -> None:
    hub = await start_hub(api_key=KEY)
    assert (await http(hub, "GET", "/metrics")).status == 401
    assert (await http(hub, "GET", "/metrics", key="wrong")).status == 401
    answer = await http(hub, "GET", "/metrics", key=KEY)
    assert answer.status == 200 and b"tidings_connections" in answer.body


async def test_the_metrics_port_answers_metrics_and_health_only(
    start_hub: Any,
) -> None:
    hub = await start_hub(api_key=KEY)
    port = await hub.listen_metrics(0)
    assert port != hub.port
    auth = (("Authorization", f"apikey {KEY}"),)
    answer = await http_request(port, "GET", "/metrics", headers=auth)
    assert answer.status == 200 and b"tidings_connections" in answer.body
    assert (await http_request(port, "GET", "/metrics")).status == 401
    assert (await http_request(port, "GET", "/healthz")).json()["status"] == "ok"
    for path in ("/api/channels", "/ws", "/"):
        answer = await http_request(port, "GET", path, headers=auth)
        assert answer.status == 404, path


async def test_a_limit_too_long_for_an_integer_is_400(
    start_hub: Any, http: Any
) -> None:
    hub = await start_hub()
    answer = await http(hub, "GET", "/api/history?channel=chat:x&limit=" + "9" * 5000)
    assert answer.status == 400
    assert answer.json()["error"]["message"] == "limit must be a non-negative integer"


async def test_the_keyless_api_refuses_foreign_hosts_and_origins(
    start_hub: Any, http: Any
) -> None:
    hub = await start_hub()
    body = {"channel": "chat:x", "data": 1}

    async def publish(*headers: tuple[str, str]) -> Any:
        return await http(hub, "POST", "/api/publish", body, headers=headers)

    # DNS rebinding: evil.example resolved to 127.0.0.1.
    rebound = await publish(("Host", "evil.example:8000"))
    assert rebound.status == 403
    assert "loopback" in rebound.json()["error"]["message"]
    # A page of another site POSTing from a visitor's browser.
    foreign = await publish(("Origin", "https://evil.example"))
    assert foreign.status == 403
    assert (await publish(("Origin", "null"))).status == 403
    # A reverse proxy on this machine, forwarding callers from anywhere.
    for name in ("X-Forwarded-For", "Forwarded", "X-Real-IP", "x-forwarded-host"):
        proxied = await publish((name, "203.0.113.9"))
        assert proxied.status == 403
        assert "proxied" in proxied.json()["error"]["message"]
    # A page's text/plain POST needs no CORS preflight; JSON does.
    plain = await publish(("Content-Type", "text/plain"))
    assert plain.status == 415
    assert "application/json" in plain.json()["error"]["message"]
    assert (
        await publish(("Content-Type", "Application/JSON; charset=utf-8"))
    ).status == 200
    # What stays open: no Origin (curl, back ends), pages of this machine.
    assert (await publish()).status == 200
    assert (await publish(("Origin", "http://localhost:5173"))).status == 200
    assert (await publish(("Host", "[::1]:8000"))).status == 200
    # With a key, the key decides.
    keyed = await start_hub(api_key=KEY)
    answer = await http(
        keyed,
        "POST",
        "/api/publish",
        body,
        key=KEY,
        headers=(("Host", "hub.example"), ("Content-Type", "text/plain")),
    )
    assert answer.status == 200


async def test_the_websocket_refuses_pages_of_other_origins(
    start_hub: Any, connect: Any
) -> None:
    hub = await start_hub(allowed_origins=("https://app.example",))

    async def opens(origin: str) -> bool:
        try:
            peer = await connect(
                hub, node=hub, hello=False, headers=[("Origin", origin)]
            )
        except InvalidStatus as exc:
            assert exc.status == 403
            return False
        assert await peer.result("connect")
        return True

    assert not await opens("https://evil.example")
    assert await opens(f"http://127.0.0.1:{hub.port}")  # the hub's own pages
    assert await opens("http://localhost:3000")  # a page on this machine
    assert await opens("https://app.example")  # allowed_origins
    assert await connect(hub, node=hub)  # no Origin: not a browser


async def test_bad_input_gets_a_4xx_and_one_log_line_without_traceback(
    start_hub: Any, connect: Any, http: Any, caplog: pytest.LogCaptureFixture
) -> None:
    hub = await start_hub()
    caplog.set_level(logging.DEBUG, logger="tidings")
    garbage = b"\x00\x01 not HTTP\r\n\r\n"
    cases: list[tuple[Any, int, str]] = [
        (("POST", "/api/publish", b"{not json"), 400, "the body must be JSON"),
        (("GET", "/api/history?channel=chat:x&limit=" + "9" * 5000), 400, "limit"),
        (("GET", "/api/presence?channel=" + "x" * 300), 400, "channel"),
        (("GET", "/ws", None, (("Upgrade", "websocket"),)), 400, "handshake"),
    ]
    for args, status, words in cases:
        caplog.clear()
        method, path, *rest = args
        body = rest[0] if rest else None
        headers = rest[1] if len(rest) > 1 else ()
        answer = await http(hub, method, path, body, headers=headers)
        assert answer.status == status, (args, answer)
        lines = [r for r in caplog.records if r.levelno >= logging.INFO]
        assert len(lines) == 1, (args, [r.getMessage() for r in lines])
        assert words in lines[0].getMessage() and lines[0].exc_info is None
    caplog.clear()
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    writer.write(garbage)
    assert (await reader.read()).startswith(b"HTTP/1.1 400")
    writer.close()
    lines = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) == 1 and "malformed" in lines[0].getMessage()
    # Malformed commands: an error reply each, one line when the hub gives up.
    peer = await connect(hub)
    caplog.clear()
    for _ in range(21):
        await peer.send("{not json")
    assert await peer.closed() == 4000
    lines = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert [r.getMessage().split(": ")[-1] for r in lines] == [
        "too many malformed commands"
    ]
    assert all(r.exc_info is None for r in caplog.records)


async def test_a_full_node_refuses_new_clients_and_answers_everything_else(
    start_hub: Any, connect: Any, http: Any
) -> None:
    hub = await start_hub(max_connections=2)
    await connect(hub, node=hub)
    await connect(hub, node=hub)
    with pytest.raises(InvalidStatus) as refused:
        await connect(hub, node=hub, hello=False)
    assert refused.value.status == 503
    for path in ("/sse", "/poll"):
        answer = await http(hub, "GET", f"{path}?channel=chat:full")
        assert answer.status == 503, answer
    # Publishing to a full node, and watching it, still work.
    published = await http(
        hub, "POST", "/api/publish", {"channel": "chat:f", "data": 1}
    )
    assert published.status == 200, published
    assert (await http(hub, "GET", "/healthz")).status == 200
    assert (await http(hub, "GET", "/metrics")).status == 200
