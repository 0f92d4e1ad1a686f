"""The back end benchmarks/proxy.py measures the hub's hooks against: a
Starlette app, as an application would write its hook endpoints, that
reads each call's JSON body and answers yes at once (docs/integrate.md):
connect as user ``bench``, subscribe and publish as asked, and an rpc with
the data it was sent."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def connect(request: Request) -> JSONResponse:
    await request.json()
    return JSONResponse({"result": {"user": "bench"}})


async def allow(request: Request) -> JSONResponse:
    """The subscribe and publish hooks: allowed, nothing changed."""
    await request.json()
    return JSONResponse({"result": {}})


async def rpc(request: Request) -> JSONResponse:
    body: dict[str, Any] = await request.json()
    return JSONResponse({"result": {"data": body.get("data")}})


app = Starlette(
    routes=[
        Route("/connect", connect, methods=["POST"]),
        Route("/subscribe", allow, methods=["POST"]),
        Route("/publish", allow, methods=["POST"]),
        Route("/rpc", rpc, methods=["POST"]),
    ]
)
