"""tidings.js in Chromium against a hub mounted at /realtime in a FastAPI
app under uvicorn (hub/mount.py): the page is the app's, the client is
``new Hub("/realtime/ws")``, over each transport and each of uvicorn's
WebSocket protocols."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import uvicorn
from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from tidings.asgi import WebSocketProtocol
from tidings.hub import Hub, HubConfig, NamespaceConfig

from .conftest import BOUND, Browser

pytestmark = pytest.mark.asyncio(loop_scope="module")

PAGE = "<!doctype html><title>shop</title><p>the app's own page</p>"


class Shop:
    """The app: its page at /, a view that publishes, the hub at /realtime."""

    def __init__(self, hub: Hub, port: int) -> None:
        self.hub = hub
        self.url = f"http://127.0.0.1:{port}/"


@pytest_asyncio.fixture(loop_scope="module", params=["auto", "tidings"])
async def shop(request: pytest.FixtureRequest, browser: Browser) -> AsyncIterator[Shop]:
    hub = Hub(
        HubConfig(
            demo=False,
            namespaces={
                "chat": NamespaceConfig(
                    allow_anonymous=True,
                    allow_publish=True,
                    history_size=100,
                    presence=True,
                )
            },
        )
    )
    app = FastAPI(lifespan=hub.lifespan)
    app.mount("/realtime", hub.asgi())

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    ws = WebSocketProtocol if request.param == "tidings" else "auto"
    server = uvicorn.Server(
        uvicorn.Config(app, ws=ws, lifespan="on", log_level="warning")
    )
    task = asyncio.ensure_future(server.serve([sock]))
    try:
        yield Shop(hub, sock.getsockname()[1])
    finally:
        # The pages first: uvicorn waits for open event streams.
        await browser.close_contexts()
        server.should_exit = True
        async with asyncio.timeout(BOUND):
            await task
        sock.close()


@pytest.mark.parametrize("transport", ["websocket", "sse", "poll"])
async def test_the_browser_client_uses_the_mounted_hub(
    browser: Browser, shop: Shop, transport: str
) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(shop.url)
    result: Any = await page.evaluate(
        """async (transport) => {
            const T = await import("/realtime/tidings.js");
            const hub = new T.Hub("/realtime/ws", { transports: [transport] });
            window.got = [];
            const sub = hub.subscribe("chat:m", {
                onPublication: (p) => window.got.push(p.data),
            });
            await hub.connect();
            const end = Date.now() + 10000;
            while (sub.epoch === null && Date.now() < end) {  // the reply
                await new Promise((r) => setTimeout(r, 20));
            }
            await hub.publish("chat:m", "from the page");
            return { transport: hub.transport, url: hub.url, epoch: sub.epoch };
        }""",
        transport,
    )
    assert result["transport"] == transport, result
    assert result["url"].endswith("/realtime/ws")
    assert result["epoch"] is not None, result
    # The app publishes too, through the in-process API.
    await shop.hub.publish("chat:m", "from the app")
    got = await page.wait_for("() => window.got.length >= 2 && window.got")
    assert got == ["from the page", "from the app"]
