"""The chat example (examples/chat) as a newcomer runs it: ``run.py`` starts
the app under uvicorn and ``tidings serve --config examples/chat/tidings.toml``
as real processes on free loopback ports, with a SQLite file of the test's
own; Chromium logs users in through the app's form and chats through the
hub, whose hooks ask the app (tests/e2e/conftest.py drives the browser).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from .conftest import BOUND, NO_WEBSOCKET, Browser, Page

pytestmark = pytest.mark.asyncio(loop_scope="module")

RUN = Path(__file__).parents[2] / "examples" / "chat" / "run.py"

#: The page is subscribed to its room, with its history and presence.
LIVE = "() => document.body?.dataset.state === 'live'"
TEXTS = ".message .text"

#: Seconds for a wait that spans many calls through the hub to the app (a
#: page that loads: the login, connect, the rooms, subscribe, history and
#: presence), or a reconnect that may be waiting out the client's backoff
#: (at most its maxDelay, 20 s).
SLOW = BOUND + 20

_OPEN = re.compile(r"open http://127\.0\.0\.1:(\d+)/")
_HUB = re.compile(r"the hub is at http://127\.0\.0\.1:(\d+)/")


class Chat:
    """``examples/chat/run.py`` in a process of its own, and its output."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.lines: list[str] = []
        self.url = ""
        self.app_port = 0
        self.hub_port = 0
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._opened = asyncio.Event()

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(RUN),
            "--app-port",
            "0",
            "--hub-port",
            "0",
            "--db",
            str(self.db),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.create_task(self._read())
        try:
            async with asyncio.timeout(BOUND * 2):
                await self._opened.wait()
        except TimeoutError:
            output = "\n".join(self.lines)
            raise AssertionError(f"run.py did not start:\n{output}") from None

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            text = line.decode(errors="replace").rstrip("\n")
            self.lines.append(text)
            if hub := _HUB.search(text):
                self.hub_port = int(hub.group(1))
            if opened := _OPEN.search(text):
                self.app_port = int(opened.group(1))
                self.url = f"http://127.0.0.1:{self.app_port}/"
                self._opened.set()
        self._opened.set()  # ended: start() reports the output

    async def stop(self) -> int:
        """SIGTERM, as Ctrl-C or a service manager would; the exit status."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(BOUND * 2):
                code = await self.proc.wait()
                if self._reader is not None:
                    await self._reader
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError("run.py did not stop on SIGTERM") from None
        return code

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """What the app's database holds (the app writes it in WAL mode:
        this reader sees every committed write and blocks none)."""
        with contextlib.closing(sqlite3.connect(self.db)) as db:
            return db.execute(sql, params).fetchall()


@pytest_asyncio.fixture(loop_scope="module")
async def chat(tmp_path: Path) -> AsyncIterator[Chat]:
    chat = Chat(tmp_path / "chat.db")
    try:
        await chat.start()
        yield chat
    finally:
        if chat.proc is not None:
            await chat.stop()
        # Shown with a failure: what the app and the hub said.
        print("\n".join(chat.lines))


async def wait(page: Page, fn: str, arg: Any = None) -> Any:
    """``page.wait_for``, bounded by SLOW; a failure says where the page was."""
    try:
        return await page.wait_for(fn, arg, SLOW)
    except AssertionError as exc:
        state = None
        with contextlib.suppress(AssertionError):
            state = await page.evaluate(
                """() => ({path: location.pathname, state: document.body?.dataset.state,
                           hub: window.hub?.state,
                           error: document.getElementById('error')?.textContent})"""
            )
        raise AssertionError(f"{exc}\npage: {state}") from None


async def log_in(
    browser: Browser, chat: Chat, name: str, avatar: str, room: str = "lobby"
) -> Page:
    """A browser of its own (its own cookies), logged in through the form
    as ``name``, on ``room``'s page."""
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(f"{chat.url}rooms/{room}")
    # Not logged in: the app sent it to its login form.
    assert await page.evaluate("() => location.pathname") == "/login"
    await page.fill("#name", name)
    await page.click(f'.avatar-choice:has(input[value="{avatar}"])')
    await page.click("#enter")
    await wait(
        page,
        "(room) => location.pathname === `/rooms/${room}` &&"
        " ['live', 'not-member'].includes(document.body?.dataset.state)",
        room,
    )
    return page


async def say(page: Page, text: str) -> None:
    """Type ``text`` into the composer and send it."""
    await page.fill("#text", text)
    await page.press("#text", "Enter")


async def shows(page: Page, texts: list[str], selector: str = TEXTS) -> None:
    """Wait until the page shows exactly ``texts``, in this order."""
    try:
        await wait(
            page,
            """([selector, want]) => JSON.stringify(
                [...document.querySelectorAll(selector)].map((e) => e.textContent)
            ) === JSON.stringify(want)""",
            [selector, texts],
        )
    except AssertionError as exc:
        shown = await page.texts(selector)
        raise AssertionError(f"{exc}\nwanted: {texts}\nshown: {shown}") from None


async def online(page: Page, names: list[str]) -> None:
    """Wait until the page lists exactly ``names`` as online."""
    await shows(page, names, "#online .name")


async def test_two_users_chat_through_the_apps_hooks(
    browser: Browser, chat: Chat
) -> None:
    alice = await log_in(browser, chat, "Alice", "🦊")
    bob = await log_in(browser, chat, "Bob", "🐼")
    # Presence carries the names and avatars the connect hook gave as info.
    for page in (alice, bob):
        await online(page, ["Alice", "Bob"])
        assert await page.texts("#online .avatar") == ["🦊", "🐼"]

    await say(alice, "Hello Bob!")
    await shows(bob, ["Hello Bob!"])  # stored first: the lower id
    await say(bob, "Hi Alice")
    for page in (alice, bob):
        await shows(page, ["Hello Bob!", "Hi Alice"])
        assert await page.texts(".message .name") == ["Alice", "Bob"]
        assert await page.texts(".message .avatar") == ["🦊", "🐼"]

    # Stored, and shown as stored: the same ids and times on every page.
    stored = chat.rows(
        "SELECT messages.id, users.name, messages.avatar, text, room_id, at "
        "FROM messages JOIN users ON users.id = messages.user_id ORDER BY messages.id"
    )
    assert [row[1:5] for row in stored] == [
        ("Alice", "🦊", "Hello Bob!", "lobby"),
        ("Bob", "🐼", "Hi Alice", "lobby"),
    ]
    shown = """() => [...document.querySelectorAll('.message')].map(
        (e) => [+e.dataset.id, e.querySelector('time').dateTime])"""
    ids_and_times = await alice.evaluate(shown)
    assert [i for i, _ in ids_and_times] == [row[0] for row in stored]
    assert await bob.evaluate(shown) == ids_and_times

    # The word filter: refused with its reason in the page, and not stored.
    await say(alice, "well darn it")
    await wait(
        alice,
        "() => document.getElementById('error').textContent.includes("
        "'\"darn\" is not allowed here')",
    )
    assert await alice.evaluate("() => document.getElementById('text').value") == (
        "well darn it"  # kept, to be edited
    )
    assert chat.rows("SELECT count(*) FROM messages WHERE text LIKE '%darn%'") == [(0,)]
    await say(alice, "well, never mind")
    # Neither page ever showed the refused message: this one came next.
    for page in (alice, bob):
        await shows(page, ["Hello Bob!", "Hi Alice", "well, never mind"])
    assert await alice.texts("#error") == [""]

    # Bob's network drops; what he missed comes back when it returns.
    await bob.context.set_offline(True)
    await wait(bob, "() => hub.state !== 'connected'")
    await say(alice, "are you there?")
    await shows(alice, ["Hello Bob!", "Hi Alice", "well, never mind", "are you there?"])
    await bob.context.set_offline(False)
    await shows(bob, ["Hello Bob!", "Hi Alice", "well, never mind", "are you there?"])
    await wait(bob, LIVE)
    assert await bob.evaluate("() => document.body.dataset.recovered") == "true"

    # A reload shows the stored history, loaded from the app by RPC.
    await bob.goto(f"{chat.url}rooms/lobby")
    await wait(bob, LIVE)
    await shows(bob, ["Hello Bob!", "Hi Alice", "well, never mind", "are you there?"])
    assert await bob.evaluate("() => document.getElementById('older').hidden")
    await online(bob, ["Alice", "Bob"])

    # Alice closes her browser: she leaves Bob's list.
    await alice.context.close()
    await online(bob, ["Bob"])


async def test_older_and_missed_messages_come_from_the_database(
    browser: Browser, chat: Chat
) -> None:
    alice = await log_in(browser, chat, "Alice", "🦉")
    bob = await log_in(browser, chat, "Bob", "🐢")

    async def publish(texts: list[str]) -> None:
        # Ten at a time, each ten within the client's command timeout
        # however slow the machine.
        for at in range(0, len(texts), 10):
            await bob.evaluate(
                """(texts) => Promise.all(texts.map(
                    (text) => hub.publish('rooms:lobby', { text })))""",
                texts[at : at + 10],
            )

    first = [f"a{i}" for i in range(20)]
    await publish(first)
    await shows(alice, first)

    # More than the hub's history keeps (history_size = 100) while Alice is
    # away: the hub cannot recover them, and the page asks the app.
    await alice.context.set_offline(True)
    await wait(alice, "() => hub.state !== 'connected'")
    missed = [f"b{i}" for i in range(110)]
    await publish(missed)
    await shows(bob, first + missed)
    await alice.context.set_offline(False)
    await shows(alice, first + missed)
    await wait(alice, LIVE)
    assert await alice.evaluate("() => document.body.dataset.recovered") == "false"
    assert chat.rows("SELECT count(*) FROM messages") == [(130,)]

    # A reload shows the newest page; "Load older" brings the rest, a page
    # at a time, until there is no more.
    everything = first + missed
    await alice.goto(f"{chat.url}rooms/lobby")
    await wait(alice, LIVE)
    await shows(alice, everything[-50:])
    for shown in (100, 130):
        await alice.click("#older")
        await shows(alice, everything[-shown:])
    assert await alice.evaluate("() => document.getElementById('older').hidden")


async def test_rooms_are_for_their_members(browser: Browser, chat: Chat) -> None:
    carol = await log_in(browser, chat, "Carol", "🐙", room="python")
    # Not a member: the page offers to join, and the hub, asking the app,
    # refuses whatever the page might try.
    assert await carol.evaluate("() => document.body.dataset.state") == "not-member"
    assert not await carol.evaluate("() => document.getElementById('join').hidden")
    attempts = await carol.evaluate(
        """async () => [
            await new Promise((resolve) => hub.subscribe('rooms:python', {
                onError: (error) => resolve(error.code),
                onSubscribe: () => resolve('subscribed'),
            })),
            await hub.publish('rooms:python', { text: 'let me in' }).then(
                () => 'published', (error) => error.code),
            await hub.rpc('history.older', { room: 'python' }).then(
                () => 'read', (error) => error.code),
        ]"""
    )
    assert attempts == [403, 403, 403]

    await carol.click("#join-room")
    await wait(carol, LIVE)
    await say(carol, "first in #python")
    await shows(carol, ["first in #python"])
    assert chat.rows("SELECT room_id, text FROM messages") == [
        ("python", "first in #python")
    ]
    assert await carol.texts("#rooms a") == ["#lobby", "#python"]

    # Another room, joined from the list of rooms.
    await carol.click('#rooms li[data-room="random"] .join-button')
    await wait(
        carol,
        "() => location.pathname === '/rooms/random' &&"
        " document.body?.dataset.state === 'live'",
    )
    members = chat.rows(
        "SELECT room_id FROM members JOIN users ON users.id = user_id "
        "WHERE users.name = 'Carol' ORDER BY room_id"
    )
    assert members == [("lobby",), ("python",), ("random",)]

    # Logged out: the session is gone, and the pages send her to the form.
    other = await carol.context.new_page()  # another tab, connected
    await other.goto(f"{chat.url}rooms/lobby")
    await wait(other, LIVE)
    await carol.click("#logout")
    await wait(carol, "() => location.pathname === '/login'")
    assert chat.rows("SELECT count(*) FROM sessions") == [(0,)]
    await carol.goto(f"{chat.url}rooms/lobby")
    assert await carol.evaluate("() => location.pathname") == "/login"
    # The other tab's next connect brings no session: the connect hook
    # refuses it (4001), and the page goes to the form too.
    await other.context.set_offline(True)
    await wait(other, "() => window.hub?.state !== 'connected'")
    await other.context.set_offline(False)
    await wait(other, "() => location.pathname === '/login'")


async def test_run_py_stops_the_app_and_the_hub(chat: Chat) -> None:
    assert await chat.stop() == 0
    assert chat.lines[-1] == "chat | stopped", chat.lines
    for port in (chat.app_port, chat.hub_port):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=BOUND).close()


async def test_the_page_works_where_websocket_is_blocked(
    browser: Browser, chat: Chat
) -> None:
    alice = await log_in(browser, chat, "Alice", "🦊")
    await say(alice, "before Dave came")
    await shows(alice, ["before Dave came"])
    # Dave's network breaks the Upgrade: tidings.js falls back to Server-Sent
    # Events and POST /command, which carry his session cookie to the hub as
    # the WebSocket would, so the app's hooks know him on every request.
    context = await browser.new_context()
    await context.add_init_script(NO_WEBSOCKET)
    dave = await context.new_page()
    await dave.goto(f"{chat.url}login")
    await dave.fill("#name", "Dave")
    await dave.click("#enter")
    await wait(dave, LIVE)
    assert await dave.evaluate("() => hub.transport") == "sse"
    await shows(dave, ["before Dave came"])  # history.older, by rpc over POST
    await say(dave, "over a fallback")
    await shows(alice, ["before Dave came", "over a fallback"])
    await say(alice, "over a WebSocket")
    for page in (alice, dave):
        await shows(page, ["before Dave came", "over a fallback", "over a WebSocket"])
    assert await dave.texts(".message .name") == ["Alice", "Dave", "Alice"]
    await say(dave, "oh heck")
    await wait(
        dave,
        "() => document.getElementById('error').textContent.includes("
        "'\"heck\" is not allowed here')",
    )
    # His event stream is in presence, with the info of his connect; and
    # his page, asking over POST (the application lets him read the room),
    # shows who was there before him.
    await online(alice, ["Alice", "Dave"])
    await online(dave, ["Alice", "Dave"])
    assert chat.rows("SELECT name, text FROM messages ORDER BY id") == [
        ("Alice", "before Dave came"),
        ("Dave", "over a fallback"),
        ("Alice", "over a WebSocket"),
    ]
