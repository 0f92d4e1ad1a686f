"""tidings.js in Chromium against a hub that asks the application: the back
end of tests/hub/proxy_backend.py (a Starlette app under uvicorn, in a
process of its own), as tests/hub/test_proxy.py runs it. A page with a
session cookie and no token is let in by the back end's connect answer,
calls rpc, and gets the subscriptions the back end names; over the
WebSocket and over Server-Sent Events, where the cookie goes with the
page's own requests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tidings.hub import Hub, HubConfig

from ..conftest import Backend, hooks_at, http_request
from .conftest import Browser
from .test_client import client_page, drop_everyone

pytestmark = pytest.mark.asyncio(loop_scope="module")

COOKIE = "session=ada-s3cret"
INFO = {"name": "Ada", "avatar": "/ada.png"}


@pytest_asyncio.fixture(loop_scope="module")
async def hub(backend: Backend) -> AsyncIterator[Hub]:
    """A hub that serves the test pages and asks the back end, whose script
    and calls are reset."""
    await backend.script()
    await http_request(backend.port, "DELETE", "/calls")
    async with Hub(HubConfig(port=0, proxy=hooks_at(backend))) as hub:
        yield hub


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_a_page_with_a_cookie_and_no_token_is_let_in_by_the_application(
    browser: Browser, hub: Hub, backend: Backend, transport: str
) -> None:
    # The application knows the user by the cookie alone: it lets her in,
    # says who she is to others, and subscribes her to her inbox.
    await backend.script(
        connect={
            "body": {
                "result": {
                    "user": "ada",
                    "info": INFO,
                    "channels": ["chat:inbox-ada"],
                    "data": {"motd": "welcome back"},
                }
            }
        }
    )
    page = await client_page(browser, hub)
    await page.evaluate(
        """async ([cookie, transport]) => {
            document.cookie = cookie;
            window.got = [];
            window.made = [];
            window.hub = new T.Hub({ transports: [transport] });
            hub.on("subscribe", (sub) => {
                made.push([sub.channel, sub.serverSide]);
                sub.handlers = {
                    onSubscribe: (info) => made.push(info.recovered),
                    onPublication: (pub) => got.push([sub.channel, pub.data]),
                };
            });
            hub.on("connect", (event) => { window.connected = event; });
            window.me = await hub.connect();
        }""",
        [COOKIE, transport],
    )
    await page.wait_for("() => made.length === 2")
    await hub.publish("chat:inbox-ada", {"text": "for Ada"})
    await page.wait_for("() => got.length === 1")
    result = await page.evaluate(
        """async () => {
            const room = hub.subscribe("chat:room");
            await until(() => room.epoch !== null);
            return {
                me: window.me,
                connected,
                made,
                got,
                transport: hub.transport,
                fields: [hub.user, hub.info, hub.data],
                subscriptions: [...hub.subscriptions.keys()],
                rpc: await hub.rpc("history.older", { before: 10 }),
                rpcError: await hub.rpc("").catch((e) => [e.name, e.code]),
                presence: await room.presence(),
            };
        }"""
    )
    client = result["me"]["client"]
    assert result["me"] == {
        "client": client,
        "user": "ada",
        "info": INFO,
        "data": {"motd": "welcome back"},
    }
    assert result["connected"] == result["me"]
    assert result["transport"] == transport
    assert result["fields"] == ["ada", INFO, {"motd": "welcome back"}]
    # An event stream reopens for chat:room and announces the inbox again:
    # nothing was missed meanwhile.
    again = [True] if transport == "sse" else []
    assert result["made"] == [["chat:inbox-ada", True], None, *again]
    assert result["got"] == [["chat:inbox-ada", {"text": "for Ada"}]]
    assert result["subscriptions"] == ["chat:inbox-ada", "chat:room"]
    assert result["rpc"] == {"method": "history.older", "echo": {"before": 10}}
    assert result["rpcError"] == ["HubError", 400]  # a method is 1-255 characters
    # Others see her as the application described her.
    [present] = result["presence"]
    assert present["user"] == "ada" and present["info"] == INFO
    # The back end was asked with the page's cookie, and nothing else
    # vouched for her. Over SSE, each POST /command (the rpc) is a
    # connection of its own, let in the same way.
    calls = await backend.calls()
    connects = [c["body"] for c in calls if c["hook"] == "connect"]
    assert connects and all(c["headers"]["Cookie"] == COOKIE for c in connects)
    assert connects[0]["transport"] == transport
    [rpc] = [c["body"] for c in calls if c["hook"] == "rpc"]
    assert rpc["headers"]["Cookie"] == COOKIE and rpc["user"] == "ada"
    assert rpc["transport"] == ("websocket" if transport == "websocket" else "command")


async def test_a_server_side_subscription_recovers_and_ends_with_the_application(
    browser: Browser, hub: Hub, backend: Backend
) -> None:
    inbox = {"result": {"user": "ada", "channels": ["chat:inbox-ada"]}}
    await backend.script(connect={"body": inbox})
    page = await client_page(browser, hub)
    await page.evaluate(
        """async () => {
            window.got = [];
            window.subscribed = [];
            window.ended = [];
            window.hub = new T.Hub({ minDelay: 50 });
            hub.on("subscribe", (sub) => {
                window.sub = sub;
                sub.handlers = {
                    onSubscribe: (info) => subscribed.push(info),
                    onPublication: (p) =>
                        got.push([p.offset, p.data, p.recovered ?? false]),
                    onUnsubscribe: () => ended.push(sub.active),
                };
            });
            await hub.connect();
        }"""
    )
    await page.wait_for("() => subscribed.length === 1")
    await hub.publish("chat:inbox-ada", "live")
    await page.wait_for("() => got.length === 1")
    first = await page.evaluate("() => hub.client")
    drop_everyone(hub)
    # Published before the page can be back: the connect that brings it
    # back carries the position, and the hub recovers them.
    for text in ("missed 1", "missed 2"):
        await hub.publish("chat:inbox-ada", text)
    await page.wait_for("() => got.length === 3 && hub.state === 'connected'")
    result = await page.evaluate(
        "() => ({ got, subscribed, same: window.sub === hub.subscriptions.get("
        "'chat:inbox-ada'), client: hub.client })"
    )
    assert result["got"] == [
        [1, "live", False],
        [2, "missed 1", True],
        [3, "missed 2", True],
    ]
    assert result["subscribed"][1]["recovered"] is True
    assert result["subscribed"][1]["missed"] == 2
    assert result["same"] is True and result["client"] != first
    # The application names it no more: at the next connect, it ends.
    await backend.script(connect={"body": {"result": {"user": "ada"}}})
    drop_everyone(hub)
    await page.wait_for("() => ended.length === 1")
    result = await page.evaluate(
        "() => ({ ended, subscriptions: hub.subscriptions.size })"
    )
    assert result == {"ended": [False], "subscriptions": 0}


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_an_application_that_cannot_answer_means_reconnecting_with_backoff(
    browser: Browser, hub: Hub, backend: Backend, transport: str
) -> None:
    # Error 503 to connect, then close 1013: try again later, on the same
    # transport (it works: the application did not), with backoff.
    await backend.script(connect={"status": 500})
    page = await client_page(browser, hub)
    await page.evaluate(
        """(transport) => {
            window.events = [];
            window.errors = [];
            window.hub = new T.Hub({
                transports: [transport, "poll"], minDelay: 50, maxDelay: 200,
            });
            hub.on("disconnect", (e) => events.push(e));
            hub.on("error", (e) => errors.push(e.code));
            hub.connect();
        }""",
        transport,
    )
    await page.wait_for("() => events.length >= 3")
    await backend.script(connect={"body": {"result": {"user": "ada"}}})
    await page.wait_for("() => hub.state === 'connected'")
    result = await page.evaluate(
        "() => ({ events, errors, user: hub.user, transport: hub.transport })"
    )
    assert result["user"] == "ada"
    assert result["transport"] == transport
    events = result["events"]
    assert {(e["code"], e["reconnect"]) for e in events} == {(1013, True)}
    for attempt, event in enumerate(events[:3]):
        full = min(200, 50 * 2**attempt)
        assert full / 2 <= event["delay"] <= full, (attempt, event)
    assert set(result["errors"]) == {503}
