"""The endpoints benchmarks/asgi.py serves under uvicorn: Starlette, as an
application would write them. /echo echoes; /broadcast sends every text
message a client sends to every client connected there."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                await websocket.send_bytes(message["bytes"])
            else:
                await websocket.send_text(message["text"])
    except WebSocketDisconnect:
        pass


#: The websockets connected to /broadcast.
connected: set[WebSocket] = set()


async def broadcast(websocket: WebSocket) -> None:
    """A chat room as FastAPI's documentation writes one (its
    ``ConnectionManager.broadcast``): each message goes to every connected
    client, the sender too, one ``await send_text()`` after another."""
    await websocket.accept()
    connected.add(websocket)
    try:
        async for message in websocket.iter_text():
            for client in list(connected):
                await client.send_text(message)
    finally:
        connected.discard(websocket)


app = Starlette(
    routes=[WebSocketRoute("/echo", echo), WebSocketRoute("/broadcast", broadcast)]
)
