"""The demo pages in a real browser: Debian's Chromium, driven as
tests/e2e/conftest.py describes, against a hub in this process.

``TIDINGS_SCREENSHOTS=1`` makes test_screenshots write docs/images/chat.png
and docs/images/ticker.png (it takes about a minute, to let the ticker's
trend lines fill); otherwise it writes them to a temporary folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tidings.hub import Hub

from .conftest import BOUND, NO_WEBSOCKET, Browser, Page

pytestmark = pytest.mark.asyncio(loop_scope="module")

DOCS_IMAGES = Path(__file__).parents[2] / "docs" / "images"

CONNECTED = "() => hub.state === 'connected'"
MESSAGES = ".message .text"


def api_publish(hub: Hub, channel: str, data: Any) -> dict[str, Any]:
    """POST /api/publish, as a back end would (open on loopback)."""
    request = urllib.request.Request(
        hub.url + "api/publish",
        data=json.dumps({"channel": channel, "data": data}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=BOUND) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


async def publish(hub: Hub, channel: str, data: Any) -> dict[str, Any]:
    return await asyncio.to_thread(api_publish, hub, channel, data)


#: The page is connected, known to the hub by the name ``arg``.
NAMED = "(name) => hub.state === 'connected' && hub.info?.name === name"
#: The online list is exactly ``arg``.
ONLINE_IS = (
    "(names) => JSON.stringify([...document.querySelectorAll('#online li')]"
    ".map((li) => li.textContent)) === JSON.stringify(names)"
)
#: At least ``arg`` messages are shown.
SHOWN = "(n) => document.querySelectorAll('.message').length >= n"


async def open_chat(
    browser: Browser,
    hub: Hub,
    name: str,
    scale: float = 1,
    scripts: tuple[str, ...] = (),
) -> Page:
    """A chat page in its own context (its own cookies and localStorage),
    with ``scripts`` run before the page's own, logged in as ``name`` and
    connected under it."""
    context = await browser.new_context(scale=scale)
    for script in scripts:
        await context.add_init_script(script)
    page = await context.new_page()
    await page.goto(hub.url + "chat")
    await page.fill("#name", name)
    await page.press("#name", "Tab")  # "change": logs in, connects again
    await page.wait_for(NAMED, name)
    return page


async def send(page: Page, text: str) -> None:
    await page.fill("#text", text)
    await page.press("#text", "Enter")


#: And one that buffers streamed responses: no Server-Sent Events either.
NO_STREAMS = """
const realFetch = window.fetch;
window.fetch = (url, init) => String(url).includes("/sse?")
    ? Promise.reject(new TypeError("the proxy holds streamed responses"))
    : realFetch(url, init);
"""

#: Keeps every text the page sends over a WebSocket in ``window.sent``.
RECORD_SENT = """
window.sent = [];
const realSend = WebSocket.prototype.send;
WebSocket.prototype.send = function (data) {
    window.sent.push(String(data));
    return realSend.call(this, data);
};
"""


async def test_index_links_to_the_demos(browser: Browser, hub: Hub) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(hub.url)
    links = await page.evaluate(
        "() => [...document.querySelectorAll('.cards a')].map((a) => a.pathname)"
    )
    assert links == ["/chat", "/ticker", "/report"]
    served = await page.evaluate(
        """async () => {
            const r = await fetch("/tidings.js");
            return [r.status, r.headers.get("content-type")];
        }"""
    )
    assert served == [200, "text/javascript; charset=utf-8"]


async def test_two_chat_pages_exchange_messages_and_see_each_other(
    browser: Browser, hub: Hub
) -> None:
    alice = await open_chat(browser, hub, "alice", scripts=(RECORD_SENT,))
    bob = await open_chat(browser, hub, "bob")
    # Presence with the names the hub's connect hook gave each connection.
    await alice.wait_for(ONLINE_IS, ["alice (you)", "bob"])
    await bob.wait_for(ONLINE_IS, ["alice", "bob (you)"])

    await send(alice, "hi bob")
    await bob.wait_for(SHOWN, 1)
    await send(bob, "hi alice")
    await alice.wait_for(SHOWN, 2)
    await bob.wait_for(SHOWN, 2)
    for page in (alice, bob):
        assert await page.texts(".message .who") == ["alice", "bob"]
        assert await page.texts(MESSAGES) == ["hi bob", "hi alice"]
    # Each page shows its own messages as its own.
    assert await alice.texts(".message.mine .text") == ["hi bob"]
    assert await bob.texts(".message.mine .text") == ["hi alice"]
    # The page never told the hub its name: a publication carries the text.
    sent = [json.loads(text) for text in await alice.evaluate("() => window.sent")]
    assert not [command for command in sent if "alice" in json.dumps(command)]
    publishes = [command for command in sent if command["op"] == "publish"]
    assert [command["data"] for command in publishes] == [{"text": "hi bob"}]

    # Bob leaves: Alice sees it.
    await bob.context.close()
    await alice.wait_for(ONLINE_IS, ["alice (you)"], timeout=BOUND)


async def test_a_name_in_a_messages_data_labels_nothing(
    browser: Browser, hub: Hub
) -> None:
    alice = await open_chat(browser, hub, "alice")
    bob = await open_chat(browser, hub, "bob")
    # Alice tampers with her page from the console: she writes another name
    # into a publication, and into what a second client sends with connect.
    await alice.evaluate(
        """async () => {
            await hub.publish("chat:lobby", { name: "Mallory", text: "I am Mallory" });
            const { Hub } = await import("/tidings.js");
            const other = new Hub({ data: { name: "Mallory" } });
            await other.connect();
            await other.publish("chat:lobby", { name: "Mallory", text: "me too" });
            other.close();
        }"""
    )
    await bob.wait_for(SHOWN, 2)
    await alice.wait_for(SHOWN, 2)
    for page in (alice, bob):
        assert await page.texts(MESSAGES) == ["I am Mallory", "me too"]
        assert await page.texts(".message .who") == ["alice", "alice"]
    await bob.wait_for(ONLINE_IS, ["alice", "bob (you)"])


async def test_a_new_name_shows_once_the_page_has_reconnected(
    browser: Browser, hub: Hub
) -> None:
    alice = await open_chat(browser, hub, "alice")
    bob = await open_chat(browser, hub, "bob")
    await send(alice, "before")
    await bob.wait_for(SHOWN, 1)
    client = await alice.evaluate("() => hub.client")

    await alice.fill("#name", "alicia")
    await alice.press("#name", "Tab")
    await alice.wait_for(NAMED, "alicia")
    assert await alice.evaluate("() => hub.client") != client  # a new connection
    await bob.wait_for(ONLINE_IS, ["alicia", "bob (you)"])
    await alice.wait_for(ONLINE_IS, ["alicia (you)", "bob"])
    await send(alice, "after")
    await bob.wait_for(SHOWN, 2)
    await alice.wait_for(SHOWN, 2)
    for page in (alice, bob):
        # Each message keeps the name its sender had when it was sent.
        assert await page.texts(".message .who") == ["alice", "alicia"]
    assert await alice.texts(".message.mine .text") == ["before", "after"]

    # A name the login refuses changes nothing, and says why.
    await alice.fill("#name", "   ")
    await alice.press("#name", "Tab")
    await alice.wait_for("() => document.querySelector('.notice')")
    assert await alice.texts(".notice") == [
        "Could not change your name: name must be 1 to 40 printable characters"
        " (no control characters)"
    ]
    assert await alice.evaluate("() => document.getElementById('name').value") == (
        "alicia"
    )
    assert await alice.evaluate("() => hub.info.name") == "alicia"

    # Reloaded, the page logs in as it was last named.
    await alice.goto(hub.url + "chat")
    await alice.wait_for(NAMED, "alicia")
    assert await alice.evaluate("() => document.getElementById('name').value") == (
        "alicia"
    )
    await bob.wait_for(ONLINE_IS, ["alicia", "bob (you)"])


@pytest.mark.parametrize(
    ("scripts", "transport", "label"),
    [
        ([NO_WEBSOCKET], "sse", "Server-Sent Events"),
        ([NO_WEBSOCKET, NO_STREAMS], "poll", "long-polling"),
    ],
)
async def test_chat_falls_back_when_websocket_is_blocked(
    browser: Browser, hub: Hub, scripts: list[str], transport: str, label: str
) -> None:
    blocked = await open_chat(browser, hub, "fran", scripts=tuple(scripts))
    assert await blocked.evaluate("() => hub.transport") == transport
    status = await blocked.texts("#status .label")
    assert status == [f"connected · {label}"]
    open_ = await open_chat(browser, hub, "gus")
    assert await open_.evaluate("() => hub.transport") == "websocket"

    await send(blocked, "through the fallback")
    await open_.wait_for(SHOWN, 1)
    await send(open_, "over a WebSocket")
    await blocked.wait_for(SHOWN, 2)
    for page in (blocked, open_):
        assert await page.texts(MESSAGES) == [
            "through the fallback",
            "over a WebSocket",
        ]
        assert await page.texts(".message .who") == ["fran", "gus"]
    assert await blocked.texts(".message.mine .text") == ["through the fallback"]
    if transport == "sse":  # a stream is a connection: it is in presence
        await open_.wait_for(ONLINE_IS, ["fran", "gus (you)"])
    await blocked.context.close()
    await open_.context.close()


async def test_chat_loads_the_last_messages_from_history(
    browser: Browser, hub: Hub
) -> None:
    for i in range(60):
        await hub.publish("chat:lobby", {"text": f"old {i}"})
    page = await open_chat(browser, hub, "dora")
    await page.wait_for(SHOWN, 50)
    assert await page.texts(MESSAGES) == [f"old {i}" for i in range(10, 60)]
    # The HTTP API's publications have no client: nobody's name is on them.
    assert set(await page.texts(".message .who")) == {"guest"}


async def test_ticker_prices_change(browser: Browser, hub: Hub) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(hub.url + "ticker")
    await page.wait_for(
        "() => document.querySelectorAll('#quotes tr[data-symbol]').length"
    )
    before = await page.evaluate(
        """() => Object.fromEntries(
            [...document.querySelectorAll('#quotes tr')].map((tr) =>
                [tr.dataset.symbol, tr.querySelector('.price').textContent]))"""
    )
    # One quote every 0.5 s: some price moves within a few seconds.
    changed = await page.wait_for(
        """(before) => [...document.querySelectorAll('#quotes tr')].find((tr) =>
            before[tr.dataset.symbol] !== undefined &&
            tr.querySelector('.price').textContent !== before[tr.dataset.symbol]
        )?.dataset.symbol""",
        before,
    )
    assert changed in {"AAPL", "MSFT", "NVDA", "TSLA", "AMZN"}
    price = await page.evaluate(
        "(s) => document.querySelector(`tr[data-symbol=${s}] .price`).textContent",
        changed,
    )
    assert float(price) > 0
    # The row's trend line is drawn.
    await page.wait_for(
        "(s) => document.querySelector(`tr[data-symbol=${s}] path.line`)"
        ".getAttribute('d')?.includes('L')",
        changed,
    )


async def test_report_counts_the_open_pages(browser: Browser, hub: Hub) -> None:
    context = await browser.new_context()
    pages = []
    for path in ("chat", "ticker", "report"):
        page = await context.new_page()
        await page.goto(hub.url + path)
        await page.wait_for(CONNECTED)
        pages.append(page)
    report = pages[-1]
    # A report a second; the first one after the three connected says 3+.
    connections = await report.wait_for(
        "() => Number(document.getElementById('connections').textContent) >= 3 &&"
        " Number(document.getElementById('connections').textContent)"
    )
    assert connections >= 3
    channels = await report.evaluate(
        "() => document.getElementById('channels').textContent"
    )
    assert int(channels) >= 3
    # A line needs two samples, so the chart may trail the first report.
    lines = await report.wait_for(
        "() => document.querySelectorAll('#chart path').length >= 3 &&"
        " document.querySelectorAll('#chart path').length"
    )
    assert lines == 3  # deliveries/s, publications/s, connections


async def test_chat_recovers_missed_messages_after_going_offline(
    browser: Browser, hub: Hub
) -> None:
    page = await open_chat(browser, hub, "erin")
    for text in ("before 1", "before 2"):
        await publish(hub, "chat:lobby", {"text": text})
    await page.wait_for("() => document.querySelectorAll('.message').length === 2")

    await page.context.set_offline(True)
    await page.wait_for("() => hub.state !== 'connected'")
    missed = [f"missed {i}" for i in range(1, 6)]
    for text in missed:
        await publish(hub, "chat:lobby", {"text": text})
    assert await page.texts(MESSAGES) == ["before 1", "before 2"]

    await page.context.set_offline(False)  # "online": reconnects at once
    await page.wait_for("() => document.querySelectorAll('.message').length >= 7")
    await page.wait_for(CONNECTED)
    # A duplicate of what was recovered would come before these two.
    for text in ("after", "after 2"):
        await publish(hub, "chat:lobby", {"text": text})
    await page.wait_for("() => document.querySelectorAll('.message').length >= 9")
    assert await page.texts(MESSAGES) == [
        "before 1",
        "before 2",
        *missed,
        "after",
        "after 2",
    ]
    assert await page.texts(".notice") == ["Back online: 5 missed messages recovered"]
    offsets = await page.evaluate(
        "() => [...document.querySelectorAll('.message')].map((e) => +e.dataset.offset)"
    )
    assert offsets == list(range(1, 10))


async def test_chat_reloads_history_when_recovery_is_impossible(
    browser: Browser, hub: Hub
) -> None:
    page = await open_chat(browser, hub, "fred")
    await publish(hub, "chat:lobby", {"text": "seen"})
    await page.wait_for("() => document.querySelectorAll('.message').length === 1")
    await page.context.set_offline(True)
    await page.wait_for("() => hub.state !== 'connected'")
    # More than the namespace's history_size (100): the gap can't be filled.
    for i in range(120):
        await hub.publish("chat:lobby", {"text": f"m{i}"})
    await page.context.set_offline(False)
    await page.wait_for("() => document.querySelector('.notice')")
    await page.wait_for("() => document.querySelectorAll('.message').length >= 50")
    assert await page.texts(MESSAGES) == [f"m{i}" for i in range(70, 120)]
    assert await page.texts(".notice") == [
        "Back online: some messages were missed, showing the latest from history"
    ]


async def test_screenshots(browser: Browser, hub: Hub, tmp_path: Path) -> None:
    for_docs = bool(os.environ.get("TIDINGS_SCREENSHOTS"))
    folder = DOCS_IMAGES if for_docs else tmp_path
    folder.mkdir(exist_ok=True)

    scale = 2 if for_docs else 1  # sharp on high-density screens
    alice = await open_chat(browser, hub, "Alice", scale)
    bob = await open_chat(browser, hub, "Bob")
    conversation = [
        (bob, "Morning! Is the hub up?"),
        (alice, "Yes: tidings serve, and nothing else to run."),
        (bob, "My train went through a tunnel and I still got every message."),
        (alice, "That's recovery: it resubscribes from the last offset it saw."),
    ]
    for n, (page, text) in enumerate(conversation, 1):
        await send(page, text)
        await alice.wait_for(SHOWN, n)
    await alice.wait_for(ONLINE_IS, ["Alice (you)", "Bob"])
    await alice.evaluate("() => document.activeElement.blur()")
    await alice.screenshot(folder / "chat.png")

    context = await browser.new_context(height=540, scale=scale)
    ticker = await context.new_page()
    await ticker.goto(hub.url + "ticker")
    # For the docs, every symbol with a trend line worth looking at.
    points = 24 if for_docs else 0
    await ticker.wait_for(
        """(n) => {
            const lines = [...document.querySelectorAll('#quotes path.line')];
            return lines.length >= (n ? 5 : 1) &&
                lines.every((l) => (l.getAttribute('d') || '').split('L').length >= n);
        }""",
        points,
        timeout=90 if for_docs else BOUND,
    )
    await ticker.screenshot(folder / "ticker.png")
    for name in ("chat.png", "ticker.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
