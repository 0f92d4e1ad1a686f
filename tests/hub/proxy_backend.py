"""A back end for the proxy tests: a Starlette app, run under uvicorn in a
process of its own, that answers the hub's hook calls.

Each hook answers by default as an application that says yes would (see
``_DEFAULTS``). A test changes that with ``POST /script`` ``{hook: spec}``,
where a spec is ``{"body": any JSON}`` (answered as it is), ``{"raw":
"text"}`` (answered as it is, not JSON), ``{"status": 500}``, and
``{"delay": seconds}`` before any of them. ``GET /calls`` returns every
call received (hook, body, headers, and ``at``: ``time.monotonic()`` when
it arrived, a clock this machine's processes share); ``DELETE /calls``
forgets them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

SCRIPT: dict[str, dict[str, Any]] = {}
CALLS: list[dict[str, Any]] = []


def _connect(body: dict[str, Any]) -> Any:
    data = body.get("data")
    if isinstance(data, dict) and "result" in data:
        return {"result": data["result"]}  # what the client asked to be
    return {"result": {"user": ""}}


_DEFAULTS = {
    "connect": _connect,
    "refresh": lambda body: {"result": {"expire_at": time.time() + 60}},
    "subscribe": lambda body: {"result": {}},
    "publish": lambda body: {"result": {}},
    "rpc": lambda body: {
        "result": {"data": {"method": body["method"], "echo": body["data"]}}
    },
}


async def hook(request: Request) -> Response:
    name = request.path_params["hook"]
    at = time.monotonic()
    body = await request.json()
    CALLS.append(
        {"hook": name, "body": body, "headers": dict(request.headers), "at": at}
    )
    spec = SCRIPT.get(name, {})
    if "delay" in spec:
        await asyncio.sleep(spec["delay"])
    if "status" in spec:
        return PlainTextResponse("failed", status_code=spec["status"])
    if "raw" in spec:
        return PlainTextResponse(spec["raw"])
    if "body" in spec:
        return JSONResponse(spec["body"])
    return JSONResponse(_DEFAULTS[name](body))


async def script(request: Request) -> Response:
    SCRIPT.clear()
    SCRIPT.update(await request.json())
    return JSONResponse({})


async def calls(request: Request) -> Response:
    if request.method == "DELETE":
        CALLS.clear()
    return JSONResponse({"calls": CALLS})


app = Starlette(
    routes=[
        Route("/hooks/{hook}", hook, methods=["POST"]),
        Route("/script", script, methods=["POST"]),
        Route("/calls", calls, methods=["GET", "DELETE"]),
    ]
)


if __name__ == "__main__":
    # Served on the listening socket whose descriptor is the argument, as
    # uvicorn's --fd would, but known for TCP: --fd takes any socket for a
    # Unix one, leaves Nagle on, and every answer then waits ~40 ms for a
    # delayed ACK.
    import socket
    import sys

    import uvicorn

    listening = socket.socket(fileno=int(sys.argv[1]))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    asyncio.run(server.serve(sockets=[listening]))
