"""ASGI applications that tests/test_asgi.py and the Autobahn harness serve
under uvicorn: a FastAPI app, the benchmark's Starlette echo app, and a raw
ASGI app that exercises what frameworks hide."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, WebSocket
from starlette.websockets import WebSocketDisconnect

from benchmarks.asgi_app import app as starlette_app  # also benchmarked

__all__ = ["RAW_DISCONNECTS", "fastapi_app", "raw_app", "starlette_app"]

fastapi_app = FastAPI()


@fastapi_app.websocket("/echo")
async def fastapi_echo(websocket: WebSocket) -> None:
    await websocket.accept()
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
