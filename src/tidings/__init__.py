"""tidings: a WebSocket toolkit and real-time messaging hub for Python.

``tidings.serve`` and ``tidings.connect`` are the asyncio server and client;
``tidings.protocol`` is the I/O-free protocol core underneath;
``tidings.HubAPI`` and ``tidings.AsyncHubAPI`` are clients of the hub's
HTTP API for back ends. These names are imported on first use, so that
``import tidings.protocol`` stays free of asyncio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
    PayloadTooBig,
    ProtocolError,
    TidingsError,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncHubAPI",
    "ConnectionClosed",
    "HTTPResponse",
    "HTTPStream",
    "HubAPI",
    "InvalidHandshake",
    "InvalidStatus",
    "InvalidURI",
    "PayloadTooBig",
    "ProtocolError",
    "ResponseStream",
    "Server",
    "TidingsError",
    "WebSocket",
    "broadcast",
    "connect",
    "run",
    "serve",
]

_LAZY = {
    "AsyncHubAPI": ".hub.api_client",
    "HubAPI": ".hub.api_client",
    "HTTPResponse": ".engine.http",
    "HTTPStream": ".engine.http",
    "ResponseStream": ".engine.http",
    "Server": ".engine.server",
    "WebSocket": ".engine.connection",
    "broadcast": ".engine.broadcast",
    "connect": ".engine.client",
    "run": ".engine.eventloop",
    "serve": ".engine.server",
}

if TYPE_CHECKING:
    from .engine.broadcast import broadcast
    from .engine.client import connect
    from .engine.connection import WebSocket
    from .engine.eventloop import run
    from .engine.http import HTTPResponse, HTTPStream, ResponseStream
    from .engine.server import Server, serve
    from .hub.api_client import AsyncHubAPI, HubAPI


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'tidings' has no attribute {name!r}")
