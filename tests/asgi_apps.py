"""ASGI applications that tests/test_asgi.py, the interop tests (Node's ws,
Chromium) and the Autobahn harness serve under uvicorn: a FastAPI app, the
benchmark's Starlette echo app, and a raw ASGI app that exercises what
frameworks hide; and :class:`Watched`, to see the events an app receives."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import FastAPI, WebSocket
from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocketDisconnect

from benchmarks.asgi_app import app as starlette_app  # also benchmarked

__all__ = [
    "RAW_DISCONNECTS",
    "SUBPROTOCOLS",
    "Watched",
    "fastapi_app",
    "raw_app",
    "starlette_app",
]

fastapi_app = FastAPI()

#: The subprotocols fastapi_app's /echo speaks, by preference: it accepts
#: the first of these that the client offers, or none.
SUBPROTOCOLS = ("chat.v1", "chat.v2")


@fastapi_app.websocket("/echo")
async def fastapi_echo(websocket: WebSocket) -> None:
    offered = websocket.scope["subprotocols"]
    chosen = next((name for name in SUBPROTOCOLS if name in offered), None)
    await websocket.accept(subprotocol=chosen)
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await websocket.send_text(message["text"])
            else:
                await websocket.send_bytes(message["bytes"])
    except WebSocketDisconnect:
        pass


@fastapi_app.websocket("/close/{code}")
async def fastapi_close(websocket: WebSocket, code: int) -> None:
    """Closes with ``code``, the client's first message as the reason."""
    await websocket.accept()
    reason = await websocket.receive_text()
    await websocket.close(code, reason)


@fastapi_app.websocket("/deny")
async def fastapi_deny(websocket: WebSocket) -> None:
    """Refuses with 401 as Starlette's documentation shows it: a Response,
    whose headers carry its own content-length."""
    await websocket.send_denial_response(
        PlainTextResponse("log in first", status_code=401)
    )


class Watched:
    """An ASGI app as the server runs it, with each ``websocket.disconnect``
    event the app receives also put in :attr:`disconnects`. Make it inside
    the test: the queue belongs to the test's loop, which must be the
    server's (the ``serve_asgi`` fixture's uvicorn)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.disconnects: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        async def watched_receive() -> dict[str, Any]:
            event: dict[str, Any] = await receive()
            if event["type"] == "websocket.disconnect":
                self.disconnects.put_nowait(event)
            return event

        await self.app(scope, watched_receive, send)

    async def disconnect(self, timeout: float) -> dict[str, Any]:
        """The next disconnect event the app receives."""
        async with asyncio.timeout(timeout):
            return await self.disconnects.get()


async def raw_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """What the path asks for: /scope answers the scope as JSON, /close/CODE
    closes with CODE, /deny answers 401 with a body, /refuse closes before
    accepting (403), /crash raises, /crash-later raises after accepting,
    /disconnect reports the client's close code and reason."""
    assert scope["type"] == "websocket"
    assert (await receive())["type"] == "websocket.connect"
    path = scope["path"].removeprefix(scope["root_path"])  # the route
    if path == "/deny":
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 401,
                "headers": [(b"content-type", b"text/plain"), (b"x-why", b"token")],
            }
        )
        await send(
            {"type": "websocket.http.response.body", "body": b"who ", "more_body": True}
        )
        await send({"type": "websocket.http.response.body", "body": b"are you?"})
        return
    if path == "/refuse":
        await send({"type": "websocket.close"})
        return
    if path == "/crash":
        raise RuntimeError("the application failed")
    subprotocol = scope["subprotocols"][-1] if scope["subprotocols"] else None
    await send(
        {
            "type": "websocket.accept",
            "subprotocol": subprotocol,
            "headers": [(b"x-app", b"raw")],
        }
    )
    if path == "/scope":
        shown = {
            key: value.decode() if isinstance(value, bytes) else value
            for key, value in scope.items()
            if key not in ("headers", "state", "app", "asgi")
        }
        shown["headers"] = [[n.decode(), v.decode()] for n, v in scope["headers"]]
        shown["asgi"] = scope["asgi"]
        await send({"type": "websocket.send", "text": json.dumps(shown)})
    elif path.startswith("/close/"):
        await send({"type": "websocket.close", "code": int(path[7:]), "reason": "bye"})
    elif path == "/crash-later":
        raise RuntimeError("the application failed after accepting")
    elif path == "/disconnect":
        event = await receive()
        RAW_DISCONNECTS.append(
            {"code": event["code"], "reason": event.get("reason", "")}
        )
    else:  # echo until the client closes
        while True:
            event = await receive()
            if event["type"] == "websocket.disconnect":
                return
            key = "text" if event.get("text") is not None else "bytes"
            await send({"type": "websocket.send", key: event[key]})


#: What /disconnect saw, for the test to check.
RAW_DISCONNECTS: list[dict[str, Any]] = []
