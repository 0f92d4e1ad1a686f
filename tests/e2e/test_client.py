"""tidings.js, the browser client, in Chromium against a hub in this
process: commands and their errors, timeouts, reconnecting with backoff,
recovery, and the close codes after which it must stop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.request
from typing import Any

import pytest

from tidings.hub import (
    Client,
    Hub,
    HubConfig,
    MemoryBroker,
    NamespaceConfig,
    mint_channel_token,
    mint_token,
)
from tidings.hub.brokers.base import Push

from ..conftest import lose
from .conftest import BOUND, PAGE_HOSTS, Browser, Page

pytestmark = pytest.mark.asyncio(loop_scope="module")

SECRET = "a development secret of 32+ bytes!"

#: Loaded into every test page: the module as window.T, and until(fn), a
#: bounded wait for fn() to be truthy.
PRELUDE = """async () => {
    window.T = await import("/tidings.js");
    window.until = async (fn, ms = 10000) => {
        const end = Date.now() + ms;
        while (!fn()) {
            if (Date.now() > end) throw new Error(`timed out waiting for ${fn}`);
            await new Promise((r) => setTimeout(r, 20));
        }
        return fn();
    };
}"""


async def client_page(browser: Browser, hub: Hub, url: str | None = None) -> Page:
    """A page of ``hub`` (at ``url``, else its own address) with PRELUDE run."""
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(url or hub.url)
    await page.evaluate(PRELUDE)
    return page


def api(hub: Hub, path: str, body: Any) -> Any:
    request = urllib.request.Request(
        hub.url + path.lstrip("/"),
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=BOUND) as response:
        return json.loads(response.read())


def drop_everyone(hub: Hub) -> None:
    """Drop every client as too slow (close code 4005)."""
    for session in list(hub._sessions):
        hub.drop_slow(session.ws)


async def test_subscribe_publish_presence_history(browser: Browser, hub: Hub) -> None:
    page = await client_page(browser, hub)
    result = await page.evaluate(
        """async () => {
            const hub = new T.Hub();
            const got = [];
            const sub = hub.subscribe("chat:t", {
                onPublication: (p) => got.push([p.offset, p.data, p.info?.client]),
            });
            // Commands made before connecting wait for the connection.
            const early = hub.publish("chat:t", "a");
            const me = await hub.connect();
            const results = [await early];
            for (const data of ["b", "c"]) {
                results.push(await hub.publish("chat:t", data));
            }
            await until(() => got.length === 3);
            const presence = await sub.presence();
            const history = await sub.history({ limit: 2 });
            await sub.unsubscribe();
            await hub.publish("chat:t", "d");
            // A repeat of a publish with its key is answered, not made.
            const keyed = [];
            const key = { idempotencyKey: "k1" };
            for (const data of ["e", "e again"]) {
                keyed.push(await hub.publish("chat:keyed", data, key));
            }
            await new Promise((r) => setTimeout(r, 200));
            return { me, client: hub.client, user: hub.user, results, got,
                     offset: sub.offset, epoch: sub.epoch, presence, history,
                     active: sub.active, after: got.length, url: hub.url, keyed };
        }"""
    )
    client = result["client"]
    assert result["me"] == {"client": client, "user": ""}
    assert result["url"] == f"ws://127.0.0.1:{hub.port}/ws"
    epoch = result["epoch"]
    assert result["results"] == [{"offset": i, "epoch": epoch} for i in (1, 2, 3)]
    assert result["got"] == [[1, "a", client], [2, "b", client], [3, "c", client]]
    assert result["offset"] == 3
    assert result["presence"] == [{"client": client, "user": ""}]
    assert result["history"]["offset"] == 3
    assert [p["data"] for p in result["history"]["publications"]] == ["b", "c"]
    assert result["active"] is False
    assert result["after"] == 3  # nothing after unsubscribe
    assert result["keyed"][0] == result["keyed"][1]
    assert [
        json.loads(p.data) for p in (await hub.history("chat:keyed")).publications
    ] == ["e"]
    assert await hub.broker.presence("chat:t") == []


async def test_error_replies_reject_with_the_code(browser: Browser, hub: Hub) -> None:
    page = await client_page(browser, hub)
    result = await page.evaluate(
        """async () => {
            const hub = new T.Hub();
            await hub.connect();
            const outcome = (p) => p.then(
                () => "resolved", (e) => [e instanceof T.HubError, e.code]);
            const errors = [];
            const sub = hub.subscribe("nope:x", {
                onError: (e) => errors.push([e.code, e.channel]),
            });
            let twice;
            try { hub.subscribe("nope:x"); } catch (e) { twice = e.code; }
            return {
                notAllowed: await outcome(hub.publish("ticker:AAPL", 1)),
                unknown: await outcome(hub.publish("nope:x", 1)),
                tooBig: await outcome(hub.publish("chat:big", "x".repeat(70000))),
                noData: await outcome(hub.publish("chat:x")),
                twice,
                errors: await until(() => errors.length && errors),
                active: sub.active,
                stillUp: await hub.publish("chat:x", "fine").then(() => hub.state),
            };
        }"""
    )
    assert result == {
        "notAllowed": [True, 403],
        "unknown": [True, 404],
        "tooBig": [True, 413],
        "noData": [True, 400],
        "twice": 409,
        "errors": [[404, "nope:x"]],
        "active": False,
        "stillUp": "connected",
    }


async def test_commands_time_out_and_are_not_sent_late(
    browser: Browser, hub: Hub
) -> None:
    page = await client_page(browser, hub)
    await page.evaluate(
        """async () => {
            window.hub = new T.Hub({ timeout: 400 });
            await hub.connect();
        }"""
    )
    await page.context.set_offline(True)
    outcome = await page.evaluate(
        """async () => {
            await until(() => hub.state !== "connected");
            const start = performance.now();
            const code = await hub.publish("chat:late", 1).catch((e) => e.code);
            return [code, performance.now() - start];
        }"""
    )
    assert outcome[0] == "timeout"
    assert 350 <= outcome[1] < 5000
    await page.context.set_offline(False)
    await page.wait_for("() => hub.state === 'connected'")
    # Sent after the reconnect: a late send of the first would come before.
    await page.evaluate("() => hub.publish('chat:late', 2)")
    history = await hub.history("chat:late")
    assert [json.loads(p.data) for p in history.publications] == [2]


async def test_reconnects_after_a_drop_and_recovers(browser: Browser, hub: Hub) -> None:
    page = await client_page(browser, hub)
    await page.evaluate(
        """async () => {
            window.events = [];
            window.got = [];
            window.subscribed = [];
            window.tokens = 0;
            window.hub = new T.Hub({
                minDelay: 100,
                getToken: async () => { tokens += 1; return null; },
            });
            hub.on("disconnect", (e) => events.push(e));
            hub.subscribe("chat:r", {
                onPublication: (p) =>
                    got.push([p.offset, p.data, p.recovered ?? false]),
                onSubscribe: (info) => subscribed.push(info),
            });
            await hub.connect();
        }"""
    )
    # Subscribed without a position: only what comes after the reply counts.
    await page.wait_for("() => subscribed.length === 1")
    await hub.publish("chat:r", "live 1")
    await page.wait_for("() => got.length === 1")
    first_client = await page.evaluate("() => hub.client")
    drop_everyone(hub)
    # Published before the page can be back: it must recover them.
    for i in (2, 3, 4):
        await hub.publish("chat:r", f"missed {i}")
    await page.wait_for("() => got.length === 4 && hub.state === 'connected'")
    await hub.publish("chat:r", "live 5")
    await page.wait_for("() => got.length === 5")
    result = await page.evaluate(
        "() => ({ got, events, subscribed, tokens, client: hub.client })"
    )
    assert result["got"] == [
        [1, "live 1", False],
        [2, "missed 2", True],
        [3, "missed 3", True],
        [4, "missed 4", True],
        [5, "live 5", False],
    ]
    (event,) = result["events"]
    assert event["code"] == 4005
    assert event["reconnect"] is True
    assert 50 <= event["delay"] <= 100
    first, second = result["subscribed"]
    assert first["recovered"] is None
    assert first["missed"] == 0
    assert second["recovered"] is True
    assert second["missed"] == 3
    assert second["offset"] == 4
    assert result["tokens"] == 2  # getToken before every connect
    assert result["client"] != first_client


async def test_backoff_then_recovery_fails_across_a_hub_restart(
    browser: Browser,
) -> None:
    first = await Hub(HubConfig(port=0)).start()
    port = first.port
    try:
        page = await client_page(browser, first)
        await page.evaluate(
            """async () => {
                window.events = [];
                window.got = [];
                window.failed = [];
                window.subscribed = 0;
                window.hub = new T.Hub({ minDelay: 100, maxDelay: 800 });
                hub.on("disconnect", (e) => events.push(e));
                window.sub = hub.subscribe("chat:restart", {
                    onPublication: (p) => got.push([p.offset, p.data]),
                    onRecoveryFailed: (position) => failed.push(position),
                    onSubscribe: () => { subscribed += 1; },
                });
                await hub.connect();
            }"""
        )
        # connect() resolves on the connect reply; the subscribe may not
        # have reached the hub yet, and a publication before it is not sent.
        await page.wait_for("() => subscribed === 1")
        await first.publish("chat:restart", "before")
        await page.wait_for("() => got.length === 1")
        old_epoch = await page.evaluate("() => sub.epoch")
    finally:
        await first.close()  # 1001; the memory broker's channels are gone

    events = await page.wait_for("() => events.length >= 6 && events", timeout=BOUND)
    assert events[0]["code"] == 1001
    assert all(e["reconnect"] for e in events)
    assert all(e["code"] == 1006 for e in events[1:])  # refused
    for attempt, event in enumerate(events[:6]):
        full = min(800, 100 * 2**attempt)
        assert full / 2 <= event["delay"] <= full, (attempt, event)

    async with Hub(HubConfig(port=port)) as second:
        await page.wait_for("() => failed.length === 1", timeout=BOUND)
        await page.wait_for("() => hub.state === 'connected'")
        offset, epoch = await second.publish("chat:restart", "after")
        await page.wait_for("() => got.length === 2")
        result = await page.evaluate("() => ({ got, failed })")
    assert result["got"] == [[1, "before"], [1, "after"]]
    (position,) = result["failed"]
    assert position["epoch"] == epoch != old_epoch
    assert position["offset"] == 0
    assert offset == 1


async def test_since_recovers_from_a_known_position(browser: Browser, hub: Hub) -> None:
    epoch = ""
    for data in ("a", "b", "c"):
        _, epoch = await hub.publish("chat:since", data)
    page = await client_page(browser, hub)
    result = await page.evaluate(
        """async (epoch) => {
            const hub = new T.Hub();
            const got = [], infos = [], failed = [];
            hub.subscribe("chat:since", {
                since: { offset: 1, epoch },
                onPublication: (p) => got.push([p.offset, p.data, p.recovered]),
                onSubscribe: (info) => infos.push(info),
            });
            hub.subscribe("chat:since2", {
                since: { offset: 5, epoch: "another" },
                onRecoveryFailed: (position) => failed.push(position),
                onSubscribe: (info) => infos.push(info),
            });
            await hub.connect();
            await until(() => infos.length === 2);
            return { got, infos, failed };
        }""",
        epoch,
    )
    assert result["got"] == [[2, "b", True], [3, "c", True]]
    info, info2 = result["infos"]
    assert info == {"offset": 3, "epoch": epoch, "recovered": True, "missed": 2}
    assert info2["recovered"] is False
    assert result["failed"] == [{"offset": 0, "epoch": info2["epoch"]}]


async def test_no_reconnect_after_a_disconnect_through_the_api(
    browser: Browser,
) -> None:
    async with Hub(HubConfig(port=0, secret=SECRET)) as hub:
        token = mint_token(SECRET, "carol")
        page = await client_page(browser, hub)
        await page.evaluate(
            """async (token) => {
                window.events = [];
                window.errors = [];
                window.got = [];
                window.hub = new T.Hub({ token, minDelay: 50 });
                hub.on("disconnect", (e) => events.push(e));
                hub.on("error", (e) => errors.push(e.code));
                hub.subscribe("chat:d", { onPublication: (p) => got.push(p.data) });
                await hub.connect();
            }""",
            token,
        )
        assert await page.evaluate("() => hub.user") == "carol"
        answer = await asyncio.to_thread(api, hub, "/api/disconnect", {"user": "carol"})
        assert answer == {"disconnected": 1}
        await page.wait_for("() => hub.state === 'closed'")
        await hub.publish("chat:d", "while away")
        await asyncio.sleep(1)  # 20 backoff periods: it would have reconnected
        assert hub.connection_count() == 0
        result = await page.evaluate("() => ({ events, errors, state: hub.state })")
        assert result == {
            "events": [
                {
                    "code": 4003,
                    "reason": "disconnected",
                    "reconnect": False,
                    "delay": None,
                }
            ],
            "errors": [4003],
            "state": "closed",
        }
        # The application says so: connect again, and the subscription resumes.
        await page.evaluate("() => hub.connect()")
        await page.wait_for("() => got.length === 1")
        assert await page.evaluate("() => got") == ["while away"]


async def test_no_reconnect_after_an_invalid_token(browser: Browser) -> None:
    async with Hub(HubConfig(port=0, secret=SECRET)) as hub:
        page = await client_page(browser, hub)
        result = await page.evaluate(
            """async () => {
                const hub = new T.Hub({ token: "not a token", minDelay: 50 });
                const events = [];
                hub.on("disconnect", (e) => events.push(e));
                const code = await hub.connect().then(() => "connected", (e) => e.code);
                await new Promise((r) => setTimeout(r, 1000));
                return { code, events, state: hub.state };
            }"""
        )
        assert result["code"] == 401
        assert result["state"] == "closed"
        assert [(e["code"], e["reconnect"]) for e in result["events"]] == [
            (4001, False)
        ]
        assert hub.connection_count() == 0


async def test_get_token_refreshes_the_token_before_it_expires(
    browser: Browser,
) -> None:
    async with Hub(HubConfig(port=0, secret=SECRET)) as hub:
        page = await client_page(browser, hub)
        short = mint_token(SECRET, "alice", ttl=2)
        expires = time.time() + 2
        await page.evaluate(
            """async (tokens) => {
                window.events = [];
                window.got = [];
                window.asked = 0;
                window.hub = new T.Hub({
                    getToken: async () => tokens[Math.min(asked++, 1)],
                });
                hub.on("disconnect", (e) => events.push(e));
                hub.subscribe("chat:t", { onPublication: (p) => got.push(p.data) });
                await hub.connect();
                window.first = hub.client;
            }""",
            [short, mint_token(SECRET, "alice", ttl=3600)],
        )
        await page.wait_for("() => asked === 2")
        # Past the first token's expiry, on the same connection.
        await page.wait_for(f"() => Date.now() > {(expires + 0.5) * 1000}")
        await hub.publish("chat:t", "after")
        await page.wait_for("() => got.length === 1")
        result = await page.evaluate(
            "() => ({ events, got, same: hub.client === first })"
        )
        assert result == {"events": [], "got": ["after"], "same": True}


async def test_presence_info_from_a_token_and_presence_stats(
    browser: Browser,
) -> None:
    async with Hub(HubConfig(port=0, secret=SECRET)) as hub:
        page = await client_page(browser, hub)
        token = mint_token(SECRET, "alice", info={"name": "Alice"})
        result = await page.evaluate(
            """async (token) => {
                const joins = [];
                const alice = new T.Hub({ token });
                const bob = new T.Hub();
                const me = await alice.connect();
                await bob.connect();
                const sub = alice.subscribe("chat:e", {
                    onJoin: (info) => joins.push(info),
                });
                await until(() => joins.length === 1);
                const other = bob.subscribe("chat:e");
                await until(() => joins.length === 2);
                const presence = await other.presence();
                const stats = await other.presenceStats();
                alice.close();
                bob.close();
                return { me, joins, presence, stats };
            }""",
            token,
        )
        alice = {"client": result["me"]["client"], "user": "alice"}
        alice["info"] = {"name": "Alice"}
        assert {**result["me"], "ttl": 0} == {**alice, "ttl": 0}
        assert result["joins"][0] == alice
        assert result["joins"][1]["user"] == ""
        assert alice in result["presence"] and len(result["presence"]) == 2
        assert result["stats"] == {"clients": 2, "users": 2}


async def test_close_stops_and_connect_resumes(browser: Browser, hub: Hub) -> None:
    page = await client_page(browser, hub)
    await page.evaluate(
        """async () => {
            window.got = [];
            window.hub = new T.Hub();
            let subscribed;
            const ready = new Promise((resolve) => { subscribed = resolve; });
            hub.subscribe("chat:c", {
                onPublication: (p) => got.push(p.data),
                onSubscribe: subscribed,
            });
            hub.connect();
            await ready;  // the subscription has a position to recover from
            hub.close();
            window.refused = await hub.publish("chat:c", 1).catch((e) => e.code);
        }"""
    )
    assert await page.evaluate("() => [hub.state, refused]") == ["closed", "closed"]
    await hub.publish("chat:c", "missed")
    await page.evaluate("() => hub.connect()")
    await page.wait_for("() => got.length === 1")
    assert await page.evaluate("() => got") == ["missed"]


async def test_a_silent_connection_is_dropped_and_replaced(
    browser: Browser, hub: Hub
) -> None:
    page = await client_page(browser, hub)
    result = await page.evaluate(
        """async () => {
            const hub = new T.Hub({ pingInterval: 200, timeout: 300, minDelay: 50 });
            const events = [];
            hub.on("disconnect", (e) => events.push(e));
            const first = (await hub.connect()).client;
            hub._ws.send = () => {};  // the connection goes silent: no pongs
            await until(() => events.length && hub.state === "connected");
            return { first, now: hub.client, events };
        }"""
    )
    assert result["now"] != result["first"]
    (event,) = result["events"]
    assert event["code"] == 1006
    assert event["reason"] == "the hub did not answer a ping"
    assert event["reconnect"] is True


async def test_a_skipped_offset_is_recovered_in_order(
    browser: Browser, hub: Hub
) -> None:
    page = await client_page(browser, hub)
    await page.evaluate(
        """async () => {
            window.got = [];
            window.subscribed = [];
            window.hub = new T.Hub();
            hub.subscribe("chat:gap", {
                onPublication: (p) => got.push([p.offset, p.data]),
                onSubscribe: (info) => subscribed.push(info),
            });
            await hub.connect();
            await until(() => subscribed.length === 1);
        }"""
    )
    lost = lose(hub, {2, 3})
    for i in range(1, 6):
        await hub.publish("chat:gap", i)
    result = await page.wait_for("() => got.length === 5 && { got, subscribed }")
    assert result["got"] == [[n, n] for n in range(1, 6)]
    assert [p.offset for p in lost] == [2, 3]
    # The second subscribe (with since) recovered what the push skipped.
    assert result["subscribed"][1]["recovered"] is True


async def test_a_position_ahead_is_recovered(browser: Browser, hub: Hub) -> None:
    page = await client_page(browser, hub)
    await page.evaluate(
        """async () => {
            window.got = [];
            window.hub = new T.Hub();
            let subscribed = false;
            hub.subscribe("chat:pos", {
                onPublication: (p) => got.push(p.offset),
                onSubscribe: () => { subscribed = true; },
            });
            await hub.connect();
            await until(() => subscribed);
        }"""
    )
    lose(hub, {1})
    offset, epoch = await hub.publish("chat:pos", "quiet")
    hub.on_push(Push("chat:pos", "position", epoch, offset))
    assert await page.wait_for("() => got.length === 1 && got") == [1]


async def test_a_new_epoch_live_calls_on_recovery_failed(
    browser: Browser, hub: Hub
) -> None:
    page = await client_page(browser, hub)
    await page.evaluate(
        """async () => {
            window.got = [];
            window.failed = [];
            window.hub = new T.Hub();
            let subscribed = false;
            hub.subscribe("chat:epoch", {
                onPublication: (p) => got.push([p.offset, p.data]),
                onRecoveryFailed: (position) => failed.push(position),
                onSubscribe: () => { subscribed = true; },
            });
            await hub.connect();
            await until(() => subscribed);
        }"""
    )
    await hub.publish("chat:epoch", "old")
    await page.wait_for("() => got.length === 1")
    assert isinstance(hub.broker, MemoryBroker)
    del hub.broker.backend.channels["chat:epoch"]  # as a Redis restart would
    _, epoch = await hub.publish("chat:epoch", "new 1")
    await page.wait_for("() => failed.length === 1")
    await hub.publish("chat:epoch", "new 2")
    result = await page.wait_for("() => got.length === 2 && { got, failed }")
    assert result["got"] == [[1, "old"], [2, "new 2"]]
    assert result["failed"] == [{"offset": 1, "epoch": epoch}]


async def test_the_hub_unsubscribing_calls_on_unsubscribe(browser: Browser) -> None:
    async with Hub(HubConfig(port=0, secret=SECRET)) as hub:
        page = await client_page(browser, hub)
        await page.evaluate(
            """async (token) => {
                window.ended = [];
                window.hub = new T.Hub({ token });
                let subscribed = false;
                window.sub = hub.subscribe("chat:kick", {
                    onSubscribe: () => { subscribed = true; },
                    onUnsubscribe: () => ended.push(sub.active),
                });
                await hub.connect();
                await until(() => subscribed);
            }""",
            mint_token(SECRET, "alice"),
        )
        body = {"user": "alice", "channel": "chat:kick"}
        answer = await asyncio.to_thread(api, hub, "/api/unsubscribe", body)
        assert answer == {"unsubscribed": 1}
        assert await page.wait_for("() => ended.length === 1 && ended") == [False]


def cross_origin_hub(hub: Hub, page_origin: str) -> Hub:
    """A hub that lets pages of ``page_origin`` in, and serves none itself:
    the namespaces of ``hub`` (which serves the pages), and ``small:``,
    whose channels take one subscriber per node."""
    small = NamespaceConfig(allow_anonymous=True, max_subscribers=1)
    config = HubConfig(
        port=0,
        secret=SECRET,
        demo=False,
        namespaces={**hub.config.namespaces, "small": small},
        allowed_origins=(page_origin,),
    )
    return Hub(config)


@pytest.mark.parametrize("cross_origin", [False, True], ids=["same", "cross"])
async def test_a_browsers_event_source_resumes_with_last_event_id(
    browser: Browser, hub: Hub, cross_origin: bool
) -> None:
    # The hub's event stream as a page reads it without tidings.js: the
    # browser's own EventSource, which reopens a stream that ended and sends
    # the last event id back (the WHATWG HTML spec, "Server-sent events"),
    # from the hub's own page or from a page of another origin.
    page_origin = f"http://{PAGE_HOSTS[0]}:{hub.port}"
    async with contextlib.AsyncExitStack() as stack:
        source, page_url = hub, hub.url
        if cross_origin:
            other = cross_origin_hub(hub, page_origin)
            source = await stack.enter_async_context(other)
            page_url = f"{page_origin}/"
        page = await client_page(browser, hub, page_url)
        await page.evaluate(
            """(url) => {
                window.events = [];
                window.source = new EventSource(`${url}sse?channel=ticker:es`);
                source.onmessage = (e) =>
                    events.push([e.lastEventId, JSON.parse(e.data)]);
            }""",
            source.url,
        )
        await page.wait_for("() => events.length === 2")  # connect, subscribe
        await source.publish("ticker:es", "live")
        await page.wait_for("() => events.length === 3")
        last_id, pushed = (await page.evaluate("() => events"))[2]
        assert pushed["pub"]["data"] == "live"
        assert last_id == f"1:{pushed['pub']['epoch']}"
        drop_everyone(source)  # the stream ends; the browser reopens it in 2 s
        for text in ("missed 1", "missed 2"):
            await source.publish("ticker:es", text)
        again = (
            "() => events.filter(([, m]) => m.id === 2).length === 2 && events.at(-1)"
        )
        _, reply = await page.wait_for(again)
        assert reply["id"] == 2 and reply["result"]["recovered"] is True
        assert [p["data"] for p in reply["result"]["publications"]] == [
            "missed 1",
            "missed 2",
        ]
        await page.evaluate("() => source.close()")
        await page.context.close()


@pytest.mark.parametrize("transport", ["sse", "poll"])
async def test_a_page_of_an_allowed_origin_uses_the_fallbacks(
    browser: Browser, hub: Hub, transport: str
) -> None:
    # The page and tidings.js come from the module's hub under a name of
    # their own; the hub they use is another, which lists that origin. With
    # a token, every request (stream, poll, POST) carries Authorization,
    # which the browser asks the hub about first (a CORS preflight).
    page_origin = f"http://{PAGE_HOSTS[0]}:{hub.port}"
    async with cross_origin_hub(hub, page_origin) as other:
        page = await client_page(browser, hub, f"{page_origin}/")
        result = await page.evaluate(
            """async ([url, transport, token]) => {
                const hub = new T.Hub(url, { transports: [transport], token });
                const got = [];
                let subscribed = false;
                hub.subscribe("chat:x", {
                    onSubscribe: () => { subscribed = true; },
                    onPublication: (p) => got.push(p.data),
                });
                const lost = new Promise((resolve) => hub.on("disconnect", resolve));
                const connected = hub.connect().then(() => null);
                const failed = await Promise.race([connected, lost]);
                if (failed !== null) return { failed: failed.reason };
                await until(() => subscribed);
                const published = await hub.publish("chat:x", "across origins");
                await until(() => got.length === 1);
                const answer = { transport: hub.transport, user: hub.user,
                                 published: published.offset, got };
                hub.close();
                return answer;
            }""",
            [other.ws_url, transport, mint_token(SECRET, "dora")],
        )
    assert result == {
        "transport": transport,
        "user": "dora",
        "published": 1,
        "got": ["across origins"],
    }


async def test_a_page_of_an_origin_not_allowed_gets_nothing(
    browser: Browser, hub: Hub
) -> None:
    allowed, refused = (f"http://{host}:{hub.port}" for host in PAGE_HOSTS)
    async with cross_origin_hub(hub, allowed) as other:
        page = await client_page(browser, hub, f"{refused}/")
        lost = await page.evaluate(
            """async (url) => {
                const transports = ["sse", "poll"];
                const hub = new T.Hub(url, { transports, minDelay: 50 });
                const events = [];
                hub.on("disconnect", (e) => events.push(e));
                hub.connect();
                await until(() => events.length >= 2);  // each fallback once
                hub.close();
                return events.slice(0, 2).map((e) => [e.code, e.reason]);
            }""",
            other.ws_url,
        )
        assert lost == [
            [1006, "the event stream failed: Failed to fetch"],
            [1006, f"{other.url}command failed: Failed to fetch"],
        ]
        assert other.metrics.errors["origin"] >= 2  # refused, not only unread


async def test_an_event_stream_drops_a_channel_it_could_not_subscribe(
    browser: Browser, hub: Hub
) -> None:
    # A subscribe refused on the stream ends the Subscription, as on a
    # WebSocket. The stream reopened later must not ask for the channel
    # again: it would hold a subscriber's place that nobody reads.
    page_origin = f"http://{PAGE_HOSTS[0]}:{hub.port}"
    async with cross_origin_hub(hub, page_origin) as other:
        page = await client_page(browser, hub, f"{page_origin}/")
        outcome = await page.evaluate(
            """async (url) => {
                // The Subscription once subscribed, or the error's code.
                const subscribed = (hub, channel) => new Promise((resolve) => {
                    const sub = hub.subscribe(channel, {
                        onSubscribe: () => resolve(sub),
                        onError: (e) => resolve(e.code),
                    });
                });
                const holder = new T.Hub(url);  // over WebSocket
                await holder.connect();
                const held = await subscribed(holder, "small:x");
                const hub = new T.Hub(url, { transports: ["sse"] });
                await hub.connect();
                await subscribed(hub, "chat:a");  // the stream lives on
                const refused = await subscribed(hub, "small:x");
                await held.unsubscribe();
                await subscribed(hub, "chat:b");  // the stream reopens
                holder.close();
                return [refused, hub.transport];
            }""",
            other.ws_url,
        )
        assert outcome == [503, "sse"]
        assert other.subscriber_count("small:x") == 0
        assert other.subscriber_count("chat:b") == 1


#: A page that shows who is in a room by name (presence info) and the
#: publications of every channel the hub subscribes it to, each in a list
#: of its own that it makes when the hub announces the subscription.
SERVER_SIDE_PAGE = """async ({ token, transport }) => {
    document.body.innerHTML = '<ul id="people"></ul><div id="feeds"></div>';
    window.hub = new T.Hub({ token, minDelay: 100, transports: [transport] });
    hub.on("subscribe", (sub) => {
        const list = document.createElement("ol");
        list.id = sub.channel.replace(":", "-");
        document.getElementById("feeds").append(list);
        sub.handlers.onPublication = (pub) => {
            const item = document.createElement("li");
            item.textContent = pub.data.text + (pub.recovered ? " (recovered)" : "");
            list.append(item);
        };
    });
    const room = hub.subscribe("chat:room", {
        onSubscribe: () => people(),
        onJoin: () => people(),
        onLeave: () => people(),
    });
    async function people() {
        const names = (await room.presence()).map((c) => c.info?.name ?? c.user);
        const items = names.sort().map((name) => {
            const item = document.createElement("li");
            item.textContent = name;
            return item;
        });
        document.getElementById("people").replaceChildren(...items);
    }
    await hub.connect();
}"""


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_a_page_shows_presence_info_and_server_side_subscriptions(
    browser: Browser, transport: str
) -> None:
    namespaces = {
        **HubConfig().namespaces,
        # Nobody may subscribe here but the hub, as the back end says.
        "inbox": NamespaceConfig(history_size=100, history_ttl=600),
    }
    config = HubConfig(port=0, secret=SECRET, namespaces=namespaces)
    async with Hub(config) as hub:
        page = await client_page(browser, hub)
        alice = mint_token(
            SECRET, "alice", info={"name": "Alice"}, subs=["inbox:alice"]
        )
        await page.evaluate(SERVER_SIDE_PAGE, {"token": alice, "transport": transport})
        texts = "(s) => [...document.querySelectorAll(s)].map((e) => e.textContent)"
        await page.wait_for(f"() => ({texts})('#people li').join() === 'Alice'")
        bob_token = mint_token(SECRET, "bob", info={"name": "Bob"})
        async with Client(hub.ws_url, bob_token) as bob:
            await bob.subscribe("chat:room")
            await page.wait_for(f"() => ({texts})('#people li').join() === 'Alice,Bob'")
        await page.wait_for(f"() => ({texts})('#people li').join() === 'Alice'")
        # The token's subs: subscribed at connect, shown as they come.
        await asyncio.to_thread(
            api, hub, "/api/publish", {"channel": "inbox:alice", "data": {"text": "1"}}
        )
        await page.wait_for(f"() => ({texts})('#inbox-alice li').join() === '1'")
        # /api/subscribe: the back end subscribes her while she is connected.
        body = {"user": "alice", "channel": "inbox:team"}
        answer = await asyncio.to_thread(api, hub, "/api/subscribe", body)
        # (An event stream the page replaced may not have ended yet.)
        assert answer["subscribed"] == 1 or transport == "sse"
        await asyncio.to_thread(
            api, hub, "/api/publish", {"channel": "inbox:team", "data": {"text": "t"}}
        )
        await page.wait_for(f"() => ({texts})('#inbox-team li').join() === 't'")
        drop_everyone(hub)
        # Published before the page can be back: it recovers them, from the
        # position it sends in connect's subs (an event stream's sub=).
        for text in ("2", "3"):
            await hub.publish("inbox:alice", {"text": text})
        await page.wait_for(
            f"() => ({texts})('#inbox-alice li').join() === "
            "'1,2 (recovered),3 (recovered)' && hub.state === 'connected'"
        )
        await hub.publish("inbox:alice", {"text": "4"})
        await page.wait_for(f"() => ({texts})('#inbox-alice li').length === 4")
        assert await page.evaluate("() => hub.transport") == transport
        if transport != "websocket":
            return  # an event stream's subscriptions end unannounced
        # /api/subscribe held for that connection: the token names only
        # inbox:alice, so the reconnect ended inbox:team.
        await page.wait_for("() => !hub.subscriptions.has('inbox:team')")
        assert sorted(await page.evaluate("() => [...hub.subscriptions.keys()]")) == [
            "chat:room",
            "inbox:alice",
        ]


@pytest.mark.parametrize("transport", ["websocket", "sse", "poll"])
async def test_get_token_of_a_subscription_refreshes_its_channel_token(
    browser: Browser, transport: str
) -> None:
    # A connection token that allows no channel; channel tokens of 2 s, 4 s,
    # 6 s... from now, each replaced with sub_refresh before it expires, on
    # every transport.
    namespaces = {
        **HubConfig().namespaces,  # the demo's, for its pages
        # A poll reads what it missed from the history.
        "members": NamespaceConfig(
            allow_publish=True, history_size=10, history_ttl=600
        ),
    }
    config = HubConfig(port=0, secret=SECRET, namespaces=namespaces)
    async with Hub(config) as hub:
        page = await client_page(browser, hub)
        tokens = [
            mint_channel_token(SECRET, "alice", "members:x", ttl=2 * n)
            for n in range(1, 11)
        ]
        await page.evaluate(
            """async ([transport, token, tokens]) => {
                window.asked = 0;
                window.got = [];
                window.ended = [];
                window.errors = [];
                window.subscribed = 0;
                window.hub = new T.Hub({ transports: [transport], token });
                hub.on("error", (e) => errors.push([e.code, e.message]));
                window.sub = hub.subscribe("members:x", {
                    getToken: async () => tokens[Math.min(asked++, tokens.length - 1)],
                    onPublication: (p) => got.push(p.data),
                    onSubscribe: () => { subscribed += 1; },
                    onUnsubscribe: () => ended.push(true),
                    onError: (e) => errors.push([e.code, e.message]),
                });
                await hub.connect();
            }""",
            [transport, mint_token(SECRET, "alice"), tokens],
        )
        # Past the first token's expiry (2 s), the subscription goes on.
        await page.wait_for("() => asked >= 3")
        await hub.publish("members:x", "still subscribed")
        await page.wait_for("() => got.length === 1")
        result = await page.evaluate(
            "() => ({ got, ended, errors, active: sub.active, t: hub.transport })"
        )
        assert result == {
            "got": ["still subscribed"],
            "ended": [],
            "errors": [],
            "active": True,
            "t": transport,
        }
        if transport == "websocket":
            # Dropped, it resubscribes with a new channel token.
            asked = await page.evaluate("() => asked")
            drop_everyone(hub)
            await page.wait_for(f"() => asked > {asked} && subscribed === 2")
            await hub.publish("members:x", "after the reconnect")
            assert await page.wait_for("() => got.length === 2 && got") == [
                "still subscribed",
                "after the reconnect",
            ]
