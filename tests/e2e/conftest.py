"""Fixtures for the browser tests: a hub with the demo pages, and Debian's
Chromium driven through ``node driver.mjs`` (playwright-core, installed by
``npm ci`` in tests/interop/node, as for tests/interop/test_chromium.py).

Without Chromium, Node.js or playwright-core the tests skip, unless CI is
set: then they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
import pytest_asyncio

from tidings.hub import Hub, HubConfig

HERE = Path(__file__).parent
NODE_MODULES = HERE.parent / "interop" / "node" / "node_modules"

#: Seconds for anything one step waits on.
BOUND = 15.0

#: Names that Chromium resolves to 127.0.0.1 (driver.mjs): a page served
#: under one of them has an origin other than the hub's, and not one of this
#: machine's by name, as a page of another site would.
PAGE_HOSTS = ("app.tidings.test", "other.tidings.test")


def _missing(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{reason}; CI must have it (scripts/test installs it)")
    pytest.skip(reason)


class DriverError(Exception):
    """The driver (or the browser) failed a request."""


class Browser:
    """One headless Chromium, behind ``node driver.mjs``; see that file for
    the requests. Every request is bounded."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.version = ""
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._reader: asyncio.Task[None] | None = None
        #: Contexts open, closed after each test.
        self.contexts: list[Context] = []

    async def start(self) -> None:
        assert self.proc.stdout is not None
        async with asyncio.timeout(60):
            line = await self.proc.stdout.readline()
        ready = json.loads(line or b'{"ready": false, "error": "driver exited"}')
        if not ready["ready"]:
            pytest.fail(f"Chromium did not start: {ready['error']}")
        self.version = ready["version"]
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            reply = json.loads(line)
            future = self._waiting.pop(reply["id"], None)
            if future is None or future.done():
                continue
            if reply["ok"]:
                future.set_result(reply["result"])
            else:
                future.set_exception(DriverError(reply["error"]))
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(DriverError("the driver exited"))

    async def request(self, op: str, timeout: float = BOUND, **fields: Any) -> Any:
        assert self.proc.stdin is not None
        id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[id] = future
        message = {"id": id, "op": op, **fields}
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        await self.proc.stdin.drain()
        try:
            async with asyncio.timeout(timeout + 5):
                return await future
        finally:
            self._waiting.pop(id, None)

    async def new_context(
        self, width: int = 1000, height: int = 700, scale: float = 1
    ) -> Context:
        id = await self.request("newContext", width=width, height=height, scale=scale)
        context = Context(self, id)
        self.contexts.append(context)
        return context

    async def close_contexts(self) -> None:
        while self.contexts:
            await self.contexts[-1].close()

    async def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # the driver closes Chromium and exits
        try:
            async with asyncio.timeout(15):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await self._reader


class Context:
    """A browser context: its own storage, its own network switch."""

    def __init__(self, browser: Browser, id: str) -> None:
        self.browser = browser
        self.id = id

    async def new_page(self) -> Page:
        return Page(self, await self.browser.request("newPage", context=self.id))

    async def add_init_script(self, script: str) -> None:
        """Run ``script`` in every page of this context before its own."""
        await self.browser.request("addInitScript", context=self.id, script=script)

    async def set_offline(self, offline: bool) -> None:
        await self.browser.request("setOffline", context=self.id, offline=offline)

    async def close(self) -> None:
        if self in self.browser.contexts:
            self.browser.contexts.remove(self)
            await self.browser.request("closeContext", context=self.id)


class Page:
    """One tab. Functions are JavaScript source, called with ``arg``."""

    def __init__(self, context: Context, id: str) -> None:
        self.context = context
        self.id = id

    async def _do(self, op: str, timeout: float = BOUND, **fields: Any) -> Any:
        browser = self.context.browser
        try:
            return await browser.request(
                op, timeout, page=self.id, timeout_ms=timeout * 1000, **fields
            )
        except (DriverError, TimeoutError) as exc:
            log = await browser.request("console", page=self.id)
            console = "\n".join(log) or "(nothing)"
            raise AssertionError(f"{op} failed: {exc}\nconsole:\n{console}") from exc

    async def goto(self, url: str) -> None:
        status = await self._do("goto", url=url)
        assert status == 200, f"{url} answered {status}"

    async def evaluate(self, fn: str, arg: Any = None) -> Any:
        return await self._do("evaluate", fn=fn, arg=arg)

    async def wait_for(self, fn: str, arg: Any = None, timeout: float = BOUND) -> Any:
        """Wait until ``fn(arg)`` is truthy in the page; return its value."""
        return await self._do("waitFor", timeout, fn=fn, arg=arg)

    async def fill(self, selector: str, value: str) -> None:
        await self._do("fill", selector=selector, value=value)

    async def press(self, selector: str, key: str) -> None:
        await self._do("press", selector=selector, value=key)

    async def click(self, selector: str) -> None:
        await self._do("click", selector=selector)

    async def screenshot(self, path: Path) -> None:
        await self._do("screenshot", path=str(path))

    async def texts(self, selector: str) -> list[str]:
        return list(
            await self.evaluate(
                "(s) => [...document.querySelectorAll(s)].map((e) => e.textContent)",
                selector,
            )
        )


# One Chromium per test module; the tests run on the module's event loop
# with it (pytestmark in each module).
@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def chromium() -> AsyncIterator[Browser]:
    executable = os.environ.get("TIDINGS_CHROMIUM") or shutil.which("chromium")
    if executable is None:
        _missing("Chromium is not installed (apt-get install chromium)")
    node = shutil.which("node")
    if node is None:
        _missing("Node.js is not installed")
    if not (NODE_MODULES / "playwright-core").is_dir():
        _missing("playwright-core is not installed (npm ci in tests/interop/node)")
    proc = await asyncio.create_subprocess_exec(
        node,
        str(HERE / "driver.mjs"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "TIDINGS_CHROMIUM": executable},
    )
    browser = Browser(proc)
    try:
        await browser.start()
        yield browser
    finally:
        with contextlib.suppress(ProcessLookupError):
            await browser.close()


@pytest_asyncio.fixture(loop_scope="module")
async def browser(chromium: Browser) -> AsyncIterator[Browser]:
    """The module's Chromium; the contexts a test opens close after it, so
    that no page of one test reconnects to another test's hub."""
    yield chromium
    await chromium.close_contexts()


@pytest_asyncio.fixture(loop_scope="module")
async def hub() -> AsyncIterator[Hub]:
    async with Hub(HubConfig(port=0)) as hub:
        yield hub


#: A network that breaks the WebSocket Upgrade: every WebSocket the page
#: makes fails as such a network makes it fail, closing with 1006 unopened.
NO_WEBSOCKET = """
window.WebSocket = class {
    static CLOSED = 3;
    constructor(url) {
        this.url = url;
        this.readyState = 0;
        setTimeout(() => {
            this.readyState = 3;
            this.onclose?.({ code: 1006, reason: "" });
        }, 20);
    }
    send() { throw new Error("not open"); }
    close() { this.readyState = 3; }
};
"""
